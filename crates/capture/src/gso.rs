//! Unsegmented GSO datagrams in a capture.
//!
//! tcpdump on the sending host (and on either end of a veth pair) sees a UDP GSO datagram as
//! the sender handed it to the kernel: one IP/UDP header in front of several RoCE packets of
//! one size (the last may be shorter), cut into real packets only later. Read as one packet,
//! such a frame fails its ICRC although every packet on the wire is valid. The capture does
//! not record the segment size, so [`segment_size`] finds it: the size at which every piece
//! verifies, each with the IPv4 Identification the kernel's segmentation gives it (the
//! frame's plus the segment's index).

use uroce_wire::headers::BTH_LEN;
use uroce_wire::{Bth, IcrcContext, IpFields, Ipv4IdMode, Opcode, ICRC_LEN};

use crate::frame::RoceFrame;

/// The smallest RoCE packet: a BTH and an ICRC.
const MIN_PACKET: usize = BTH_LEN + ICRC_LEN;
/// Candidate sizes whose ICRCs are computed before giving up, so that a frame full of
/// look-alike headers costs a bounded amount of work.
const MAX_CANDIDATES: usize = 32;

/// The context of segment `k` of a GSO datagram whose first segment has context `ctx`: the
/// kernel numbers the segments' IPv4 Identifications consecutively from the datagram's
/// (`ip_select_ident_segs`, `__udp_gso_segment`); IPv6 has none.
pub fn segment_ctx(ctx: &IcrcContext, k: usize) -> IcrcContext {
    let mut c = *ctx;
    if let IpFields::V4 { identification, .. } = &mut c.ip {
        *identification = identification.wrapping_add(k as u16);
    }
    c
}

/// The segments of `payload` cut at `size` bytes (the last may be shorter).
pub fn segments(payload: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    payload.chunks(size.max(1))
}

/// The segment size that makes `frame` a GSO datagram of two or more RoCE packets whose
/// ICRCs all verify, or `None`. A candidate size must be a multiple of 4 (RoCE packets are)
/// and start a BTH of a known opcode to the same destination QP, with the next PSN or as the
/// last segment (a request batch has consecutive PSNs; uroce's held ACK rides as a shorter
/// last segment).
pub fn segment_size(frame: &RoceFrame<'_>) -> Option<usize> {
    let p = frame.payload;
    let len = p.len();
    let bth = |at: usize| p.get(at..).and_then(|b| Bth::new_checked(b).ok());
    let first = bth(0)?;
    let next_psn = first.psn().wrapping_add(1) & 0x00FF_FFFF;
    let mut tried = 0;
    for size in (MIN_PACKET..len).step_by(4) {
        let last = len - (len - 1) / size * size;
        // `last` ≥ MIN_PACKET leaves a whole BTH at `size`.
        let Some(b) = bth(size).filter(|_| last >= MIN_PACKET) else {
            continue;
        };
        if b.dest_qp() != first.dest_qp()
            || Opcode::from_u8(b.opcode()).is_none()
            || !(b.psn() == next_psn || len - size <= size)
        {
            continue;
        }
        tried += 1;
        if tried > MAX_CANDIDATES {
            return None;
        }
        let all_valid = segments(p, size).enumerate().all(|(k, seg)| {
            segment_ctx(&frame.ctx, k)
                .verify(seg, Ipv4IdMode::Exact)
                .is_ok()
        });
        if all_valid {
            return Some(size);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_frame, Summary};
    use crate::frame::{build_datagram, LinkType};
    use uroce_wire::{AckSyndrome, AethRepr, BthRepr, PacketRepr, RethRepr};

    fn ctx4(id: u16) -> IcrcContext {
        IcrcContext::v4([10, 0, 0, 2].into(), [10, 0, 0, 3].into(), id, 4791, 4791)
    }

    /// Seals `reprs` (with payloads of their lengths) as segments 0, 1, … of a GSO datagram
    /// whose context is `ctx`, and returns the datagram as the sending host's capture shows it.
    fn gso_datagram(ctx: &IcrcContext, reprs: &[PacketRepr]) -> Vec<u8> {
        let mut transport = Vec::new();
        for (k, r) in reprs.iter().enumerate() {
            let mut buf = vec![0u8; r.buffer_len()];
            let payload: Vec<u8> = (0..r.payload_len).map(|i| (i * 7 + k) as u8).collect();
            r.emit_with_payload(&mut buf, &payload, &segment_ctx(ctx, k))
                .unwrap();
            transport.extend_from_slice(&buf);
        }
        build_datagram(ctx, &transport).unwrap()
    }

    fn write_batch(n: u32) -> Vec<PacketRepr> {
        (0..n)
            .map(|i| {
                let op = match i {
                    0 => Opcode::RcWriteFirst,
                    i if i + 1 == n => Opcode::RcWriteLast,
                    _ => Opcode::RcWriteMiddle,
                };
                let mut r = PacketRepr::new(BthRepr::new(op, 0x11, 100 + i), 1024);
                if i == 0 {
                    r.reth = Some(RethRepr {
                        va: 0x1000,
                        rkey: 0x101,
                        dma_len: 1024 * n,
                    });
                }
                r
            })
            .collect()
    }

    #[test]
    fn a_gso_batch_is_cut_into_packets_that_verify_with_consecutive_ids() {
        // FIRST carries a RETH, so it is 16 bytes longer than the MIDDLEs: uroce sends it in a
        // batch of its own; here MIDDLEs and a LAST of the same size follow a MIDDLE.
        let reprs: Vec<PacketRepr> = write_batch(6).into_iter().skip(1).collect();
        for ctx in [
            ctx4(0),
            ctx4(0xFFFE),
            IcrcContext::v6(
                "fd00::2".parse().unwrap(),
                "fd00::3".parse().unwrap(),
                4791,
                4791,
            ),
        ] {
            let d = gso_datagram(&ctx, &reprs);
            let lines = decode_frame(9, LinkType::Raw, &d, d.len());
            assert_eq!(lines.len(), 5, "{ctx:?}");
            let mut sum = Summary::default();
            for (k, l) in lines.iter().enumerate() {
                sum.add(l);
                let text = l.to_string();
                assert!(
                    text.starts_with(&format!("    9 GSO {}/5 ", k + 1)),
                    "{text}"
                );
                assert!(text.contains(&format!("PSN={} ", 101 + k)), "{text}");
                assert!(text.ends_with("payload=1024 ICRC ok"), "{text}");
            }
            assert_eq!(
                sum.to_string(),
                "1 frames, 5 RoCE, ICRC ok 5, ICRC bad 0, malformed 0, not RoCE 0 \
                 (1 GSO datagrams cut into their packets)"
            );
        }
    }

    #[test]
    fn a_write_with_its_held_ack_as_a_shorter_last_segment_is_cut() {
        let mut write = PacketRepr::new(BthRepr::new(Opcode::RcWriteOnly, 0x11, 7), 8);
        write.reth = Some(RethRepr {
            va: 0x1000,
            rkey: 0x101,
            dma_len: 8,
        });
        let mut ack = PacketRepr::new(BthRepr::new(Opcode::RcAcknowledge, 0x11, 900), 0);
        ack.aeth = Some(AethRepr {
            syndrome: AckSyndrome::Ack { credits: 31 },
            msn: 3,
        });
        let d = gso_datagram(&ctx4(0), &[write, ack]);
        let lines: Vec<String> = decode_frame(1, LinkType::Raw, &d, d.len())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("GSO 1/2") && lines[0].contains("RDMA Write Only"));
        assert!(
            lines[1].contains("GSO 2/2") && lines[1].contains("Acknowledge QP=0x000011 PSN=900")
        );
        assert!(lines.iter().all(|l| l.ends_with("ICRC ok")), "{lines:?}");
    }

    #[test]
    fn a_corrupted_batch_stays_one_frame_with_a_bad_icrc() {
        let reprs = write_batch(4);
        let mut d = gso_datagram(&ctx4(0), &reprs[1..]);
        // A payload byte of the second packet: no segment size makes every ICRC verify.
        let at = d.len() - 1500;
        d[at] ^= 0x40;
        let lines = decode_frame(3, LinkType::Raw, &d, d.len());
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].segment, None);
        assert_eq!(lines[0].icrc_ok(), Some(false));
        // Segment IDs numbered from the frame's own: a capture whose IDs were rewritten
        // (a frame claiming ID 5 for a batch sealed from 0) does not verify either.
        let mut d = gso_datagram(&ctx4(0), &reprs[1..]);
        d[5] = 5;
        assert_eq!(decode_frame(3, LinkType::Raw, &d, d.len()).len(), 1);
    }

    #[test]
    fn a_single_packet_is_not_cut() {
        let reprs = write_batch(1);
        let d = gso_datagram(&ctx4(0), &reprs);
        let lines = decode_frame(1, LinkType::Raw, &d, d.len());
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].segment, None);
        assert_eq!(lines[0].icrc_ok(), Some(true));
    }
}

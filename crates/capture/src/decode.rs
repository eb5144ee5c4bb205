//! One-line, wireshark-like decoding of captured frames.
//!
//! [`decode()`] turns a link-layer frame into a [`Decoded`] value whose `Display` is one line:
//!
//! ```text
//!     1 10.77.0.3:49441 → 10.77.0.2:4791 RC Send First QP=0x000011 PSN=10750958 payload=1024 ICRC ok
//!     5 10.77.0.2:49441 → 10.77.0.3:4791 RC Acknowledge QP=0x000011 PSN=10750961 AETH(ACK credits=31 MSN=1) payload=0 ICRC ok
//! ```
//!
//! Every BTH field that is not at its usual value is shown (`AckReq`, `SE`, `MigReq`, `FECN`,
//! `BECN`, `pad=`, `P_Key=`), then each extension header the opcode carries, the payload length
//! and the ICRC verdict, checked with the frame's real IPv4 Identification
//! ([`Ipv4IdMode::Exact`]). Frames that are not RoCEv2 or are malformed give a line that says
//! why. Nothing here panics on any input. [`Summary`] counts the outcomes.
//!
//! [`decode_frame`] also recognises a frame captured before the kernel's GSO segmentation
//! (tcpdump on the sending host; [`crate::gso`]) and gives one line per packet in it, marked
//! `GSO k/n`, each checked with the IPv4 Identification it gets on the wire; and a frame cut
//! by the capture's snap length ([`Outcome::Truncated`]), whose headers it still shows.

use core::fmt;
use std::net::SocketAddr;

use uroce_wire::{
    AckSyndrome, IcrcCheck, IcrcMismatch, Ipv4IdMode, NakCode, Opcode, Operation, Packet,
    PacketRepr, Position, DEFAULT_PKEY,
};

use crate::frame::{decapsulate, FrameError, LinkType, NotRoce, RoceFrame};
use crate::gso;

/// A RoCEv2 frame whose transport packet parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocePacket<'a> {
    /// IP/UDP framing and the UDP payload.
    pub frame: RoceFrame<'a>,
    /// The checked view of the transport packet.
    pub packet: Packet<&'a [u8]>,
    /// Its headers.
    pub repr: PacketRepr,
    /// The ICRC verdict with the frame's own IP header.
    pub icrc: Result<IcrcCheck, IcrcMismatch>,
}

/// What a frame turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// A RoCEv2 packet.
    Roce(RocePacket<'a>),
    /// UDP to port 4791 whose payload is not a valid transport packet.
    BadTransport {
        /// IP/UDP framing and the UDP payload.
        frame: RoceFrame<'a>,
        /// Why the transport packet is invalid.
        error: uroce_wire::Error,
        /// The ICRC verdict, which does not depend on the transport headers being valid.
        icrc: Result<IcrcCheck, IcrcMismatch>,
    },
    /// A RoCEv2 frame the capture cut short (its snap length): the headers are decoded from
    /// the bytes captured; the ICRC cannot be checked.
    Truncated {
        /// IP/UDP framing; its `payload` holds only the captured bytes of the transport packet.
        frame: RoceFrame<'a>,
        /// The transport headers, when the captured bytes hold them all and they are valid.
        repr: Option<PacketRepr>,
        /// The length of the transport packet (or GSO datagram) on the wire.
        len: usize,
    },
    /// A well-formed frame that does not carry RoCEv2.
    NotRoce(NotRoce),
    /// A frame whose link, IP or UDP layer is malformed.
    Malformed(FrameError),
}

/// Where a packet lay in an unsegmented GSO datagram of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Its position, from 1.
    pub number: usize,
    /// Packets in the datagram.
    pub count: usize,
}

/// One decoded frame, or one packet of a GSO datagram; `Display` prints its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Frame number, from 1.
    pub index: u64,
    /// What the frame (or the packet) is.
    pub outcome: Outcome<'a>,
    /// Set for a packet of an unsegmented GSO datagram ([`decode_frame`]).
    pub segment: Option<Segment>,
}

impl Decoded<'_> {
    /// The RoCEv2 packet, if the frame is one and its transport packet parsed.
    pub fn roce(&self) -> Option<&RocePacket<'_>> {
        match &self.outcome {
            Outcome::Roce(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the ICRC verified (`None` when the frame is not UDP to port 4791, or was
    /// truncated by the capture).
    pub fn icrc_ok(&self) -> Option<bool> {
        match &self.outcome {
            Outcome::Roce(RocePacket { icrc, .. }) | Outcome::BadTransport { icrc, .. } => {
                Some(icrc.is_ok())
            }
            _ => None,
        }
    }
}

/// Decodes frame number `index`, of link type `link`, as one packet ([`decode_frame`] also
/// cuts GSO datagrams and reads truncated frames).
pub fn decode(index: u64, link: LinkType, data: &[u8]) -> Decoded<'_> {
    let outcome = match decapsulate(link, data) {
        Err(FrameError::NotRoce(why)) => Outcome::NotRoce(why),
        Err(e) => Outcome::Malformed(e),
        Ok(frame) => transport(frame),
    };
    Decoded {
        index,
        outcome,
        segment: None,
    }
}

/// Decodes frame number `index`, `orig_len` bytes long on the wire (the pcap record's; more
/// than `data` holds when the capture's snap length cut it), into one [`Decoded`] per packet:
/// one, unless the frame is an unsegmented GSO datagram whose packets all verify once cut
/// apart ([`gso::segment_size`]); a frame that verifies whole, or cannot be cut so, is
/// decoded as [`decode`] does, and a frame cut by the capture as [`Outcome::Truncated`].
pub fn decode_frame(index: u64, link: LinkType, data: &[u8], orig_len: usize) -> Vec<Decoded<'_>> {
    let one = decode(index, link, data);
    if let Outcome::Malformed(FrameError::Truncated { .. }) = one.outcome {
        if let Some(outcome) = truncated(link, data, orig_len) {
            return vec![Decoded {
                index,
                outcome,
                segment: None,
            }];
        }
    }
    let frame = match one.outcome {
        Outcome::Roce(RocePacket { frame, icrc, .. })
        | Outcome::BadTransport { frame, icrc, .. }
            if icrc.is_err() =>
        {
            frame
        }
        _ => return vec![one],
    };
    let Some(size) = gso::segment_size(&frame) else {
        return vec![one];
    };
    let count = gso::segments(frame.payload, size).count();
    gso::segments(frame.payload, size)
        .enumerate()
        .map(|(k, payload)| Decoded {
            index,
            outcome: transport(RoceFrame {
                ctx: gso::segment_ctx(&frame.ctx, k),
                payload,
                ..frame
            }),
            segment: Some(Segment {
                number: k + 1,
                count,
            }),
        })
        .collect()
}

/// Whether a truncated frame's length says it held more than the packet whose headers were
/// captured (an unsegmented GSO datagram): a payload beyond the largest path MTU (IBTA 4096),
/// or an ONLY packet longer than its RETH's DMA length.
fn holds_more_packets(r: &PacketRepr) -> bool {
    let only = r.bth.opcode.info().position == Position::Only;
    r.payload_len > 4096 || (only && r.reth.is_some_and(|h| h.dma_len as usize != r.payload_len))
}

/// The largest frame [`truncated`] completes: a 64 KiB IP datagram and its link header.
const MAX_FRAME: usize = 65_536 + 64;

/// A frame of which the capture kept only `data`, `orig_len` bytes long on the wire: decoded
/// with the missing bytes taken as zeros, which only the payload and ICRC may be (the
/// transport headers must lie in `data`). `None` if it is no RoCEv2 frame even so.
fn truncated(link: LinkType, data: &[u8], orig_len: usize) -> Option<Outcome<'_>> {
    if orig_len <= data.len() || orig_len > MAX_FRAME {
        return None;
    }
    let mut whole = data.to_vec();
    whole.resize(orig_len, 0);
    let w = decapsulate(link, &whole).ok()?;
    let offset = (w.payload.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let len = w.payload.len();
    let payload = data.get(offset..).unwrap_or_default();
    let payload = &payload[..payload.len().min(len)];
    let header_len = payload
        .first()
        .and_then(|&op| Opcode::from_u8(op))
        .map(|op| op.info().header_len);
    let repr = match header_len {
        Some(h) if payload.len() >= h => PacketRepr::parse_bytes(w.payload).ok().map(|(r, _)| r),
        _ => None,
    };
    Some(Outcome::Truncated {
        frame: RoceFrame {
            ctx: w.ctx,
            payload,
            traffic_class: w.traffic_class,
            hop_limit: w.hop_limit,
            flow_label: w.flow_label,
            ipv4_checksum_ok: w.ipv4_checksum_ok,
            udp_checksum: w.udp_checksum,
            vlan: w.vlan,
        },
        repr,
        len,
    })
}

/// Parses and checks the transport packet of `frame`.
fn transport(frame: RoceFrame<'_>) -> Outcome<'_> {
    let icrc = frame.ctx.verify(frame.payload, Ipv4IdMode::Exact);
    match PacketRepr::parse_bytes(frame.payload) {
        Ok((repr, packet)) => Outcome::Roce(RocePacket {
            frame,
            packet,
            repr,
            icrc,
        }),
        Err(error) => Outcome::BadTransport { frame, error, icrc },
    }
}

fn endpoints(f: &mut fmt::Formatter<'_>, frame: &RoceFrame<'_>) -> fmt::Result {
    let src = SocketAddr::new(frame.src(), frame.src_port());
    let dst = SocketAddr::new(frame.dst(), frame.dst_port());
    write!(f, "{src} → {dst}")?;
    if let Some(vlan) = frame.vlan {
        write!(f, " VLAN={vlan}")?;
    }
    if frame.ecn() == 3 {
        f.write_str(" ECN-CE")?;
    }
    if frame.ipv4_checksum_ok == Some(false) {
        f.write_str(" IPv4-checksum-bad")?;
    }
    Ok(())
}

fn icrc(f: &mut fmt::Formatter<'_>, r: &Result<IcrcCheck, IcrcMismatch>) -> fmt::Result {
    match r {
        Ok(_) => f.write_str("ICRC ok"),
        Err(m) => write!(
            f,
            "ICRC bad (carried {:#010x}, computed {:#010x})",
            m.carried, m.computed
        ),
    }
}

/// The RNR NAK timer values of IBTA Vol 1 Table 45, in microseconds, by 5-bit code.
const RNR_TIMER_US: [u32; 32] = [
    655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560, 3_840,
    5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880, 163_840,
    245_760, 327_680, 491_520,
];

/// Formats an AETH syndrome as `ACK credits=N`, `RNR NAK timer=T (X ms)` or `NAK <code>`.
pub fn syndrome_text(s: AckSyndrome) -> String {
    match s {
        AckSyndrome::Ack { credits } => format!("ACK credits={credits}"),
        AckSyndrome::RnrNak { timer } => {
            let us = RNR_TIMER_US[usize::from(timer & 0x1F)];
            format!(
                "RNR NAK timer={timer} ({}.{:02} ms)",
                us / 1000,
                us % 1000 / 10
            )
        }
        AckSyndrome::Nak(code) => format!(
            "NAK {}",
            match code {
                NakCode::PsnSequenceError => "PSN Sequence Error".to_owned(),
                NakCode::InvalidRequest => "Invalid Request".to_owned(),
                NakCode::RemoteAccessError => "Remote Access Error".to_owned(),
                NakCode::RemoteOperationalError => "Remote Operational Error".to_owned(),
                NakCode::InvalidRdRequest => "Invalid RD Request".to_owned(),
                other => format!("reserved code {}", other.code()),
            }
        ),
        other => format!("reserved syndrome {:#04x}", other.to_byte()),
    }
}

impl fmt::Display for RocePacket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        endpoints(f, &self.frame)?;
        headers(f, &self.repr)?;
        write!(f, " payload={} ", self.repr.payload_len)?;
        icrc(f, &self.icrc)
    }
}

/// The opcode, every BTH field not at its usual value and each extension header.
fn headers(f: &mut fmt::Formatter<'_>, r: &PacketRepr) -> fmt::Result {
    let b = &r.bth;
    write!(
        f,
        " {} QP={:#08x} PSN={}",
        b.opcode.name(),
        b.dest_qp,
        b.psn
    )?;
    for (set, name) in [
        (b.ack_req, "AckReq"),
        (b.solicited, "SE"),
        (b.mig_req, "MigReq"),
        (b.fecn, "FECN"),
        (b.becn, "BECN"),
    ] {
        if set {
            write!(f, " {name}")?;
        }
    }
    if b.pad_count != 0 {
        write!(f, " pad={}", b.pad_count)?;
    }
    if b.pkey != DEFAULT_PKEY {
        write!(f, " P_Key={:#06x}", b.pkey)?;
    }
    if let Some(d) = &r.deth {
        write!(f, " DETH(qkey={:#010x} srcqp={:#08x})", d.qkey, d.src_qp)?;
    }
    if let Some(h) = &r.reth {
        write!(
            f,
            " RETH(va={:#018x} rkey={:#010x} len={})",
            h.va, h.rkey, h.dma_len
        )?;
    }
    if let Some(h) = &r.atomic_eth {
        let data = match b.opcode.info().operation {
            Operation::FetchAdd => "add",
            _ => "swap",
        };
        write!(
            f,
            " AtomicETH(va={:#018x} rkey={:#010x} {data}={:#018x} cmp={:#018x})",
            h.va, h.rkey, h.swap_add, h.compare
        )?;
    }
    if let Some(h) = &r.aeth {
        write!(f, " AETH({} MSN={})", syndrome_text(h.syndrome), h.msn)?;
    }
    if let Some(h) = &r.atomic_ack_eth {
        write!(f, " AtomicAckETH(orig={:#018x})", h.orig)?;
    }
    if let Some(v) = r.imm {
        write!(f, " ImmDt={v:#010x}")?;
    }
    if let Some(v) = r.ieth {
        write!(f, " IETH(rkey={v:#010x})")?;
    }
    Ok(())
}

impl fmt::Display for Decoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>5} ", self.index)?;
        if let Some(s) = self.segment {
            write!(f, "GSO {}/{} ", s.number, s.count)?;
        }
        match &self.outcome {
            Outcome::Roce(p) => p.fmt(f),
            Outcome::BadTransport {
                frame,
                error,
                icrc: v,
            } => {
                endpoints(f, frame)?;
                write!(f, " malformed transport packet: {error}; ")?;
                icrc(f, v)
            }
            Outcome::Truncated { frame, repr, len } => {
                endpoints(f, frame)?;
                let captured = frame.payload.len();
                match repr {
                    Some(r) if holds_more_packets(r) => {
                        headers(f, r)?;
                        write!(f, " and more packets ({len} bytes: a GSO datagram)")?;
                    }
                    Some(r) => {
                        headers(f, r)?;
                        write!(f, " payload={}", r.payload_len)?;
                    }
                    None => f.write_str(" transport headers not captured")?,
                }
                write!(
                    f,
                    "; ICRC not checked: the capture kept {captured} of {len} bytes"
                )
            }
            Outcome::NotRoce(why) => write!(f, "not RoCEv2: {why}"),
            Outcome::Malformed(e) => write!(f, "malformed frame: {e}"),
        }
    }
}

/// Counts of decoded frames (a GSO datagram's packets count as RoCE frames of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Every frame seen.
    pub frames: u64,
    /// Frames that are UDP to port 4791 (whether or not the transport packet parsed), and
    /// packets of GSO datagrams.
    pub roce: u64,
    /// Unsegmented GSO datagrams (their packets are counted in `roce`).
    pub gso: u64,
    /// RoCE frames the capture cut short, whose ICRC could not be checked.
    pub truncated: u64,
    /// RoCE frames whose ICRC verified.
    pub icrc_ok: u64,
    /// RoCE frames whose ICRC did not verify.
    pub icrc_bad: u64,
    /// Frames malformed at the link/IP/UDP layer or in the transport packet.
    pub malformed: u64,
    /// Well-formed frames that are not RoCEv2.
    pub not_roce: u64,
}

impl Summary {
    /// Counts one frame.
    pub fn add(&mut self, d: &Decoded<'_>) {
        match d.segment {
            Some(s) if s.number > 1 => {}
            Some(_) => {
                self.frames += 1;
                self.gso += 1;
            }
            None => self.frames += 1,
        }
        match &d.outcome {
            Outcome::NotRoce(_) => self.not_roce += 1,
            Outcome::Malformed(_) => self.malformed += 1,
            Outcome::Truncated { .. } => {
                self.roce += 1;
                self.truncated += 1;
            }
            Outcome::Roce(_) | Outcome::BadTransport { .. } => {
                self.roce += 1;
                if matches!(d.outcome, Outcome::BadTransport { .. }) {
                    self.malformed += 1;
                }
            }
        }
        match d.icrc_ok() {
            Some(true) => self.icrc_ok += 1,
            Some(false) => self.icrc_bad += 1,
            None => {}
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames, {} RoCE, ICRC ok {}, ICRC bad {}, malformed {}, not RoCE {}",
            self.frames, self.roce, self.icrc_ok, self.icrc_bad, self.malformed, self.not_roce
        )?;
        if self.truncated > 0 {
            write!(
                f,
                " ({} cut short by the capture: ICRC not checked)",
                self.truncated
            )?;
        }
        if self.gso > 0 {
            write!(f, " ({} GSO datagrams cut into their packets)", self.gso)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::build_datagram;
    use uroce_wire::{AethRepr, BthRepr, IcrcContext, Opcode};

    fn ack_datagram(syndrome: AckSyndrome) -> (Vec<u8>, IcrcContext) {
        let ctx = IcrcContext::v4([10, 0, 0, 2].into(), [10, 0, 0, 3].into(), 7, 49441, 4791);
        let mut repr = PacketRepr::new(BthRepr::new(Opcode::RcAcknowledge, 0x11, 5), 0);
        repr.aeth = Some(AethRepr { syndrome, msn: 9 });
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit_with_payload(&mut buf, &[], &ctx).unwrap();
        (build_datagram(&ctx, &buf).unwrap(), ctx)
    }

    #[test]
    fn ack_line_names_every_field() {
        let (d, _) = ack_datagram(AckSyndrome::RnrNak { timer: 12 });
        let line = decode(3, LinkType::Raw, &d).to_string();
        assert!(line.starts_with("    3 10.0.0.2:49441 → 10.0.0.3:4791 RC Acknowledge"));
        assert!(line.contains("QP=0x000011 PSN=5"), "{line}");
        assert!(
            line.contains("AETH(RNR NAK timer=12 (0.64 ms) MSN=9)"),
            "{line}"
        );
        assert!(line.ends_with("payload=0 ICRC ok"), "{line}");
    }

    #[test]
    fn corrupted_frames_say_why() {
        let (mut d, _) = ack_datagram(AckSyndrome::Nak(NakCode::RemoteAccessError));
        let last = d.len() - 1;
        d[last] ^= 1;
        let dec = decode(1, LinkType::Raw, &d);
        assert_eq!(dec.icrc_ok(), Some(false));
        assert!(dec.to_string().contains("NAK Remote Access Error"));
        assert!(dec.to_string().contains("ICRC bad (carried"));
        d[28] = 0x15; // no such opcode
        let line = decode(2, LinkType::Raw, &d).to_string();
        assert!(
            line.contains("malformed transport packet: unknown opcode 0x15"),
            "{line}"
        );
        let line = decode(4, LinkType::Raw, &d[..30]).to_string();
        assert!(line.contains("malformed frame: IPv4 truncated"), "{line}");
        let mut s = Summary::default();
        s.add(&decode(1, LinkType::Raw, &d));
        s.add(&decode(1, LinkType::Raw, &d[..30]));
        assert_eq!(
            s.to_string(),
            "2 frames, 1 RoCE, ICRC ok 0, ICRC bad 1, malformed 2, not RoCE 0"
        );
    }

    #[test]
    fn a_frame_cut_by_the_capture_shows_its_headers_and_says_why_the_icrc_is_unchecked() {
        let (d, _) = ack_datagram(AckSyndrome::Ack { credits: 31 });
        // IPv4 20 + UDP 8 + BTH 12 + AETH 4 of the 48 bytes: only the ICRC is missing.
        let lines = decode_frame(7, LinkType::Raw, &d[..44], d.len());
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].icrc_ok(), None);
        assert_eq!(
            lines[0].to_string(),
            "    7 10.0.0.2:49441 → 10.0.0.3:4791 RC Acknowledge QP=0x000011 PSN=5 \
             AETH(ACK credits=31 MSN=9) payload=0; ICRC not checked: the capture kept 16 of 20 \
             bytes"
        );
        // Cut inside the AETH: the headers are not all there.
        let line = decode_frame(7, LinkType::Raw, &d[..42], d.len())[0].to_string();
        assert_eq!(
            line,
            "    7 10.0.0.2:49441 → 10.0.0.3:4791 transport headers not captured; ICRC not \
             checked: the capture kept 14 of 20 bytes"
        );
        // Not cut by the capture (the record says so): malformed, as before.
        let line = decode_frame(7, LinkType::Raw, &d[..44], 44)[0].to_string();
        assert!(line.contains("malformed frame: IPv4 truncated"), "{line}");
        let mut s = Summary::default();
        s.add(&decode_frame(7, LinkType::Raw, &d[..44], d.len())[0]);
        assert_eq!(
            s.to_string(),
            "1 frames, 1 RoCE, ICRC ok 0, ICRC bad 0, malformed 0, not RoCE 0 \
             (1 cut short by the capture: ICRC not checked)"
        );
    }

    #[test]
    fn every_rnr_timer_code_formats() {
        for t in 0..32 {
            let s = syndrome_text(AckSyndrome::RnrNak { timer: t });
            assert!(s.ends_with(" ms)"), "{s}");
        }
        assert_eq!(
            syndrome_text(AckSyndrome::RnrNak { timer: 0 }),
            "RNR NAK timer=0 (655.36 ms)"
        );
        assert_eq!(
            syndrome_text(AckSyndrome::from_byte(0x40)),
            "reserved syndrome 0x40"
        );
    }
}

//! Cutting a UDP GRO batch into its packets when the receive did not read the segment size.
//!
//! The kernel coalesces datagrams of one flow into one receive only when all but the last are
//! the same length (the segment size, which a `recvmsg` with `UDP_GRO` reads as a control
//! message; the last may be shorter). A connected socket's plain `recv` skips that control
//! message (`connected.rs`), so the size comes from the packets themselves: from the first
//! packet's headers where they state its length ([`uroce_wire::stated_len`]), else from a
//! search for the one cut at which every packet's ICRC verifies.

use uroce_wire::headers::BTH_LEN;
use uroce_wire::{Packet, ICRC_LEN};

/// The shortest RoCE packet: a BTH and the ICRC.
const MIN_PACKET: usize = BTH_LEN + ICRC_LEN;

/// Most segments one receive can hold: a UDP GSO send's limit (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 128;

/// The segment size of `buf`, a receive that may hold several coalesced packets, whose first
/// packet does not state its length: the smallest `s` (a multiple of 4, as every RoCE packet
/// is) below `buf.len()` that cuts `buf` into pieces of `s` bytes and a last one of at most
/// `s`, each a well-formed packet ([`Packet::new_checked`]) that `verify` accepts (its ICRC).
/// `None` when there is no such `s`: `buf` is one packet (or none that can be cut).
///
/// A wrong cut is accepted only if at least two of its pieces pass their ICRC by chance, so
/// the candidates below the true size (tried first) cost time, not safety. Taken only when
/// a connected socket's traffic changes shape (see `connected.rs`), so its cost, up to a
/// parse per candidate and piece, does not matter.
pub(crate) fn find_segment(buf: &[u8], mut verify: impl FnMut(&[u8]) -> bool) -> Option<usize> {
    let len = buf.len();
    if len % 4 != 0 {
        return None;
    }
    // A GSO send carries at most 128 segments (UDP_MAX_SEGMENTS), GRO merges at most 64: no
    // cut below len / 128 need be tried (rounded up to a multiple of 4).
    let from = MIN_PACKET.max(len.div_ceil(MAX_SEGMENTS).next_multiple_of(4));
    (from..len).step_by(4).find(|&s| {
        buf.chunks(s).all(|p| Packet::new_checked(p).is_ok()) && buf.chunks(s).all(&mut verify)
    })
}

/// A packet of `opcode` to QP 0x11 with PSN `psn` and `payload`, sealed for `ctx`: an ACK's
/// AETH says ACK, a RETH states the payload's length (tests of the receive paths).
#[cfg(test)]
pub(crate) fn sealed_packet(
    opcode: uroce_wire::Opcode,
    payload: &[u8],
    psn: u32,
    ctx: &uroce_wire::IcrcContext,
) -> Vec<u8> {
    use uroce_wire::opcode::Header;
    use uroce_wire::{AckSyndrome, AethRepr, BthRepr, PacketRepr, RethRepr};
    let mut bth = BthRepr::new(opcode, 0x11, psn);
    bth.ack_req = true;
    let mut repr = PacketRepr::new(bth, payload.len());
    let h = opcode.info().headers;
    if h.has(Header::Reth) {
        let dma_len = payload.len() as u32;
        repr.reth = Some(RethRepr {
            va: 0x1000,
            rkey: 5,
            dma_len,
        });
    }
    if h.has(Header::Aeth) {
        let syndrome = AckSyndrome::Ack { credits: 31 };
        repr.aeth = Some(AethRepr { syndrome, msn: 1 });
    }
    let mut buf = vec![0; repr.buffer_len()];
    repr.emit_with_payload(&mut buf, payload, ctx).unwrap();
    buf
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use uroce_wire::{IcrcContext, Ipv4IdMode, Opcode};

    use super::*;

    fn ctx() -> IcrcContext {
        IcrcContext::v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            0,
            4791,
            4791,
        )
    }

    fn packet(opcode: Opcode, payload: &[u8], psn: u32) -> Vec<u8> {
        sealed_packet(opcode, payload, psn, &ctx())
    }

    fn verify(p: &[u8]) -> bool {
        ctx().verify(p, Ipv4IdMode::Exact).is_ok()
    }

    #[test]
    fn a_send_and_its_held_ack_are_cut_where_both_icrcs_verify() {
        // A SEND states no length; the ACK after it is shorter, as GRO allows the last to be.
        let send = packet(Opcode::RcSendOnly, &[7; 24], 5);
        let ack = packet(Opcode::RcAcknowledge, &[], 9);
        let batch = [send.clone(), ack].concat();
        assert_eq!(uroce_wire::stated_len(&batch), None);
        assert_eq!(find_segment(&batch, verify), Some(send.len()));
    }

    #[test]
    fn equal_sends_are_cut_at_their_size_and_a_lone_packet_is_not_cut() {
        let a = packet(Opcode::RcSendOnly, &[1; 100], 1);
        let b = packet(Opcode::RcSendOnly, &[2; 100], 2);
        let c = packet(Opcode::RcSendOnly, &[3; 40], 3);
        assert_eq!(
            find_segment(&[a.clone(), b.clone(), c].concat(), verify),
            Some(a.len())
        );
        // One packet whose payload happens to look like packets: no cut verifies.
        let lone = packet(Opcode::RcSendOnly, &[a.clone(), b].concat(), 4);
        assert_eq!(find_segment(&lone, verify), None);
        assert_eq!(find_segment(&a, verify), None);
    }

    #[test]
    fn damaged_or_odd_input_finds_no_cut() {
        let a = packet(Opcode::RcSendOnly, &[1; 64], 1);
        let mut batch = [a.clone(), a.clone()].concat();
        batch[a.len() + 20] ^= 1; // the second packet's payload
        assert_eq!(find_segment(&batch, verify), None);
        assert_eq!(find_segment(&batch[..batch.len() - 1], |_| true), None);
        assert_eq!(find_segment(&[], |_| true), None);
    }
}

//! Fuzz target `parse`: untrusted bytes through the whole receive path of the wire crate.
//!
//! Input layout: a selector byte (bit 0: IPv6), the ICRC context (IPv4: source 4, destination 4,
//! Identification 2, flags/fragment 2; IPv6: source 16, destination 16; then UDP source and
//! destination port, 2 each), then the UDP payload, i.e. the transport packet. Missing context
//! bytes read as zero. The seed corpus holds real rxe frames in this layout, so their ICRC
//! verifies and the fuzzer starts from fully valid packets.
//!
//! Checked: `Packet::new_checked` and `PacketRepr::parse` return typed errors, never panic; an
//! accepted packet's lengths add up; re-emitting the parsed repr reproduces the header bytes
//! (up to the two things a repr does not keep: the pad count, derived from the payload length,
//! and the DETH reserved byte, emitted as zero) and, for a canonical packet with a valid ICRC,
//! the whole packet; ICRC verification in every mode (Exact, Solve, SolveBelow) agrees with
//! `compute` and the modes agree with each other.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use uroce_wire::opcode::Header;
use uroce_wire::{
    Error, IcrcCheck, IcrcContext, IpFields, Ipv4IdMode, Opcode, Packet, PacketRepr, ICRC_LEN,
};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
}

fn split(data: &[u8]) -> (IcrcContext, &[u8]) {
    let mut input = Input(data);
    let [selector] = input.take::<1>();
    let ip = if selector & 1 == 0 {
        IpFields::V4 {
            src: Ipv4Addr::from(input.take::<4>()),
            dst: Ipv4Addr::from(input.take::<4>()),
            identification: input.u16(),
            flags_fragment: input.u16(),
        }
    } else {
        IpFields::V6 {
            src: Ipv6Addr::from(input.take::<16>()),
            dst: Ipv6Addr::from(input.take::<16>()),
        }
    };
    let src_port = input.u16();
    let dst_port = input.u16();
    (
        IcrcContext {
            ip,
            src_port,
            dst_port,
        },
        input.0,
    )
}

fn pad_of(len: usize) -> u8 {
    (len.wrapping_neg() & 3) as u8
}

fn check_packet(bytes: &[u8], ctx: &IcrcContext) {
    let p = match Packet::new_checked(bytes) {
        Ok(p) => p,
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::Truncated { .. }
                        | Error::UnknownOpcode(_)
                        | Error::UnexpectedPayload(..)
                        | Error::BadPadCount { .. }
                ),
                "new_checked: unexpected error kind {e:?}"
            );
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let info = p.info();
    assert_eq!(Opcode::from_u8(bytes[0]), Some(info.opcode));
    assert_eq!(
        info.header_len + p.payload().len() + p.pad().len() + ICRC_LEN,
        bytes.len()
    );
    let repr = match PacketRepr::parse(&p) {
        Ok(r) => r,
        Err(e) => {
            assert_eq!(e, Error::BadTver(p.bth().tver()));
            return;
        }
    };
    assert_eq!(repr.payload_len, p.payload().len());

    // Re-emit and compare.
    let hl = info.header_len;
    let mut buf = vec![0u8; repr.buffer_len()];
    let out = match repr.emit_with_payload(&mut buf, p.payload(), ctx) {
        Ok(out) => out,
        Err(e) => panic!("a parsed repr does not re-emit: {e:?}"),
    };
    let mut want = bytes[..hl].to_vec();
    want[1] = (want[1] & !0x30) | (pad_of(repr.payload_len) << 4);
    if let Some(off) = info.headers.offset(Header::Deth) {
        want[off + 4] = 0;
    }
    assert_eq!(&out[..hl], &want[..], "re-emitted headers differ");
    assert_eq!(&out[hl..hl + repr.payload_len], p.payload());
    let canonical = want == bytes[..hl] && p.pad().iter().all(|b| *b == 0);
    if canonical && ctx.verify(bytes, Ipv4IdMode::Exact) == Ok(IcrcCheck::Valid) {
        assert_eq!(&out[..], bytes, "canonical packet not reproduced");
    }
    // And the re-emitted packet parses back to the same repr, with the canonical pad count.
    let mut again = match PacketRepr::parse_bytes(out) {
        Ok((r, _)) => r,
        Err(e) => panic!("re-emitted packet does not parse: {e:?}"),
    };
    again.bth.pad_count = repr.bth.pad_count;
    assert_eq!(again, repr);
    assert_eq!(ctx.verify(out, Ipv4IdMode::Exact), Ok(IcrcCheck::Valid));
}

fn check_icrc(bytes: &[u8], ctx: &IcrcContext) {
    let computed = ctx.compute(bytes);
    assert_eq!(computed.is_some(), bytes.len() >= 12 + ICRC_LEN);
    for mode in [
        Ipv4IdMode::Exact,
        Ipv4IdMode::Solve,
        Ipv4IdMode::SolveBelow(64),
    ] {
        match ctx.verify(bytes, mode) {
            Ok(IcrcCheck::Valid) => {
                let t = &bytes[bytes.len() - ICRC_LEN..];
                assert_eq!(computed, Some(u32::from_le_bytes([t[0], t[1], t[2], t[3]])));
            }
            Ok(IcrcCheck::SolvedIpv4Id(id)) => {
                assert_ne!(mode, Ipv4IdMode::Exact);
                assert!(matches!(ctx.ip, IpFields::V4 { .. }));
                assert_eq!(
                    ctx.with_ipv4_id(id).verify(bytes, Ipv4IdMode::Exact),
                    Ok(IcrcCheck::Valid)
                );
            }
            Ok(other) => panic!("unknown ICRC outcome {other:?}"),
            Err(m) => {
                if let Some(c) = computed {
                    assert_eq!(m.computed, c);
                    assert_ne!(m.carried, c);
                }
            }
        }
    }
    // Bounded solving is unbounded solving filtered by the distance of the solved ID.
    let base = match ctx.ip {
        IpFields::V4 { identification, .. } => identification,
        _ => 0,
    };
    let exact = ctx.verify(bytes, Ipv4IdMode::Exact);
    let solve = ctx.verify(bytes, Ipv4IdMode::Solve);
    for bound in [0u16, 1, 64, u16::MAX] {
        let want = match solve {
            Ok(IcrcCheck::SolvedIpv4Id(id)) if id ^ base < bound => solve,
            Ok(IcrcCheck::SolvedIpv4Id(_)) => exact,
            _ => solve,
        };
        assert_eq!(ctx.verify(bytes, Ipv4IdMode::SolveBelow(bound)), want);
    }
}

fuzz_target!(|data: &[u8]| {
    let (ctx, packet) = split(data);
    check_packet(packet, &ctx);
    check_icrc(packet, &ctx);
});

//! The golden rxe captures in `tests/data`: every frame must parse, verify its ICRC with its own
//! IP header, re-encode to the same bytes, match wireshark's decoding field by field, and catch
//! any single flipped bit the ICRC covers.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::{frames, rows, CAPTURES};
use uroce_capture::frame::{build_datagram, decapsulate, LinkType, RoceFrame};
use uroce_capture::pcap::Frame;
use uroce_wire::{BthRepr, IcrcCheck, IpFields, Ipv4IdMode, Opcode, Packet, PacketRepr};

/// Every golden frame with its capture name.
fn all_frames() -> Vec<(&'static str, Frame)> {
    CAPTURES
        .iter()
        .flat_map(|stem| frames(stem).into_iter().map(move |f| (*stem, f)))
        .collect()
}

fn roce<'a>(stem: &str, f: &'a Frame) -> RoceFrame<'a> {
    assert_eq!(f.link, LinkType::Ethernet, "{stem} #{}", f.index);
    decapsulate(f.link, &f.data).unwrap_or_else(|e| panic!("{stem} #{}: {e}", f.index))
}

#[test]
fn captures_hold_the_documented_486_frames() {
    let n: Vec<usize> = CAPTURES.iter().map(|s| frames(s).len()).collect();
    assert_eq!(n, [326, 160]);
    for stem in CAPTURES {
        assert_eq!(frames(stem).len(), rows(stem).len(), "{stem}: CSV rows");
    }
}

#[test]
fn every_frame_parses() {
    for (stem, f) in all_frames() {
        let r = roce(stem, &f);
        let p =
            Packet::new_checked(r.payload).unwrap_or_else(|e| panic!("{stem} #{}: {e}", f.index));
        PacketRepr::parse(&p).unwrap_or_else(|e| panic!("{stem} #{}: {e}", f.index));
    }
}

#[test]
fn icrc_verifies_exactly_with_the_captured_ip_header() {
    for (stem, f) in all_frames() {
        let r = roce(stem, &f);
        assert_eq!(
            r.ctx.verify(r.payload, Ipv4IdMode::Exact),
            Ok(IcrcCheck::Valid),
            "{stem} #{}",
            f.index
        );
    }
}

#[test]
fn ipv4_id_is_solved_from_zero() {
    let mut solved = 0;
    for (stem, f) in all_frames() {
        let r = roce(stem, &f);
        let Some(id) = r.ipv4_id() else { continue };
        let want = if id == 0 {
            IcrcCheck::Valid
        } else {
            IcrcCheck::SolvedIpv4Id(id)
        };
        let got = r.ctx.with_ipv4_id(0).verify(r.payload, Ipv4IdMode::Solve);
        assert_eq!(got, Ok(want), "{stem} #{}", f.index);
        solved += 1;
    }
    assert_eq!(
        solved,
        486 - 24,
        "every IPv4 frame (all but the 24 IPv6 ones)"
    );
}

#[test]
fn reemitting_parsed_headers_gives_identical_bytes() {
    for (stem, f) in all_frames() {
        let r = roce(stem, &f);
        let (repr, packet) = PacketRepr::parse_bytes(r.payload).unwrap();
        let mut buf = vec![0xAAu8; repr.buffer_len()];
        let out = repr
            .emit_with_payload(&mut buf, packet.payload(), &r.ctx)
            .unwrap();
        assert_eq!(out, r.payload, "{stem} #{}", f.index);
    }
}

#[test]
fn built_datagrams_equal_the_captured_ones() {
    for (stem, f) in all_frames() {
        let r = roce(stem, &f);
        let built = build_datagram(&r.ctx, r.payload).unwrap();
        // The captures are Ethernet II without VLAN tags or trailer padding.
        assert_eq!(built, f.data[14..], "{stem} #{}", f.index);
    }
}

#[test]
fn bth_defaults_match_rxe() {
    for (stem, f) in all_frames() {
        let r = roce(stem, &f);
        let bth = PacketRepr::parse_bytes(r.payload).unwrap().0.bth;
        let mut want = BthRepr::new(bth.opcode, bth.dest_qp, bth.psn);
        want.ack_req = bth.ack_req;
        assert_eq!(bth, want, "{stem} #{}", f.index);
    }
}

/// `field` of `row` equals `value`, or both are absent.
fn check(stem: &str, index: u64, row: &common::Row, field: &str, value: Option<u64>) {
    assert_eq!(
        row.num(field),
        value,
        "{stem} #{index}: {field} (CSV {:?})",
        row.text(field)
    );
}

#[test]
fn fields_match_wireshark() {
    let mut opcodes = BTreeSet::new();
    for stem in CAPTURES {
        let rows = rows(stem);
        for (f, row) in frames(stem).iter().zip(&rows) {
            let i = f.index;
            assert_eq!(row.num("frame.number"), Some(i));
            let r = roce(stem, f);
            let (repr, packet) = PacketRepr::parse_bytes(r.payload).unwrap();
            let c = |field: &str, v: Option<u64>| check(stem, i, row, field, v);

            let (src4, dst4, src6, dst6) = match (r.src(), r.dst()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    (Some(s.to_string()), Some(d.to_string()), None, None)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    (None, None, Some(s.to_string()), Some(d.to_string()))
                }
                other => panic!("{stem} #{i}: mixed address families {other:?}"),
            };
            assert_eq!(row.text("ip.src"), src4.as_deref(), "{stem} #{i}");
            assert_eq!(row.text("ip.dst"), dst4.as_deref(), "{stem} #{i}");
            assert_eq!(row.text("ipv6.src"), src6.as_deref(), "{stem} #{i}");
            assert_eq!(row.text("ipv6.dst"), dst6.as_deref(), "{stem} #{i}");
            c("udp.srcport", Some(r.src_port().into()));
            c("udp.dstport", Some(r.dst_port().into()));
            c("udp.length", Some(8 + r.payload.len() as u64));

            let b = &repr.bth;
            opcodes.insert(b.opcode);
            c("infiniband.bth.opcode", Some(b.opcode.as_u8().into()));
            c("infiniband.bth.se", Some(b.solicited.into()));
            c("infiniband.bth.m", Some(b.mig_req.into()));
            c("infiniband.bth.padcnt", Some(b.pad_count.into()));
            c("infiniband.bth.p_key", Some(b.pkey.into()));
            c("infiniband.bth.destqp", Some(b.dest_qp.into()));
            c("infiniband.bth.a", Some(b.ack_req.into()));
            c("infiniband.bth.psn", Some(b.psn.into()));

            // tshark shows the AtomicETH VA and R_Key in the reth.* columns.
            let (va, rkey, dma_len) = match (&repr.reth, &repr.atomic_eth) {
                (Some(h), None) => (Some(h.va), Some(h.rkey), Some(h.dma_len)),
                (None, Some(a)) => (Some(a.va), Some(a.rkey), None),
                (None, None) => (None, None, None),
                _ => panic!("{stem} #{i}: RETH and AtomicETH together"),
            };
            c("infiniband.reth.va", va);
            c("infiniband.reth.r_key", rkey.map(u64::from));
            c("infiniband.reth.dmalen", dma_len.map(u64::from));
            c(
                "infiniband.aeth.syndrome",
                repr.aeth.map(|a| a.syndrome.to_byte().into()),
            );
            c("infiniband.aeth.msn", repr.aeth.map(|a| a.msn.into()));
            c(
                "infiniband.atomiceth.swapdt",
                repr.atomic_eth.map(|a| a.swap_add),
            );
            c(
                "infiniband.atomiceth.cmpdt",
                repr.atomic_eth.map(|a| a.compare),
            );
            c(
                "infiniband.atomicacketh.origremdt",
                repr.atomic_ack_eth.map(|a| a.orig),
            );
            c("infiniband.immdt", repr.imm.map(u64::from));
            c("infiniband.deth.q_key", repr.deth.map(|d| d.qkey.into()));
            c("infiniband.deth.srcqp", repr.deth.map(|d| d.src_qp.into()));
            // tshark shows the ICRC bytes as they are on the wire, read big-endian; the CRC value
            // (`Packet::icrc`) is stored little-endian.
            c(
                "infiniband.invariant.crc",
                Some(packet.icrc().swap_bytes().into()),
            );
            assert_eq!(repr.ieth, None, "{stem} #{i}: no IETH column to compare");
        }
    }
    // The captures exercise SEND, WRITE, READ, ACK, atomics and UD on RC/UC/UD.
    assert!(opcodes.len() >= 20, "{opcodes:?}");
}

/// Which bits of an Ethernet + IP + UDP frame the ICRC covers. Per byte, three disjoint masks:
/// bits only the ICRC can catch (a flip leaves the framing intact), covered bits whose flip may
/// also break the framing (version, lengths, protocol, fragment bits, destination port), and
/// bits the ICRC does not cover (masked fields, the Ethernet header, the ICRC itself).
fn coverage(frame: &[u8], v6: bool) -> Vec<(u8, u8, u8)> {
    let ip = 14;
    let udp = ip + if v6 { 40 } else { 20 };
    let payload = udp + 8;
    let mut cov = vec![(0u8, 0u8, 0xFFu8); frame.len()];
    let mut set = |at: usize, icrc: u8, framing: u8| cov[at] = (icrc, framing, !(icrc | framing));
    if v6 {
        set(ip, 0, 0xF0); // version; the low nibble starts the traffic class
        for o in [4, 5, 6] {
            set(ip + o, 0, 0xFF); // payload length, next header
        }
        for o in 8..40 {
            set(ip + o, 0xFF, 0); // addresses
        }
    } else {
        set(ip, 0, 0xFF); // version, IHL
        for o in [2, 3, 9] {
            set(ip + o, 0, 0xFF); // total length, protocol
        }
        for o in [4, 5] {
            set(ip + o, 0xFF, 0); // Identification
        }
        set(ip + 6, 0xC0, 0x3F); // reserved and DF; MF and fragment offset
        set(ip + 7, 0, 0xFF); // fragment offset
        for o in 12..20 {
            set(ip + o, 0xFF, 0); // addresses
        }
    }
    for o in 0..2 {
        set(udp + o, 0xFF, 0); // source port
    }
    for o in 2..6 {
        set(udp + o, 0, 0xFF); // destination port (4791 or not RoCE), length
    }
    for at in payload..frame.len() - 4 {
        set(at, 0xFF, 0);
    }
    set(payload + 4, 0, 0); // BTH FECN/BECN/resv6
    cov
}

/// Flips every bit of `f` in turn and checks the verdict against [`coverage`].
/// Returns (flips caught by the ICRC, flips caught by framing, masked bits that still verify).
fn flip_every_bit(stem: &str, f: &Frame) -> (u64, u64, u64) {
    let r = roce(stem, f);
    let v6 = matches!(r.ctx.ip, IpFields::V6 { .. });
    let (mut by_icrc, mut by_framing, mut masked) = (0, 0, 0);
    let mut data = f.data.clone();
    for (at, (icrc, framing, mask)) in coverage(&f.data, v6).into_iter().enumerate() {
        for bit in 0..8 {
            let m = 1u8 << bit;
            data[at] ^= m;
            let result = decapsulate(LinkType::Ethernet, &data)
                .map(|r| r.ctx.verify(r.payload, Ipv4IdMode::Exact));
            let what = || format!("{stem} #{} byte {at} bit {bit}", f.index);
            if icrc & m != 0 {
                // Framing intact, so the ICRC alone must catch it.
                assert!(matches!(result, Ok(Err(_))), "{}: {result:?}", what());
                by_icrc += 1;
            } else if framing & m != 0 {
                assert!(!matches!(result, Ok(Ok(_))), "{}: {result:?}", what());
                if matches!(result, Ok(Err(_))) {
                    by_icrc += 1;
                } else {
                    by_framing += 1;
                }
            } else if mask & m != 0 && at >= 14 && at < data.len() - 4 {
                // Outside the ICRC: TOS/TTL/checksums, traffic class, flow label, hop limit,
                // the BTH congestion byte. The packet must still verify.
                assert_eq!(result, Ok(Ok(IcrcCheck::Valid)), "{}", what());
                masked += 1;
            }
            data[at] ^= m;
        }
    }
    (by_icrc, by_framing, masked)
}

#[test]
fn flipping_any_covered_bit_is_detected() {
    // Sample: every 25th frame of the two captures in sequence, plus the shortest frame of each
    // opcode present. Each flip costs a CRC over the whole packet, so this keeps the test at a
    // few seconds in debug while still including 4 KiB packets.
    let all = all_frames();
    let mut shortest = std::collections::BTreeMap::<Opcode, usize>::new();
    for (n, (stem, f)) in all.iter().enumerate() {
        let r = roce(stem, f);
        let opcode = PacketRepr::parse_bytes(r.payload).unwrap().0.bth.opcode;
        let e = shortest.entry(opcode).or_insert(n);
        if f.data.len() < all[*e].1.data.len() {
            *e = n;
        }
    }
    let sample: BTreeSet<usize> = (0..all.len())
        .step_by(25)
        .chain(shortest.values().copied())
        .collect();
    let (mut by_icrc, mut by_framing, mut masked) = (0, 0, 0);
    for n in &sample {
        let (stem, f) = &all[*n];
        let c = flip_every_bit(stem, f);
        by_icrc += c.0;
        by_framing += c.1;
        masked += c.2;
    }
    assert!(sample.len() >= 40, "sampled {} frames", sample.len());
    assert!(by_icrc > 0 && by_framing > 0 && masked > 0);
    eprintln!(
        "{} frames: {by_icrc} flips caught by the ICRC, {by_framing} by framing, \
         {masked} masked bits still verify",
        sample.len()
    );
}

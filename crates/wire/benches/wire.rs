//! Per-packet cost of the wire layer: checking, parsing and ICRC-verifying a received packet, and
//! building one (headers, payload copy, pad, ICRC). Throughput counts the whole transport packet
//! (UDP payload: headers, payload, pad and ICRC).

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use uroce_wire::{
    AckSyndrome, AethRepr, BthRepr, IcrcCheck, IcrcContext, Ipv4IdMode, Ipv4IdSolver, Opcode,
    Packet, PacketRepr, RethRepr, ROCE_UDP_PORT,
};

struct Case {
    name: String,
    repr: PacketRepr,
    payload: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    // The latency path's packets: an 8-byte RDMA WRITE ONLY (40 bytes with its ICRC) and an
    // ACK (20 bytes).
    let mut w8 = PacketRepr::new(BthRepr::new(Opcode::RcWriteOnly, 0x11, 0x00A4_0B2D), 8);
    w8.reth = Some(RethRepr {
        va: 0x0000_5555_0000_1000,
        rkey: 0x1234,
        dma_len: 8,
    });
    out.push(Case {
        name: "rc_write_only_reth/8".into(),
        repr: w8,
        payload: vec![7; 8],
    });
    let mut ack = PacketRepr::new(BthRepr::new(Opcode::RcAcknowledge, 0x11, 0x00A4_0B2D), 0);
    ack.aeth = Some(AethRepr {
        syndrome: AckSyndrome::Ack { credits: 0x1F },
        msn: 7,
    });
    out.push(Case {
        name: "rc_ack".into(),
        repr: ack,
        payload: Vec::new(),
    });
    for len in [1024usize, 4096] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 131 + 17) as u8).collect();
        let send = PacketRepr::new(BthRepr::new(Opcode::RcSendOnly, 0x11, 0x00A4_0B2E), len);
        out.push(Case {
            name: format!("rc_send_only/{}k", len / 1024),
            repr: send,
            payload: payload.clone(),
        });
        let mut write = PacketRepr::new(BthRepr::new(Opcode::RcWriteFirst, 0x11, 0x00A4_0B2F), len);
        write.reth = Some(RethRepr {
            va: 0x0000_5555_0000_1000,
            rkey: 0x1234,
            dma_len: 65536,
        });
        out.push(Case {
            name: format!("rc_write_first_reth/{}k", len / 1024),
            repr: write,
            payload,
        });
    }
    out
}

fn ctx() -> IcrcContext {
    IcrcContext::v4(
        Ipv4Addr::new(10, 77, 0, 3),
        Ipv4Addr::new(10, 77, 0, 2),
        0x3A7C,
        49441,
        ROCE_UDP_PORT,
    )
}

fn build(c: &Case, ctx: &IcrcContext) -> Vec<u8> {
    let mut buf = vec![0u8; c.repr.buffer_len()];
    c.repr
        .emit_with_payload(&mut buf, &c.payload, ctx)
        .expect("bench packet emits");
    buf
}

/// Receive path: layout check, header parse, ICRC verification with the ID known, keeping a
/// solver (and its pseudo-header constants) between packets as the engine does.
fn parse_verify(cr: &mut Criterion) {
    let ctx = ctx();
    let mut solver = Ipv4IdSolver::default();
    let mut g = cr.benchmark_group("parse_verify");
    for c in cases() {
        let pkt = build(&c, &ctx);
        g.throughput(Throughput::Bytes(pkt.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(&c.name), &pkt, |b, pkt| {
            b.iter(|| {
                let p = Packet::new_checked(black_box(&pkt[..])).expect("valid");
                let repr = PacketRepr::parse(&p).expect("valid");
                let check = ctx.verify_with(p.as_bytes(), Ipv4IdMode::Exact, &mut solver);
                debug_assert_eq!(check, Ok(IcrcCheck::Valid));
                black_box((repr, check))
            })
        });
    }
    g.finish();
}

/// The same, receiving through a UDP socket: the IPv4 ID is unknown and must be solved for.
fn parse_verify_solve(cr: &mut Criterion) {
    let sent = ctx();
    let rx = sent.with_ipv4_id(0);
    let mut solver = Ipv4IdSolver::default();
    let mut g = cr.benchmark_group("parse_verify_solve");
    for c in cases() {
        let pkt = build(&c, &sent);
        g.throughput(Throughput::Bytes(pkt.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(&c.name), &pkt, |b, pkt| {
            b.iter(|| {
                let p = Packet::new_checked(black_box(&pkt[..])).expect("valid");
                let repr = PacketRepr::parse(&p).expect("valid");
                let check = rx.verify_with(p.as_bytes(), Ipv4IdMode::Solve, &mut solver);
                debug_assert_eq!(check, Ok(IcrcCheck::SolvedIpv4Id(0x3A7C)));
                black_box((repr, check))
            })
        });
    }
    g.finish();
}

/// Send path: headers, payload copy, zero pad and ICRC into a reused buffer.
fn emit(cr: &mut Criterion) {
    let ctx = ctx();
    let mut g = cr.benchmark_group("emit_with_payload");
    for c in cases() {
        let mut buf = vec![0u8; c.repr.buffer_len()];
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(&c.name), |b| {
            b.iter(|| {
                let out = c
                    .repr
                    .emit_with_payload(black_box(&mut buf), black_box(&c.payload), &ctx)
                    .expect("valid");
                black_box(out.len())
            })
        });
    }
    g.finish();
}

// In a private module: the function criterion_group! defines is public and undocumented.
mod group {
    use super::*;
    criterion_group!(benches, parse_verify, parse_verify_solve, emit);
}
criterion_main!(group::benches);

//! Property test of zero-copy receive (`plan_placement` / `plan_next` / `handle_placed`):
//! random WRITE and READ sizes and offsets on two RC QPs, path MTU 1024 or 4096, datagrams
//! regrouped as GRO would (random segment counts, a shorter last segment) and delivered
//! through plans made with or without a peek, a "kernel" that scatters each datagram into the
//! planned pieces (as `tests/place.rs` does), and random damage to the datagrams: lost, sent
//! twice, a payload byte flipped (and the intact datagram after it); with `harsh` also header
//! bytes flipped, segments swapped, datagrams truncated and other QPs' or messages' datagrams
//! spliced in (never resealed: a resealed forgery is data as far as any check can tell, so
//! the data could not be asserted; the fuzz target forges those). Asserted: every message ends with the right data after go-back-N; no byte
//! around a destination (a marker pattern) or of a source ever changes, checked after every
//! delivery; `rx_placed + rx_place_misses` never exceeds the planned segments; without
//! `harsh` and with peeked plans no planned segment is ever a miss (a plan is made only for
//! the expected PSN, so a resent or duplicated datagram is never planned).
//!
//! `UROCE_PLACE_CASES=N` runs another number of cases per test (default 48 and 32), from the
//! same fixed seed.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::pattern;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRng, TestRunner};
use uroce_proto::{
    Access, AtomicMemory, Config, Device, Instant, Mtu, Payload, QpCap, RegionMemory, SendOp,
    SendWr, Sge, WcStatus,
};

const A_IP: [u8; 4] = [10, 0, 0, 1];
const B_IP: [u8; 4] = [10, 0, 0, 2];
const BASE: u64 = 0x10_0000;
/// Marker bytes on each side of a destination.
const PAD: usize = 2048;
/// The driver's receive buffer: what a `plan_next` plan expects at most.
const PLACE_BUF: usize = 65536;
/// Most packets GRO coalesces into one datagram here.
const GRO_MAX: u64 = 8;
const BTH: usize = 12;

struct Side {
    dev: Device,
    pd: uroce_proto::PdHandle,
    cq: uroce_proto::CqHandle,
    qps: [u32; 2],
    ip: IpAddr,
}

fn side(ip: [u8; 4]) -> Side {
    let ip = IpAddr::from(ip);
    let mut cfg = Config::new(ip);
    cfg.max_segments = 8;
    // Placement plans FIRST/MIDDLE/LAST streams (rxe's and NICs' framing).
    cfg.split_writes = false;
    let mut dev = Device::new(cfg);
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(256).expect("cq");
    let qps = [0, 1].map(|_| {
        let cap = QpCap {
            max_send_wr: 16,
            max_recv_wr: 16,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        common::rc_qp(&mut dev, pd, cq, cap, true)
    });
    Side {
        dev,
        pd,
        cq,
        qps,
        ip,
    }
}

fn connect(s: &mut Side, peer_ip: IpAddr, peer_qps: [u32; 2], mtu: Mtu) {
    for (i, &qpn) in s.qps.iter().enumerate() {
        let mut l = common::Link::new(peer_ip, peer_qps[i]);
        l.mtu = mtu;
        l.psn = 0xFF_FF00 + i as u32; // PSNs wrap during the run
        l.timeout = 8;
        common::connect_rc(&mut s.dev, qpn, &l);
    }
}

/// A region whose bytes outside `lo..hi` must never change (all of a source's).
struct Guard {
    mem: Arc<AtomicMemory>,
    lo: usize,
    hi: usize,
    outside: Vec<u8>,
}

impl Guard {
    fn check(&self, what: &str) -> Result<(), TestCaseError> {
        let now = self.mem.to_vec();
        let changed =
            (0..now.len()).find(|&i| (i < self.lo || i >= self.hi) && now[i] != self.outside[i]);
        prop_assert!(
            changed.is_none(),
            "{what}: byte {:?} outside {}..{} changed",
            changed,
            self.lo,
            self.hi
        );
        Ok(())
    }
}

/// One message: on QP `qp`, a WRITE from A to B or a READ by A from B.
#[derive(Debug, Clone)]
struct Msg {
    qp: usize,
    read: bool,
    len: usize,
    off: usize,
}

/// How datagrams travel (random decisions from a seeded generator, so that a failing case
/// shrinks on its parameters and replays exactly).
struct Net {
    rng: u64,
    /// Per mille of datagrams damaged (each kind of damage alike).
    damage: u64,
    harsh: bool,
    /// 0: peek plans, 1: `plan_next`, 2: both alternately.
    plans: u8,
    deliveries: u64,
    /// Earlier datagrams (for splicing), with their segment size.
    history: Vec<(Vec<u8>, usize)>,
    /// Planned segments, per receiving side (0: A, 1: B).
    planned: [u64; 2],
    planned_datagrams: [u64; 2],
}

impl Net {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn hit(&mut self) -> bool {
        self.below(1000) < self.damage
    }
}

/// The GRO datagrams `bytes` (one GSO transmit of `seg`-byte segments) arrives as: runs of
/// 1..=GRO_MAX segments (a shorter last segment ends its run, as it ends the transmit).
fn regroup(net: &mut Net, bytes: &[u8], seg: usize) -> Vec<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let k = 1 + net.below(GRO_MAX) as usize;
        let end = (at + k * seg).min(bytes.len());
        out.push((bytes[at..end].to_vec(), seg));
        at = end;
    }
    out
}

/// Damages a datagram; returns the copies to deliver (none: lost; two: duplicated).
fn damage(net: &mut Net, mut d: Vec<u8>, seg: usize) -> Vec<Vec<u8>> {
    if !net.hit() {
        return vec![d];
    }
    let segs = d.len().div_ceil(seg);
    let kinds = if net.harsh { 7 } else { 3 };
    match net.below(kinds) {
        0 => vec![],
        1 => vec![d.clone(), d],
        2 => {
            // A payload byte flipped: its segment fails the ICRC, and the segments after it
            // are out of sequence. Half the time the intact datagram follows (a duplicate
            // whose head is behind the expected PSN while a later segment is the expected one:
            // never planned, or a segment would be accepted off its planned place).
            let clean = d.clone();
            let i = net.below(segs as u64) as usize;
            let s = i * seg;
            let n = (d.len() - s).min(seg);
            if n > BTH + 4 {
                let at = s + BTH + net.below((n - BTH - 4) as u64) as usize;
                d[at] ^= 1 << net.below(8);
            }
            if net.below(2) == 0 {
                vec![d, clean]
            } else {
                vec![d]
            }
        }
        3 => {
            // Any byte of a segment flipped, the header (opcode, QPN, PSN) half the time:
            // the ICRC rejects it, but only after the plan has taken the segment. (Not
            // resealed: a resealed forgery is indistinguishable from data, so the data
            // could not be asserted; the fuzz target forges those.)
            let i = net.below(segs as u64) as usize;
            let s = i * seg;
            let n = (d.len() - s).min(seg);
            let at = s + if net.below(2) == 0 {
                net.below(BTH.min(n) as u64) as usize
            } else {
                net.below(n as u64) as usize
            };
            d[at] ^= 1 + net.below(255) as u8;
            vec![d]
        }
        4 if segs >= 2 && d.len() % seg == 0 => {
            // Two full segments swapped.
            let i = net.below(segs as u64) as usize;
            let j = net.below(segs as u64) as usize;
            let a = d[i * seg..(i + 1) * seg].to_vec();
            d.copy_within(j * seg..(j + 1) * seg, i * seg);
            d[j * seg..(j + 1) * seg].copy_from_slice(&a);
            vec![d]
        }
        5 => {
            let n = net.below(d.len() as u64 + 1) as usize;
            d.truncate(n);
            vec![d]
        }
        _ if !net.history.is_empty() => {
            // A datagram of another QP or an earlier message: a segment of the same size
            // replaced, or the whole datagram delivered instead.
            let h = net.below(net.history.len() as u64) as usize;
            let (old, old_seg) = net.history[h].clone();
            let i = net.below(segs as u64) as usize;
            let s = i * seg;
            if old_seg == seg && old.len() >= seg && d.len() >= s + seg {
                d[s..s + seg].copy_from_slice(&old[..seg]);
                vec![d]
            } else {
                vec![old]
            }
        }
        _ => vec![d],
    }
}

/// Hands one datagram to `dst` (side index `di`) as the uring driver does.
fn deliver(net: &mut Net, dst: &mut Side, di: usize, from: IpAddr, data: &[u8], seg: usize) {
    let now = Instant::ZERO;
    net.deliveries += 1;
    let unpeeked = match net.plans {
        0 => false,
        1 => true,
        _ => net.deliveries % 2 == 0,
    };
    let next = unpeeked.then(|| dst.qps[net.below(2) as usize]);
    let planned = common::deliver(&mut dst.dev, dst.ip, from, data, seg, now, next, PLACE_BUF);
    if planned > 0 {
        net.planned[di] += planned as u64;
        net.planned_datagrams[di] += 1;
    }
}

#[derive(Debug)]
struct Case {
    mtu: Mtu,
    msgs: Vec<Msg>,
    seed: u64,
    damage: u64,
    harsh: bool,
    plans: u8,
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    let (mut a, mut b) = (side(A_IP), side(B_IP));
    let (aq, bq) = (a.qps, b.qps);
    connect(&mut a, b.ip, bq, c.mtu);
    connect(&mut b, a.ip, aq, c.mtu);
    let mut guards = Vec::new();
    // Per message: (destination, where its data starts there, the expected data).
    let mut checks = Vec::new();
    for (k, m) in c.msgs.iter().enumerate() {
        let data = pattern(m.len, k as u8 * 40 + 1);
        let src = AtomicMemory::zeroed(m.len.next_multiple_of(8));
        src.write(0, &data);
        let dst_len = (PAD + m.off + m.len + PAD).next_multiple_of(8);
        let dst = AtomicMemory::zeroed(dst_len);
        let marker = pattern(dst_len, 0xA5 ^ k as u8);
        dst.write(0, &marker);
        let lo = PAD + m.off;
        let (src_side, dst_side) = if m.read {
            (&mut b, &mut a)
        } else {
            (&mut a, &mut b)
        };
        let sk = src_side
            .dev
            .reg_mr(
                src_side.pd,
                BASE,
                src.clone(),
                Access::LOCAL_WRITE | Access::REMOTE_READ,
            )
            .expect("mr");
        let dk = dst_side
            .dev
            .reg_mr(
                dst_side.pd,
                BASE,
                dst.clone(),
                Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            )
            .expect("mr");
        let (op, sge) = if m.read {
            let op = SendOp::RdmaRead {
                remote_addr: BASE,
                rkey: sk.rkey,
            };
            (op, (BASE + lo as u64, dk.lkey))
        } else {
            let op = SendOp::RdmaWrite {
                remote_addr: BASE + lo as u64,
                rkey: dk.rkey,
            };
            (op, (BASE, sk.lkey))
        };
        let wr = SendWr::new(
            k as u64,
            op,
            Payload::Sge(Sge {
                addr: sge.0,
                length: m.len as u32,
                lkey: sge.1,
            }),
        );
        a.dev
            .post_send(Instant::ZERO, a.qps[m.qp], wr)
            .expect("post");
        guards.push(Guard {
            outside: src.to_vec(),
            mem: src,
            lo: 0,
            hi: 0,
        });
        guards.push(Guard {
            outside: marker,
            mem: dst.clone(),
            lo,
            hi: lo + m.len,
        });
        checks.push((dst, lo, data));
    }
    let mut net = Net {
        rng: c.seed | 1,
        damage: c.damage,
        harsh: c.harsh,
        plans: c.plans,
        deliveries: 0,
        history: Vec::new(),
        planned: [0; 2],
        planned_datagrams: [0; 2],
    };
    let mut now = Instant::ZERO;
    let mut buf = vec![0u8; 65536];
    let mut settled = false;
    for _ in 0..200_000 {
        let mut moved = false;
        for dir in 0..2 {
            let (tx, rx, di) = if dir == 0 {
                (&mut a, &mut b, 1)
            } else {
                (&mut b, &mut a, 0)
            };
            while let Some(t) = tx.dev.poll_transmit(now, &mut buf) {
                moved = true;
                let seg = t.segment_size.unwrap_or(t.len);
                for (d, seg) in regroup(&mut net, &buf[..t.len], seg) {
                    for d in damage(&mut net, d.clone(), seg) {
                        deliver(&mut net, rx, di, tx.ip, &d, seg);
                        for g in &guards {
                            g.check("after a delivery")?;
                        }
                    }
                    if net.history.len() < 64 {
                        net.history.push((d, seg));
                    } else {
                        let i = net.below(64) as usize;
                        net.history[i] = (d, seg);
                    }
                }
            }
        }
        if !moved && !common::fire_next_timer(&mut a.dev, &mut b.dev, &mut now, 10_000_000_000) {
            settled = true;
            break;
        }
    }
    prop_assert!(settled, "traffic did not settle");
    let mut done = Vec::new();
    while let Ok(Some(w)) = a.dev.poll_cq(a.cq) {
        prop_assert_eq!(w.status, WcStatus::Success, "{:?}", w);
        done.push(w.wr_id);
    }
    done.sort_unstable();
    prop_assert_eq!(done, (0..c.msgs.len() as u64).collect::<Vec<_>>());
    for (k, (dst, lo, data)) in checks.iter().enumerate() {
        let got = dst.to_vec();
        prop_assert!(
            got[*lo..lo + data.len()] == data[..],
            "message {} ({:?}): wrong data",
            k,
            c.msgs[k]
        );
    }
    for g in &guards {
        g.check("at the end")?;
    }
    for (di, s) in [&a, &b].into_iter().enumerate() {
        let k = s.dev.counters();
        prop_assert!(
            k.rx_placed + k.rx_place_misses <= net.planned[di],
            "side {}: {} placed + {} misses > {} planned segments",
            di,
            k.rx_placed,
            k.rx_place_misses,
            net.planned[di]
        );
        if c.plans == 0 && !c.harsh {
            prop_assert_eq!(
                k.rx_place_misses,
                0,
                "side {}: a peeked plan missed without reordering or forged packets",
                di
            );
            if c.damage == 0 {
                prop_assert_eq!(k.rx_placed, net.planned[di], "side {}", di);
            }
        }
    }
    // A clean multi-MIDDLE message must be placed: the test cannot pass with placement off.
    let mtu = c.mtu.bytes() as usize;
    if c.damage == 0 && c.plans == 0 && c.msgs.iter().any(|m| m.len > 3 * mtu) {
        prop_assert!(a.dev.counters().rx_placed + b.dev.counters().rx_placed > 0);
    }
    Ok(())
}

fn msg() -> impl Strategy<Value = Msg> {
    (0..2usize, any::<bool>(), 1..40_000usize, 0..700usize).prop_map(|(qp, read, len, off)| Msg {
        qp,
        read,
        len,
        off,
    })
}

fn cases(default: u32) -> u32 {
    std::env::var("UROCE_PLACE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `run_case` on `strategy`'s cases, from a fixed seed (the same cases every run).
fn check(cases: u32, strategy: impl Strategy<Value = Case>) {
    let config = PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    };
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    TestRunner::new_with_rng(config, rng)
        .run(&strategy, |c| run_case(&c))
        .unwrap();
}

#[test]
fn placed_messages_end_correct_and_nothing_outside_them_changes() {
    let strategy = (
        prop_oneof![Just(Mtu::M1024), Just(Mtu::M4096)],
        proptest::collection::vec(msg(), 1..4),
        any::<u64>(),
        prop_oneof![Just(0u64), 1..120u64],
        any::<bool>(),
        0..3u8,
    )
        .prop_map(|(mtu, msgs, seed, damage, harsh, plans)| Case {
            mtu,
            msgs,
            seed,
            damage,
            harsh,
            plans,
        });
    check(cases(48), strategy);
}

/// Peeked plans with losses, duplicates and damaged-then-intact datagrams, but no reordering
/// inside a datagram or forged packets: a plan is made only for the expected PSN, so no
/// planned segment is ever a miss (`run_case`) and the data ends correct.
#[test]
fn peeked_plans_never_miss_under_loss_and_duplicates() {
    let big = (0..2usize, any::<bool>(), 8_000..40_000usize, 0..700usize)
        .prop_map(|(qp, read, len, off)| Msg { qp, read, len, off });
    let strategy = (
        prop_oneof![Just(Mtu::M1024), Just(Mtu::M4096)],
        proptest::collection::vec(big, 1..3),
        any::<u64>(),
        50..250u64,
    )
        .prop_map(|(mtu, msgs, seed, damage)| Case {
            mtu,
            msgs,
            seed,
            damage,
            harsh: false,
            plans: 0,
        });
    check(cases(32), strategy);
}

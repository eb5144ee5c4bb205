//! Zero-copy receive (`Device::plan_placement` / `handle_placed`): a "kernel" here writes each
//! planned payload into the region with `RegionMemory::write`, as the driver's scatter
//! `recvmsg` does, and fills the datagram's own payload bytes with junk, so a test passes only
//! if the engine takes every placed byte from where it lies. Each test checks the data, the
//! completions and the placement counters, and that nothing outside the message's checked
//! destination was touched.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use common::pattern;
use uroce_proto::{
    Access, AtomicMemory, Completion, Config, CqHandle, Device, Instant, Mtu, Payload, Placement,
    QpCap, RecvWr, RegionMemory, SendOp, SendWr, Sge, VecMemory, WcStatus,
};

const A_IP: [u8; 4] = [10, 0, 0, 1];
const B_IP: [u8; 4] = [10, 0, 0, 2];
const MTU: usize = 1024;
/// Header (BTH), payload, ICRC of a full-size MIDDLE/LAST packet.
const SEG: usize = 12 + MTU + 4;

struct Side {
    dev: Device,
    pd: uroce_proto::PdHandle,
    cq: CqHandle,
    qpn: u32,
    ip: IpAddr,
}

fn side(ip: [u8; 4]) -> Side {
    let ip = IpAddr::from(ip);
    // Placement plans FIRST/MIDDLE/LAST streams (rxe's and NICs' framing): the senders here
    // do not split their WRITEs into WRITE ONLYs.
    let mut config = Config::new(ip);
    config.split_writes = false;
    let mut dev = Device::new(config);
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(256).expect("cq");
    let cap = QpCap {
        max_send_wr: 64,
        max_recv_wr: 64,
        max_send_sge: 4,
        max_recv_sge: 4,
        max_inline_data: 0,
    };
    let qpn = common::rc_qp(&mut dev, pd, cq, cap, false);
    Side {
        dev,
        pd,
        cq,
        qpn,
        ip,
    }
}

fn connect(s: &mut Side, peer_ip: IpAddr, peer_qpn: u32, mtu: Mtu) {
    let link = common::Link {
        mtu,
        ..common::Link::new(peer_ip, peer_qpn)
    };
    common::connect_rc(&mut s.dev, s.qpn, &link);
}

/// Two connected sides at path MTU [`MTU`].
fn pair() -> (Side, Side) {
    pair_at(Mtu::M1024)
}

fn pair_at(mtu: Mtu) -> (Side, Side) {
    let (mut a, mut b) = (side(A_IP), side(B_IP));
    let (aq, bq) = (a.qpn, b.qpn);
    connect(&mut a, b.ip, bq, mtu);
    connect(&mut b, a.ip, aq, mtu);
    (a, b)
}

/// What the "network" does to one datagram on its way (its packets, GRO segment size).
type Mangle<'a> = &'a mut dyn FnMut(&mut Vec<u8>, usize);

#[derive(Default)]
struct Tally {
    planned_datagrams: usize,
    planned_segments: usize,
    /// Deliver to B with `plan_next` (no peek) instead of `plan_placement`.
    unpeeked: bool,
}

/// Hands `data` to `dst` as the uring driver does: plan (from a peek, or with `t.unpeeked`
/// from the QP's expected PSN whatever `data` is), "kernel" scatter, handle.
fn deliver(dst: &mut Side, from: IpAddr, data: &[u8], seg: usize, now: Instant, t: &mut Tally) {
    let next = t.unpeeked.then_some(dst.qpn);
    let planned = common::deliver(&mut dst.dev, dst.ip, from, data, seg, now, next, 65536);
    if planned > 0 {
        t.planned_datagrams += 1;
        t.planned_segments += planned;
    }
}

/// Moves datagrams both ways until neither side has anything to send and no timer is due
/// within a second of simulated time.
fn run(a: &mut Side, b: &mut Side, mangle_ab: Mangle<'_>, t: &mut Tally) {
    let mut now = Instant::ZERO;
    let mut buf = vec![0u8; 65536];
    for _ in 0..100_000 {
        let mut moved = false;
        while let Some(tx) = a.dev.poll_transmit(now, &mut buf) {
            let seg = tx.segment_size.unwrap_or(tx.len);
            let mut d = buf[..tx.len].to_vec();
            mangle_ab(&mut d, seg);
            deliver(b, a.ip, &d, seg, now, t);
            moved = true;
        }
        while let Some(tx) = b.dev.poll_transmit(now, &mut buf) {
            let seg = tx.segment_size.unwrap_or(tx.len);
            let d = buf[..tx.len].to_vec();
            deliver(a, b.ip, &d, seg, now, t);
            moved = true;
        }
        if !moved && !common::fire_next_timer(&mut a.dev, &mut b.dev, &mut now, 1_000_000_000) {
            return;
        }
    }
    panic!("traffic did not settle");
}

fn drain(s: &mut Side) -> Vec<Completion> {
    let mut v = Vec::new();
    while let Ok(Some(c)) = s.dev.poll_cq(s.cq) {
        v.push(c);
    }
    v
}

fn reg(s: &mut Side, mem: Arc<dyn RegionMemory>, access: Access) -> uroce_proto::MrKeys {
    s.dev.reg_mr(s.pd, 0x10_0000, mem, access).expect("mr")
}

/// Posts on `a` a WRITE of `len` bytes from the start of its region at 0x10_0000 (`lkey`) to
/// the start of the peer's (`rkey`).
fn post_write(a: &mut Side, len: usize, lkey: u32, rkey: u32) {
    let op = SendOp::RdmaWrite {
        remote_addr: 0x10_0000,
        rkey,
    };
    let sge = Sge {
        addr: 0x10_0000,
        length: len as u32,
        lkey,
    };
    let wr = SendWr::new(1, op, Payload::Sge(sge));
    a.dev.post_send(Instant::ZERO, a.qpn, wr).expect("post");
}

/// A WRITE of `len` bytes from A to `off` bytes into a zeroed region of B `region` bytes long;
/// returns B's region contents and the tally.
fn write_case(len: usize, off: usize, region: usize, mangle: Mangle<'_>) -> (Vec<u8>, Tally, Side) {
    write_case_with(len, off, region, mangle, false)
}

fn write_case_with(
    len: usize,
    off: usize,
    region: usize,
    mangle: Mangle<'_>,
    unpeeked: bool,
) -> (Vec<u8>, Tally, Side) {
    let (mut a, mut b) = pair();
    let src = AtomicMemory::zeroed(len);
    src.write(0, &pattern(len, 7));
    let sk = reg(&mut a, src, Access::LOCAL_WRITE);
    let dst = AtomicMemory::zeroed(region);
    let dk = reg(
        &mut b,
        dst.clone(),
        Access::LOCAL_WRITE | Access::REMOTE_WRITE,
    );
    let wr = SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: 0x10_0000 + off as u64,
            rkey: dk.rkey,
        },
        Payload::Sge(Sge {
            addr: 0x10_0000,
            length: len as u32,
            lkey: sk.lkey,
        }),
    );
    a.dev.post_send(Instant::ZERO, a.qpn, wr).expect("post");
    let mut t = Tally {
        unpeeked,
        ..Tally::default()
    };
    run(&mut a, &mut b, mangle, &mut t);
    let c = drain(&mut a);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].status, WcStatus::Success);
    (dst.to_vec(), t, b)
}

#[test]
fn write_payload_is_placed_and_only_inside_the_destination() {
    let (len, off) = (64 * MTU + 300, 4000);
    let (got, t, b) = write_case(len, off, 200_000, &mut |_, _| {});
    assert_eq!(&got[off..off + len], &pattern(len, 7)[..]);
    assert!(
        got[..off].iter().all(|&x| x == 0),
        "bytes before the WRITE touched"
    );
    assert!(
        got[off + len..].iter().all(|&x| x == 0),
        "bytes after the WRITE touched"
    );
    let c = b.dev.counters();
    // FIRST carries a RETH, so every datagram's first packet is copied; the last packet
    // (300 bytes) is shorter: every other packet is placed.
    assert!(t.planned_datagrams > 0);
    assert_eq!(c.rx_placed, t.planned_segments as u64, "{c:?}");
    assert!(c.rx_placed >= 40, "{c:?}");
    assert_eq!((c.rx_place_misses, c.icrc_drops), (0, 0), "{c:?}");
}

#[test]
fn reordered_segments_fall_back_and_the_data_ends_correct() {
    let len = 48 * MTU;
    let mut swapped = 0;
    let mut mangle = |d: &mut Vec<u8>, seg: usize| {
        // Swap segments 1 and 2 of the first multi-segment MIDDLE datagram: the plan
        // predicts PSN p+1 where p+2 lies.
        if swapped == 0 && seg == SEG && d.len() >= 3 * SEG && d[0] == 0x07 {
            let s1 = d[SEG..2 * SEG].to_vec();
            let s2 = d[2 * SEG..3 * SEG].to_vec();
            d[SEG..2 * SEG].copy_from_slice(&s2);
            d[2 * SEG..3 * SEG].copy_from_slice(&s1);
            swapped += 1;
        }
    };
    let (got, _, b) = write_case(len, 0, len, &mut mangle);
    assert_eq!(swapped, 1, "no MIDDLE datagram to reorder");
    assert_eq!(got, pattern(len, 7));
    let c = b.dev.counters();
    assert!(c.rx_place_misses >= 1, "{c:?}");
    assert!(c.rx_placed > 0, "{c:?}");
    let q = b.dev.qp(b.qpn).expect("qp").counters();
    assert!(q.out_of_sequence >= 1, "{q:?}");
}

#[test]
fn a_bad_icrc_on_a_placed_segment_is_dropped_and_resent() {
    let len = 32 * MTU;
    let mut hit = 0;
    let mut mangle = |d: &mut Vec<u8>, seg: usize| {
        if hit == 0 && seg == SEG && d.len() >= 2 * SEG && d[0] == 0x07 {
            d[SEG + 12 + 100] ^= 0x40; // a payload byte of segment 1
            hit += 1;
        }
    };
    let (got, _, b) = write_case(len, 0, len, &mut mangle);
    assert_eq!(hit, 1);
    assert_eq!(got, pattern(len, 7));
    assert_eq!(b.dev.counters().icrc_drops, 1);
}

#[test]
fn duplicates_and_other_psns_are_never_planned() {
    let (mut a, mut b) = pair();
    let len = 8 * MTU;
    let src = AtomicMemory::zeroed(len);
    let sk = reg(&mut a, src, Access::LOCAL_WRITE);
    let dst = AtomicMemory::zeroed(len);
    let dk = reg(&mut b, dst, Access::LOCAL_WRITE | Access::REMOTE_WRITE);
    post_write(&mut a, len, sk.lkey, dk.rkey);
    let mut buf = vec![0u8; 65536];
    let mut pkts = Vec::new();
    while let Some(tx) = a.dev.poll_transmit(Instant::ZERO, &mut buf) {
        let seg = tx.segment_size.unwrap_or(tx.len);
        pkts.extend(buf[..tx.len].chunks(seg).map(<[u8]>::to_vec));
    }
    assert_eq!(pkts.len(), 8);
    let from = SocketAddr::new(a.ip, 4791);
    let mut plan = Placement::default();
    // Before FIRST: no message in progress, nothing planned.
    assert!(!b.dev.plan_placement(from, &pkts[1], SEG, SEG, &mut plan));
    b.dev.handle_datagram(Instant::ZERO, from, b.ip, &pkts[0]);
    // The next PSN is planned; one ahead (out of order) and FIRST again (duplicate) are not.
    assert!(b
        .dev
        .plan_placement(from, &pkts[1], SEG, 3 * SEG, &mut plan));
    assert_eq!(plan.segments, 3);
    assert!(!b.dev.plan_placement(from, &pkts[2], SEG, SEG, &mut plan));
    assert!(!b
        .dev
        .plan_placement(from, &pkts[0], pkts[0].len(), pkts[0].len(), &mut plan));
    // From another source: not planned.
    let other = SocketAddr::new(IpAddr::from([10, 0, 0, 9]), 4791);
    assert!(!b.dev.plan_placement(other, &pkts[1], SEG, SEG, &mut plan));
    b.dev.handle_datagram(Instant::ZERO, from, b.ip, &pkts[1]);
    // Now PSN 1 is a duplicate.
    assert!(!b.dev.plan_placement(from, &pkts[1], SEG, SEG, &mut plan));
    // The plan never passes the end of the message: 6 packets are left, the last a LAST.
    assert!(b
        .dev
        .plan_placement(from, &pkts[2], SEG, 20 * SEG, &mut plan));
    assert_eq!(plan.segments, 6);
    // Planning works for any size, but a driver switches to placing receives only for
    // messages with at least PLACE_MIN_REMAINING bytes to come: not this 8 KiB one.
    assert!(len < uroce_proto::place::PLACE_MIN_REMAINING);
    assert!(!b.dev.placement_wanted());
}

#[test]
fn regions_without_raw_parts_are_not_placed() {
    let (mut a, mut b) = pair();
    let len = 16 * MTU;
    let src = VecMemory::from_vec(pattern(len, 3));
    let sk = reg(&mut a, src, Access::LOCAL_WRITE);
    let dst = VecMemory::zeroed(len);
    let dk = reg(
        &mut b,
        dst.clone(),
        Access::LOCAL_WRITE | Access::REMOTE_WRITE,
    );
    post_write(&mut a, len, sk.lkey, dk.rkey);
    let mut t = Tally::default();
    run(&mut a, &mut b, &mut |_, _| {}, &mut t);
    assert_eq!(dst.to_vec(), pattern(len, 3));
    assert_eq!(t.planned_datagrams, 0);
    assert_eq!(b.dev.counters().rx_placed, 0);
}

/// SENDs are never placed: a SEND's end is known only at its LAST, and a full-size LAST
/// shares a GSO batch (so a GRO datagram) with the next SEND's FIRST, whose bytes a plan
/// bounded by the receive buffer would have put past the first message's end.
#[test]
fn sends_are_not_placed_and_receive_buffers_past_the_message_stay_untouched() {
    for unpeeked in [false, true] {
        let (mut a, mut b) = pair();
        let len = 100 * MTU;
        let src = AtomicMemory::zeroed(2 * len);
        src.write(0, &pattern(2 * len, 9));
        let sk = reg(&mut a, src, Access::LOCAL_WRITE);
        // Two receive buffers with room for 20 more packets each, filled with a marker.
        let room = len + 20 * MTU;
        let dst = AtomicMemory::zeroed(2 * room);
        dst.write(0, &vec![0xA5; 2 * room]);
        let dk = reg(&mut b, dst.clone(), Access::LOCAL_WRITE);
        for i in 0..2u64 {
            let sge = Sge {
                addr: 0x10_0000 + i * room as u64,
                length: room as u32,
                lkey: dk.lkey,
            };
            let wr = RecvWr {
                wr_id: i,
                sgl: vec![sge],
            };
            b.dev.post_recv(b.qpn, wr).expect("recv");
        }
        for i in 0..2u64 {
            let sge = Sge {
                addr: 0x10_0000 + i * len as u64,
                length: len as u32,
                lkey: sk.lkey,
            };
            let wr = SendWr::new(i, SendOp::Send, Payload::Sge(sge));
            a.dev.post_send(Instant::ZERO, a.qpn, wr).expect("post");
        }
        let mut t = Tally {
            unpeeked,
            ..Tally::default()
        };
        run(&mut a, &mut b, &mut |_, _| {}, &mut t);
        let got = dst.to_vec();
        let want = pattern(2 * len, 9);
        for i in 0..2 {
            let buf = &got[i * room..(i + 1) * room];
            assert!(buf[..len] == want[i * len..(i + 1) * len], "message {i}");
            assert!(buf[len..].iter().all(|&x| x == 0xA5), "past message {i}");
        }
        let rc = drain(&mut b);
        assert_eq!(rc.len(), 2);
        assert!(rc
            .iter()
            .all(|c| c.status == WcStatus::Success && c.byte_len == len as u32));
        assert_eq!(t.planned_datagrams, 0);
        assert_eq!(b.dev.counters().rx_placed, 0);
    }
}

#[test]
fn read_responses_are_placed_into_the_read_sgl() {
    let (mut a, mut b) = pair();
    let len = 48 * MTU;
    let remote = AtomicMemory::zeroed(len);
    remote.write(0, &pattern(len, 5));
    let rk = reg(&mut b, remote, Access::LOCAL_WRITE | Access::REMOTE_READ);
    let local = AtomicMemory::zeroed(len + 64);
    let lk = reg(&mut a, local.clone(), Access::LOCAL_WRITE);
    let wr = SendWr::new(
        1,
        SendOp::RdmaRead {
            remote_addr: 0x10_0000,
            rkey: rk.rkey,
        },
        Payload::Sge(Sge {
            addr: 0x10_0000 + 32,
            length: len as u32,
            lkey: lk.lkey,
        }),
    );
    a.dev.post_send(Instant::ZERO, a.qpn, wr).expect("post");
    let mut t = Tally::default();
    run(&mut a, &mut b, &mut |_, _| {}, &mut t);
    let c = drain(&mut a);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, WcStatus::Success);
    let got = local.to_vec();
    assert_eq!(&got[32..32 + len], &pattern(len, 5)[..]);
    assert!(got[..32].iter().chain(&got[32 + len..]).all(|&x| x == 0));
    let k = a.dev.counters();
    // READ response MIDDLE packets are placed (FIRST and LAST carry an AETH).
    assert!(k.rx_placed >= 30, "{k:?}");
    assert_eq!(k.rx_place_misses, 0);
}

#[test]
fn unpeeked_plans_take_any_datagram_and_the_data_ends_correct() {
    // Every datagram to B (which only receives requests here) is received on a plan from
    // B's expected PSN, without a peek: FIRST (with a RETH, another size), the shorter LAST
    // and a reordered datagram land partly in the region and are put back together.
    let len = 40 * MTU + 77;
    let mut swapped = 0;
    let mut mangle = |d: &mut Vec<u8>, seg: usize| {
        if swapped == 0 && seg == SEG && d.len() >= 3 * SEG && d[0] == 0x07 {
            let s1 = d[SEG..2 * SEG].to_vec();
            d.copy_within(2 * SEG..3 * SEG, SEG);
            d[2 * SEG..3 * SEG].copy_from_slice(&s1);
            swapped += 1;
        }
    };
    let (got, t, b) = write_case_with(len, 512, len + 1024, &mut mangle, true);
    assert_eq!(swapped, 1);
    assert_eq!(&got[512..512 + len], &pattern(len, 7)[..]);
    assert!(got[..512].iter().chain(&got[512 + len..]).all(|&x| x == 0));
    let c = b.dev.counters();
    assert!(t.planned_datagrams > 0);
    assert!(c.rx_placed > 20, "{c:?}");
    assert!(c.rx_place_misses >= 2, "{c:?}");
    assert_eq!(c.icrc_drops, 0);
}

/// A driver switches to placing receives only at path MTU 4096 (`place::PLACE_MIN_MTU`):
/// with smaller packets the scatter costs more than the copy it saves. Planning itself
/// still works at any MTU (the tests above run at 1024).
#[test]
fn placing_receives_are_wanted_only_at_path_mtu_4096() {
    for (mtu, wanted) in [(Mtu::M1024, false), (Mtu::M2048, false), (Mtu::M4096, true)] {
        let (mut a, mut b) = pair_at(mtu);
        let len = 2 * uroce_proto::place::PLACE_MIN_REMAINING;
        let sk = reg(&mut a, AtomicMemory::zeroed(len), Access::LOCAL_WRITE);
        let dk = reg(
            &mut b,
            AtomicMemory::zeroed(len),
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        );
        post_write(&mut a, len, sk.lkey, dk.rkey);
        let mut buf = vec![0u8; 65536];
        let tx = a
            .dev
            .poll_transmit(Instant::ZERO, &mut buf)
            .expect("a FIRST");
        let first = &buf[..tx.segment_size.unwrap_or(tx.len)];
        let from = SocketAddr::new(a.ip, 4791);
        assert!(!b.dev.placement_wanted(), "{mtu:?}: no message yet");
        b.dev.handle_datagram(Instant::ZERO, from, b.ip, first);
        assert_eq!(b.dev.placement_wanted(), wanted, "{mtu:?}");
    }
}

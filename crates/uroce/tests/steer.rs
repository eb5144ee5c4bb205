//! QPN-steered receive on loopback (no root): several steered devices share one 127/8 address
//! and port 4791, each gets a slot of QPNs, and the kernel's reuseport program hands every
//! packet to the device owning its DestQP. Each test uses its own addresses.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

mod common;

use common::{connect, pattern, Side, Sizes};
use uroce::{
    BackendKind, DeviceConfig, Payload, Progress, QpType, RecvWr, SendOp, SendWr, WcOpcode,
};

const T: Duration = Duration::from_secs(20);

fn side(ip: &str, steer: bool, backend: BackendKind, progress: Progress) -> Side {
    let mut cfg = DeviceConfig::new(ip.parse().expect("ip"));
    cfg.steer = steer;
    cfg.backend = backend;
    cfg.progress = progress;
    common::side_with(
        cfg,
        QpType::Rc,
        Sizes {
            mr_len: 2 << 20,
            cq_depth: 1024,
            wrs: 64,
        },
    )
}

/// Waits for one successful completion of `op` on `s`, driving `others` (polled devices).
fn one_ok(s: &Side, op: WcOpcode, others: &[&Side]) {
    common::one_ok(s, op, others, T);
}

/// WRITE 256 KiB + 3 from `a` to `b`, SEND 5000 bytes back; every byte checked.
fn traffic(a: &Side, b: &Side, seed: u8) {
    let data = pattern((256 << 10) + 3, seed);
    a.mr.write(0, &data);
    a.qp.post_send(SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: b.mr.addr() + 8,
            rkey: b.mr.rkey(),
        },
        Payload::Sgl(vec![a.mr.sge(0, data.len() as u32)]),
    ))
    .expect("post write");
    one_ok(a, WcOpcode::RdmaWrite, &[b]);
    let mut got = vec![0; data.len()];
    b.mr.read(8, &mut got);
    assert!(got == data, "WRITE data differs (seed {seed})");
    a.qp.post_recv(RecvWr {
        wr_id: 2,
        sgl: vec![a.mr.sge(1 << 20, 5000)],
    })
    .expect("post recv");
    b.qp.post_send(SendWr::new(
        3,
        SendOp::Send,
        Payload::Sgl(vec![b.mr.sge(8, 5000)]),
    ))
    .expect("post send");
    one_ok(b, WcOpcode::Send, &[a]);
    one_ok(a, WcOpcode::Recv, &[b]);
    let mut s = vec![0; 5000];
    a.mr.read(1 << 20, &mut s);
    assert_eq!(s, data[..5000]);
}

fn info(s: &Side) -> uroce::SteerInfo {
    s.dev.steer_info().expect("steered")
}

/// Every steered side received only packets of its own slot: none dropped as foreign, none
/// naming an unknown QP of its own, some received.
fn assert_clean(sides: &[&Side]) {
    for s in sides {
        let i = info(s);
        let c = s.dev.counters();
        assert_eq!(i.counters.foreign_drops, 0, "slot {}: {i:?}", i.slot);
        assert!(i.counters.own_rx > 0, "{i:?}");
        assert_eq!(
            (c.unknown_qp, c.icrc_drops, c.malformed),
            (0, 0, 0),
            "{c:?}"
        );
        assert_eq!(super_slot(s.qp.qpn()), i.slot, "QPN {:#x}", s.qp.qpn());
    }
}

fn super_slot(qpn: u32) -> u8 {
    uroce::steer::slot_of(qpn)
}

#[test]
fn three_engines_share_both_addresses_with_every_back_end() {
    let (ip_a, ip_b) = ("127.0.91.1", "127.0.91.2");
    let kinds = [
        (BackendKind::Uring, Progress::Thread),
        (BackendKind::Syscall, Progress::Thread),
        (BackendKind::Uring, Progress::Polled),
    ];
    let pairs: Vec<(Side, Side)> = kinds
        .iter()
        .map(|&(k, p)| (side(ip_a, true, k, p), side(ip_b, true, k, p)))
        .collect();
    let mut slots: Vec<u8> = pairs.iter().map(|(a, _)| info(a).slot).collect();
    slots.dedup();
    assert_eq!(slots.len(), 3, "one slot per engine: {slots:?}");
    for (a, b) in &pairs {
        assert_eq!(a.dev.local_addr().port(), 4791);
        connect(a, b);
    }
    // All pairs at once, several rounds each.
    std::thread::scope(|sc| {
        for (n, (a, b)) in pairs.iter().enumerate() {
            sc.spawn(move || {
                for r in 0..4 {
                    traffic(a, b, (n * 16 + r) as u8);
                }
            });
        }
    });
    let all: Vec<&Side> = pairs.iter().flat_map(|(a, b)| [a, b]).collect();
    assert_clean(&all);
}

#[test]
fn a_leaving_engine_moves_the_last_socket_and_steering_follows() {
    let (ip_a, ip_b) = ("127.0.92.1", "127.0.92.2");
    let u = (BackendKind::Uring, Progress::Thread);
    let d0 = side(ip_a, true, u.0, u.1);
    let d1 = side(ip_a, true, u.0, u.1);
    let d2 = side(ip_a, true, u.0, u.1);
    let indices: Vec<u32> = [&d0, &d1, &d2].iter().map(|s| info(s).index).collect();
    assert_eq!(indices, [0, 1, 2], "sockets join at the end of the group");
    let p1 = side(ip_b, true, u.0, u.1);
    let p2 = side(ip_b, true, u.0, u.1);
    connect(&d1, &p1);
    connect(&d2, &p2);
    traffic(&d1, &p1, 1);
    traffic(&d2, &p2, 2);
    // d0 leaves: the kernel moves the last socket (d2's) into index 0.
    drop(d0);
    let end = Instant::now() + T;
    while info(&d2).index != 0 {
        assert!(Instant::now() < end, "d2 still at {:?}", info(&d2));
        std::thread::sleep(Duration::from_millis(10));
    }
    for r in 0..3 {
        traffic(&d1, &p1, 10 + r);
        traffic(&d2, &p2, 20 + r);
    }
    assert_eq!(info(&d1).index, 1);
    // A newcomer is appended and gets the freed slot.
    let d3 = side(ip_a, true, u.0, u.1);
    assert_eq!(info(&d3).index, 2);
    let p3 = side(ip_b, true, u.0, u.1);
    connect(&d3, &p3);
    traffic(&d3, &p3, 30);
    traffic(&d2, &p2, 31);
    assert_clean(&[&d1, &d2, &d3, &p1, &p2, &p3]);
    // No repair was needed: the leave recorded the kernel's move itself.
    assert_eq!(info(&d2).counters.repairs, 0);
}

#[test]
fn packets_for_unowned_qpns_are_counted_and_dropped() {
    let ip = "127.0.94.1";
    let u = (BackendKind::Uring, Progress::Thread);
    let d0 = side(ip, true, u.0, u.1);
    let d1 = side(ip, true, u.0, u.1);
    let before0 = d0.dev.counters();
    let tx = UdpSocket::bind("127.0.94.2:0").expect("bind");
    let to: SocketAddr = format!("{ip}:4791").parse().expect("addr");
    // An RC SEND_ONLY BTH naming QPN 0xC8_0011: slot 200, which no engine owns.
    let mut pkt = [0u8; 16];
    pkt[0] = 0x04;
    pkt[2..4].copy_from_slice(&0xFFFFu16.to_be_bytes());
    pkt[4..8].copy_from_slice(&0x00C8_0011u32.to_be_bytes());
    for _ in 0..20 {
        tx.send_to(&pkt, to).expect("send");
    }
    let dropped = || info(&d0).counters.foreign_drops + info(&d1).counters.foreign_drops;
    let end = Instant::now() + T;
    while dropped() < 20 {
        assert!(Instant::now() < end, "{:?} {:?}", info(&d0), info(&d1));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(dropped(), 20);
    // None reached an engine.
    assert_eq!(d0.dev.counters().rx_packets, before0.rx_packets);
    // One naming d1's slot reaches d1's engine only (which drops it: bad ICRC, no such QP).
    let d1_rx = d1.dev.counters().rx_packets;
    let q = (u32::from(info(&d1).slot) << 16) | 0xFFF0;
    pkt[4..8].copy_from_slice(&q.to_be_bytes());
    tx.send_to(&pkt, to).expect("send");
    while d1.dev.counters().rx_packets == d1_rx {
        assert!(Instant::now() < end, "{:?}", d1.dev.counters());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(d1.dev.counters().rx_packets, d1_rx + 1);
    assert_eq!(dropped(), 20);
}

/// Sends datagrams naming QPNs of `slot` to `to` (a BTH with an unknown QP: the owning engine
/// admits and counts each one) until `stop`, keeping at most 256 beyond what `received` says
/// arrived so that no socket buffer overflows. Returns how many it sent.
fn flood(
    to: SocketAddr,
    slot: u8,
    stop: &std::sync::atomic::AtomicBool,
    received: &dyn Fn() -> u64,
) -> u64 {
    use std::sync::atomic::Ordering;
    let tx = UdpSocket::bind(SocketAddr::new(to.ip(), 0)).expect("bind");
    let mut pkt = [0u8; 16];
    pkt[0] = 0x04;
    pkt[2..4].copy_from_slice(&0xFFFFu16.to_be_bytes());
    pkt[4..8].copy_from_slice(&((u32::from(slot) << 16) | 0xFFF0).to_be_bytes());
    let base = received();
    let mut sent = 0u64;
    let end = Instant::now() + T;
    while !stop.load(Ordering::Acquire) {
        if sent - (received() - base) < 256 {
            tx.send_to(&pkt, to).expect("send");
            sent += 1;
        } else {
            assert!(Instant::now() < end, "the engine stopped receiving");
            std::thread::yield_now();
        }
    }
    sent
}

#[test]
fn a_leave_loses_nothing_sent_to_the_socket_the_kernel_moves() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ip = "127.0.95.1";
    let to: SocketAddr = format!("{ip}:4791").parse().expect("addr");
    let u = (BackendKind::Uring, Progress::Thread);
    let mut stay = side(ip, true, u.0, u.1);
    for round in 0..8 {
        // The newcomer is the group's last socket: when `stay` (index 0) leaves, the kernel
        // moves it into index 0 while its peer keeps sending.
        let moved = side(ip, true, u.0, u.1);
        assert_eq!((info(&stay).index, info(&moved).index), (0, 1));
        let own = || info(&moved).counters.own_rx;
        let before = own();
        let stop = AtomicBool::new(false);
        let sent = std::thread::scope(|s| {
            let sender = s.spawn(|| flood(to, info(&moved).slot, &stop, &own));
            let wait_for = |n: u64| {
                let end = Instant::now() + T;
                while own() < before + n {
                    assert!(Instant::now() < end, "round {round}: {:?}", info(&moved));
                    std::thread::yield_now();
                }
            };
            wait_for(2000);
            drop(stay);
            let at_leave = own() - before;
            wait_for(at_leave + 2000);
            stop.store(true, Ordering::Release);
            sender.join().expect("sender")
        });
        let end = Instant::now() + Duration::from_secs(5);
        while own() - before < sent && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            own() - before,
            sent,
            "round {round}: datagrams for the moved socket were lost at the leave: {:?}",
            info(&moved)
        );
        // Its next check learns the move and attaches the exact table.
        while info(&moved).index != 0 {
            assert!(Instant::now() < end, "round {round}: {:?}", info(&moved));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(info(&moved).counters.foreign_drops, 0, "round {round}");
        stay = moved;
    }
}

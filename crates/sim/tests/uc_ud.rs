//! UC and UD: UC drops a broken message silently and reuses its receive WQE; UD puts the GRH
//! in front of the data, checks the Q_Key (and the high-bit rule), refuses messages over the
//! MTU; neither ever delivers a corrupted byte.

use std::time::Duration;

use uroce_proto::{
    AhHandle, Mtu, Payload, QpAttr, QpType, RecvWr, SendOp, SendWr, UdDest, WcOpcode, WcStatus,
};
use uroce_sim::scenario::{
    drain, drop_in_flight, opcode_of, pair, pattern, settle, transmit_now, wait_completions,
    Endpoint, PairOpts,
};
use uroce_sim::{Link, Sim};
use uroce_wire::Opcode;

const LIMIT: Duration = Duration::from_secs(1);
const QKEY: u32 = 0x1111_1111;

#[test]
fn uc_lost_middle_packet_drops_the_message_and_reuses_the_receive() {
    let mut sim = Sim::new(70, Link::default());
    let (a, b) = pair(
        &mut sim,
        &PairOpts {
            qp_type: QpType::Uc,
            ..PairOpts::default()
        },
    );
    for (id, off) in [(1, 0), (2, 8192)] {
        sim.dev(b.host)
            .post_recv(
                b.qpn,
                RecvWr {
                    wr_id: id,
                    sgl: vec![b.sge(off, 4096)],
                },
            )
            .unwrap();
    }
    a.fill(0, 3000, 1);
    let m2 = a.fill(4096, 3000, 2);
    let m3 = a.fill(8192, 500, 3);
    sim.post_send(
        a.host,
        a.qpn,
        SendWr::new(1, SendOp::Send, Payload::Sgl(vec![a.sge(0, 3000)])),
    )
    .unwrap();
    transmit_now(&mut sim);
    let dropped = drop_in_flight(&mut sim, |_, _, p| {
        opcode_of(p) == Some(Opcode::UcSendMiddle)
    });
    assert_eq!(dropped, 1);
    sim.post_send(
        a.host,
        a.qpn,
        SendWr::new(2, SendOp::Send, Payload::Sgl(vec![a.sge(4096, 3000)])),
    )
    .unwrap();
    // UC completes at send time: both sends succeed on A.
    let c = wait_completions(&mut sim, &a, 2, LIMIT);
    assert!(c
        .iter()
        .all(|c| c.status == WcStatus::Success && c.opcode == WcOpcode::Send));
    settle(&mut sim, Duration::from_millis(1));
    let r = drain(&mut sim, &b);
    assert_eq!(r.len(), 1, "the broken message completes nothing: {r:?}");
    assert_eq!(
        (r[0].wr_id, r[0].status, r[0].byte_len),
        (1, WcStatus::Success, 3000)
    );
    assert_eq!(
        b.read(0, 3000),
        m2,
        "the first receive WQE holds the second message, intact"
    );
    let cb = b.counters(&sim);
    assert!(cb.dropped >= 1, "{cb:?}");
    assert_eq!(cb.naks_sent, [0; 4], "UC never NAKs");
    assert_eq!(cb.acks_sent, 0);
    // The second receive WQE is still there for the next message.
    let s = SendWr::new(
        3,
        SendOp::SendWithImm(33),
        Payload::Sgl(vec![a.sge(8192, 500)]),
    );
    sim.post_send(a.host, a.qpn, s).unwrap();
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!((r[0].wr_id, r[0].byte_len, r[0].imm), (2, 500, Some(33)));
    assert_eq!(b.read(8192, 500), m3);
}

#[test]
fn uc_lost_write_packet_leaves_the_rest_of_the_message_unwritten() {
    let mut sim = Sim::new(71, Link::default());
    let (a, b) = pair(
        &mut sim,
        &PairOpts {
            qp_type: QpType::Uc,
            ..PairOpts::default()
        },
    );
    let data = a.fill(0, 4096, 4);
    let w = |id, off| {
        SendWr::new(
            id,
            SendOp::RdmaWrite {
                remote_addr: b.base + off,
                rkey: b.keys.rkey,
            },
            Payload::Sgl(vec![a.sge(0, 4096)]),
        )
    };
    sim.post_send(a.host, a.qpn, w(1, 0)).unwrap();
    transmit_now(&mut sim);
    // Lose the second packet (the first MIDDLE).
    let mut seen = 0;
    let n = drop_in_flight(&mut sim, |_, _, p| {
        let m = opcode_of(p) == Some(Opcode::UcWriteMiddle);
        seen += usize::from(m);
        m && seen == 1
    });
    assert_eq!(n, 1);
    sim.post_send(a.host, a.qpn, w(2, 10_000)).unwrap();
    wait_completions(&mut sim, &a, 2, LIMIT);
    settle(&mut sim, Duration::from_millis(1));
    let m = b.mem.to_vec();
    assert_eq!(
        &m[..1024],
        &data[..1024],
        "the FIRST packet landed before the gap"
    );
    assert!(
        m[1024..4096].iter().all(|x| *x == 0),
        "nothing after the gap"
    );
    assert_eq!(&m[10_000..14_096], &data[..], "the next message is intact");
    assert!(drain(&mut sim, &b).is_empty());
}

/// UC SENDs with immediate `i` under heavy corruption: every completed receive holds exactly
/// message `i`'s bytes.
#[test]
fn uc_never_delivers_a_corrupted_byte() {
    let mut sim = Sim::new(
        72,
        Link {
            corrupt: 0.2,
            ..Link::default()
        },
    );
    let o = PairOpts {
        qp_type: QpType::Uc,
        mtu: Mtu::M256,
        mem_len: 1 << 20,
        ..PairOpts::default()
    };
    let (a, b) = pair(&mut sim, &o);
    let n = 150usize;
    let len = |i: usize| (i * 97) % 1500 + 1;
    for i in 0..n {
        a.fill(i * 2048, len(i), i as u8);
        sim.dev(b.host)
            .post_recv(
                b.qpn,
                RecvWr {
                    wr_id: i as u64,
                    sgl: vec![b.sge(i as u64 * 2048, 2048)],
                },
            )
            .unwrap();
    }
    for i in 0..n {
        let s = SendWr::new(
            i as u64,
            SendOp::SendWithImm(i as u32),
            Payload::Sgl(vec![a.sge(i as u64 * 2048, len(i) as u32)]),
        );
        sim.post_send(a.host, a.qpn, s).unwrap();
    }
    wait_completions(&mut sim, &a, n, LIMIT);
    settle(&mut sim, Duration::from_millis(5));
    let r = drain(&mut sim, &b);
    assert!(
        r.len() > n / 4 && r.len() < n,
        "some delivered, some lost: {}",
        r.len()
    );
    for c in &r {
        assert_eq!(c.status, WcStatus::Success);
        let i = c.imm.expect("imm") as usize;
        assert_eq!(c.byte_len as usize, len(i));
        let off = c.wr_id as usize * 2048;
        assert_eq!(
            b.read(off, len(i)),
            pattern(len(i), i as u8),
            "message {i} in WQE {}",
            c.wr_id
        );
    }
    assert!(sim.dev(b.host).counters().icrc_drops > 0);
}

fn ud_pair(sim: &mut Sim) -> (Endpoint, Endpoint, AhHandle) {
    let o = PairOpts {
        qp_type: QpType::Ud,
        mem_len: 1 << 20,
        ..PairOpts::default()
    };
    let (a, b) = pair(sim, &o);
    let ip = sim.hosts[b.host].ip;
    let ah = sim.dev(a.host).create_ah(a.pd, ip).unwrap();
    (a, b, ah)
}

fn ud_send(
    a: &Endpoint,
    b: &Endpoint,
    ah: AhHandle,
    id: u64,
    off: u64,
    len: u32,
    qkey: u32,
) -> SendWr {
    let mut w = SendWr::new(
        id,
        SendOp::SendWithImm(id as u32),
        Payload::Sgl(vec![a.sge(off, len)]),
    );
    w.ud = Some(UdDest {
        ah,
        remote_qpn: b.qpn,
        remote_qkey: qkey,
    });
    w
}

#[test]
fn ud_send_recv_with_grh() {
    let mut sim = Sim::new(73, Link::default());
    let (a, b, ah) = ud_pair(&mut sim);
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 5,
                sgl: vec![b.sge(0, 40), b.sge(100, 1000)],
            },
        )
        .unwrap();
    let data = a.fill(0, 700, 1);
    sim.post_send(a.host, a.qpn, ud_send(&a, &b, ah, 1, 0, 700, QKEY))
        .unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(
        (c[0].status, c[0].opcode, c[0].byte_len),
        (WcStatus::Success, WcOpcode::Send, 700)
    );
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!(
        (r[0].wr_id, r[0].status, r[0].opcode),
        (5, WcStatus::Success, WcOpcode::Recv)
    );
    assert_eq!(r[0].byte_len, 40 + 700);
    assert_eq!(r[0].src_qp, a.qpn);
    assert_eq!(r[0].imm, Some(1));
    assert!(r[0].grh);
    assert_eq!(
        b.read(100, 700),
        data,
        "data after the GRH, in the second SGE"
    );
    let grh = b.read(0, 40);
    assert!(grh[..20].iter().all(|x| *x == 0));
    assert_eq!(grh[20], 0x45, "IPv4 header in the last 20 bytes");
    assert_eq!(grh[29], 17, "UDP");
    assert_eq!(&grh[32..36], &[10, 0, 0, 1]);
    assert_eq!(&grh[36..40], &[10, 0, 0, 2]);
    assert!(b.read(1100, 100).iter().all(|x| *x == 0));
    assert_eq!(b.counters(&sim).acks_sent, 0, "UD is not acknowledged");
}

#[test]
fn ud_qkey_mismatch_is_dropped_and_high_bit_uses_the_qp_qkey() {
    let mut sim = Sim::new(74, Link::default());
    let (a, b, ah) = ud_pair(&mut sim);
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 1,
                sgl: vec![b.sge(0, 1064)],
            },
        )
        .unwrap();
    a.fill(0, 64, 2);
    // Wrong Q_Key: dropped, counted, the receive stays.
    sim.post_send(a.host, a.qpn, ud_send(&a, &b, ah, 1, 0, 64, 0x2222_2222))
        .unwrap();
    settle(&mut sim, Duration::from_millis(1));
    assert_eq!(drain(&mut sim, &a).len(), 1, "the sender cannot tell");
    assert!(drain(&mut sim, &b).is_empty());
    assert_eq!(b.counters(&sim).dropped, 1);
    // High bit set: the sender's QP Q_Key (the same as B's here) goes out: delivered.
    sim.post_send(a.host, a.qpn, ud_send(&a, &b, ah, 2, 0, 64, 0x8000_0000))
        .unwrap();
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!((r[0].wr_id, r[0].imm, r[0].byte_len), (1, Some(2), 104));
    drain(&mut sim, &a);
    // Change the sender QP's Q_Key: a high-bit WR now carries that one and is dropped, while
    // the explicit right Q_Key still gets through.
    sim.dev(a.host)
        .modify_qp(
            a.qpn,
            &QpAttr {
                qkey: Some(0x3333_3333),
                ..QpAttr::default()
            },
        )
        .unwrap();
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 2,
                sgl: vec![b.sge(0, 1064)],
            },
        )
        .unwrap();
    sim.post_send(a.host, a.qpn, ud_send(&a, &b, ah, 3, 0, 64, 0xFFFF_FFFF))
        .unwrap();
    sim.post_send(a.host, a.qpn, ud_send(&a, &b, ah, 4, 0, 64, QKEY))
        .unwrap();
    settle(&mut sim, Duration::from_millis(1));
    let r = drain(&mut sim, &b);
    assert_eq!(
        r.iter().map(|c| (c.wr_id, c.imm)).collect::<Vec<_>>(),
        [(2, Some(4))]
    );
    assert_eq!(b.counters(&sim).dropped, 2);
}

#[test]
fn ud_message_over_mtu_is_local_length_error() {
    let mut sim = Sim::new(75, Link::default());
    let (a, b, ah) = ud_pair(&mut sim);
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 1,
                sgl: vec![b.sge(0, 4096)],
            },
        )
        .unwrap();
    a.fill(0, 2000, 3);
    // The UD QP's path MTU is the default 1024.
    sim.post_send(a.host, a.qpn, ud_send(&a, &b, ah, 1, 0, 1025, QKEY))
        .unwrap();
    sim.post_send(a.host, a.qpn, ud_send(&a, &b, ah, 2, 0, 1024, QKEY))
        .unwrap();
    let c = wait_completions(&mut sim, &a, 2, LIMIT);
    assert_eq!(
        c.iter().map(|c| (c.wr_id, c.status)).collect::<Vec<_>>(),
        [(1, WcStatus::LocLenErr), (2, WcStatus::Success)]
    );
    assert_eq!(
        a.counters(&sim).tx_packets,
        1,
        "nothing sent for the oversized message"
    );
    assert_eq!(
        a.state(&sim),
        uroce_proto::QpState::Rts,
        "a UD length error is not fatal"
    );
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!((r[0].imm, r[0].byte_len), (Some(2), 40 + 1024));
}

#[test]
fn ud_receive_too_small_is_local_length_error() {
    let mut sim = Sim::new(76, Link::default());
    let (a, b, ah) = ud_pair(&mut sim);
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 1,
                sgl: vec![b.sge(0, 40 + 99)],
            },
        )
        .unwrap();
    a.fill(0, 100, 3);
    sim.post_send(a.host, a.qpn, ud_send(&a, &b, ah, 1, 0, 100, QKEY))
        .unwrap();
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!((r[0].wr_id, r[0].status), (1, WcStatus::LocLenErr));
    assert!(b.mem.to_vec().iter().all(|x| *x == 0), "nothing written");
}

#[test]
fn ud_never_delivers_a_corrupted_byte() {
    let mut sim = Sim::new(
        77,
        Link {
            corrupt: 0.3,
            ..Link::default()
        },
    );
    let (a, b, ah) = ud_pair(&mut sim);
    let n = 300usize;
    let len = |i: usize| (i * 89) % 1024 + 1;
    for i in 0..n {
        a.fill(i * 1100, len(i), i as u8);
        let r = RecvWr {
            wr_id: i as u64,
            sgl: vec![b.sge(i as u64 * 1100, 1100)],
        };
        sim.dev(b.host).post_recv(b.qpn, r).unwrap();
    }
    for i in 0..n {
        let s = ud_send(&a, &b, ah, i as u64, i as u64 * 1100, len(i) as u32, QKEY);
        sim.post_send(a.host, a.qpn, s).unwrap();
    }
    wait_completions(&mut sim, &a, n, LIMIT);
    settle(&mut sim, Duration::from_millis(5));
    let r = drain(&mut sim, &b);
    assert!(r.len() > n / 2 && r.len() < n, "{}", r.len());
    for c in &r {
        assert_eq!(c.status, WcStatus::Success);
        assert_eq!(c.src_qp, a.qpn);
        let i = c.imm.expect("imm") as usize;
        assert_eq!(c.byte_len as usize, 40 + len(i));
        let off = c.wr_id as usize * 1100 + 40;
        assert_eq!(b.read(off, len(i)), pattern(len(i), i as u8), "message {i}");
    }
    let d = sim.dev(b.host).counters();
    assert!(d.icrc_drops > 0);
    // Every packet is accounted for: delivered, or dropped by the ICRC or another check.
    let device_drops = d.icrc_drops + d.malformed + d.bad_pkey + d.unknown_qp + d.wrong_qp;
    assert_eq!(
        r.len() as u64 + device_drops + b.counters(&sim).dropped,
        n as u64
    );
}

/// UC has no SEND-with-Invalidate opcodes (IBTA §9.2.3 defines 0x16/0x17 for RC only): the
/// WR must not go out as RC packets that the peer's UC QP drops while the sender reports
/// success.
#[test]
fn uc_send_with_invalidate_is_refused() {
    let mut sim = Sim::new(78, Link::default());
    let (a, b) = pair(
        &mut sim,
        &PairOpts {
            qp_type: QpType::Uc,
            ..PairOpts::default()
        },
    );
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 1,
                sgl: vec![b.sge(0, 64)],
            },
        )
        .unwrap();
    let s = SendWr::new(
        1,
        SendOp::SendWithInv(b.keys.rkey),
        Payload::Sgl(vec![a.sge(0, 8)]),
    );
    assert!(matches!(
        sim.post_send(a.host, a.qpn, s),
        Err(uroce_proto::Error::InvalidArgument(_))
    ));
    settle(&mut sim, Duration::from_millis(1));
    assert!(drain(&mut sim, &a).is_empty());
    assert_eq!(a.counters(&sim).tx_packets, 0);
    // A UD QP refuses it too.
    let mut sim = Sim::new(79, Link::default());
    let (a, b, ah) = ud_pair(&mut sim);
    let mut s = SendWr::new(1, SendOp::SendWithInv(1), Payload::Sgl(vec![a.sge(0, 8)]));
    s.ud = Some(UdDest {
        ah,
        remote_qpn: b.qpn,
        remote_qkey: QKEY,
    });
    assert!(matches!(
        sim.post_send(a.host, a.qpn, s),
        Err(uroce_proto::Error::InvalidArgument(_))
    ));
}

#[test]
fn ud_to_unknown_qpn_is_counted() {
    let mut sim = Sim::new(80, Link::default());
    let (a, b, ah) = ud_pair(&mut sim);
    let mut s = SendWr::new(1, SendOp::Send, Payload::Sgl(vec![a.sge(0, 8)]));
    s.ud = Some(UdDest {
        ah,
        remote_qpn: b.qpn + 100,
        remote_qkey: QKEY,
    });
    sim.post_send(a.host, a.qpn, s).unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(c[0].status, WcStatus::Success, "UD cannot know");
    settle(&mut sim, Duration::from_millis(1));
    assert_eq!(sim.dev(b.host).counters().unknown_qp, 1);
    assert!(drain(&mut sim, &b).is_empty());
}

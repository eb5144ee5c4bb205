//! More RC behaviour: PSN wrap-around under loss, exactly-once receives under duplication,
//! compare-and-swap mismatch, SQD, fences, solicited CQ events, READ scatter and the queue
//! limits.

use std::net::IpAddr;
use std::time::Duration;

use uroce_proto::{
    Error, Payload, QpAttr, QpState, RecvWr, RegionMemory, SendOp, SendWr, WcOpcode, WcStatus,
};
use uroce_sim::scenario::{
    drain, endpoint, opcode_of, pair, record_packets, settle, wait_completions, Endpoint, PairOpts,
};
use uroce_sim::{Link, Sim};
use uroce_wire::Opcode;

const LIMIT: Duration = Duration::from_secs(2);

/// `bring_up` with explicit PSNs: `psn` is both `a`'s send PSN and `b`'s expected one.
fn connect_with_psn(sim: &mut Sim, a: &Endpoint, b: &Endpoint, o: &PairOpts, psn: u32) {
    let peer: IpAddr = sim.hosts[b.host].ip;
    let dev = sim.dev(a.host);
    let st = |s| Some(s);
    dev.modify_qp(
        a.qpn,
        &QpAttr {
            state: st(QpState::Init),
            pkey_index: Some(0),
            port: Some(1),
            access: Some(o.access),
            ..QpAttr::default()
        },
    )
    .unwrap();
    dev.modify_qp(
        a.qpn,
        &QpAttr {
            state: st(QpState::Rtr),
            path_mtu: Some(o.mtu),
            dest_ip: Some(peer),
            dest_qpn: Some(b.qpn),
            rq_psn: Some(psn),
            max_dest_rd_atomic: Some(o.rd_atomic),
            min_rnr_timer: Some(o.min_rnr_timer),
            ..QpAttr::default()
        },
    )
    .unwrap();
    dev.modify_qp(
        a.qpn,
        &QpAttr {
            state: st(QpState::Rts),
            sq_psn: Some(psn),
            timeout: Some(o.timeout),
            retry_cnt: Some(o.retry_cnt),
            rnr_retry: Some(o.rnr_retry),
            max_rd_atomic: Some(o.rd_atomic),
            ..QpAttr::default()
        },
    )
    .unwrap();
}

/// Every operation across the 24-bit PSN wrap, with loss, reordering and duplication.
#[test]
fn psn_wraparound_under_faults() {
    for seed in 0..20 {
        let link = Link {
            loss: 0.03,
            reorder: 0.03,
            duplicate: 0.02,
            ..Link::default()
        };
        let mut sim = Sim::new(100 + seed, link);
        let o = PairOpts {
            mem_len: 1 << 20,
            timeout: 8,
            ..PairOpts::default()
        };
        let h0 = sim.add_host([10, 0, 0, 1].into());
        let h1 = sim.add_host([10, 0, 0, 2].into());
        let a = endpoint(&mut sim, h0, &o);
        let b = endpoint(&mut sim, h1, &o);
        let psn = 0xFF_FFFF - 20;
        connect_with_psn(&mut sim, &a, &b, &o, psn);
        connect_with_psn(&mut sim, &b, &a, &o, psn);
        let src = a.fill(0, 200_000, seed as u8);
        let remote = b.fill(500_000, 100_000, !seed as u8);
        b.mem.write(900_000, &10u64.to_ne_bytes());
        sim.dev(b.host)
            .post_recv(
                b.qpn,
                RecvWr {
                    wr_id: 1,
                    sgl: vec![b.sge(300_000, 50_000)],
                },
            )
            .unwrap();
        let wrs = [
            SendWr::new(
                0,
                SendOp::RdmaWrite {
                    remote_addr: b.base,
                    rkey: b.keys.rkey,
                },
                Payload::Sgl(vec![a.sge(0, 40_000)]),
            ),
            SendWr::new(
                1,
                SendOp::RdmaRead {
                    remote_addr: b.base + 500_000,
                    rkey: b.keys.rkey,
                },
                Payload::Sgl(vec![a.sge(300_000, 100_000)]),
            ),
            SendWr::new(2, SendOp::Send, Payload::Sgl(vec![a.sge(40_000, 50_000)])),
            SendWr::new(
                3,
                SendOp::FetchAdd {
                    remote_addr: b.base + 900_000,
                    rkey: b.keys.rkey,
                    add: 5,
                },
                Payload::Sgl(vec![a.sge(600_000, 8)]),
            ),
        ];
        for w in wrs {
            sim.post_send(a.host, a.qpn, w).unwrap();
        }
        let c = wait_completions(&mut sim, &a, 4, LIMIT);
        assert_eq!(
            c.iter().map(|c| c.wr_id).collect::<Vec<_>>(),
            [0, 1, 2, 3],
            "seed {seed}"
        );
        assert!(
            c.iter().all(|c| c.status == WcStatus::Success),
            "seed {seed}: {c:?}"
        );
        settle(&mut sim, Duration::from_millis(20));
        let r = drain(&mut sim, &b);
        assert_eq!(r.len(), 1, "seed {seed}: {r:?}");
        assert_eq!((r[0].status, r[0].byte_len), (WcStatus::Success, 50_000));
        assert_eq!(b.read(0, 40_000), src[..40_000], "seed {seed}");
        assert_eq!(b.read(300_000, 50_000), src[40_000..90_000], "seed {seed}");
        assert_eq!(a.read(300_000, 100_000), remote, "seed {seed}");
        assert_eq!(a.read(600_000, 8), 10u64.to_ne_bytes(), "seed {seed}");
        assert_eq!(
            b.read(900_000, 8),
            15u64.to_ne_bytes(),
            "seed {seed}: added once"
        );
    }
}

/// With every packet delivered twice, each SEND and WRITE-with-immediate still consumes
/// exactly one receive and completes exactly once.
#[test]
fn duplicated_sends_are_received_once() {
    let mut sim = Sim::new(
        110,
        Link {
            duplicate: 1.0,
            ..Link::default()
        },
    );
    let (a, b) = pair(&mut sim, &PairOpts::default());
    for i in 0..6u64 {
        sim.dev(b.host)
            .post_recv(
                b.qpn,
                RecvWr {
                    wr_id: i,
                    sgl: vec![b.sge(i * 4096, 4096)],
                },
            )
            .unwrap();
    }
    let data = a.fill(0, 3000, 7);
    for i in 0..4u64 {
        let op = if i % 2 == 0 {
            SendOp::SendWithImm(i as u32)
        } else {
            SendOp::RdmaWriteWithImm {
                remote_addr: b.base + 40_000,
                rkey: b.keys.rkey,
                imm: i as u32,
            }
        };
        sim.post_send(
            a.host,
            a.qpn,
            SendWr::new(i, op, Payload::Sgl(vec![a.sge(0, 3000)])),
        )
        .unwrap();
    }
    let c = wait_completions(&mut sim, &a, 4, LIMIT);
    assert!(c.iter().all(|c| c.status == WcStatus::Success));
    settle(&mut sim, Duration::from_millis(5));
    let r = drain(&mut sim, &b);
    assert_eq!(
        r.iter()
            .map(|c| (c.wr_id, c.opcode, c.imm))
            .collect::<Vec<_>>(),
        [
            (0, WcOpcode::Recv, Some(0)),
            (1, WcOpcode::RecvRdmaWithImm, Some(1)),
            (2, WcOpcode::Recv, Some(2)),
            (3, WcOpcode::RecvRdmaWithImm, Some(3)),
        ]
    );
    assert_eq!(b.read(0, 3000), data);
    assert_eq!(b.read(8192, 3000), data);
    assert_eq!(b.read(40_000, 3000), data);
    assert!(b.counters(&sim).duplicates > 0);
    assert!(drain(&mut sim, &a).is_empty());
}

#[test]
fn compare_swap_mismatch_returns_the_value_and_leaves_it() {
    let mut sim = Sim::new(111, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    b.mem.write(16, &77u64.to_ne_bytes());
    let cs = SendWr::new(
        1,
        SendOp::CompareSwap {
            remote_addr: b.base + 16,
            rkey: b.keys.rkey,
            compare: 78,
            swap: 1,
        },
        Payload::Sgl(vec![a.sge(0, 8)]),
    );
    sim.post_send(a.host, a.qpn, cs).unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(
        (c[0].status, c[0].opcode, c[0].byte_len),
        (WcStatus::Success, WcOpcode::CompSwap, 8)
    );
    assert_eq!(a.read(0, 8), 77u64.to_ne_bytes());
    assert_eq!(b.read(16, 8), 77u64.to_ne_bytes());
}

#[test]
fn read_scatters_into_several_sges_and_zero_length_read() {
    let mut sim = Sim::new(112, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let data = b.fill(0, 5000, 3);
    let rd = SendWr::new(
        1,
        SendOp::RdmaRead {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(100, 1), a.sge(1000, 2999), a.sge(10_000, 2000)]),
    );
    sim.post_send(a.host, a.qpn, rd).unwrap();
    let zero = SendWr::new(
        2,
        SendOp::RdmaRead {
            remote_addr: 0,
            rkey: 0,
        },
        Payload::Sgl(vec![]),
    );
    sim.post_send(a.host, a.qpn, zero).unwrap();
    let c = wait_completions(&mut sim, &a, 2, LIMIT);
    assert_eq!(
        c.iter()
            .map(|c| (c.wr_id, c.status, c.byte_len))
            .collect::<Vec<_>>(),
        [(1, WcStatus::Success, 5000), (2, WcStatus::Success, 0)]
    );
    assert_eq!(a.read(100, 1), data[..1]);
    assert_eq!(a.read(1000, 2999), data[1..3000]);
    assert_eq!(a.read(10_000, 2000), data[3000..]);
    assert_eq!(a.read(101, 899), vec![0; 899]);
}

#[test]
fn sqd_holds_new_wqes_until_rts() {
    let mut sim = Sim::new(113, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    a.fill(0, 100, 1);
    let to = |s| QpAttr {
        state: Some(s),
        ..QpAttr::default()
    };
    sim.dev(a.host).modify_qp(a.qpn, &to(QpState::Sqd)).unwrap();
    let w = SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 100)]),
    );
    sim.post_send(a.host, a.qpn, w).unwrap();
    settle(&mut sim, Duration::from_millis(1));
    assert!(drain(&mut sim, &a).is_empty());
    assert_eq!(a.counters(&sim).tx_packets, 0, "SQD starts no new WQE");
    sim.dev(a.host).modify_qp(a.qpn, &to(QpState::Rts)).unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(c[0].status, WcStatus::Success);
    assert_eq!(b.read(0, 100), a.read(0, 100));
}

#[test]
fn fenced_wqe_waits_for_the_read_before_it() {
    let mut sim = Sim::new(114, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let remote = b.fill(0, 8192, 5);
    let log = record_packets(&mut sim);
    let rd = SendWr::new(
        1,
        SendOp::RdmaRead {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 8192)]),
    );
    // The fenced WRITE sends what the READ brought in: without the fence it would send zeros.
    let mut w = SendWr::new(
        2,
        SendOp::RdmaWrite {
            remote_addr: b.base + 20_000,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 8192)]),
    );
    w.flags.fence = true;
    sim.post_send(a.host, a.qpn, rd).unwrap();
    sim.post_send(a.host, a.qpn, w).unwrap();
    let c = wait_completions(&mut sim, &a, 2, LIMIT);
    assert!(c.iter().all(|c| c.status == WcStatus::Success));
    let ops: Vec<Opcode> = log
        .borrow()
        .iter()
        .filter_map(|p| opcode_of(&p.bytes))
        .collect();
    let last_resp = ops
        .iter()
        .rposition(|o| *o == Opcode::RcReadResponseLast)
        .unwrap();
    // Split (the default): the WRITE's packets are WRITE ONLYs.
    let first_write = ops.iter().position(|o| *o == Opcode::RcWriteOnly).unwrap();
    assert!(first_write > last_resp, "{ops:?}");
    assert_eq!(b.read(20_000, 8192), remote);
}

#[test]
fn solicited_only_arm_fires_on_solicited_receive() {
    let mut sim = Sim::new(115, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    for i in 0..2 {
        sim.dev(b.host)
            .post_recv(
                b.qpn,
                RecvWr {
                    wr_id: i,
                    sgl: vec![b.sge(0, 64)],
                },
            )
            .unwrap();
    }
    sim.dev(b.host).req_notify_cq(b.cq, true).unwrap();
    sim.post_send(
        a.host,
        a.qpn,
        SendWr::new(1, SendOp::Send, Payload::Inline(vec![1; 8])),
    )
    .unwrap();
    wait_completions(&mut sim, &a, 1, LIMIT);
    settle(&mut sim, Duration::from_micros(100));
    assert_eq!(
        sim.dev(b.host).poll_cq_event(),
        None,
        "unsolicited receive: no event"
    );
    let mut s = SendWr::new(2, SendOp::Send, Payload::Inline(vec![2; 8]));
    s.flags.solicited = true;
    sim.post_send(a.host, a.qpn, s).unwrap();
    wait_completions(&mut sim, &a, 1, LIMIT);
    settle(&mut sim, Duration::from_micros(100));
    assert_eq!(sim.dev(b.host).poll_cq_event(), Some(b.cq));
    assert_eq!(sim.dev(b.host).poll_cq_event(), None, "one event per arm");
    let r = drain(&mut sim, &b);
    assert_eq!(
        r.iter().map(|c| c.solicited).collect::<Vec<_>>(),
        [false, true]
    );
}

#[test]
fn queue_limits() {
    let mut sim = Sim::new(116, Link::default());
    let mut o = PairOpts::default();
    o.cap.max_send_wr = 2;
    o.cap.max_recv_wr = 1;
    o.cap.max_send_sge = 2;
    let (a, b) = pair(&mut sim, &o);
    let w = |id| SendWr::new(id, SendOp::Send, Payload::Sgl(vec![a.sge(0, 1)]));
    let three = SendWr::new(4, SendOp::Send, Payload::Sgl(vec![a.sge(0, 1); 3]));
    assert!(matches!(
        sim.post_send(a.host, a.qpn, three),
        Err(Error::InvalidArgument(_))
    ));
    sim.post_send(a.host, a.qpn, w(1)).unwrap();
    sim.post_send(a.host, a.qpn, w(2)).unwrap();
    assert_eq!(
        sim.post_send(a.host, a.qpn, w(3)),
        Err(Error::QueueFull("send"))
    );
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 1,
                sgl: vec![],
            },
        )
        .unwrap();
    assert_eq!(
        sim.dev(b.host).post_recv(
            b.qpn,
            RecvWr {
                wr_id: 2,
                sgl: vec![]
            }
        ),
        Err(Error::QueueFull("receive"))
    );
    // An atomic needs exactly 8 bytes of local buffer.
    let fa = SendWr::new(
        5,
        SendOp::FetchAdd {
            remote_addr: b.base,
            rkey: b.keys.rkey,
            add: 1,
        },
        Payload::Sgl(vec![a.sge(0, 4)]),
    );
    let mut sim2 = Sim::new(117, Link::default());
    let (a2, _) = pair(&mut sim2, &PairOpts::default());
    assert!(matches!(
        sim2.post_send(a2.host, a2.qpn, fa),
        Err(Error::InvalidArgument(_))
    ));
}

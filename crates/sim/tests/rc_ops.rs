//! Every RC opcode over a clean simulated link: completion status and fields, the bytes in
//! memory (inside and around the target), and the counters.

use std::time::Duration;

use uroce_proto::{
    Access, Mtu, Payload, QpAttr, QpState, RecvWr, SendOp, SendWr, VecMemory, WcOpcode, WcStatus,
};
use uroce_sim::scenario::{drain, pair, pattern, settle, wait_completions, PairOpts};
use uroce_sim::{Link, Sim};

const LIMIT: Duration = Duration::from_secs(1);

fn zeros(v: &[u8]) -> bool {
    v.iter().all(|x| *x == 0)
}

#[test]
fn send_scatters_into_multi_sge_receive() {
    let mut sim = Sim::new(10, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let data = a.fill(0, 5000, 1);
    let recv = RecvWr {
        wr_id: 70,
        sgl: vec![b.sge(100, 1000), b.sge(20_000, 10), b.sge(30_000, 6000)],
    };
    sim.dev(b.host).post_recv(b.qpn, recv).unwrap();
    let wr = SendWr::new(
        1,
        SendOp::Send,
        Payload::Sgl(vec![a.sge(0, 3000), a.sge(3000, 2000)]),
    );
    sim.post_send(a.host, a.qpn, wr).unwrap();
    let s = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(
        (s[0].wr_id, s[0].status, s[0].opcode),
        (1, WcStatus::Success, WcOpcode::Send)
    );
    assert_eq!(s[0].byte_len, 5000);
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!(
        (r[0].wr_id, r[0].status, r[0].opcode),
        (70, WcStatus::Success, WcOpcode::Recv)
    );
    assert_eq!(r[0].byte_len, 5000);
    assert_eq!(r[0].imm, None);
    assert_eq!(r[0].qp_num, b.qpn);
    assert!(!r[0].solicited);
    let m = b.mem.to_vec();
    assert_eq!(&m[100..1100], &data[..1000]);
    assert_eq!(&m[20_000..20_010], &data[1000..1010]);
    assert_eq!(&m[30_000..33_990], &data[1010..]);
    assert!(zeros(&m[..100]) && zeros(&m[1100..20_000]) && zeros(&m[20_010..30_000]));
    assert!(
        zeros(&m[33_990..]),
        "the unused tail of the last SGE stays untouched"
    );
    let (ca, cb) = (a.counters(&sim), b.counters(&sim));
    assert_eq!(ca.tx_packets, 5, "5000 B at MTU 1024");
    assert_eq!(cb.rx_packets, 5);
    assert_eq!(cb.acks_sent, 1, "one ACK for the AckReq on the last packet");
    assert_eq!(ca.retransmits + ca.timeouts + cb.duplicates, 0);
}

#[test]
fn zero_length_send_and_write() {
    let mut sim = Sim::new(11, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let recv = RecvWr {
        wr_id: 5,
        sgl: vec![b.sge(0, 64)],
    };
    sim.dev(b.host).post_recv(b.qpn, recv).unwrap();
    // A zero-length receive buffer list too: a zero-length SEND fits it.
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 6,
                sgl: vec![],
            },
        )
        .unwrap();
    sim.post_send(
        a.host,
        a.qpn,
        SendWr::new(1, SendOp::Send, Payload::Sgl(vec![])),
    )
    .unwrap();
    sim.post_send(
        a.host,
        a.qpn,
        SendWr::new(2, SendOp::Send, Payload::Sgl(vec![a.sge(0, 0)])),
    )
    .unwrap();
    // A zero-length WRITE checks no key (IBTA §9.4.1): even a bogus rkey succeeds.
    let w = SendWr::new(
        3,
        SendOp::RdmaWrite {
            remote_addr: 0xdead_0000,
            rkey: 0x1234_5678,
        },
        Payload::Sgl(vec![]),
    );
    sim.post_send(a.host, a.qpn, w).unwrap();
    let s = wait_completions(&mut sim, &a, 3, LIMIT);
    assert_eq!(s.iter().map(|c| c.wr_id).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(
        s.iter()
            .all(|c| c.status == WcStatus::Success && c.byte_len == 0),
        "{s:?}"
    );
    let r = wait_completions(&mut sim, &b, 2, LIMIT);
    assert_eq!(
        r.iter().map(|c| (c.wr_id, c.byte_len)).collect::<Vec<_>>(),
        [(5, 0), (6, 0)]
    );
    assert!(r.iter().all(|c| c.status == WcStatus::Success));
    assert!(zeros(&b.mem.to_vec()));
    assert_eq!(
        a.counters(&sim).tx_packets,
        3,
        "each zero-length message is one packet"
    );
}

#[test]
fn send_with_invalidate_kills_the_rkey() {
    let mut sim = Sim::new(12, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    // A second region on B, which A's SEND will invalidate (it allows that).
    let mem2 = VecMemory::zeroed(4096);
    let acc = Access::LOCAL_WRITE
        | Access::REMOTE_WRITE
        | Access::REMOTE_READ
        | Access::REMOTE_INVALIDATE;
    let k2 = sim
        .dev(b.host)
        .reg_mr(b.pd, 0x7000_0000, mem2.clone(), acc)
        .unwrap();
    // It works before.
    let src = a.fill(0, 100, 3);
    let w = SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: 0x7000_0000,
            rkey: k2.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 100)]),
    );
    sim.post_send(a.host, a.qpn, w).unwrap();
    assert_eq!(
        wait_completions(&mut sim, &a, 1, LIMIT)[0].status,
        WcStatus::Success
    );
    assert_eq!(&mem2.to_vec()[..100], &src[..]);

    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 9,
                sgl: vec![b.sge(0, 2000)],
            },
        )
        .unwrap();
    let data = a.fill(1000, 1500, 4);
    let s = SendWr::new(
        2,
        SendOp::SendWithInv(k2.rkey),
        Payload::Sgl(vec![a.sge(1000, 1500)]),
    );
    sim.post_send(a.host, a.qpn, s).unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(
        (c[0].wr_id, c[0].status, c[0].opcode),
        (2, WcStatus::Success, WcOpcode::Send)
    );
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!((r[0].wr_id, r[0].status), (9, WcStatus::Success));
    assert_eq!(r[0].invalidated_rkey, Some(k2.rkey));
    assert_eq!(r[0].byte_len, 1500);
    assert_eq!(b.read(0, 1500), data);

    // Now the rkey is dead: a WRITE to it fails with a remote access error.
    let before = mem2.to_vec();
    let w = SendWr::new(
        3,
        SendOp::RdmaWrite {
            remote_addr: 0x7000_0000,
            rkey: k2.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 100)]),
    );
    a.fill(0, 100, 99);
    sim.post_send(a.host, a.qpn, w).unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!((c[0].wr_id, c[0].status), (3, WcStatus::RemAccessErr));
    assert_eq!(
        mem2.to_vec(),
        before,
        "nothing written through an invalidated rkey"
    );
    assert_eq!(b.counters(&sim).naks_sent[2], 1);
    assert_eq!(a.counters(&sim).naks_received[2], 1);
}

#[test]
fn send_with_invalidate_of_a_region_without_remote_invalidate_is_refused() {
    // An ordinary region (no REMOTE_INVALIDATE) cannot be revoked by a peer: the SEND is an
    // invalid request (rxe refuses to invalidate a user MR likewise) and the rkey still works.
    let mut sim = Sim::new(15, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let mem2 = VecMemory::zeroed(4096);
    let acc = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
    let k2 = sim
        .dev(b.host)
        .reg_mr(b.pd, 0x7000_0000, mem2.clone(), acc)
        .unwrap();
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 9,
                sgl: vec![b.sge(0, 64)],
            },
        )
        .unwrap();
    let s = SendWr::new(1, SendOp::SendWithInv(k2.rkey), Payload::Sgl(vec![]));
    sim.post_send(a.host, a.qpn, s).unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(c[0].status, WcStatus::RemInvReqErr);
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!((r[0].wr_id, r[0].status), (9, WcStatus::RemInvReqErr));
    assert_eq!(b.counters(&sim).naks_sent[1], 1);
    // The region is still valid: with both QPs reset and reconnected, a WRITE through the
    // same rkey lands.
    for ep in [&a, &b] {
        let reset = QpAttr {
            state: Some(QpState::Reset),
            ..QpAttr::default()
        };
        sim.dev(ep.host).modify_qp(ep.qpn, &reset).unwrap();
    }
    let o = PairOpts::default();
    uroce_sim::scenario::bring_up(&mut sim, &a, &b, &o);
    uroce_sim::scenario::bring_up(&mut sim, &b, &a, &o);
    let src = a.fill(0, 100, 5);
    let w = SendWr::new(
        2,
        SendOp::RdmaWrite {
            remote_addr: 0x7000_0000,
            rkey: k2.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 100)]),
    );
    sim.post_send(a.host, a.qpn, w).unwrap();
    assert_eq!(
        wait_completions(&mut sim, &a, 1, LIMIT)[0].status,
        WcStatus::Success
    );
    assert_eq!(&mem2.to_vec()[..100], &src[..]);
}

#[test]
fn send_with_invalidate_of_unknown_rkey_is_an_invalid_request() {
    let mut sim = Sim::new(13, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 9,
                sgl: vec![b.sge(0, 64)],
            },
        )
        .unwrap();
    let s = SendWr::new(
        1,
        SendOp::SendWithInv(0x00BA_D000),
        Payload::Sgl(vec![a.sge(0, 8)]),
    );
    sim.post_send(a.host, a.qpn, s).unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(c[0].status, WcStatus::RemInvReqErr);
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!((r[0].wr_id, r[0].status), (9, WcStatus::RemInvReqErr));
    assert_eq!(b.counters(&sim).naks_sent[1], 1);
}

#[test]
fn send_with_imm_carries_imm_and_solicited() {
    let mut sim = Sim::new(14, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    for id in [1, 2] {
        sim.dev(b.host)
            .post_recv(
                b.qpn,
                RecvWr {
                    wr_id: id,
                    sgl: vec![b.sge(0, 4096)],
                },
            )
            .unwrap();
    }
    let data = a.fill(0, 2500, 5);
    let mut s = SendWr::new(
        1,
        SendOp::SendWithImm(0x0102_0304),
        Payload::Sgl(vec![a.sge(0, 2500)]),
    );
    s.flags.solicited = true;
    sim.post_send(a.host, a.qpn, s).unwrap();
    let s2 = SendWr::new(2, SendOp::SendWithImm(7), Payload::Sgl(vec![a.sge(0, 10)]));
    sim.post_send(a.host, a.qpn, s2).unwrap();
    let c = wait_completions(&mut sim, &a, 2, LIMIT);
    assert!(c
        .iter()
        .all(|c| c.status == WcStatus::Success && c.opcode == WcOpcode::Send));
    let r = wait_completions(&mut sim, &b, 2, LIMIT);
    assert_eq!(
        (r[0].wr_id, r[0].byte_len, r[0].imm, r[0].solicited),
        (1, 2500, Some(0x0102_0304), true)
    );
    assert_eq!(
        (r[1].wr_id, r[1].byte_len, r[1].imm, r[1].solicited),
        (2, 10, Some(7), false)
    );
    assert_eq!(b.read(0, 10), data[..10]);
    assert_eq!(
        b.read(10, 2490),
        data[10..2500],
        "second SEND overwrote only its 10 bytes"
    );
}

#[test]
fn write_with_imm_consumes_a_receive() {
    let mut sim = Sim::new(15, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 40,
                sgl: vec![b.sge(60_000, 16)],
            },
        )
        .unwrap();
    let data = a.fill(0, 3000, 6);
    let mut w = SendWr::new(
        1,
        SendOp::RdmaWriteWithImm {
            remote_addr: b.base + 1000,
            rkey: b.keys.rkey,
            imm: 0xCAFE,
        },
        Payload::Sgl(vec![a.sge(0, 3000)]),
    );
    w.flags.solicited = true;
    sim.post_send(a.host, a.qpn, w).unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(
        (c[0].status, c[0].opcode, c[0].byte_len),
        (WcStatus::Success, WcOpcode::RdmaWrite, 3000)
    );
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!(r[0].wr_id, 40);
    assert_eq!(r[0].status, WcStatus::Success);
    assert_eq!(r[0].opcode, WcOpcode::RecvRdmaWithImm);
    assert_eq!(r[0].imm, Some(0xCAFE));
    assert_eq!(r[0].byte_len, 3000);
    assert!(r[0].solicited);
    let m = b.mem.to_vec();
    assert_eq!(&m[1000..4000], &data[..]);
    assert!(
        zeros(&m[..1000]) && zeros(&m[4000..]),
        "receive buffer untouched by WRITE data"
    );
    // A plain WRITE consumes no receive: with none posted it still succeeds, no RNR.
    let w = SendWr::new(
        2,
        SendOp::RdmaWrite {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 10)]),
    );
    sim.post_send(a.host, a.qpn, w).unwrap();
    assert_eq!(
        wait_completions(&mut sim, &a, 1, LIMIT)[0].status,
        WcStatus::Success
    );
    assert_eq!(b.counters(&sim).rnr_naks_sent, 0);
    assert!(drain(&mut sim, &b).is_empty());
}

#[test]
fn write_with_imm_without_receive_is_rnr_then_succeeds() {
    let mut sim = Sim::new(16, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let data = a.fill(0, 2048, 8);
    let w = SendWr::new(
        1,
        SendOp::RdmaWriteWithImm {
            remote_addr: b.base,
            rkey: b.keys.rkey,
            imm: 1,
        },
        Payload::Sgl(vec![a.sge(0, 2048)]),
    );
    sim.post_send(a.host, a.qpn, w).unwrap();
    settle(&mut sim, Duration::from_micros(200));
    assert!(drain(&mut sim, &a).is_empty());
    assert!(b.counters(&sim).rnr_naks_sent > 0);
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 2,
                sgl: vec![],
            },
        )
        .unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(c[0].status, WcStatus::Success);
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!(
        (r[0].opcode, r[0].imm, r[0].byte_len),
        (WcOpcode::RecvRdmaWithImm, Some(1), 2048)
    );
    assert_eq!(b.read(0, 2048), data);
}

#[test]
fn inline_send_and_write_need_no_lkey() {
    let mut sim = Sim::new(17, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 1,
                sgl: vec![b.sge(0, 256)],
            },
        )
        .unwrap();
    let msg = pattern(200, 42);
    sim.post_send(
        a.host,
        a.qpn,
        SendWr::new(1, SendOp::Send, Payload::Inline(msg.clone())),
    )
    .unwrap();
    let w = SendWr::new(
        2,
        SendOp::RdmaWrite {
            remote_addr: b.base + 500,
            rkey: b.keys.rkey,
        },
        Payload::Inline(msg[..50].to_vec()),
    );
    sim.post_send(a.host, a.qpn, w).unwrap();
    // Longer than max_inline_data (256) is refused at post time.
    let long = SendWr::new(3, SendOp::Send, Payload::Inline(vec![0; 257]));
    assert!(matches!(
        sim.post_send(a.host, a.qpn, long),
        Err(uroce_proto::Error::InvalidArgument(_))
    ));
    let c = wait_completions(&mut sim, &a, 2, LIMIT);
    assert_eq!(
        c.iter()
            .map(|c| (c.wr_id, c.status, c.byte_len))
            .collect::<Vec<_>>(),
        [(1, WcStatus::Success, 200), (2, WcStatus::Success, 50)]
    );
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!(r[0].byte_len, 200);
    assert_eq!(b.read(0, 200), msg);
    assert_eq!(b.read(500, 50), msg[..50]);
    assert!(
        zeros(&a.mem.to_vec()),
        "inline data never came from A's region"
    );
}

#[test]
fn unsignaled_success_is_silent_but_errors_and_flushes_complete() {
    let mut sim = Sim::new(18, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let data = a.fill(0, 4096, 9);
    let write = |id: u64, off: u64, signaled: bool| {
        let mut w = SendWr::new(
            id,
            SendOp::RdmaWrite {
                remote_addr: b.base + off,
                rkey: b.keys.rkey,
            },
            Payload::Sgl(vec![a.sge(off, 1024)]),
        );
        w.flags.signaled = signaled;
        w
    };
    sim.post_send(a.host, a.qpn, write(1, 0, false)).unwrap();
    sim.post_send(a.host, a.qpn, write(2, 1024, false)).unwrap();
    sim.post_send(a.host, a.qpn, write(3, 2048, true)).unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    settle(&mut sim, Duration::from_millis(1));
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].wr_id, c[0].status), (3, WcStatus::Success));
    assert!(
        drain(&mut sim, &a).is_empty(),
        "no completion for the unsignaled WRs"
    );
    assert_eq!(b.read(0, 3072), data[..3072]);

    // An unsignaled WR that fails completes anyway, and the unsignaled WRs behind it flush.
    let mut bad = write(4, 0, false);
    bad.op = SendOp::RdmaWrite {
        remote_addr: b.base,
        rkey: b.keys.rkey ^ 0x100,
    };
    sim.post_send(a.host, a.qpn, bad).unwrap();
    sim.post_send(a.host, a.qpn, write(5, 3072, false)).unwrap();
    sim.post_send(a.host, a.qpn, write(6, 3072, false)).unwrap();
    let c = wait_completions(&mut sim, &a, 3, LIMIT);
    assert_eq!(
        c.iter().map(|c| (c.wr_id, c.status)).collect::<Vec<_>>(),
        [
            (4, WcStatus::RemAccessErr),
            (5, WcStatus::WrFlushErr),
            (6, WcStatus::WrFlushErr)
        ]
    );
    assert!(zeros(&b.read(3072, 1024)), "flushed WRITEs wrote nothing");
}

#[test]
fn sq_sig_all_signals_unsignaled_wrs() {
    use uroce_proto::{QpInit, QpType};
    use uroce_sim::scenario::{bring_up, endpoint, Endpoint};
    let mut sim = Sim::new(19, Link::default());
    let o = PairOpts::default();
    let h0 = sim.add_host([10, 0, 0, 1].into());
    let h1 = sim.add_host([10, 0, 0, 2].into());
    let b = endpoint(&mut sim, h1, &o);
    let a0 = endpoint(&mut sim, h0, &o);
    // A second QP on host 0 with sq_sig_all, sharing a0's PD, CQ and region.
    let qpn = sim
        .dev(h0)
        .create_qp(QpInit {
            qp_type: QpType::Rc,
            pd: a0.pd,
            send_cq: a0.cq,
            recv_cq: a0.cq,
            srq: None,
            cap: o.cap,
            sq_sig_all: true,
        })
        .unwrap();
    let a = Endpoint { qpn, ..a0 };
    bring_up(&mut sim, &a, &b, &o);
    bring_up(&mut sim, &b, &a, &o);
    let mut w = SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 8)]),
    );
    w.flags.signaled = false;
    sim.post_send(a.host, a.qpn, w).unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!((c[0].wr_id, c[0].status), (1, WcStatus::Success));
}

/// The same 10 000-byte WRITE and SEND at three path MTUs: packet counts follow the MTU.
#[test]
fn path_mtus_256_1024_4096() {
    for (mtu, bytes) in [
        (Mtu::M256, 256usize),
        (Mtu::M1024, 1024),
        (Mtu::M4096, 4096),
    ] {
        let mut sim = Sim::new(20, Link::default());
        let (a, b) = pair(
            &mut sim,
            &PairOpts {
                mtu,
                // One READ request, as counted below.
                split_reads: false,
                ..PairOpts::default()
            },
        );
        let data = a.fill(0, 10_000, 11);
        let w = SendWr::new(
            1,
            SendOp::RdmaWrite {
                remote_addr: b.base + 7,
                rkey: b.keys.rkey,
            },
            Payload::Sgl(vec![a.sge(0, 10_000)]),
        );
        sim.post_send(a.host, a.qpn, w).unwrap();
        let c = wait_completions(&mut sim, &a, 1, LIMIT);
        assert_eq!(c[0].status, WcStatus::Success, "mtu {bytes}");
        assert_eq!(b.read(7, 10_000), data);
        let n = 10_000usize.div_ceil(bytes) as u64;
        assert_eq!(
            a.counters(&sim).tx_packets,
            n,
            "WRITE packets at mtu {bytes}"
        );
        assert_eq!(b.counters(&sim).rx_packets, n);

        sim.dev(b.host)
            .post_recv(
                b.qpn,
                RecvWr {
                    wr_id: 2,
                    sgl: vec![b.sge(20_000, 10_000)],
                },
            )
            .unwrap();
        let s = SendWr::new(2, SendOp::Send, Payload::Sgl(vec![a.sge(0, 10_000)]));
        sim.post_send(a.host, a.qpn, s).unwrap();
        wait_completions(&mut sim, &a, 1, LIMIT);
        let r = wait_completions(&mut sim, &b, 1, LIMIT);
        assert_eq!((r[0].status, r[0].byte_len), (WcStatus::Success, 10_000));
        assert_eq!(b.read(20_000, 10_000), data);
        assert_eq!(
            a.counters(&sim).tx_packets,
            2 * n,
            "SEND packets at mtu {bytes}"
        );

        // A READ asks for ceil(len / mtu) response packets.
        let before = b.counters(&sim).tx_packets;
        let rd = SendWr::new(
            3,
            SendOp::RdmaRead {
                remote_addr: b.base + 7,
                rkey: b.keys.rkey,
            },
            Payload::Sgl(vec![a.sge(30_000, 10_000)]),
        );
        sim.post_send(a.host, a.qpn, rd).unwrap();
        let c = wait_completions(&mut sim, &a, 1, LIMIT);
        assert_eq!(
            (c[0].status, c[0].opcode),
            (WcStatus::Success, WcOpcode::RdmaRead)
        );
        assert_eq!(a.read(30_000, 10_000), data);
        assert_eq!(
            b.counters(&sim).tx_packets - before,
            n,
            "READ responses at mtu {bytes}"
        );
        assert_eq!(a.counters(&sim).tx_packets, 2 * n + 1);
    }
}

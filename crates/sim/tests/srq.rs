//! A shared receive queue feeding two RC QPs.

use std::sync::Arc;
use std::time::Duration;

use uroce_proto::{Error, Payload, QpInit, QpType, RecvWr, SendOp, SendWr, VecMemory, WcStatus};
use uroce_sim::scenario::{
    base_of, bring_up, drain, endpoint, settle, wait_completions, Endpoint, PairOpts,
};
use uroce_sim::{Link, Sim};

#[test]
fn two_qps_share_one_srq() {
    let mut sim = Sim::new(80, Link::default());
    let o = PairOpts::default();
    let h0 = sim.add_host([10, 0, 0, 1].into());
    let h1 = sim.add_host([10, 0, 0, 2].into());
    let a1 = endpoint(&mut sim, h0, &o);
    let a2 = endpoint(&mut sim, h0, &o);
    // Host 1: one PD, CQ, region and SRQ; two QPs on the SRQ.
    let dev = sim.dev(h1);
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(64).unwrap();
    let mem: Arc<VecMemory> = VecMemory::zeroed(1 << 16);
    let keys = dev.reg_mr(pd, base_of(h1), mem.clone(), o.access).unwrap();
    let srq = dev.create_srq(pd, 16, 2).unwrap();
    let mut qp = || {
        dev.create_qp(QpInit {
            qp_type: QpType::Rc,
            pd,
            send_cq: cq,
            recv_cq: cq,
            srq: Some(srq),
            cap: o.cap,
            sq_sig_all: false,
        })
        .unwrap()
    };
    let (q1, q2) = (qp(), qp());
    let ep = |qpn| Endpoint {
        host: h1,
        pd,
        cq,
        qpn,
        mem: mem.clone(),
        keys,
        base: base_of(h1),
    };
    let (b1, b2) = (ep(q1), ep(q2));
    for (a, b) in [(&a1, &b1), (&a2, &b2)] {
        bring_up(&mut sim, a, b, &o);
        bring_up(&mut sim, b, a, &o);
    }
    assert_eq!(
        sim.dev(h1).post_recv(
            q1,
            RecvWr {
                wr_id: 0,
                sgl: vec![]
            }
        ),
        Err(Error::InvalidArgument("QP uses an SRQ"))
    );
    for i in 0..3u64 {
        let r = RecvWr {
            wr_id: 100 + i,
            sgl: vec![b1.sge(i * 4096, 4096)],
        };
        sim.dev(h1).post_srq_recv(srq, r).unwrap();
    }
    let d1 = a1.fill(0, 3000, 1);
    let d2 = a2.fill(0, 2000, 2);
    sim.post_send(
        h0,
        a1.qpn,
        SendWr::new(
            1,
            SendOp::SendWithImm(1),
            Payload::Sgl(vec![a1.sge(0, 3000)]),
        ),
    )
    .unwrap();
    sim.post_send(
        h0,
        a2.qpn,
        SendWr::new(
            2,
            SendOp::SendWithImm(2),
            Payload::Sgl(vec![a2.sge(0, 2000)]),
        ),
    )
    .unwrap();
    // Each host-0 endpoint has its own CQ.
    let s1 = wait_completions(&mut sim, &a1, 1, Duration::from_secs(1));
    let s2 = wait_completions(&mut sim, &a2, 1, Duration::from_secs(1));
    assert_eq!((s1[0].wr_id, s1[0].status), (1, WcStatus::Success));
    assert_eq!((s2[0].wr_id, s2[0].status), (2, WcStatus::Success));
    let mut r = wait_completions(&mut sim, &b1, 2, Duration::from_secs(1));
    r.sort_by_key(|c| c.imm);
    assert_eq!((r[0].qp_num, r[0].byte_len, r[0].imm), (q1, 3000, Some(1)));
    assert_eq!((r[1].qp_num, r[1].byte_len, r[1].imm), (q2, 2000, Some(2)));
    assert!(r.iter().all(|c| c.status == WcStatus::Success));
    let mut ids: Vec<u64> = r.iter().map(|c| c.wr_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [100, 101], "the first two SRQ WQEs, one per QP");
    for c in &r {
        let off = (c.wr_id - 100) as usize * 4096;
        let want = if c.qp_num == q1 { &d1 } else { &d2 };
        assert_eq!(&mem.to_vec()[off..off + want.len()], &want[..]);
    }
    // One WQE left: the next SEND on either QP takes it, the one after gets RNR until more
    // are posted.
    sim.post_send(
        h0,
        a2.qpn,
        SendWr::new(3, SendOp::Send, Payload::Sgl(vec![a2.sge(0, 10)])),
    )
    .unwrap();
    sim.post_send(
        h0,
        a1.qpn,
        SendWr::new(4, SendOp::Send, Payload::Sgl(vec![a1.sge(0, 10)])),
    )
    .unwrap();
    settle(&mut sim, Duration::from_micros(300));
    let r = drain(&mut sim, &b1);
    assert_eq!(
        r.iter().map(|c| (c.wr_id, c.qp_num)).collect::<Vec<_>>(),
        [(102, q2)]
    );
    let rnr = sim.dev(h1).qp(q1).unwrap().counters().rnr_naks_sent;
    assert!(rnr > 0, "QP 1 found the SRQ empty");
    sim.dev(h1)
        .post_srq_recv(
            srq,
            RecvWr {
                wr_id: 103,
                sgl: vec![b1.sge(20_000, 64)],
            },
        )
        .unwrap();
    let r = wait_completions(&mut sim, &b1, 1, Duration::from_secs(1));
    assert_eq!(
        (r[0].wr_id, r[0].qp_num, r[0].status),
        (103, q1, WcStatus::Success)
    );
    assert_eq!(
        sim.dev(h1).destroy_srq(srq),
        Err(Error::Busy("shared receive queue"))
    );
}

/// UC on an SRQ: a message broken by a lost packet must not lose the receive WQE it had taken
/// from the SRQ: the WQE serves the next message, as it does without an SRQ.
#[test]
fn uc_broken_message_keeps_its_srq_wqe() {
    use uroce_sim::scenario::{drop_in_flight, opcode_of, transmit_now};
    let mut sim = Sim::new(81, Link::default());
    let o = PairOpts {
        qp_type: QpType::Uc,
        ..PairOpts::default()
    };
    let h0 = sim.add_host([10, 0, 0, 1].into());
    let h1 = sim.add_host([10, 0, 0, 2].into());
    let a = endpoint(&mut sim, h0, &o);
    let dev = sim.dev(h1);
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(64).unwrap();
    let mem: Arc<VecMemory> = VecMemory::zeroed(1 << 16);
    let keys = dev.reg_mr(pd, base_of(h1), mem.clone(), o.access).unwrap();
    let srq = dev.create_srq(pd, 16, 2).unwrap();
    let qpn = dev
        .create_qp(QpInit {
            qp_type: QpType::Uc,
            pd,
            send_cq: cq,
            recv_cq: cq,
            srq: Some(srq),
            cap: o.cap,
            sq_sig_all: false,
        })
        .unwrap();
    let b = Endpoint {
        host: h1,
        pd,
        cq,
        qpn,
        mem: mem.clone(),
        keys,
        base: base_of(h1),
    };
    bring_up(&mut sim, &a, &b, &o);
    bring_up(&mut sim, &b, &a, &o);
    for i in 0..2u64 {
        let r = RecvWr {
            wr_id: 100 + i,
            sgl: vec![b.sge(i * 4096, 4096)],
        };
        sim.dev(h1).post_srq_recv(srq, r).unwrap();
    }
    a.fill(0, 3000, 1);
    let m2 = a.fill(4096, 3000, 2);
    let m3 = a.fill(8192, 100, 3);
    sim.post_send(
        h0,
        a.qpn,
        SendWr::new(1, SendOp::Send, Payload::Sgl(vec![a.sge(0, 3000)])),
    )
    .unwrap();
    transmit_now(&mut sim);
    let lost = drop_in_flight(&mut sim, |_, _, p| {
        opcode_of(p) == Some(uroce_wire::Opcode::UcSendMiddle)
    });
    assert_eq!(lost, 1);
    sim.post_send(
        h0,
        a.qpn,
        SendWr::new(2, SendOp::Send, Payload::Sgl(vec![a.sge(4096, 3000)])),
    )
    .unwrap();
    sim.post_send(
        h0,
        a.qpn,
        SendWr::new(3, SendOp::Send, Payload::Sgl(vec![a.sge(8192, 100)])),
    )
    .unwrap();
    wait_completions(&mut sim, &a, 3, Duration::from_secs(1));
    settle(&mut sim, Duration::from_millis(1));
    let r = drain(&mut sim, &b);
    assert_eq!(
        r.iter()
            .map(|c| (c.wr_id, c.status, c.byte_len))
            .collect::<Vec<_>>(),
        [
            (100, WcStatus::Success, 3000),
            (101, WcStatus::Success, 100)
        ],
        "both later messages delivered, in the two SRQ WQEs"
    );
    assert_eq!(&mem.to_vec()[..3000], &m2[..]);
    assert_eq!(&mem.to_vec()[4096..4196], &m3[..]);
}

//! Resource limits: each limit `query_device` reports is enforced at exactly its value with an
//! `Error::Limit` naming it, and freeing one object makes room for exactly one more.

mod common;

use std::net::IpAddr;

use common::rc_init;

use uroce_proto::{
    Access, Config, Device, Error, Payload, QpAttr, QpCap, QpState, RecvWr, Resource, SendOp,
    SendWr, Sge, VecMemory,
};

fn small() -> Config {
    let mut c = Config::new(IpAddr::from([10, 0, 0, 1]));
    c.max_qp = 5;
    c.max_mr = 4;
    c.max_cq = 3;
    c.max_cqe = 16;
    c.max_qp_wr = 8;
    c.max_sge = 2;
    c.max_srq = 2;
    c.max_srq_wr = 6;
    c.max_ah = 3;
    c.max_rd_atomic = 4;
    c
}

fn is_limit(e: Result<impl std::fmt::Debug, Error>, want: Resource, max: u64) {
    match e {
        Err(Error::Limit { resource, max: m }) => {
            assert_eq!((resource, m), (want, max));
            let text = Error::Limit { resource, max: m }.to_string();
            assert!(text.contains(&max.to_string()), "{text}");
        }
        other => panic!("expected the {want:?} limit, got {other:?}"),
    }
}

#[test]
fn query_device_reports_the_configured_limits() {
    let d = Device::new(small());
    let a = d.query_device();
    assert_eq!(
        (
            a.max_qp,
            a.max_mr,
            a.max_cq,
            a.max_cqe,
            a.max_qp_wr,
            a.max_sge
        ),
        (5, 4, 3, 16, 8, 2)
    );
    assert_eq!((a.max_srq, a.max_srq_wr, a.max_ah), (2, 6, 3));
    assert_eq!((a.max_qp_rd_atom, a.max_qp_init_rd_atom), (4, 4));
    let def = Device::new(Config::new(IpAddr::from([10, 0, 0, 1]))).query_device();
    assert_eq!(
        (def.max_qp, def.max_qp_wr, def.max_cqe),
        (4096, 16384, 1 << 20)
    );
}

#[test]
fn object_counts_stop_at_their_limits() {
    let mut d = Device::new(small());
    let pd = d.alloc_pd();

    let mut cqs: Vec<_> = (0..3).map(|_| d.create_cq(4).expect("cq")).collect();
    is_limit(d.create_cq(4), Resource::CompletionQueues, 3);
    d.destroy_cq(cqs.pop().expect("cq")).expect("destroy");
    cqs.push(d.create_cq(16).expect("room for one more"));
    is_limit(d.create_cq(17), Resource::CqEntries, 16);

    let mut mrs: Vec<_> = (0..4)
        .map(|_| {
            d.reg_mr(pd, 0x1000, VecMemory::zeroed(64), Access::LOCAL_WRITE)
                .expect("mr")
        })
        .collect();
    is_limit(
        d.reg_mr(pd, 0x1000, VecMemory::zeroed(64), Access::NONE),
        Resource::MemoryRegions,
        4,
    );
    d.dereg_mr(mrs.pop().expect("mr").lkey).expect("dereg");
    d.reg_mr(pd, 0, VecMemory::zeroed(8), Access::NONE)
        .expect("room for one more");

    let cq = cqs[0];
    let cap = small_cap();
    let mut qps: Vec<_> = (0..5)
        .map(|_| d.create_qp(rc_init(pd, cq, cap, false)).expect("qp"))
        .collect();
    is_limit(
        d.create_qp(rc_init(pd, cq, cap, false)),
        Resource::QueuePairs,
        5,
    );
    d.destroy_qp(qps.pop().expect("qp")).expect("destroy");
    qps.push(
        d.create_qp(rc_init(pd, cq, cap, false))
            .expect("room for one more"),
    );
    assert_eq!(d.usage().qps, 5);

    let s1 = d.create_srq(pd, 6, 2).expect("srq");
    d.create_srq(pd, 1, 1).expect("srq");
    is_limit(d.create_srq(pd, 1, 1), Resource::SharedReceiveQueues, 2);
    d.destroy_srq(s1).expect("destroy");
    is_limit(d.create_srq(pd, 7, 1), Resource::SrqWorkRequests, 6);
    is_limit(d.create_srq(pd, 6, 3), Resource::ScatterGatherEntries, 2);

    let ip = IpAddr::from([10, 0, 0, 2]);
    let ahs: Vec<_> = (0..3).map(|_| d.create_ah(pd, ip).expect("ah")).collect();
    is_limit(d.create_ah(pd, ip), Resource::AddressHandles, 3);
    d.destroy_ah(ahs[0]).expect("destroy");
    d.create_ah(pd, ip).expect("room for one more");

    let u = d.usage();
    assert_eq!(
        (u.pds, u.mrs, u.cqs, u.srqs, u.ahs, u.qps),
        (1, 4, 3, 1, 3, 5)
    );
}

fn small_cap() -> QpCap {
    QpCap {
        max_send_wr: 8,
        max_recv_wr: 8,
        max_send_sge: 2,
        max_recv_sge: 2,
        max_inline_data: 64,
    }
}

#[test]
fn queue_depths_and_sges_stop_at_their_limits() {
    let mut d = Device::new(small());
    let pd = d.alloc_pd();
    let cq = d.create_cq(16).expect("cq");
    let over = |f: fn(&mut QpCap)| {
        let mut c = small_cap();
        f(&mut c);
        c
    };
    is_limit(
        d.create_qp(rc_init(pd, cq, over(|c| c.max_send_wr = 9), false)),
        Resource::QpWorkRequests,
        8,
    );
    is_limit(
        d.create_qp(rc_init(pd, cq, over(|c| c.max_recv_wr = 9), false)),
        Resource::QpWorkRequests,
        8,
    );
    is_limit(
        d.create_qp(rc_init(pd, cq, over(|c| c.max_recv_sge = 3), false)),
        Resource::ScatterGatherEntries,
        2,
    );

    // A QP with queues of 3: the fourth outstanding WR of each queue is refused, and the QP
    // itself is unharmed (stays RTS).
    let cap = QpCap {
        max_send_wr: 3,
        max_recv_wr: 3,
        ..small_cap()
    };
    let qpn = d.create_qp(rc_init(pd, cq, cap, false)).expect("qp");
    let mem = VecMemory::zeroed(4096);
    let mr = d
        .reg_mr(pd, 0, mem, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
        .expect("mr");
    let sge = Sge {
        addr: 0,
        length: 16,
        lkey: mr.lkey,
    };
    for (state, extra) in [
        (QpState::Init, QpAttr::default()),
        (
            QpState::Rtr,
            QpAttr {
                path_mtu: Some(uroce_proto::Mtu::M1024),
                dest_ip: Some(IpAddr::from([10, 0, 0, 2])),
                dest_qpn: Some(99),
                rq_psn: Some(0),
                max_dest_rd_atomic: Some(4),
                min_rnr_timer: Some(1),
                ..QpAttr::default()
            },
        ),
        (
            QpState::Rts,
            QpAttr {
                sq_psn: Some(0),
                timeout: Some(14),
                retry_cnt: Some(7),
                rnr_retry: Some(7),
                max_rd_atomic: Some(4),
                ..QpAttr::default()
            },
        ),
    ] {
        let attr = QpAttr {
            state: Some(state),
            pkey_index: (state == QpState::Init).then_some(0),
            port: (state == QpState::Init).then_some(1),
            access: (state == QpState::Init).then_some(Access::REMOTE_WRITE),
            ..extra
        };
        d.modify_qp(qpn, &attr).expect("modify");
    }
    for wr_id in 0..3 {
        d.post_recv(
            qpn,
            RecvWr {
                wr_id,
                sgl: vec![sge],
            },
        )
        .expect("recv");
    }
    assert_eq!(
        d.post_recv(
            qpn,
            RecvWr {
                wr_id: 9,
                sgl: vec![sge]
            }
        ),
        Err(Error::QueueFull("receive"))
    );
    is_limit(
        d.modify_qp(
            qpn,
            &QpAttr {
                max_rd_atomic: Some(5),
                ..QpAttr::default()
            },
        ),
        Resource::RdAtomic,
        4,
    );
    let now = uroce_proto::Instant::from_nanos(1);
    let send = |id| SendWr::new(id, SendOp::Send, Payload::Sgl(vec![sge]));
    for wr_id in 0..3 {
        d.post_send(now, qpn, send(wr_id)).expect("send");
    }
    assert_eq!(
        d.post_send(now, qpn, send(9)),
        Err(Error::QueueFull("send"))
    );
    assert_eq!(d.qp_state(qpn), Some(QpState::Rts));

    // SRQ receive buffers: at most the SRQ's depth outstanding.
    let srq = d.create_srq(pd, 2, 1).expect("srq");
    for wr_id in 0..2 {
        d.post_srq_recv(
            srq,
            RecvWr {
                wr_id,
                sgl: vec![sge],
            },
        )
        .expect("srq recv");
    }
    assert_eq!(
        d.post_srq_recv(
            srq,
            RecvWr {
                wr_id: 5,
                sgl: vec![sge]
            }
        ),
        Err(Error::QueueFull("shared receive"))
    );
}

//! The QP state machine (IBTA §10.3.1, §11.2.5.3 Table 91): invalid transitions and missing or
//! out-of-range attributes are refused and change nothing; ERR flushes.

use std::net::IpAddr;
use std::time::Duration;

use uroce_proto::{
    Error, Mtu, Payload, QpAttr, QpState, RecvWr, Resource, SendOp, SendWr, WcOpcode, WcStatus,
};
use uroce_sim::scenario::{drain, endpoint, pair, settle, wait_completions, PairOpts};
use uroce_sim::{Link, Sim};

fn init_attr() -> QpAttr {
    QpAttr {
        state: Some(QpState::Init),
        pkey_index: Some(0),
        port: Some(1),
        access: Some(PairOpts::default().access),
        ..QpAttr::default()
    }
}

fn rtr_attr(peer: IpAddr, dest_qpn: u32) -> QpAttr {
    QpAttr {
        state: Some(QpState::Rtr),
        path_mtu: Some(Mtu::M1024),
        dest_ip: Some(peer),
        dest_qpn: Some(dest_qpn),
        rq_psn: Some(0),
        max_dest_rd_atomic: Some(4),
        min_rnr_timer: Some(1),
        ..QpAttr::default()
    }
}

fn rts_attr() -> QpAttr {
    QpAttr {
        state: Some(QpState::Rts),
        sq_psn: Some(0),
        timeout: Some(10),
        retry_cnt: Some(7),
        rnr_retry: Some(7),
        max_rd_atomic: Some(4),
        ..QpAttr::default()
    }
}

#[test]
fn invalid_transitions_and_attributes_are_refused() {
    let mut sim = Sim::new(60, Link::default());
    let h0 = sim.add_host([10, 0, 0, 1].into());
    let h1 = sim.add_host([10, 0, 0, 2].into());
    let o = PairOpts::default();
    let a = endpoint(&mut sim, h0, &o);
    let peer = sim.hosts[h1].ip;
    let dev = sim.dev(h0);
    let st = |dev: &mut uroce_proto::Device| dev.qp_state(a.qpn).unwrap();

    // RESET: no receives, no sends, no skipping to RTR or RTS.
    assert_eq!(
        dev.post_recv(
            a.qpn,
            RecvWr {
                wr_id: 1,
                sgl: vec![]
            }
        ),
        Err(Error::BadState(QpState::Reset))
    );
    assert_eq!(
        dev.modify_qp(a.qpn, &rtr_attr(peer, 99)),
        Err(Error::BadState(QpState::Reset))
    );
    assert_eq!(
        dev.modify_qp(a.qpn, &rts_attr()),
        Err(Error::BadState(QpState::Reset))
    );
    assert_eq!(st(dev), QpState::Reset);
    // RESET→INIT needs pkey_index, port and access; only index 0 and port 1 exist.
    for (bad, name) in [
        (
            QpAttr {
                pkey_index: None,
                ..init_attr()
            },
            "pkey_index",
        ),
        (
            QpAttr {
                port: None,
                ..init_attr()
            },
            "port",
        ),
        (
            QpAttr {
                access: None,
                ..init_attr()
            },
            "access",
        ),
    ] {
        assert_eq!(dev.modify_qp(a.qpn, &bad), Err(Error::InvalidAttr(name)));
        assert_eq!(st(dev), QpState::Reset);
    }
    assert!(matches!(
        dev.modify_qp(
            a.qpn,
            &QpAttr {
                pkey_index: Some(1),
                ..init_attr()
            }
        ),
        Err(Error::InvalidAttr(_))
    ));
    assert!(matches!(
        dev.modify_qp(
            a.qpn,
            &QpAttr {
                port: Some(2),
                ..init_attr()
            }
        ),
        Err(Error::InvalidAttr(_))
    ));
    assert_eq!(st(dev), QpState::Reset);
    dev.modify_qp(a.qpn, &init_attr()).unwrap();
    assert_eq!(st(dev), QpState::Init);

    // INIT: receives may be posted, sends may not; INIT→RTS is not a transition.
    dev.post_recv(
        a.qpn,
        RecvWr {
            wr_id: 1,
            sgl: vec![a.sge(0, 8)],
        },
    )
    .unwrap();
    let wr = SendWr::new(1, SendOp::Send, Payload::Sgl(vec![]));
    assert_eq!(
        dev.post_send(uroce_proto::Instant::ZERO, a.qpn, wr),
        Err(Error::BadState(QpState::Init))
    );
    assert_eq!(
        dev.modify_qp(a.qpn, &rts_attr()),
        Err(Error::BadState(QpState::Init))
    );
    assert_eq!(st(dev), QpState::Init);
    // INIT→RTR without dest_qpn (or any other required attribute) is refused.
    for (bad, name) in [
        (
            QpAttr {
                dest_qpn: None,
                ..rtr_attr(peer, 99)
            },
            "dest_qpn",
        ),
        (
            QpAttr {
                dest_ip: None,
                ..rtr_attr(peer, 99)
            },
            "dest_ip",
        ),
        (
            QpAttr {
                path_mtu: None,
                ..rtr_attr(peer, 99)
            },
            "path_mtu",
        ),
        (
            QpAttr {
                rq_psn: None,
                ..rtr_attr(peer, 99)
            },
            "rq_psn",
        ),
        (
            QpAttr {
                max_dest_rd_atomic: None,
                ..rtr_attr(peer, 99)
            },
            "max_dest_rd_atomic",
        ),
        (
            QpAttr {
                min_rnr_timer: None,
                ..rtr_attr(peer, 99)
            },
            "min_rnr_timer",
        ),
    ] {
        assert_eq!(dev.modify_qp(a.qpn, &bad), Err(Error::InvalidAttr(name)));
        assert_eq!(st(dev), QpState::Init);
    }
    assert!(matches!(
        dev.modify_qp(
            a.qpn,
            &QpAttr {
                dest_qpn: Some(1 << 24),
                ..rtr_attr(peer, 99)
            }
        ),
        Err(Error::InvalidAttr(_))
    ));
    assert!(matches!(
        dev.modify_qp(
            a.qpn,
            &QpAttr {
                dest_ip: Some([0u16; 8].into()),
                ..rtr_attr(peer, 99)
            }
        ),
        Err(Error::InvalidAttr(_))
    ));
    assert_eq!(st(dev), QpState::Init);
    dev.modify_qp(a.qpn, &rtr_attr(peer, 99)).unwrap();
    assert_eq!(st(dev), QpState::Rtr);

    // RTR→RTS: retry_cnt 8, rnr_retry 8, timeout 32 and missing attributes are refused.
    for bad in [
        QpAttr {
            retry_cnt: Some(8),
            ..rts_attr()
        },
        QpAttr {
            rnr_retry: Some(8),
            ..rts_attr()
        },
        QpAttr {
            timeout: Some(32),
            ..rts_attr()
        },
        QpAttr {
            sq_psn: None,
            ..rts_attr()
        },
        QpAttr {
            retry_cnt: None,
            ..rts_attr()
        },
    ] {
        assert!(
            matches!(dev.modify_qp(a.qpn, &bad), Err(Error::InvalidAttr(_))),
            "{bad:?}"
        );
        assert_eq!(st(dev), QpState::Rtr);
    }
    // max_rd_atomic above the device's max_qp_init_rd_atom is a resource limit (as
    // ibv_query_device reports it), not a malformed attribute.
    let too_deep = QpAttr {
        max_rd_atomic: Some(255),
        ..rts_attr()
    };
    assert!(matches!(
        dev.modify_qp(a.qpn, &too_deep),
        Err(Error::Limit {
            resource: Resource::RdAtomic,
            ..
        })
    ));
    assert_eq!(st(dev), QpState::Rtr);
    // RTR→SQD and RTR→INIT are not transitions.
    let to = |s| QpAttr {
        state: Some(s),
        ..QpAttr::default()
    };
    assert_eq!(
        dev.modify_qp(a.qpn, &to(QpState::Sqd)),
        Err(Error::BadState(QpState::Rtr))
    );
    assert_eq!(
        dev.modify_qp(a.qpn, &to(QpState::Init)),
        Err(Error::BadState(QpState::Rtr))
    );
    dev.modify_qp(a.qpn, &rts_attr()).unwrap();
    assert_eq!(st(dev), QpState::Rts);
    // A refused move to ERR changes nothing: no flush of the posted receive.
    assert!(matches!(
        dev.modify_qp(
            a.qpn,
            &QpAttr {
                retry_cnt: Some(8),
                ..to(QpState::Err)
            }
        ),
        Err(Error::InvalidAttr(_))
    ));
    assert_eq!(st(dev), QpState::Rts);
    assert_eq!(dev.poll_cq(a.cq), Ok(None), "no flush happened");
    assert_eq!(
        dev.modify_qp(12345, &to(QpState::Err)),
        Err(Error::NotFound("queue pair"))
    );
}

/// A refused RTS→RTS modify that carried a valid `timeout` next to a bad `retry_cnt` must not
/// apply the timeout: the retry timing afterwards still follows the old one.
#[test]
fn refused_modify_applies_no_attribute() {
    let mut sim = Sim::new(61, Link::default());
    let (a, b) = pair(
        &mut sim,
        &PairOpts {
            timeout: 10,
            retry_cnt: 1,
            ..PairOpts::default()
        },
    );
    let bad = QpAttr {
        timeout: Some(1),
        retry_cnt: Some(8),
        ..QpAttr::default()
    };
    assert!(matches!(
        sim.dev(a.host).modify_qp(a.qpn, &bad),
        Err(Error::InvalidAttr(_))
    ));
    sim.link.loss = 1.0;
    let start = sim.now;
    let w = SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 8)]),
    );
    sim.post_send(a.host, a.qpn, w).unwrap();
    let c = wait_completions(&mut sim, &a, 1, Duration::from_secs(1));
    assert_eq!(c[0].status, WcStatus::RetryExcErr);
    let took = sim.now - start;
    let t = Duration::from_nanos(4096 << 10);
    assert!(
        took >= 2 * t && took < 2 * t + Duration::from_micros(50),
        "{took:?}"
    );
    assert_eq!(a.counters(&sim).timeouts, 2, "retry_cnt stayed 1");
}

#[test]
fn modify_to_error_flushes_receives_and_sends() {
    let mut sim = Sim::new(62, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    for i in 0..3 {
        sim.dev(b.host)
            .post_recv(
                b.qpn,
                RecvWr {
                    wr_id: 10 + i,
                    sgl: vec![b.sge(0, 64)],
                },
            )
            .unwrap();
    }
    let mut unsig = SendWr::new(
        20,
        SendOp::RdmaWrite {
            remote_addr: a.base,
            rkey: a.keys.rkey,
        },
        Payload::Sgl(vec![b.sge(0, 8)]),
    );
    unsig.flags.signaled = false;
    sim.post_send(b.host, b.qpn, unsig).unwrap();
    let to_err = QpAttr {
        state: Some(QpState::Err),
        ..QpAttr::default()
    };
    sim.dev(b.host).modify_qp(b.qpn, &to_err).unwrap();
    assert_eq!(b.state(&sim), QpState::Err);
    let c = drain(&mut sim, &b);
    let mut got: Vec<_> = c.iter().map(|c| (c.wr_id, c.status, c.opcode)).collect();
    got.sort_by_key(|x| x.0);
    assert_eq!(
        got,
        [
            (10, WcStatus::WrFlushErr, WcOpcode::Recv),
            (11, WcStatus::WrFlushErr, WcOpcode::Recv),
            (12, WcStatus::WrFlushErr, WcOpcode::Recv),
            (20, WcStatus::WrFlushErr, WcOpcode::RdmaWrite),
        ]
    );
    // Nothing flushed went out.
    settle(&mut sim, Duration::from_millis(1));
    assert_eq!(b.counters(&sim).tx_packets, 0);
    // ERR→RESET→INIT works again and the QP is empty.
    let dev = sim.dev(b.host);
    dev.modify_qp(
        b.qpn,
        &QpAttr {
            state: Some(QpState::Reset),
            ..QpAttr::default()
        },
    )
    .unwrap();
    dev.modify_qp(b.qpn, &init_attr()).unwrap();
    assert_eq!(dev.qp_state(b.qpn), Some(QpState::Init));
    assert_eq!(dev.poll_cq(b.cq), Ok(None));
}

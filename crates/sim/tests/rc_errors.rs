//! RC error paths: remote access and invalid-request NAKs, local protection and length errors,
//! RNR, transport retry exhaustion, flushes, posting in ERR and CQ overrun. Each checks the
//! requester and responder completions, the bytes around the target, QP states and counters.

use std::time::Duration;

use uroce_proto::{
    Access, Error, Payload, QpState, RecvWr, SendOp, SendWr, VecMemory, WcOpcode, WcStatus,
};
use uroce_sim::scenario::{drain, pair, settle, wait_completions, Endpoint, PairOpts};
use uroce_sim::{Link, Sim};

const LIMIT: Duration = Duration::from_secs(1);

fn write(a: &Endpoint, id: u64, remote_addr: u64, rkey: u32, off: u64, len: u32) -> SendWr {
    SendWr::new(
        id,
        SendOp::RdmaWrite { remote_addr, rkey },
        Payload::Sgl(vec![a.sge(off, len)]),
    )
}

/// Checks the outcome of a request the responder rejects with a NAK of `nak` (index into the
/// counters) that the requester reports as `status`: both QPs in ERR, one NAK each way.
fn assert_nak(sim: &mut Sim, a: &Endpoint, b: &Endpoint, status: WcStatus, nak: usize) {
    let c = wait_completions(sim, a, 1, LIMIT);
    assert_eq!(c[0].status, status, "{c:?}");
    assert_eq!(c[0].wr_id, 1);
    settle(sim, Duration::from_millis(1));
    assert!(drain(sim, a).is_empty(), "exactly one requester completion");
    let (ca, cb) = (a.counters(sim), b.counters(sim));
    let mut want = [0u64; 4];
    want[nak] = 1;
    assert_eq!(cb.naks_sent, want, "responder NAKs");
    assert_eq!(ca.naks_received, want, "requester NAKs");
    assert_eq!(a.state(sim), QpState::Err, "requester QP");
    assert_eq!(b.state(sim), QpState::Err, "responder QP");
}

#[test]
fn write_to_read_only_region_is_remote_access_error() {
    let mut sim = Sim::new(30, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let ro = VecMemory::from_vec(vec![0x5A; 4096]);
    let acc = Access::LOCAL_WRITE | Access::REMOTE_READ;
    let k = sim
        .dev(b.host)
        .reg_mr(b.pd, 0x7000_0000, ro.clone(), acc)
        .unwrap();
    a.fill(0, 100, 1);
    sim.post_send(a.host, a.qpn, write(&a, 1, 0x7000_0000, k.rkey, 0, 100))
        .unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemAccessErr, 2);
    assert!(
        ro.to_vec().iter().all(|x| *x == 0x5A),
        "read-only region untouched"
    );
}

#[test]
fn write_with_wrong_rkey_is_remote_access_error() {
    let mut sim = Sim::new(31, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    a.fill(0, 100, 1);
    sim.post_send(
        a.host,
        a.qpn,
        write(&a, 1, b.base, b.keys.rkey ^ 0x0100, 0, 100),
    )
    .unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemAccessErr, 2);
    assert!(b.mem.to_vec().iter().all(|x| *x == 0));
}

#[test]
fn write_out_of_bounds_is_remote_access_error() {
    let mut sim = Sim::new(32, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    a.fill(0, 100, 1);
    // Entirely beyond the region.
    let len = b.mem.to_vec().len() as u64;
    sim.post_send(
        a.host,
        a.qpn,
        write(&a, 1, b.base + len + 64, b.keys.rkey, 0, 100),
    )
    .unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemAccessErr, 2);
    assert!(b.mem.to_vec().iter().all(|x| *x == 0));
}

#[test]
fn write_below_region_start_is_remote_access_error() {
    let mut sim = Sim::new(33, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    a.fill(0, 100, 1);
    sim.post_send(
        a.host,
        a.qpn,
        write(&a, 1, b.base - 10, b.keys.rkey, 0, 100),
    )
    .unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemAccessErr, 2);
    assert!(b.mem.to_vec().iter().all(|x| *x == 0));
}

#[test]
fn multi_packet_write_crossing_region_end_writes_nothing() {
    let mut sim = Sim::new(34, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    a.fill(0, 5000, 1);
    let len = b.mem.to_vec().len() as u64;
    // Starts 1000 bytes before the end, 5000 long: the first packet alone would fit.
    sim.post_send(
        a.host,
        a.qpn,
        write(&a, 1, b.base + len - 1000, b.keys.rkey, 0, 5000),
    )
    .unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemAccessErr, 2);
    assert!(
        b.mem.to_vec().iter().all(|x| *x == 0),
        "the RETH length is checked on the first packet: not one byte lands"
    );
}

#[test]
fn read_without_remote_read_rights() {
    // The region lacks remote read: remote access error.
    let mut sim = Sim::new(35, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let mem = VecMemory::from_vec(vec![7; 256]);
    let k = sim
        .dev(b.host)
        .reg_mr(
            b.pd,
            0x7000_0000,
            mem,
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        )
        .unwrap();
    let rd = SendWr::new(
        1,
        SendOp::RdmaRead {
            remote_addr: 0x7000_0000,
            rkey: k.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 256)]),
    );
    sim.post_send(a.host, a.qpn, rd).unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemAccessErr, 2);
    assert!(
        a.mem.to_vec().iter().all(|x| *x == 0),
        "no READ data placed"
    );

    // The responder QP lacks remote read: invalid request (rxe `check_op_valid`).
    let mut sim = Sim::new(36, Link::default());
    let o = PairOpts {
        access: Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC,
        ..PairOpts::default()
    };
    let (a, b) = pair(&mut sim, &o);
    let rd = SendWr::new(
        1,
        SendOp::RdmaRead {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 256)]),
    );
    sim.post_send(a.host, a.qpn, rd).unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemInvReqErr, 1);
}

fn fetch_add(a: &Endpoint, remote_addr: u64, rkey: u32) -> SendWr {
    SendWr::new(
        1,
        SendOp::FetchAdd {
            remote_addr,
            rkey,
            add: 1,
        },
        Payload::Sgl(vec![a.sge(0, 8)]),
    )
}

#[test]
fn misaligned_atomic_is_invalid_request() {
    let mut sim = Sim::new(37, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    sim.post_send(a.host, a.qpn, fetch_add(&a, b.base + 4, b.keys.rkey))
        .unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemInvReqErr, 1);
    assert!(b.mem.to_vec().iter().all(|x| *x == 0), "nothing added");
    assert!(a.mem.to_vec().iter().all(|x| *x == 0), "no result placed");
}

#[test]
fn atomic_without_remote_atomic_rights() {
    // Region without remote atomic: remote access error.
    let mut sim = Sim::new(38, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let mem = VecMemory::zeroed(64);
    let k = sim
        .dev(b.host)
        .reg_mr(
            b.pd,
            0x7000_0000,
            mem.clone(),
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        )
        .unwrap();
    sim.post_send(a.host, a.qpn, fetch_add(&a, 0x7000_0000, k.rkey))
        .unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemAccessErr, 2);
    assert!(mem.to_vec().iter().all(|x| *x == 0));

    // QP without remote atomic: invalid request.
    let mut sim = Sim::new(39, Link::default());
    let o = PairOpts {
        access: Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
        ..PairOpts::default()
    };
    let (a, b) = pair(&mut sim, &o);
    sim.post_send(a.host, a.qpn, fetch_add(&a, b.base, b.keys.rkey))
        .unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemInvReqErr, 1);
    assert!(b.mem.to_vec().iter().all(|x| *x == 0));
}

#[test]
fn send_larger_than_receive_is_length_error() {
    let mut sim = Sim::new(40, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 9,
                sgl: vec![b.sge(0, 1500)],
            },
        )
        .unwrap();
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 10,
                sgl: vec![b.sge(2000, 1500)],
            },
        )
        .unwrap();
    a.fill(0, 3000, 2);
    let s = SendWr::new(1, SendOp::Send, Payload::Sgl(vec![a.sge(0, 3000)]));
    sim.post_send(a.host, a.qpn, s).unwrap();
    assert_nak(&mut sim, &a, &b, WcStatus::RemInvReqErr, 1);
    let r = drain(&mut sim, &b);
    assert_eq!(
        r.iter()
            .map(|c| (c.wr_id, c.status, c.opcode))
            .collect::<Vec<_>>(),
        [
            (9, WcStatus::LocLenErr, WcOpcode::Recv),
            (10, WcStatus::WrFlushErr, WcOpcode::Recv)
        ]
    );
    let m = b.mem.to_vec();
    assert!(
        m[1500..].iter().all(|x| *x == 0),
        "nothing beyond the receive buffer"
    );
}

#[test]
fn bad_lkey_is_local_protection_error() {
    let mut sim = Sim::new(41, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let mut sge = a.sge(0, 100);
    sge.lkey ^= 0x0100;
    let w = SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 10), sge]),
    );
    sim.post_send(a.host, a.qpn, w).unwrap();
    sim.post_send(a.host, a.qpn, write(&a, 2, b.base, b.keys.rkey, 0, 10))
        .unwrap();
    let c = wait_completions(&mut sim, &a, 2, LIMIT);
    assert_eq!(
        c.iter().map(|c| (c.wr_id, c.status)).collect::<Vec<_>>(),
        [(1, WcStatus::LocProtErr), (2, WcStatus::WrFlushErr)]
    );
    assert_eq!(a.state(&sim), QpState::Err);
    assert_eq!(a.counters(&sim).tx_packets, 0, "nothing sent");
    assert_eq!(
        b.state(&sim),
        QpState::Rts,
        "the responder never heard of it"
    );
    // An SGE out of the region's bounds and a READ into a region without local write are
    // local protection errors too.
    let mut sim = Sim::new(42, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let len = a.mem.to_vec().len() as u64;
    sim.post_send(a.host, a.qpn, write(&a, 1, b.base, b.keys.rkey, len - 4, 8))
        .unwrap();
    assert_eq!(
        wait_completions(&mut sim, &a, 1, LIMIT)[0].status,
        WcStatus::LocProtErr
    );
    let mut sim = Sim::new(43, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let ro = VecMemory::zeroed(64);
    let k = sim
        .dev(a.host)
        .reg_mr(a.pd, 0x7000_0000, ro.clone(), Access::NONE)
        .unwrap();
    let rd = SendWr::new(
        1,
        SendOp::RdmaRead {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![uroce_proto::Sge {
            addr: 0x7000_0000,
            length: 64,
            lkey: k.lkey,
        }]),
    );
    sim.post_send(a.host, a.qpn, rd).unwrap();
    assert_eq!(
        wait_completions(&mut sim, &a, 1, LIMIT)[0].status,
        WcStatus::LocProtErr
    );
    assert!(ro.to_vec().iter().all(|x| *x == 0));
}

#[test]
fn rnr_then_receive_posted_later_succeeds() {
    let mut sim = Sim::new(44, Link::default());
    // min_rnr_timer 1 = 10 µs.
    let (a, b) = pair(
        &mut sim,
        &PairOpts {
            rnr_retry: 7,
            ..PairOpts::default()
        },
    );
    let data = a.fill(0, 3000, 3);
    let s = SendWr::new(1, SendOp::Send, Payload::Sgl(vec![a.sge(0, 3000)]));
    sim.post_send(a.host, a.qpn, s).unwrap();
    settle(&mut sim, Duration::from_micros(500));
    assert!(
        drain(&mut sim, &a).is_empty(),
        "still waiting for the receiver"
    );
    assert_eq!(a.state(&sim), QpState::Rts);
    let rnr = b.counters(&sim).rnr_naks_sent;
    assert!(rnr >= 5, "an RNR NAK every ~10 µs + RTT: {rnr}");
    assert!(
        b.mem.to_vec().iter().all(|x| *x == 0),
        "nothing placed while RNR"
    );
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 5,
                sgl: vec![b.sge(0, 4096)],
            },
        )
        .unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!((c[0].status, c[0].byte_len), (WcStatus::Success, 3000));
    let r = wait_completions(&mut sim, &b, 1, LIMIT);
    assert_eq!(
        (r[0].wr_id, r[0].status, r[0].byte_len),
        (5, WcStatus::Success, 3000)
    );
    assert_eq!(b.read(0, 3000), data);
    let (ca, cb) = (a.counters(&sim), b.counters(&sim));
    assert!(ca.rnr_naks_received > 0 && ca.rnr_naks_received == cb.rnr_naks_sent);
    // The MIDDLE/LAST packets behind an RNR'd FIRST are out of sequence: the responder sends
    // one PSN-sequence NAK per RNR round (rxe `check_psn` does the same), which the requester,
    // already rewound to that PSN, ignores. No other NAK and no timeout.
    assert_eq!(ca.naks_received[1..], [0; 3]);
    assert!(ca.naks_received[0] <= ca.rnr_naks_received);
    assert_eq!(ca.timeouts, 0);
}

#[test]
fn rnr_retry_exhausted() {
    for rnr_retry in 0..=6u8 {
        let mut sim = Sim::new(45, Link::default());
        let (a, b) = pair(
            &mut sim,
            &PairOpts {
                rnr_retry,
                ..PairOpts::default()
            },
        );
        sim.post_send(
            a.host,
            a.qpn,
            SendWr::new(1, SendOp::Send, Payload::Sgl(vec![a.sge(0, 8)])),
        )
        .unwrap();
        sim.post_send(
            a.host,
            a.qpn,
            SendWr::new(2, SendOp::Send, Payload::Sgl(vec![a.sge(0, 8)])),
        )
        .unwrap();
        let c = wait_completions(&mut sim, &a, 2, LIMIT);
        assert_eq!(
            c.iter().map(|c| (c.wr_id, c.status)).collect::<Vec<_>>(),
            [(1, WcStatus::RnrRetryExcErr), (2, WcStatus::WrFlushErr)],
            "rnr_retry {rnr_retry}"
        );
        let n = u64::from(rnr_retry) + 1;
        assert_eq!(b.counters(&sim).rnr_naks_sent, n, "rnr_retry {rnr_retry}");
        assert_eq!(
            a.counters(&sim).rnr_naks_received,
            n,
            "rnr_retry {rnr_retry}"
        );
        assert_eq!(a.state(&sim), QpState::Err);
        // RNR is not fatal for the responder.
        assert_eq!(b.state(&sim), QpState::Rts);
    }
}

#[test]
fn link_cut_exhausts_retries_at_the_expected_time() {
    let (timeout, retry_cnt) = (10u8, 3u8);
    let mut sim = Sim::new(46, Link::default());
    let (a, b) = pair(
        &mut sim,
        &PairOpts {
            timeout,
            retry_cnt,
            ..PairOpts::default()
        },
    );
    a.fill(0, 8192, 4);
    sim.post_send(a.host, a.qpn, write(&a, 1, b.base, b.keys.rkey, 0, 2048))
        .unwrap();
    assert_eq!(
        wait_completions(&mut sim, &a, 1, LIMIT)[0].status,
        WcStatus::Success
    );
    settle(&mut sim, Duration::from_micros(50));
    // Cut the link, then post four more.
    sim.link.loss = 1.0;
    let cut = sim.now;
    sim.post_send(
        a.host,
        a.qpn,
        write(&a, 2, b.base + 2048, b.keys.rkey, 2048, 2048),
    )
    .unwrap();
    let rd = SendWr::new(
        3,
        SendOp::RdmaRead {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(20_000, 1024)]),
    );
    sim.post_send(a.host, a.qpn, rd).unwrap();
    sim.post_send(
        a.host,
        a.qpn,
        write(&a, 4, b.base + 4096, b.keys.rkey, 4096, 100),
    )
    .unwrap();
    let mut unsig = write(&a, 5, b.base + 4096, b.keys.rkey, 4096, 100);
    unsig.flags.signaled = false;
    sim.post_send(a.host, a.qpn, unsig).unwrap();
    let c = wait_completions(&mut sim, &a, 4, Duration::from_secs(10));
    let at = sim.now;
    assert_eq!(
        c.iter().map(|c| (c.wr_id, c.status)).collect::<Vec<_>>(),
        [
            (2, WcStatus::RetryExcErr),
            (3, WcStatus::WrFlushErr),
            (4, WcStatus::WrFlushErr),
            (5, WcStatus::WrFlushErr)
        ]
    );
    assert_eq!(c[1].opcode, WcOpcode::RdmaRead);
    let ca = a.counters(&sim);
    assert_eq!(ca.timeouts, u64::from(retry_cnt) + 1);
    assert!(ca.retransmits >= u64::from(retry_cnt), "{ca:?}");
    // 4.096 µs × 2^timeout × (retry_cnt + 1) after the cut (plus a few µs of sending).
    let expect = 4096u64 << timeout;
    let expect = Duration::from_nanos(expect * (u64::from(retry_cnt) + 1));
    let took = at - cut;
    assert!(
        took >= expect && took <= expect + Duration::from_micros(100),
        "failed after {took:?}, expected about {expect:?}"
    );
    assert_eq!(a.state(&sim), QpState::Err);
    assert_eq!(b.state(&sim), QpState::Rts, "the responder saw nothing");
    assert!(
        b.read(2048, 6000).iter().all(|x| *x == 0),
        "nothing crossed the cut link"
    );
    assert!(a.read(20_000, 1024).iter().all(|x| *x == 0));
}

#[test]
fn posting_to_a_qp_in_error_flushes_at_once() {
    let mut sim = Sim::new(47, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    sim.dev(a.host)
        .modify_qp(
            a.qpn,
            &uroce_proto::QpAttr {
                state: Some(QpState::Err),
                ..Default::default()
            },
        )
        .unwrap();
    let mut w = write(&a, 7, b.base, b.keys.rkey, 0, 10);
    w.flags.signaled = false;
    sim.post_send(a.host, a.qpn, w).unwrap();
    sim.dev(a.host)
        .post_recv(
            a.qpn,
            RecvWr {
                wr_id: 8,
                sgl: vec![a.sge(0, 10)],
            },
        )
        .unwrap();
    // No simulation step: the completions are there immediately.
    let c = drain(&mut sim, &a);
    assert_eq!(
        c.iter()
            .map(|c| (c.wr_id, c.status, c.opcode))
            .collect::<Vec<_>>(),
        [
            (7, WcStatus::WrFlushErr, WcOpcode::RdmaWrite),
            (8, WcStatus::WrFlushErr, WcOpcode::Recv)
        ]
    );
    settle(&mut sim, Duration::from_millis(1));
    assert_eq!(a.counters(&sim).tx_packets, 0);
    assert!(b.mem.to_vec().iter().all(|x| *x == 0));
}

#[test]
fn cq_overrun_is_reported_by_poll() {
    let mut sim = Sim::new(48, Link::default());
    let (a, b) = pair(
        &mut sim,
        &PairOpts {
            cq_depth: 2,
            ..PairOpts::default()
        },
    );
    a.fill(0, 300, 5);
    for i in 0..3 {
        sim.post_send(
            a.host,
            a.qpn,
            write(&a, i, b.base + i * 100, b.keys.rkey, i * 100, 100),
        )
        .unwrap();
    }
    settle(&mut sim, Duration::from_millis(5));
    assert_eq!(sim.dev(a.host).poll_cq(a.cq), Err(Error::CqOverrun));
    assert_eq!(
        sim.dev(a.host).poll_cq(a.cq),
        Err(Error::CqOverrun),
        "the CQ stays in error"
    );
    assert_eq!(sim.dev(a.host).counters().cq_overruns, 1);
    assert_eq!(
        a.state(&sim),
        QpState::Err,
        "a lost completion puts the QP in error"
    );
    // The responder's CQ was not involved.
    assert_eq!(sim.dev(b.host).poll_cq(b.cq), Ok(None));
}

#[test]
fn a_bad_lkey_behind_a_write_in_flight_fails_only_its_own_wr() {
    // WR 1 is on the wire when WR 2's bad lkey is found: WR 1 keeps its own outcome (the
    // responder acknowledges it), WR 2 reports the local protection error, WR 3 is flushed;
    // in posting order (rxe: the WQE is marked in error and completed when reached).
    let mut sim = Sim::new(3, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let wr1 = write(&a, 1, b.base, b.keys.rkey, 0, 8192);
    let mut wr2 = write(&a, 2, b.base + 8192, b.keys.rkey, 0, 64);
    if let Payload::Sgl(sges) = &mut wr2.payload {
        sges[0].lkey ^= 0x55;
    }
    let wr3 = write(&a, 3, b.base, b.keys.rkey, 0, 64);
    for wr in [wr1, wr2, wr3] {
        sim.post_send(a.host, a.qpn, wr).unwrap();
    }
    let c = wait_completions(&mut sim, &a, 3, LIMIT);
    assert_eq!(
        c.iter().map(|c| (c.wr_id, c.status)).collect::<Vec<_>>(),
        [
            (1, WcStatus::Success),
            (2, WcStatus::LocProtErr),
            (3, WcStatus::WrFlushErr)
        ]
    );
    assert_eq!(sim.dev(a.host).qp_state(a.qpn), Some(QpState::Err));
    assert_eq!(sim.dev(b.host).qp_state(b.qpn), Some(QpState::Rts));
}

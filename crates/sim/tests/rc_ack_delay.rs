//! `Config::ack_delay`: a responder holds a positive ACK until its QP's reply has gone out (the
//! ACK follows it in the same transmit) or until the delay has passed, never longer; ACKs
//! coalesce into a held one without moving its deadline.

use std::time::Duration;

use uroce_proto::{Config, Instant, Payload, SendOp, SendWr, WcStatus};
use uroce_sim::scenario::{
    bring_up, drain, endpoint, opcode_of, psn_of, record_packets, transmit_now, Endpoint, PairOpts,
    Seen,
};
use uroce_sim::{Link, Sim};
use uroce_wire::Opcode;

const DELAY: Duration = Duration::from_micros(50);

/// Two hosts whose devices hold ACKs for `delay`, with a connected RC pair.
fn pair_with_delay(delay: Duration) -> (Sim, Endpoint, Endpoint) {
    let mut sim = Sim::new(7, Link::default());
    let mut ca = Config::new([10, 0, 0, 1].into());
    ca.ack_delay = delay;
    let mut cb = Config::new([10, 0, 0, 2].into());
    cb.ack_delay = delay;
    let h0 = sim.add_host_with(ca);
    let h1 = sim.add_host_with(cb);
    let o = PairOpts::default();
    let a = endpoint(&mut sim, h0, &o);
    let b = endpoint(&mut sim, h1, &o);
    bring_up(&mut sim, &a, &b, &o);
    bring_up(&mut sim, &b, &a, &o);
    (sim, a, b)
}

/// A signaled 8-byte WRITE from `from` into `to`'s region at `off`.
fn write(sim: &mut Sim, from: &Endpoint, to: &Endpoint, id: u64, off: u64) {
    let mut wr = SendWr::new(
        id,
        SendOp::RdmaWrite {
            remote_addr: to.base + off,
            rkey: to.keys.rkey,
        },
        Payload::Sgl(vec![from.sge(0, 8)]),
    );
    wr.flags.signaled = true;
    sim.post_send(from.host, from.qpn, wr).unwrap();
}

fn from_host(sim: &Sim, p: &Seen, h: usize) -> bool {
    p.src.ip() == sim.hosts[h].ip
}

fn ns(t: Instant) -> u64 {
    t.as_nanos()
}

#[test]
fn held_ack_leaves_at_its_deadline_when_no_reply_comes() {
    let (mut sim, a, b) = pair_with_delay(DELAY);
    let log = record_packets(&mut sim);
    write(&mut sim, &a, &b, 1, 0);
    let mut got = Vec::new();
    assert!(sim.run_until(Duration::from_secs(1), |s| {
        got.extend(drain(s, &a));
        !got.is_empty()
    }));
    assert_eq!(got[0].status, WcStatus::Success);
    let log = log.borrow();
    let req = log.iter().find(|p| from_host(&sim, p, a.host)).unwrap();
    let acks: Vec<&Seen> = log.iter().filter(|p| from_host(&sim, p, b.host)).collect();
    assert_eq!(acks.len(), 1, "one ACK");
    assert_eq!(opcode_of(&acks[0].bytes), Some(Opcode::RcAcknowledge));
    // The request arrived one link latency (plus serialisation, under a microsecond) after
    // it left; the ACK left exactly the delay after that.
    let arrived = ns(req.at) + Link::default().latency.as_nanos() as u64;
    let held = ns(acks[0].at) - arrived;
    assert!(
        held >= DELAY.as_nanos() as u64 && held < DELAY.as_nanos() as u64 + 1_000,
        "ACK held {held} ns"
    );
    let qa = a.counters(&sim);
    assert_eq!((qa.retransmits, qa.timeouts), (0, 0));
}

#[test]
fn held_ack_follows_the_reply_in_the_same_transmit() {
    let (mut sim, a, b) = pair_with_delay(DELAY);
    let log = record_packets(&mut sim);
    write(&mut sim, &a, &b, 1, 64);
    // B's application sees the data, then replies within the delay.
    assert!(sim.run_until(Duration::from_secs(1), |s| {
        s.hosts[b.host].dev.qp(b.qpn).unwrap().counters().rx_packets > 0
    }));
    assert!(log.borrow().iter().all(|p| !from_host(&sim, p, b.host)));
    let datagrams = sim.dev(b.host).counters().tx_datagrams;
    write(&mut sim, &b, &a, 2, 64);
    let (mut ca, mut cb) = (Vec::new(), Vec::new());
    assert!(sim.run_until(Duration::from_secs(1), |s| {
        ca.extend(drain(s, &a));
        cb.extend(drain(s, &b));
        !ca.is_empty() && !cb.is_empty()
    }));
    assert_eq!(
        (ca[0].status, cb[0].status),
        (WcStatus::Success, WcStatus::Success)
    );
    let log = log.borrow();
    let from_b: Vec<&Seen> = log.iter().filter(|p| from_host(&sim, p, b.host)).collect();
    assert_eq!(
        from_b
            .iter()
            .take(2)
            .map(|p| opcode_of(&p.bytes))
            .collect::<Vec<_>>(),
        vec![Some(Opcode::RcWriteOnly), Some(Opcode::RcAcknowledge)],
        "the reply first, the ACK right after it"
    );
    assert_eq!(from_b[0].at, from_b[1].at, "sent at the same instant");
    // Both in one datagram (a GSO batch of two: the shorter ACK ends it).
    assert_eq!(sim.dev(b.host).counters().tx_datagrams, datagrams + 1);
    assert_eq!(
        from_b.len(),
        2,
        "B sent the reply and one ACK, nothing else"
    );
}

#[test]
fn coalesced_acks_keep_the_first_deadline() {
    let (mut sim, a, b) = pair_with_delay(DELAY);
    let log = record_packets(&mut sim);
    // Three WRITEs, each asking for an ACK, handled by B 10 µs apart (all inside one delay):
    // each is put on the wire, the clock moved 10 µs on (past its arrival), and one step
    // delivers it.
    let mut first = None;
    for i in 0..3u64 {
        write(&mut sim, &a, &b, i, 8 * i);
        transmit_now(&mut sim);
        sim.now = sim.now + Duration::from_micros(10);
        assert!(sim.step());
        first.get_or_insert(sim.now);
    }
    let first = first.unwrap();
    let mut got = Vec::new();
    assert!(sim.run_until(Duration::from_secs(1), |s| {
        got.extend(drain(s, &a));
        got.len() == 3
    }));
    assert!(got.iter().all(|c| c.status == WcStatus::Success));
    let log = log.borrow();
    let reqs: Vec<&Seen> = log.iter().filter(|p| from_host(&sim, p, a.host)).collect();
    let acks: Vec<&Seen> = log.iter().filter(|p| from_host(&sim, p, b.host)).collect();
    assert_eq!(reqs.len(), 3);
    assert_eq!(acks.len(), 1, "one coalesced ACK for three requests");
    assert_eq!(
        psn_of(&acks[0].bytes),
        psn_of(&reqs[2].bytes),
        "covers the last"
    );
    assert_eq!(
        acks[0].at,
        first + DELAY,
        "the first request's deadline, not a later one's"
    );
    let qa = a.counters(&sim);
    assert_eq!((qa.retransmits, qa.timeouts), (0, 0));
}

#[test]
fn without_a_delay_the_ack_leaves_on_arrival() {
    let (mut sim, a, b) = pair_with_delay(Duration::ZERO);
    let log = record_packets(&mut sim);
    write(&mut sim, &a, &b, 1, 0);
    let mut got = Vec::new();
    assert!(sim.run_until(Duration::from_secs(1), |s| {
        got.extend(drain(s, &a));
        !got.is_empty()
    }));
    let log = log.borrow();
    let req = log.iter().find(|p| from_host(&sim, p, a.host)).unwrap();
    let ack = log.iter().find(|p| from_host(&sim, p, b.host)).unwrap();
    let held = ns(ack.at) - ns(req.at) - Link::default().latency.as_nanos() as u64;
    assert!(held < 1_000, "ACK after {held} ns");
}

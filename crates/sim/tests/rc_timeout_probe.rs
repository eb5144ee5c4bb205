//! The local ACK timeout resends one probe packet and goes back N only when the probe's ACK
//! shows the rest was lost (crates/proto/src/qp/probe.rs). A lost tail, which no NAK can
//! report (nothing follows it), is found by the probes and resent once; of packets that were
//! only late, only the probe is resent.

use std::time::Duration;

use uroce_proto::WcStatus;
use uroce_sim::scenario::{
    drain, drop_in_flight, pair, post_send_recv, psn_of, psns_in_flight, transmit_now, PairOpts,
};
use uroce_sim::{Link, Sim};

/// Eight 1 KiB packets.
const LEN: u32 = 8 << 10;

/// A SEND of eight packets over a link without loss except what the test drops.
fn send_eight(
    sim: &mut Sim,
) -> (
    uroce_sim::scenario::Endpoint,
    uroce_sim::scenario::Endpoint,
    Vec<u8>,
) {
    let (a, b) = pair(sim, &PairOpts::default());
    let data = a.fill(0, LEN as usize, 5);
    post_send_recv(sim, &a, &b, 1, 0, LEN);
    transmit_now(sim);
    (a, b, data)
}

fn quiet_link() -> Link {
    Link {
        bandwidth_bps: None,
        ..Link::default()
    }
}

#[test]
fn a_lost_tail_is_found_by_the_probes_and_resent_once() {
    let mut sim = Sim::new(3, quiet_link());
    let (a, b, data) = send_eight(&mut sim);
    // The last four packets are lost: B sees no gap, so it sends no NAK.
    let psns = psns_in_flight(&mut sim, b.host);
    assert_eq!(psns.len(), 8, "one burst of eight packets");
    let tail: Vec<u32> = psns[4..].to_vec();
    assert_eq!(
        drop_in_flight(&mut sim, |_, to, p| to == b.host
            && psn_of(p).is_some_and(|x| tail.contains(&x))),
        4
    );
    let mut got = Vec::new();
    let ok = sim.run_until(Duration::from_secs(2), |s| {
        got.extend(drain(s, &a));
        !got.is_empty()
    });
    assert!(ok, "the SEND completed");
    assert_eq!(got[0].status, WcStatus::Success, "{:?}", got[0]);
    let got_b = drain(&mut sim, &b);
    assert!(
        got_b.len() == 1 && got_b[0].status == WcStatus::Success,
        "{got_b:?}"
    );
    assert_eq!(b.read(0, LEN as usize), data);
    let q = a.counters(&sim);
    // One timeout: a probe of the first packet (B's ACK says it has four), a probe of the
    // fifth (B takes it and ACKs exactly it: a loss), each sent twice, then the last three go
    // back N.
    assert_eq!(q.timeouts, 1, "{q:?}");
    assert_eq!(q.probe_losses, 1, "{q:?}");
    assert_eq!(q.spurious_timeouts, 0, "{q:?}");
    assert_eq!(q.retransmits, 2 + 2 + 3, "{q:?}");
}

#[test]
fn a_timeout_while_the_packets_are_only_late_resends_only_the_probe() {
    let mut sim = Sim::new(4, quiet_link());
    let (a, b, data) = send_eight(&mut sim);
    // Everything B sends back is held until A's ACK timer has fired and its probe went out.
    let mut held: Vec<Vec<u8>> = Vec::new();
    let b_addr = std::net::SocketAddr::new(sim.hosts[b.host].ip, 4791);
    let a_ip = sim.hosts[a.host].ip;
    let fired = sim.run_until(Duration::from_secs(2), |s| {
        drop_in_flight(s, |_, to, p| {
            if to == a.host {
                held.push(p.to_vec());
                true
            } else {
                false
            }
        });
        a.counters(s).timeouts > 0 && a.counters(s).retransmits > 0
    });
    assert!(fired, "A's ACK timer fired and it probed");
    assert_eq!(b.read(0, LEN as usize), data, "B has the message");
    assert_eq!(
        a.counters(&sim).retransmits,
        2,
        "one probe (sent twice), not the window"
    );
    // The late ACK arrives: it covers everything, and nothing more is resent.
    assert!(!held.is_empty(), "B acknowledged the message");
    let now = sim.now;
    for p in &held {
        sim.dev(a.host).handle_datagram(now, b_addr, a_ip, p);
    }
    let mut got = Vec::new();
    let ok = sim.run_until(Duration::from_secs(2), |s| {
        got.extend(drain(s, &a));
        !got.is_empty()
    });
    assert!(ok && got[0].status == WcStatus::Success, "{got:?}");
    let q = a.counters(&sim);
    assert_eq!(q.retransmits, 2, "{q:?}");
    assert_eq!(q.timeouts, 1, "{q:?}");
    assert_eq!(q.spurious_timeouts, 1, "{q:?}");
    assert_eq!(q.probe_losses, 0, "{q:?}");
}

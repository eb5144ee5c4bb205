//! An ACK that acknowledges a message a go-back-N rewind was about to resend part of.
//!
//! Seen under `tc netem` (scripts/rxe/netem.sh, syscall back end): a stale NAK sequence error
//! (sent by the responder for an earlier gap, delayed by reordering) and the ACK for the
//! message's last packet reach the requester in one receive batch. The NAK rewinds the
//! requester into the message; the ACK then says the responder has all of it (an ACK covers
//! every earlier PSN, IBTA §9.7.5.1.1). The requester used to keep the WQE open until the
//! rewound packets were resent, with its oldest unacknowledged PSN already past the WQE's
//! end: when the one ACK for those duplicates was lost, every local ACK timeout rewound to a
//! PSN no WQE holds, sent nothing, and the QP failed with RETRY_EXC_ERR although the
//! responder had the whole message. The ACK must complete the message, and the next message
//! must take the next PSNs (not the rewound ones, which the responder has already seen).

use std::net::SocketAddr;
use std::time::Duration;

use uroce_proto::{WcOpcode, WcStatus};
use uroce_sim::scenario::{
    drain, drop_in_flight, drop_new_in_flight, opcode_of, pair, post_send_recv, psn_of,
    psns_in_flight, transmit_now, PairOpts,
};
use uroce_sim::{Link, Sim};
use uroce_wire::Opcode;

/// Eight 1 KiB packets.
const LEN: u32 = 8 << 10;

/// The AETH syndrome byte of an Acknowledge packet (BTH is 12 bytes).
fn syndrome(pkt: &[u8]) -> Option<u8> {
    (opcode_of(pkt) == Some(Opcode::RcAcknowledge))
        .then(|| pkt.get(12).copied())
        .flatten()
}

#[test]
fn ack_for_a_rewound_message_completes_it_and_the_next_message_gets_fresh_psns() {
    let mut sim = Sim::new(
        1,
        Link {
            bandwidth_bps: None,
            ..Link::default()
        },
    );
    let o = PairOpts::default();
    let (a, b) = pair(&mut sim, &o);
    let b_addr = SocketAddr::new(sim.hosts[b.host].ip, 4791);
    let a_ip = sim.hosts[a.host].ip;
    let data = a.fill(0, LEN as usize, 7);
    post_send_recv(&mut sim, &a, &b, 1, 0, LEN);

    // The fourth packet is lost: B NAKs it and drops the rest of the burst.
    transmit_now(&mut sim);
    let psns = psns_in_flight(&mut sim, b.host);
    assert_eq!(psns.len(), 8, "one burst of eight packets");
    let first = psns[0];
    let last = (first + 7) & 0xFF_FFFF;
    let third = (first + 3) & 0xFF_FFFF;
    assert_eq!(
        drop_in_flight(&mut sim, |_, to, p| to == b.host
            && psn_of(p) == Some(third)),
        1
    );

    // Hold back the NAK for the gap, and then (after A's ACK timer probed from the message's
    // start, the ACK for the probe let it find the lost packet, and the go-back-N that followed
    // resent the rest) the ACK for the last packet.
    let (mut nak, mut ack) = (None, None);
    let held = sim.run_until(Duration::from_secs(1), |s| {
        drop_in_flight(s, |_, to, p| {
            if to != a.host {
                return false;
            }
            match (syndrome(p), psn_of(p)) {
                (Some(syn), Some(psn)) if syn >> 5 == 3 && psn == third => {
                    nak.get_or_insert_with(|| p.to_vec());
                    true
                }
                (Some(syn), Some(psn)) if syn >> 5 == 0 && psn == last => {
                    ack.get_or_insert_with(|| p.to_vec());
                    true
                }
                _ => false,
            }
        });
        nak.is_some() && ack.is_some()
    });
    assert!(
        held,
        "B sent a NAK for PSN {third:#x} and an ACK for {last:#x}"
    );
    let got = drain(&mut sim, &b);
    assert!(
        got.len() == 1 && got[0].status == WcStatus::Success,
        "B has the whole message: {got:?}"
    );
    assert_eq!(b.read(0, LEN as usize), data);

    // Both reach A in one batch: the stale NAK first, then the ACK that covers the message.
    let resent_before = a.counters(&sim).retransmits;
    let now = sim.now;
    let dev = sim.dev(a.host);
    dev.handle_datagram(now, b_addr, a_ip, nak.as_deref().expect("held NAK"));
    dev.handle_datagram(now, b_addr, a_ip, ack.as_deref().expect("held ACK"));

    // The one ACK B sends next (for any duplicates A resends) is lost.
    let mut cursor = 0;
    let mut lost_one = false;
    let mut sent = Vec::new();
    let done = sim.run_until(Duration::from_secs(5), |s| {
        if !lost_one {
            drop_new_in_flight(s, &mut cursor, |_, to, p| {
                let hit = !lost_one && to == a.host && syndrome(p).is_some();
                lost_one |= hit;
                hit
            });
        }
        sent.extend(drain(s, &a));
        !sent.is_empty()
    });
    assert!(done, "A's SEND completed");
    assert_eq!(sent[0].status, WcStatus::Success, "{:?}", sent[0]);
    assert_eq!(sent[0].opcode, WcOpcode::Send);
    assert_eq!(
        a.counters(&sim).retransmits,
        resent_before,
        "nothing the ACK covered was sent again"
    );

    // The next message takes the PSNs after the first one's and arrives intact.
    let data2 = a.fill(LEN as usize, LEN as usize, 9);
    post_send_recv(&mut sim, &a, &b, 2, LEN as u64, LEN);
    transmit_now(&mut sim);
    let next = psns_in_flight(&mut sim, b.host);
    assert_eq!(next.first(), Some(&((last + 1) & 0xFF_FFFF)));
    let mut got = Vec::new();
    let ok = sim.run_until(Duration::from_secs(1), |s| {
        got.extend(drain(s, &b));
        got.extend(drain(s, &a));
        got.len() >= 2
    });
    assert!(ok, "second message completed on both sides: {got:?}");
    assert!(got.iter().all(|c| c.status == WcStatus::Success), "{got:?}");
    assert_eq!(b.read(LEN as usize, LEN as usize), data2);
}

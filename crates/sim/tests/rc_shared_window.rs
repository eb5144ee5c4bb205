//! Several RC QPs of one device share its unacknowledged-PSN budget.
//!
//! Seen over veth with 4 QPs of 1 MiB WRITEs on a loaded machine: each QP could leave the
//! whole `max_unacked_psns` (2048 packets, 8 MiB at path MTU 4096) unacknowledged, so the
//! peer's socket queued 4 windows (42 MB of receive memory measured with `ss -m`); behind that
//! queue the ACKs came later than the 67 ms local ACK timeout, and the requesters resent
//! whole windows, every packet a duplicate. The budget is now per device: the RC QPs with
//! PSNs outstanding split it (at least rxe's 128 each), and a QP alone gets all of it back.

use std::time::Duration;

use uroce_proto::{Mtu, Payload, RegionMemory, SendOp, SendWr, WcStatus};
use uroce_sim::scenario::{bring_up, drain, endpoint, pattern, Endpoint, PairOpts};
use uroce_sim::{Link, Sim};

/// 2048 packets of 4 KiB: one whole default window per message.
const LEN: usize = 8 << 20;

fn write(sim: &mut Sim, a: &Endpoint, b: &Endpoint, id: u64) {
    let wr = SendWr::new(
        id,
        SendOp::RdmaWrite {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(0, LEN as u32)]),
    );
    sim.post_send(a.host, a.qpn, wr).expect("post_send");
}

/// The most PSNs host `h`'s QPs left unacknowledged together, stepping until every endpoint
/// in `eps` has `want` completions (returned, per endpoint).
fn run(sim: &mut Sim, h: usize, eps: &[&Endpoint], want: usize) -> (u32, Vec<Vec<WcStatus>>) {
    let mut peak = 0;
    let mut done = vec![Vec::new(); eps.len()];
    let end = sim.now + Duration::from_secs(10);
    while done.iter().any(|d| d.len() < want) && sim.now < end {
        if !sim.step() {
            break;
        }
        let out: u32 = sim.dev(h).qps().map(|q| q.unacked_psns()).sum();
        peak = peak.max(out);
        for (i, e) in eps.iter().enumerate() {
            done[i].extend(drain(sim, e).iter().map(|c| c.status));
        }
    }
    (peak, done)
}

#[test]
fn four_qps_share_one_window_and_one_alone_gets_it_back() {
    let mut sim = Sim::new(7, Link::default());
    let o = PairOpts {
        mtu: Mtu::M4096,
        mem_len: LEN,
        ..PairOpts::default()
    };
    let h0 = sim.add_host([10, 0, 0, 1].into());
    let h1 = sim.add_host([10, 0, 0, 2].into());
    let mut pairs = Vec::new();
    for i in 0..4u8 {
        let a = endpoint(&mut sim, h0, &o);
        let b = endpoint(&mut sim, h1, &o);
        bring_up(&mut sim, &a, &b, &o);
        bring_up(&mut sim, &b, &a, &o);
        a.mem.write(0, &pattern(LEN, i));
        pairs.push((a, b));
    }
    let max = sim.dev(h0).config().max_unacked_psns;
    for (i, (a, b)) in pairs.iter().enumerate() {
        write(&mut sim, a, b, i as u64);
    }
    let eps: Vec<&Endpoint> = pairs.iter().map(|(a, _)| a).collect();
    let (peak, done) = run(&mut sim, h0, &eps, 1);
    for d in &done {
        assert_eq!(d, &[WcStatus::Success]);
    }
    for (i, (_, b)) in pairs.iter().enumerate() {
        assert!(b.read(0, LEN) == pattern(LEN, i as u8), "QP {i}: data");
    }
    // Four windows before; now one, plus what the first QPs sent (one GSO batch each) before
    // the others counted as busy.
    let batch = 64;
    assert!(
        peak <= max + 3 * batch,
        "4 QPs left {peak} PSNs unacknowledged together (budget {max})"
    );
    assert!(peak >= max / 2, "the QPs used the budget: peak {peak}");
    // One QP alone: the whole budget again.
    let (a, b) = &pairs[0];
    write(&mut sim, a, b, 9);
    let (peak, done) = run(&mut sim, h0, &[a], 1);
    assert_eq!(done[0], [WcStatus::Success]);
    assert!(
        peak > max / 2,
        "a QP alone is limited to {peak} PSNs (budget {max})"
    );
}

//! A path much slower than the ACK timeout assumes: RC WRITEs of 1 MiB over a 20 Mbit/s link
//! with ibv_rc_pingpong's ACK timeout (code 14, 67 ms) and retry_cnt 7. One message takes
//! 420 ms to serialise, so the local ACK timer fires while the requester's own packets are
//! still queued on the link, though nothing was lost. (CI's netem step, whose TCG guest
//! drains its socket at a few Mbit/s, is thought to have failed that way once: stop 17.)
//!
//! The requester must not give up (RETRY_EXC_ERR) while the responder is alive and the data
//! arrives, only late, and must not flood the path with copies of what is still queued. A
//! go-back-N on every timeout (IBTA §9.7.5.1.3, as rxe does it) queued the window again
//! behind the packets in flight: 2 637 packets resent for these 1 024. A timeout now resends
//! one probe packet (twice) and goes back N only when the probe's ACK shows a loss
//! (probe.rs): 62.

use std::time::Duration;

use uroce_proto::{RegionMemory, WcStatus};
use uroce_sim::scenario::{pair, pattern, post_write_slots, wait_completions, PairOpts};
use uroce_sim::{Link, Sim};

const MSG: usize = 1 << 20;
const MSGS: usize = 4;

#[test]
fn a_path_slower_than_the_ack_timeout_completes_with_correct_data() {
    let mut sim = Sim::new(
        7,
        Link {
            bandwidth_bps: Some(20_000_000),
            latency: Duration::from_micros(100),
            ..Link::default()
        },
    );
    let o = PairOpts {
        mtu: uroce_proto::Mtu::M4096,
        mem_len: MSG * MSGS,
        timeout: 14,
        retry_cnt: 7,
        ..PairOpts::default()
    };
    let (a, b) = pair(&mut sim, &o);
    let data = pattern(MSG * MSGS, 3);
    a.mem.write(0, &data);
    post_write_slots(&mut sim, &a, &b, MSGS, MSG);
    let c = wait_completions(&mut sim, &a, MSGS, Duration::from_secs(120));
    let (qa, qb) = (a.counters(&sim), b.counters(&sim));
    let what = format!("requester {qa:?}\nresponder {qb:?}\ncompletions {c:?}");
    assert_eq!(c.len(), MSGS, "{what}");
    assert!(c.iter().all(|c| c.status == WcStatus::Success), "{what}");
    assert!(b.mem.to_vec() == data, "bytes differ\n{what}");
    // The path is slow enough for timeouts (the point of the test)...
    assert!(
        qa.timeouts > 0,
        "no ACK timeout: the path is not slow enough\n{what}"
    );
    // ...every one of them spurious, so about one probe per timeout is resent, twice (62 for
    // 16 timeouts when this was written; 2 637 with go-back-N on each).
    assert!(
        qa.spurious_timeouts > 0,
        "no timeout found spurious\n{what}"
    );
    assert_eq!(qa.probe_losses, 0, "a probe reported a loss\n{what}");
    assert!(
        qa.retransmits <= 4 * qa.timeouts,
        "{} packets resent for {} timeouts\n{what}",
        qa.retransmits,
        qa.timeouts
    );
}

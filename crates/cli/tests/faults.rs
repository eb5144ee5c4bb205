//! Faults on real sockets between two network namespaces (root; skipped otherwise): RC traffic
//! at full rate (`uroce bench write bw`) whose path dies mid-transfer — the link cut with
//! `ip link set down`, or the peer process killed with SIGKILL. The requester must end in a
//! `RetryExcErr` completion within the bound its QP attributes give, never hang: with ACK
//! timeout code 14 (4.096 µs × 2^14 = 67.1 ms, IBTA §9.7.6.1.3) and retry_cnt 7, the first
//! timeout and 7 retries each wait one ACK timeout, so the error comes 8 × 67.1 ms = 537 ms after
//! the last acknowledged progress, which is at or before the cut.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{need_root, Netns};
use common::{spawn, strings, Proc};

/// `uroce bench`'s QP attributes (crates/cli/src/commands/bench/ctx.rs).
const ACK_TIMEOUT_CODE: u8 = 14;
const RETRY_CNT: u32 = 7;

/// The local ACK timeout of `uroce bench`'s QPs (4.096 µs × 2^14).
fn ack_timeout() -> Duration {
    uroce::ack_timeout(ACK_TIMEOUT_CODE).expect("code 14 is a finite timeout")
}

/// Slack for a loaded machine: timer wake-up latency of the progress thread, the CQ poll that
/// reports the error and the stderr pipe.
const SLACK: Duration = Duration::from_millis(1500);

/// A WRITE bandwidth run between NAME-a (server, 10.66.N.1) and NAME-b (client); returns both
/// once the client reported traffic for a second.
fn running(ns: &Netns, n: u8, port: u16) -> (Proc, Proc) {
    let ip = |h: u8| format!("10.66.{n}.{h}");
    let args = |dev: String| {
        strings(&[
            "bench",
            "write",
            "bw",
            "-D",
            "60",
            "-s",
            "65536",
            "-p",
            &port.to_string(),
            "--timeout",
            "120",
            "--dev-ip",
            &dev,
        ])
    };
    let (a, b) = (ns.a(), ns.b());
    let server = spawn(&["ip", "netns", "exec", &a], &args(ip(1)));
    let mut cargs = args(ip(2));
    cargs.extend(strings(&["--connect-timeout", "60", &ip(1)]));
    let client = spawn(&["ip", "netns", "exec", &b], &cargs);
    if !client.wait_for_stderr("write 65536 B:", Duration::from_secs(60)) {
        let (c, s) = (client.kill(), server.kill());
        panic!("no traffic\n{c}\n{s}");
    }
    (server, client)
}

/// Waits for the client's error completion after the fault at `t0`; checks it came within the
/// bound, and the client then exits (no hang). Returns the time from the fault to the error.
fn expect_retry_exceeded(mut client: Proc, t0: Instant, what: &str) -> Duration {
    let bound = ack_timeout() * (RETRY_CNT + 1);
    let seen = client.wait_for_stderr("RetryExcErr", bound + SLACK + Duration::from_secs(10));
    let took = t0.elapsed();
    let end = Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if client.has_exited() {
            break true;
        }
        if Instant::now() > end {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = client.kill();
    assert!(seen, "{what}: no retry-exceeded completion\n{out}");
    println!("{what}: RetryExcErr {took:?} after the fault (bound {bound:?} + slack {SLACK:?})");
    assert!(
        took <= bound + SLACK,
        "{what}: error after {took:?}, bound {bound:?} + {SLACK:?}\n{out}"
    );
    // Not earlier than the retries allow: the requester really retried 7 times (the last ACK
    // came at most one ACK timeout before the fault).
    let floor = ack_timeout() * RETRY_CNT;
    assert!(
        took >= floor.saturating_sub(Duration::from_millis(20)),
        "{what}: error after only {took:?}\n{out}"
    );
    assert!(
        exited,
        "{what}: the client did not exit after the error\n{out}"
    );
    assert!(!out.ok(), "{what}: the client reported success\n{out}");
    took
}

#[test]
fn netns_link_cut_mid_transfer_ends_in_retry_exceeded() {
    if !need_root("netns_link_cut_mid_transfer_ends_in_retry_exceeded") {
        return;
    }
    let ns = Netns::up("hdcut", 211);
    let (server, client) = running(&ns, 211, 18931);
    let st = Command::new("ip")
        .args(["-n", &ns.a(), "link", "set", "eth0", "down"])
        .status()
        .expect("ip link");
    let t0 = Instant::now();
    assert!(st.success(), "ip link set down failed");
    expect_retry_exceeded(client, t0, "link cut");
    server.kill();
}

#[test]
fn netns_peer_killed_mid_transfer_ends_in_retry_exceeded() {
    if !need_root("netns_peer_killed_mid_transfer_ends_in_retry_exceeded") {
        return;
    }
    let ns = Netns::up("hdkill", 212);
    let (server, client) = running(&ns, 212, 18932);
    let t0 = Instant::now();
    let out = server.kill();
    assert!(out.status.is_none() || !out.ok(), "{out}");
    expect_retry_exceeded(client, t0, "peer killed");
}

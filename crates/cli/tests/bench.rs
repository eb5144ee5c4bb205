//! `uroce bench` server and client on loopback (no root), for every test, both back ends and
//! both progress modes: both must exit 0, print one JSON object per result, and report the
//! data as checked (by this side or by the peer). Each run has its own 127.78.ID.{1,2}
//! addresses and TCP port 18800+ID, so tests run in parallel; the client retries its TCP
//! connection until the server listens (no sleeps).

mod common;

use common::{spawn, strings};
use serde_json::Value;

/// What one side printed: its JSON result lines.
fn results(o: &common::Outcome) -> Vec<Value> {
    o.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{o}")))
        .collect()
}

/// One server/client run of `test kind` with `extra` options on both sides; returns the
/// server's and the client's result lines.
fn run_pair(id: u8, test: &str, kind: &str, extra: &[&str]) -> (Vec<Value>, Vec<Value>) {
    let server_ip = format!("127.78.{id}.1");
    let client_ip = format!("127.78.{id}.2");
    let port = (18800 + u16::from(id)).to_string();
    let mut args = strings(&[
        "bench",
        test,
        kind,
        "-p",
        &port,
        "--json",
        "--timeout",
        "60",
    ]);
    args.extend(strings(extra));
    let mut client = args.clone();
    client.extend(strings(&[
        "--dev-ip",
        &client_ip,
        "--connect-timeout",
        "60",
        &server_ip,
    ]));
    let server = spawn(&[], &args);
    let client = spawn(&[], &client).finish();
    let server = if client.ok() {
        server.finish()
    } else {
        server.kill()
    };
    assert!(client.ok(), "client failed\n{client}\n{server}");
    assert!(server.ok(), "server failed\n{server}\n{client}");
    let (s, c) = (results(&server), results(&client));
    assert!(!c.is_empty(), "no results\n{server}\n{client}");
    for (v, role) in s
        .iter()
        .map(|v| (v, "server"))
        .chain(c.iter().map(|v| (v, "client")))
    {
        assert_eq!(v["role"], role, "{v}");
        assert_eq!(v["test"], test, "{v}");
        assert_eq!(v["kind"], kind, "{v}");
        assert_eq!(v["peer"], "uroce", "{v}");
        assert!(v["health"]["clean"].is_boolean(), "{v}");
        assert!(v["health"]["retransmits"].is_u64(), "{v}");
        assert!(v["health"]["icrc_drops"].is_u64(), "{v}");
        // Nothing on loopback is malformed, for an unknown QP or from a stranger.
        assert_eq!(v["health"]["rx_drops"], 0, "{v}");
    }
    (s, c)
}

fn data(v: &Value) -> &str {
    v["data"].as_str().unwrap_or_default()
}

/// A bandwidth run: `sizes` result lines on the measuring side(s), data checked.
fn bw(id: u8, test: &str, iters: u64, sizes: &[u64], extra: &[&str]) {
    let n = iters.to_string();
    let list = sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut opts = vec!["-n", &n];
    if test != "atomic" {
        opts.extend(["--sizes", &list]);
    }
    opts.extend(extra);
    let (s, c) = run_pair(id, test, "bw", &opts);
    let qps: u64 = extra
        .windows(2)
        .find(|w| w[0] == "-q")
        .map_or(1, |w| w[1].parse().unwrap());
    assert_eq!(c.len(), sizes.len(), "one client line per size: {c:?}");
    for (v, &size) in c.iter().zip(sizes) {
        assert_eq!(v["size"], size, "{v}");
        assert_eq!(v["iterations"], iters * qps, "{v}");
        assert_eq!(v["source"], "measured", "{v}");
        assert!(v["gbit_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["mb_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["mpps"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["cpu_s_per_gb"].as_f64().unwrap() >= 0.0, "{v}");
        // The CPU time split: user space is part of the whole.
        let (cpu, user) = (
            v["cpu_s"].as_f64().unwrap(),
            v["cpu_user_s"].as_f64().unwrap(),
        );
        assert!((0.0..=cpu + 1e-9).contains(&user), "{v}");
        let want = match test {
            "read" | "atomic" => "verified",
            _ => "verified-by-peer",
        };
        assert_eq!(data(v), want, "{v}");
    }
    if test == "send" {
        // The SEND server measures every size itself and checks what arrived.
        assert_eq!(s.len(), sizes.len(), "{s:?}");
        for (v, &size) in s.iter().zip(sizes) {
            assert_eq!(v["size"], size, "{v}");
            assert_eq!(v["iterations"], iters * qps, "{v}");
            assert_eq!(data(v), "verified", "{v}");
        }
    } else {
        // The others show the client's report of the last size, as perftest's server.
        assert_eq!(s.len(), 1, "{s:?}");
        let v = &s[0];
        assert_eq!(v["source"], "peer-report", "{v}");
        assert_eq!(v["size"], *sizes.last().unwrap(), "{v}");
        assert_eq!(v["iterations"], iters * qps, "{v}");
        let want = if test == "read" {
            "not-checked"
        } else {
            "verified"
        };
        assert_eq!(data(v), want, "{v}");
    }
}

/// A latency run: one result line per size on both sides (READ and atomics: the client only,
/// as perftest), data checked.
fn lat(id: u8, test: &str, iters: u64, sizes: &[u64], extra: &[&str]) {
    let n = iters.to_string();
    let list = sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut opts = vec!["-n", &n];
    if test != "atomic" {
        opts.extend(["--sizes", &list]);
    }
    opts.extend(extra);
    let (s, c) = run_pair(id, test, "lat", &opts);
    let sides = if matches!(test, "read" | "atomic") {
        assert!(s.is_empty(), "the server only hosts the buffer: {s:?}");
        vec![&c]
    } else {
        vec![&s, &c]
    };
    for side in sides {
        assert_eq!(side.len(), sizes.len(), "{side:?}");
        for (v, &size) in side.iter().zip(sizes) {
            assert_eq!(v["size"], size, "{v}");
            assert_eq!(v["iterations"], iters, "{v}");
            assert_eq!(data(v), "verified", "{v}");
            let t = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
            assert!(t("t_min_us") > 0.0, "{v}");
            assert!(t("t_min_us") <= t("t_median_us"), "{v}");
            assert!(t("t_median_us") <= t("t_p99_us"), "{v}");
            assert!(t("t_p99_us") <= t("t_p99_9_us"), "{v}");
            assert!(t("t_p99_9_us") <= t("t_max_us"), "{v}");
            assert!(t("t_avg_us") <= t("t_max_us"), "{v}");
        }
    }
}

const BACKENDS: [&str; 2] = ["uring", "syscall"];

#[test]
fn write_bw_both_backends() {
    for (i, b) in BACKENDS.iter().enumerate() {
        let id = 1 + i as u8;
        bw(id, "write", 200, &[65536], &["--backend", b]);
    }
    // Several sizes (small ones cycle through the page), several QPs, busy polling.
    bw(3, "write", 100, &[2, 100, 4096, 1 << 20], &["-q", "2"]);
    bw(4, "write", 100, &[64, 65536], &["--progress", "polled"]);
}

#[test]
fn read_bw_both_backends() {
    for (i, b) in BACKENDS.iter().enumerate() {
        let id = 11 + i as u8;
        bw(id, "read", 100, &[65536], &["--backend", b]);
    }
    bw(
        13,
        "read",
        100,
        &[8, 3000, 1 << 20],
        &["-q", "3", "--progress", "polled"],
    );
}

#[test]
fn send_bw_both_backends() {
    for (i, b) in BACKENDS.iter().enumerate() {
        let id = 21 + i as u8;
        bw(id, "send", 200, &[65536], &["--backend", b]);
    }
    // With several sizes the SEND test syncs before and after each one, as perftest's -a.
    bw(23, "send", 100, &[1, 1000, 1 << 20], &["-q", "2"]);
    bw(
        24,
        "send",
        100,
        &[4096],
        &["--progress", "polled", "-r", "16"],
    );
}

#[test]
fn atomic_bw_both_backends() {
    for (i, b) in BACKENDS.iter().enumerate() {
        let id = 31 + i as u8;
        bw(id, "atomic", 300, &[8], &["--backend", b]);
    }
    bw(33, "atomic", 100, &[8], &["-A", "CMP_AND_SWAP", "-q", "2"]);
    bw(34, "atomic", 100, &[8], &["--progress", "polled"]);
}

#[test]
fn write_lat_both_backends() {
    for (i, b) in BACKENDS.iter().enumerate() {
        let id = 41 + i as u8;
        lat(id, "write", 200, &[2], &["--backend", b]);
    }
    lat(
        43,
        "write",
        100,
        &[1, 4096, 65536],
        &["--progress", "polled"],
    );
}

#[test]
fn read_send_atomic_lat_both_backends() {
    for (i, b) in BACKENDS.iter().enumerate() {
        let id = 61 + 4 * i as u8;
        lat(id, "read", 200, &[2], &["--backend", b]);
        lat(id + 1, "send", 200, &[2], &["--backend", b]);
        lat(id + 2, "atomic", 200, &[8], &["--backend", b]);
    }
    lat(
        69,
        "read",
        100,
        &[1, 4096, 1 << 20],
        &["--progress", "polled"],
    );
    lat(
        70,
        "send",
        100,
        &[1, 4096, 1 << 20],
        &["--progress", "polled", "-r", "8"],
    );
    lat(
        71,
        "atomic",
        100,
        &[8],
        &["-A", "CMP_AND_SWAP", "--progress", "polled"],
    );
}

#[test]
fn write_bw_all_sizes() {
    // -a: 2 B to 8 MiB, no sync between sizes; the server checks the whole 8 MiB area.
    let (s, c) = run_pair(51, "write", "bw", &["-a", "-n", "5"]);
    assert_eq!(c.len(), 23, "{c:?}");
    assert_eq!(c[22]["size"], 8 << 20);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["size"], 8 << 20);
    assert_eq!(data(&s[0]), "verified", "{}", s[0]);
    assert!(c.iter().all(|v| data(v) == "verified-by-peer"), "{c:?}");
}

/// `--sqpoll`: the device's ring has a kernel submission thread, which the result reports
/// (`sq_poll`), and WRITE, READ and SEND move every size intact through it.
#[test]
fn bw_with_a_kernel_submission_thread() {
    bw_with_a_sending_option(80, "--sqpoll", "sq_poll", &["--sqpoll-idle-ms", "5"]);
}

/// `--tx-thread`: the device's sends are made by a send thread, which the result reports
/// (`tx_thread`), and WRITE, READ and SEND move every size intact through it.
#[test]
fn bw_with_a_send_thread() {
    bw_with_a_sending_option(85, "--tx-thread", "tx_thread", &[]);
}

/// `--connected-tx` (busy-polled): both sides send every packet from a socket connected to the
/// peer and receive the peer's there, which the result reports (`health.connected_sends`,
/// `connected_receives`), and the ping-pong is clean.
#[test]
fn lat_from_connected_sockets() {
    let (s, c) = run_pair(
        91,
        "write",
        "lat",
        &["-n", "300", "--progress", "polled", "--connected-tx"],
    );
    for v in s.iter().chain(&c) {
        common::assert_connected_and_clean(v, 300);
    }
    let (s, c) = run_pair(92, "write", "lat", &["-n", "50", "--progress", "polled"]);
    for v in s.iter().chain(&c) {
        assert_eq!(v["health"]["connected_sends"], 0, "{v}");
    }
}

/// With `flag` on both sides (ids `base + 1 ..= base + 5`), WRITE, READ and SEND move every
/// size intact and every result says `key`; without it, a WRITE's results do not.
fn bw_with_a_sending_option(base: u8, flag: &str, key: &str, more: &[&str]) {
    for (i, test) in [(1, "write"), (2, "read"), (3, "send")] {
        bw(base + i, test, 100, &[64, 4096, 1 << 20], &[flag]);
    }
    let args: Vec<&str> = ["-n", "50", flag].iter().chain(more).copied().collect();
    let (s, c) = run_pair(base + 4, "write", "bw", &args);
    for v in s.iter().chain(&c) {
        assert_eq!(v[key], true, "{v}");
    }
    let (s, c) = run_pair(base + 5, "write", "bw", &["-n", "50"]);
    for v in s.iter().chain(&c) {
        assert_eq!(v[key], false, "{v}");
    }
}

#[test]
fn refuses_what_it_does_not_do() {
    for args in [
        &["bench", "read", "bw", "-i", "2"][..],
        &["bench", "atomic", "bw", "-s", "16"],
        &["bench", "write", "bw", "-c", "UC"],
        &["bench", "send", "bw", "-D", "2"],
    ] {
        let o = spawn(&[], &strings(args)).finish();
        assert!(!o.ok(), "{o}");
        assert!(o.stderr.contains("uroce: "), "{o}");
    }
}

//! `uroce-perf raw-echo`/`raw-ping` over loopback, both back ends: every round trip is
//! answered in the shape it was sent (one datagram, or with `--ack` a GSO batch of two), and
//! the JSON carries the fields the suite reads.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Runs an echo and a 300-round-trip ping on `ip`; returns the ping's JSON and how many
/// replies the echo sent.
fn run(ip: &str, backend: &str, ack: &str) -> (serde_json::Value, u64) {
    let exe = env!("CARGO_BIN_EXE_uroce-perf");
    let mut echo = Command::new(exe)
        .args([
            "raw-echo",
            "--bind",
            &format!("{ip}:0"),
            "--backend",
            backend,
        ])
        .args(["--max-secs", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "raw-echo: listening on ADDR" names the port the kernel chose.
    let mut line = String::new();
    BufReader::new(echo.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(line.contains("listening"), "{line}");
    let ping = Command::new(exe)
        .args(["raw-ping", "--to", &addr, "--bind", &format!("{ip}:0")])
        .args(["--backend", backend, "--ack", ack])
        .args(["--count", "300", "--warmup", "20"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    let out = echo.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["role"], "raw-echo");
    let echoed = e["echoed"].as_u64().unwrap();
    (serde_json::from_slice(&ping.stdout).unwrap(), echoed)
}

#[test]
fn raw_ping_pong_over_loopback() {
    for (i, backend) in ["uring", "syscall"].into_iter().enumerate() {
        for ack in ["0", "20"] {
            let ip = format!("127.0.41.{}", 1 + i);
            let (v, echoed) = run(&ip, backend, ack);
            assert_eq!(v["role"], "raw-ping");
            assert_eq!(v["backend"], backend);
            assert_eq!(v["round_trips"], 300);
            assert_eq!(v["lost"], 0, "{v}");
            let sends = v["tx_sends"].as_u64().unwrap();
            let batches = v["tx_gso_sends"].as_u64().unwrap();
            // 320 round trips and the empty datagram that stops the echo. io_uring sends the
            // two datagrams of `--ack` as one GSO batch and the echo receives them in one
            // GRO buffer; the syscall back end sends (and the echo answers) them one by one.
            let want = match (backend, ack) {
                ("uring", "20") => (321, 320, 320),
                ("syscall", "20") => (641, 0, 640),
                _ => (321, 0, 320),
            };
            assert_eq!((sends, batches, echoed), want, "{v}");
            let (half, p99) = (
                v["half_median_us"].as_f64().unwrap(),
                v["half_p99_us"].as_f64().unwrap(),
            );
            assert!(half > 0.0 && p99 >= half, "{v}");
            assert_eq!(v["half_cdf_us"].as_array().unwrap().len(), 24);
        }
    }
}

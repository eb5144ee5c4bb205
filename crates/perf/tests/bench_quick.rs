//! `scripts/bench.sh --quick` end to end, into a temporary directory: the suite builds its
//! namespaces, runs every part, and writes well-formed outputs: CSVs with their columns, SVGs
//! that parse as XML, and a markdown section with a row for every target of issue 6. Needs
//! root (network namespaces); prints that it was skipped otherwise. Checks form, not speed:
//! the numbers of a quick run on a shared machine mean nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Splits one CSV line (fields may be quoted, with "" for a quote).
fn fields(line: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => v.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    v.push(cur);
    v
}

/// The rows of a CSV file, checked to have the header's number of fields.
fn csv(path: &Path, header: &[&str]) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    assert_eq!(
        fields(lines.next().unwrap_or_default()),
        header,
        "{}",
        path.display()
    );
    let rows: Vec<Vec<String>> = lines.map(fields).collect();
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{}: {r:?}", path.display());
    }
    rows
}

#[test]
fn bench_sh_quick_writes_well_formed_outputs() {
    if !is_root() {
        println!(
            "bench_sh_quick_writes_well_formed_outputs: skipped: needs root (network namespaces)"
        );
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().unwrap();
    let (out, plots, doc) = (
        tmp.path().join("out"),
        tmp.path().join("perf"),
        tmp.path().join("PERF.md"),
    );
    // A hand-written part around the generated section must survive.
    std::fs::write(&doc, "# Performance\n\nkept above\n").unwrap();
    // Namespace pair and subnet: overridable so parallel runs on one machine do not collide.
    let netns = std::env::var("UROCE_BENCH_NETNS").unwrap_or_else(|_| "perfq".into());
    let subnet = std::env::var("UROCE_BENCH_SUBNET").unwrap_or_else(|_| "191".into());
    let o = Command::new("bash")
        .arg(root.join("scripts/bench.sh"))
        .args(["--quick", "--netns", &netns, "--subnet", &subnet])
        .arg("--out")
        .arg(&out)
        .arg("--plots")
        .arg(&plots)
        .arg("--doc")
        .arg(&doc)
        .output()
        .expect("run scripts/bench.sh");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bench.sh --quick failed\n{stderr}");

    let runs = csv(
        &out.join("uroce.csv"),
        &[
            "group",
            "test",
            "kind",
            "backend",
            "progress",
            "mtu",
            "qps",
            "size",
            "iters",
            "gbit_s",
            "mmsg_s",
            "cpu_s",
            "cpu_s_per_gb",
            "joules_per_gb",
            "lat_median_us",
            "lat_p99_us",
            "retransmits",
            "timeouts",
            "drops",
            "errors",
            "kernel_udp_drops",
            "valid",
            "status",
            "reason",
            "threads",
            "app_lock_longest_us",
            "sq_poll",
            "tx_thread",
            "connected_sends",
        ],
    );
    // Both back ends, all three operations, both path MTUs, and every other group ran.
    for backend in ["uring", "syscall"] {
        for test in ["write", "read", "send"] {
            for mtu in ["4096", "1024"] {
                assert!(
                    runs.iter()
                        .any(|r| r[0] == "size" && r[1] == test && r[3] == backend && r[5] == mtu),
                    "no {test} {backend} MTU {mtu} run"
                );
            }
        }
        for group in ["lat", "msgrate", "qps"] {
            assert!(
                runs.iter().any(|r| r[0] == group && r[3] == backend),
                "no {group} {backend} run"
            );
        }
        // The message rate with both progress modes.
        for progress in ["thread", "polled"] {
            assert!(
                runs.iter()
                    .any(|r| r[0] == "msgrate" && r[3] == backend && r[4] == progress),
                "no {progress} msgrate {backend} run"
            );
        }
        // QP scaling on one engine thread and on two (QPN-steered devices).
        for threads in ["1", "2"] {
            assert!(
                runs.iter()
                    .any(|r| r[0] == "qps" && r[3] == backend && r[6] == "4" && r[24] == threads),
                "no 4-QP {threads}-thread {backend} run"
            );
        }
    }
    // The paired round of the headline WRITE and the ceiling (issue 6's first target).
    assert!(
        runs.iter()
            .any(|r| r[0] == "paired" && r[1] == "write" && r[3] == "uring"),
        "no paired WRITE run"
    );
    // ... with READ and SEND beside it (their targets against WRITE).
    for (group, test) in [("paired-read", "read"), ("paired-send", "send")] {
        assert!(
            runs.iter()
                .any(|r| r[0] == group && r[1] == test && r[3] == "uring"),
            "no paired {test} run"
        );
    }
    // ... and 4 QPs on two engine threads beside it (the QP-scaling target).
    assert!(
        runs.iter()
            .any(|r| r[0] == "paired-qps" && r[6] == "4" && r[24] == "2"),
        "no paired 4-QP run"
    );
    // ... and the same WRITE with the sender on SQPOLL, which the bench reported it had.
    assert!(
        runs.iter().any(|r| r[0] == "paired-sqpoll"
            && r[1] == "write"
            && r[3] == "uring"
            && r[26] == "true"),
        "no paired WRITE run with SQPOLL"
    );
    for r in runs.iter().filter(|r| r[0] != "paired-sqpoll") {
        assert_eq!(r[26], "false", "SQPOLL where not asked for: {r:?}");
    }
    // The paired latency round with both sides on connected sockets: they sent that way, and
    // no other run did.
    assert!(
        runs.iter()
            .any(|r| r[0] == "lat-paired-connected" && r[2] == "lat" && r[28] != "0"),
        "no paired latency run from connected sockets"
    );
    for r in runs.iter().filter(|r| r[0] != "lat-paired-connected") {
        assert_eq!(r[28], "0", "connected sends where not asked for: {r:?}");
    }
    // No run asks for a send thread (`--tx-thread`), and the bench says none had one.
    for r in &runs {
        assert_eq!(r[27], "false", "a send thread where not asked for: {r:?}");
    }
    assert!(
        runs.iter()
            .any(|r| r[0] == "lat-paired" && r[2] == "lat" && r[3] == "uring"),
        "no paired latency run"
    );
    for r in &runs {
        // A run is a result only when it is clean; an INVALID one says why.
        match r[22].as_str() {
            "ok" => {
                assert_eq!(r[21], "true");
                assert!(
                    r[16] == "0" && r[17] == "0",
                    "a valid run with retransmits: {r:?}"
                );
                let v: f64 = if r[2] == "lat" {
                    r[14].parse().unwrap()
                } else {
                    r[9].parse().unwrap()
                };
                assert!(v > 0.0, "{r:?}");
            }
            "INVALID" => assert!(!r[23].is_empty(), "{r:?}"),
            s => panic!("status {s}: {r:?}"),
        }
    }
    let base = csv(
        &out.join("baselines.csv"),
        &[
            "probe",
            "gbit_s",
            "cpu_s_per_gb",
            "half_median_us",
            "half_p99_us",
            "valid",
            "note",
            "mdgram_s",
        ],
    );
    let probes: Vec<&str> = base.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        probes,
        [
            "udp-per-packet",
            "udp-gso-gro",
            "udp-uring-gso-gro",
            // Two pairs at once: the ceiling of engines sending from two threads.
            "udp-uring-gso-gro-x2",
            "udp-uring-gso-gro-zc",
            "udp-uring-small",
            // The paired round's ceiling probe (with the paired WRITE run), and the ceiling
            // probe again at the end of the suite (phase changes of the VM).
            "udp-uring-gso-gro-paired",
            "udp-uring-gso-gro-end",
            "udp-busy-poll-rtt",
            // The paired latency round's UDP ping-pong.
            "udp-busy-poll-rtt-paired",
            // Plain sockets in uroce's connected shape (the kernel's share of the latency),
            // at the start and in the paired round; valid only if every reply came coalesced.
            "udp-shape-rtt",
            "udp-shape-rtt-paired",
            "uring-driver-rtt-raw-ack0",
            "uring-driver-rtt-raw-ack20",
            "tcp-iperf3"
        ]
    );
    for r in &base {
        assert_eq!(r[5], "true", "baseline probe failed: {r:?}");
    }
    csv(&out.join("latency_cdf.csv"), &["series", "quantile", "us"]);
    let targets = csv(
        &out.join("targets.csv"),
        &[
            "target", "value", "baseline", "ratio", "goal", "result", "note", "reach",
        ],
    );
    assert_eq!(targets.len(), 13);
    assert!(targets
        .iter()
        .all(|t| t[5] == "PASS" || t[5] == "FAIL" || (t[5] == "OUT OF REACH" && !t[7].is_empty())));

    for f in ["throughput.svg", "cpu_per_gb.svg", "latency_cdf.svg"] {
        let svg = std::fs::read_to_string(plots.join(f)).unwrap();
        let d = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(d.root_element().tag_name().name(), "svg", "{f}");
        assert!(
            d.descendants().any(|n| n.has_tag_name("polyline")),
            "{f} has no line"
        );
    }

    let md = std::fs::read_to_string(&doc).unwrap();
    assert!(md.starts_with("# Performance\n\nkept above\n"), "{md}");
    assert_eq!(md.matches("<!-- BEGIN GENERATED").count(), 1);
    assert_eq!(md.matches("<!-- END GENERATED -->").count(), 1);
    for t in &targets {
        assert!(
            md.lines().any(|l| l.starts_with(&format!("| {} |", t[0]))
                && (l.contains("| PASS |")
                    || l.contains("| FAIL |")
                    || l.contains("| OUT OF REACH |"))),
            "no row for target {}",
            t[0]
        );
    }
    for word in [
        "| CPU |",
        "| cores |",
        "| kernel |",
        "| load average before |",
        "| load average after |",
        "| CPU pressure during the run |",
        "RAPL",
    ] {
        assert!(md.contains(word), "machine description lacks {word}");
    }
    assert!(
        md.contains("](perf/throughput.svg)"),
        "plot links relative to the markdown"
    );
    // The latency's layers: the driver without the engine and the engine without the driver.
    assert!(
        md.contains("uroce's driver without the engine: one datagram")
            && md.contains("the engine without the driver (two engines in one thread"),
        "the latency target's note lacks its layers"
    );
}

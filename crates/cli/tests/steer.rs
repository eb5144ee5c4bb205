//! Several independent `uroce` processes share one address (`--steer`: QPN-steered receive).
//! Between two network namespaces (root): 2 and 4 pingpong servers on 10.66.N.1:4791 and as
//! many clients on 10.66.N.2:4791 run RC at once, every byte checked, and each process's
//! counters show it received only its own QPNs. On loopback (no root): a process killed with
//! `kill -9` frees its slot, the next process gets it, and traffic runs after the repair.

mod common;

use std::time::Duration;

use common::netns::{need_root, Netns};
use common::{spawn, strings, Outcome, Proc};

const START: Duration = Duration::from_secs(60);

/// The numbers of a `steer: slot S (QPNs ..), group index I, own rx R, foreign drops F, ...`
/// line: (slot, index, own rx, foreign drops).
fn steer_numbers(line: &str) -> (u32, u32, u64, u64) {
    let after = |key: &str| -> u64 {
        let i = line
            .find(key)
            .unwrap_or_else(|| panic!("{key} in {line:?}"))
            + key.len();
        line[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("number after {key} in {line:?}"))
    };
    (
        after("slot ") as u32,
        after("group index ") as u32,
        after("own rx "),
        after("foreign drops "),
    )
}

/// The last steer line of a finished process (the one `--counters` prints at the end).
fn final_steer(o: &Outcome) -> (u32, u32, u64, u64) {
    let l = o
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("steer: slot"))
        .unwrap_or_else(|| panic!("no steer line\n{o}"));
    steer_numbers(l)
}

/// The QPNs a pingpong printed as its own (`local address: ... QPN 0x..`).
fn local_qpns(o: &Outcome) -> Vec<u32> {
    o.stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("local address:"))
        .map(|l| {
            let i = l.find("QPN 0x").expect("QPN") + 6;
            let hex: String = l[i..].chars().take_while(char::is_ascii_hexdigit).collect();
            u32::from_str_radix(&hex, 16).expect("hex QPN")
        })
        .collect()
}

/// Checks one finished pingpong of a steered run: success, both summary lines, data checked
/// (`-c`), no packet for a QPN it does not own reached its engine (no unknown QP), its QPNs in
/// its slot; and unless `transition`, the kernel steered every packet right (no foreign drop).
/// Returns its slot and foreign drops.
fn check_steered(o: &Outcome, bytes: u64, transition: bool) -> (u32, u64) {
    assert!(o.ok(), "failed\n{o}");
    assert!(
        o.stdout
            .lines()
            .any(|l| l.starts_with(&format!("{bytes} bytes in "))),
        "no summary\n{o}"
    );
    assert!(!o.stdout.contains("invalid data"), "{o}");
    let (slot, _, own, foreign) = final_steer(o);
    if !transition {
        assert_eq!(
            foreign, 0,
            "packets of other processes' QPs reached this socket\n{o}"
        );
    }
    assert!(own > 0, "{o}");
    assert!(o.stderr.contains("unknown_qp: 0,"), "{o}");
    let qpns = local_qpns(o);
    assert!(!qpns.is_empty(), "{o}");
    for q in qpns {
        assert_eq!(q >> 16, slot, "QPN {q:#x} outside slot {slot}\n{o}");
    }
    (slot, foreign)
}

/// `n` server processes in namespace a on one address, `n` clients in b on one address, all
/// at once: RC pingpong, 64 KiB messages, every byte checked.
fn processes_share_an_address(ns: &Netns, net: u8, n: usize) {
    let (a, b) = (ns.a(), ns.b());
    let exec_a = ["ip", "netns", "exec", a.as_str()];
    let exec_b = ["ip", "netns", "exec", b.as_str()];
    let (sip, cip) = (format!("10.66.{net}.1"), format!("10.66.{net}.2"));
    let (size, iters) = (65536u64, 300u64);
    let common = |port: u16, ip: &str| {
        strings(&[
            "pingpong",
            "--rc",
            "--steer",
            "-c",
            "--counters",
            "--timeout",
            "60",
            "-s",
            &size.to_string(),
            "-m",
            "4096",
            "-n",
            &iters.to_string(),
            "-p",
            &port.to_string(),
            "--dev-ip",
            ip,
        ])
    };
    let servers: Vec<Proc> = (0..n)
        .map(|i| {
            let p = spawn(&exec_a, &common(18600 + i as u16, &sip));
            assert!(
                p.wait_for_stderr("listening", START),
                "server {i} did not start"
            );
            p
        })
        .collect();
    let clients: Vec<Proc> = (0..n)
        .map(|i| {
            let mut args = common(18600 + i as u16, &cip);
            args.push(sip.clone());
            spawn(&exec_b, &args)
        })
        .collect();
    let clients: Vec<Outcome> = clients.into_iter().map(Proc::finish).collect();
    let servers: Vec<Outcome> = servers.into_iter().map(Proc::finish).collect();
    let bytes = size * iters * 2;
    for side in [&clients, &servers] {
        let mut slots: Vec<u32> = side
            .iter()
            .map(|o| check_steered(o, bytes, false).0)
            .collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), n, "one slot per process: {slots:?}");
    }
    for (s, c) in servers.iter().zip(&clients) {
        // Peers see one address and port: each side's remote GID is the other's address.
        assert!(s.stdout.contains(&format!("GID ::ffff:{cip}")), "{s}");
        assert!(c.stdout.contains(&format!("GID ::ffff:{sip}")), "{c}");
    }
}

#[test]
fn steer_two_processes_share_an_address() {
    if !need_root("steer_two_processes_share_an_address") {
        return;
    }
    let ns = Netns::up("stsh2", 197);
    processes_share_an_address(&ns, 197, 2);
}

#[test]
fn steer_four_processes_share_an_address() {
    if !need_root("steer_four_processes_share_an_address") {
        return;
    }
    let ns = Netns::up("stsh4", 198);
    processes_share_an_address(&ns, 198, 4);
}

/// A server that opens its steered device before listening, on `ip`, side channel `port`;
/// returns it with its slot.
fn steered_server(ip: &str, port: u16) -> (Proc, u32) {
    let args = strings(&[
        "pingpong",
        "--rc",
        "--steer",
        "-c",
        "--counters",
        "--timeout",
        "60",
        "-n",
        "200",
        "-p",
        &port.to_string(),
        "--dev-ip",
        ip,
    ]);
    let p = spawn(&[], &args);
    let Some(line) = p.stderr_line("steer: slot", START) else {
        panic!("no steer line\n{}", p.kill());
    };
    let slot = steer_numbers(&line).0;
    assert!(p.wait_for_stderr("listening", START), "not listening");
    (p, slot)
}

fn steered_client(dev_ip: &str, server: &str, port: u16) -> Outcome {
    spawn(
        &[],
        &strings(&[
            "pingpong",
            "--rc",
            "--steer",
            "-c",
            "--counters",
            "--timeout",
            "60",
            "-n",
            "200",
            "-p",
            &port.to_string(),
            "--dev-ip",
            dev_ip,
            server,
        ]),
    )
    .finish()
}

#[test]
fn steer_kill_9_frees_the_slot_and_the_group_is_repaired() {
    let (ip, peer) = ("127.0.95.1", "127.0.95.2");
    let (a, slot_a) = steered_server(ip, 18650);
    let (b, slot_b) = steered_server(ip, 18651);
    assert_ne!(slot_a, slot_b);
    // SIGKILL: no clean-up code runs; the kernel drops its flock and its socket.
    let killed = a.kill();
    assert!(!killed.ok());
    let (c, slot_c) = steered_server(ip, 18652);
    assert_eq!(
        slot_c, slot_a,
        "the dead process's slot is handed out again"
    );
    // Both survivors serve clients, every byte checked.
    let cb = steered_client(peer, ip, 18651);
    let cc = steered_client(peer, ip, 18652);
    let (b, c) = (b.finish(), c.finish());
    let bytes = 4096 * 200 * 2;
    // Until the survivors' checks repair the table (the kernel moved a socket when the dead
    // one's closed), packets may reach the wrong socket: they are counted and dropped, and RC
    // retransmits them.
    let mut foreign = 0;
    for o in [&cb, &cc, &b, &c] {
        foreign += check_steered(o, bytes, true).1;
    }
    println!("foreign drops during the kill -9 transition: {foreign}");
}

#[test]
fn steer_bench_two_engine_threads_per_side() {
    let (sip, cip) = ("127.0.97.1", "127.0.97.2");
    let common = |ip: &str| {
        strings(&[
            "bench",
            "write",
            "bw",
            "--qps",
            "4",
            "--threads",
            "2",
            "-s",
            "65536",
            "-n",
            "200",
            "--timeout",
            "60",
            "-p",
            "18720",
            "--dev-ip",
            ip,
        ])
    };
    let server = spawn(&[], &common(sip));
    assert!(
        server.wait_for_stderr("listening", START),
        "server not listening"
    );
    let mut args = common(cip);
    args.push(sip.to_string());
    let client = spawn(&[], &args).finish();
    let server = server.finish();
    for o in [&client, &server] {
        assert!(o.ok(), "{o}");
        // Two engines per side, each in its own slot, no packet at the wrong socket.
        let finals: Vec<(u32, u32, u64, u64)> = o
            .stderr
            .lines()
            .filter(|l| l.starts_with("steer: slot") && !l.contains("own rx 0,"))
            .map(steer_numbers)
            .collect();
        assert_eq!(finals.len(), 2, "{o}");
        assert_ne!(finals[0].0, finals[1].0, "{o}");
        assert!(finals.iter().all(|f| f.3 == 0 && f.2 > 0), "{o}");
    }
    let agg = client
        .stdout
        .lines()
        .find(|l| l.starts_with("aggregate: 2 threads, 4 QPs, 65536 B: "))
        .unwrap_or_else(|| panic!("no aggregate line\n{client}"));
    assert!(
        agg.contains(&format!("{} bytes", 65536u64 * 200 * 4)),
        "{agg}"
    );
    // CPU per GB over all threads' bytes (each thread's own figure is process-wide).
    let cpu_per_gb: f64 = agg
        .rsplit("), ")
        .next()
        .and_then(|t| t.strip_suffix(" CPU-s/GB"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no CPU-s/GB in {agg}"));
    assert!(cpu_per_gb > 0.0, "{agg}");
    // Each thread's data was checked by its peer thread.
    let verified = client
        .stdout
        .lines()
        .filter(|l| l.contains("\"data\":\"verified-by-peer\""))
        .count();
    assert_eq!(verified, 2, "{client}");
}

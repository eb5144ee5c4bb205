//! `uroce bench` between two network namespaces joined by a veth pair
//! (`scripts/netns.sh up NAME N`: 10.66.N.1/2 and fd66:N::1/2, MTU 9000), over IPv4 and IPv6,
//! for every test, with both sides on their defaults as perftest's would be: the side channel
//! on TCP 18515, RoCE on UDP 4791, the server's device on the address the client connected
//! to, the client's on its TCP source address. The client retries its connection until the
//! server listens. Needs root; without it every test prints that it was skipped and returns.

mod common;

use common::netns::{need_root, Netns};
use common::{spawn, strings};
use serde_json::Value;

/// Runs `bench test kind extra` with the server in namespace a and the client in b, which
/// connects to `server_ip`; checks exit codes, JSON lines, addresses and the data check.
/// Returns both sides' result lines.
fn run(
    ns: &Netns,
    server_ip: &str,
    client_ip: &str,
    test: &str,
    kind: &str,
    extra: &[&str],
) -> Vec<Value> {
    let mut args = strings(&["bench", test, kind, "--json", "--timeout", "60"]);
    args.extend(strings(extra));
    let mut cargs = args.clone();
    cargs.extend(strings(&["--connect-timeout", "60", server_ip]));
    let (ea, eb) = (ns.exec("a"), ns.exec("b"));
    let ea: Vec<&str> = ea.iter().map(String::as_str).collect();
    let eb: Vec<&str> = eb.iter().map(String::as_str).collect();
    let server = spawn(&ea, &args);
    let client = spawn(&eb, &cargs).finish();
    let server = if client.ok() {
        server.finish()
    } else {
        server.kill()
    };
    assert!(client.ok(), "client failed\n{client}\n{server}");
    assert!(server.ok(), "server failed\n{server}\n{client}");
    let gid = |ip: &str| {
        if ip.contains(':') {
            ip.to_string()
        } else {
            format!("::ffff:{ip}")
        }
    };
    assert!(
        server.stderr.contains(&format!("device {server_ip} ")),
        "the server's device is on the address the client connected to\n{server}"
    );
    assert!(
        client.stderr.contains(&format!("device {client_ip} ")),
        "the client's device is on its TCP source address\n{client}"
    );
    assert!(
        client.stderr.contains(&format!("at {}", gid(server_ip))),
        "{client}"
    );
    let mut all = Vec::new();
    for (o, role) in [(&server, "server"), (&client, "client")] {
        let lines: Vec<Value> = o
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{o}")))
            .collect();
        // The server of read_lat and atomic_lat only hosts the buffer and prints nothing.
        let silent = role == "server" && kind == "lat" && matches!(test, "read" | "atomic");
        assert_eq!(lines.is_empty(), silent, "{o}");
        for v in &lines {
            assert_eq!(v["role"], role, "{v}");
            assert_eq!(v["peer"], "uroce", "{v}");
            // rxe's port MTU for a 9000-byte link.
            assert_eq!(v["mtu"], 4096, "{v}");
            let data = v["data"].as_str().unwrap_or_default();
            let ok = match (test, role) {
                ("read", "server") => data == "not-checked",
                ("write" | "send", "client") if kind == "bw" => data == "verified-by-peer",
                _ => data == "verified",
            };
            assert!(ok, "{test} {kind} {role}: data {data}\n{v}");
        }
        all.extend(lines);
    }
    all
}

fn every_test(ns: &Netns, server_ip: &str, client_ip: &str) {
    for backend in ["uring", "syscall"] {
        let b = ["--backend", backend, "-n", "200"];
        run(ns, server_ip, client_ip, "write", "bw", &b);
        run(ns, server_ip, client_ip, "read", "bw", &b);
        run(ns, server_ip, client_ip, "send", "bw", &b);
        run(ns, server_ip, client_ip, "atomic", "bw", &b);
        run(ns, server_ip, client_ip, "write", "lat", &b);
        run(ns, server_ip, client_ip, "read", "lat", &b);
        run(ns, server_ip, client_ip, "send", "lat", &b);
        run(ns, server_ip, client_ip, "atomic", "lat", &b);
    }
    run(
        ns,
        server_ip,
        client_ip,
        "write",
        "bw",
        &["--sizes", "64,1048576", "-q", "2", "-n", "50"],
    );
    run(
        ns,
        server_ip,
        client_ip,
        "write",
        "lat",
        &["--progress", "polled", "-s", "4096", "-n", "200"],
    );
    // Busy-polled from sockets connected to the peer, on both families: every send went
    // from one, the peer's datagrams arrived on one, and nothing was dropped (a packet sent
    // with a wrong ICRC would be).
    for v in run(
        ns,
        server_ip,
        client_ip,
        "write",
        "lat",
        &["--progress", "polled", "--connected-tx", "-n", "300"],
    ) {
        common::assert_connected_and_clean(&v, 300);
    }
}

#[test]
fn netns_bench_ipv4() {
    if !need_root("netns_bench_ipv4") {
        return;
    }
    let ns = Netns::up("ubnv4", 181);
    every_test(&ns, "10.66.181.1", "10.66.181.2");
}

#[test]
fn netns_bench_ipv6() {
    if !need_root("netns_bench_ipv6") {
        return;
    }
    let ns = Netns::up("ubnv6", 182);
    every_test(&ns, "fd66:182::1", "fd66:182::2");
}

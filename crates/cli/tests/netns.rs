//! `uroce pingpong` between two network namespaces joined by a veth pair
//! (`scripts/netns.sh up NAME N`: 10.66.N.1/2 and fd66:N::1/2, MTU 9000), over IPv4 and IPv6,
//! in every mode, with both sides on their default addresses and ports: the server's device
//! on the address the client connected to, the client's on its TCP source address, RoCE on
//! UDP 4791, the side channel on TCP 18515. Needs root; without it every test prints that it
//! was skipped and returns.

mod common;

use common::netns::{need_root, Netns};
use common::{pair, spawn, strings};

/// Every mode between `ns`'s two namespaces, the server at `server_ip`.
fn every_mode(ns: &Netns, server_ip: &str, client_ip: &str) {
    let (a, b) = (ns.a(), ns.b());
    let exec_a = ["ip", "netns", "exec", a.as_str()];
    let exec_b = ["ip", "netns", "exec", b.as_str()];
    // (options, message size, iterations)
    let cases: [(&[&str], u64, u64); 9] = [
        (&["--rc"], 4096, 500),
        (&["--rc", "-s", "1048576", "-m", "4096"], 1 << 20, 20),
        (&["--rc", "-e", "-s", "1", "-m", "1024"], 1, 500),
        (&["--uc", "-s", "4000", "-m", "4096"], 4000, 500),
        (&["--uc", "-s", "1"], 1, 500),
        (&["--ud"], 1024, 500),
        // No -m: the port MTU is rxe's for the 9000-byte link, 4096.
        (&["--ud", "-s", "4096"], 4096, 500),
        (&["--srq", "-s", "65536", "-m", "4096"], 65536, 200),
        (&["--srq", "-e", "-q", "4", "-s", "4000"], 4000, 200),
    ];
    for (opts, size, iters) in cases {
        let mut args = strings(&["pingpong", "-c", "--timeout", "60"]);
        args.extend(strings(opts));
        args.extend(strings(&["-n", &iters.to_string()]));
        let mut client = args.clone();
        client.push(server_ip.to_string());
        let (server, client) = pair(&exec_a, &args, &exec_b, &client, size, iters);
        let gid = |ip: &str| {
            if ip.contains(':') {
                format!("GID {ip}")
            } else {
                format!("GID ::ffff:{ip}")
            }
        };
        for (o, mine, theirs) in [
            (&server, server_ip, client_ip),
            (&client, client_ip, server_ip),
        ] {
            let has = |what: &str, ip: &str| {
                o.stdout
                    .lines()
                    .any(|l| l.contains(what) && l.ends_with(&gid(ip)))
            };
            assert!(has("local address:", mine), "{opts:?}: local GID\n{o}");
            assert!(has("remote address:", theirs), "{opts:?}: remote GID\n{o}");
        }
    }
}

#[test]
fn netns_ipv4_every_mode() {
    if !need_root("netns_ipv4_every_mode") {
        return;
    }
    let ns = Netns::up("uppv4", 171);
    every_mode(&ns, "10.66.171.1", "10.66.171.2");
}

#[test]
fn netns_ipv6_every_mode() {
    if !need_root("netns_ipv6_every_mode") {
        return;
    }
    let ns = Netns::up("uppv6", 172);
    every_mode(&ns, "fd66:172::1", "fd66:172::2");
}

#[test]
fn netns_devinfo_gid_table() {
    if !need_root("netns_devinfo_gid_table") {
        return;
    }
    let ns = Netns::up("uppdi", 173);
    let a = ns.a();
    let o = spawn(
        &["ip", "netns", "exec", &a],
        &strings(&["devinfo", "--dev-ip", "10.66.173.1"]),
    )
    .finish();
    assert!(o.ok(), "{o}");
    // rxe's layout for eth0 (MTU 9000): the default GID from the MAC, then IPv4, then IPv6.
    for want in [
        "netdev:\t\t\t\teth0 (link MTU 9000)",
        "active_mtu:\t\t4096 (5)",
        "state:\t\t\tPORT_ACTIVE (4)",
        "GID[  0]:\t\tfe80::",
        "GID[  1]:\t\t::ffff:10.66.173.1, RoCE v2 (this uroce device)",
        "GID[  2]:\t\tfd66:173::1, RoCE v2\n",
    ] {
        assert!(o.stdout.contains(want), "{want:?} missing\n{o}");
    }
}

/// RC between the two namespaces over impaired links: this kernel has no `tc netem`, so both
/// processes impair their own outgoing packets (`UROCE_FAULTS`: 2 % loss, 5 % reordering, 1 %
/// duplication, 1 % corruption). Every byte is validated (-c), and both sides retransmitted.
#[test]
fn netns_rc_under_injected_faults() {
    if !need_root("netns_rc_under_injected_faults") {
        return;
    }
    let ns = Netns::up("uppft", 174);
    let (a, b) = (ns.a(), ns.b());
    let faults = "UROCE_FAULTS=loss=0.02,reorder=0.05,duplicate=0.01,corrupt=0.01,seed=5";
    let exec_a = ["env", faults, "ip", "netns", "exec", a.as_str()];
    let exec_b = ["env", faults, "ip", "netns", "exec", b.as_str()];
    let args = strings(&[
        "pingpong",
        "--rc",
        "-c",
        "--counters",
        "--timeout",
        "120",
        "-s",
        "1048576",
        "-m",
        "4096",
        "-n",
        "20",
    ]);
    let mut client = args.clone();
    client.push("10.66.174.1".into());
    let (server, client) = pair(&exec_a, &args, &exec_b, &client, 1 << 20, 20);
    let count = |o: &common::Outcome, what: &str| -> u64 {
        let line = o
            .stderr
            .lines()
            .find(|l| l.starts_with("counters:"))
            .unwrap_or_default();
        let before = line.split(what).next().unwrap_or_default();
        before
            .rsplit([' ', '('])
            .find(|w| !w.is_empty())
            .and_then(|w| w.parse().ok())
            .unwrap_or(0)
    };
    for o in [&server, &client] {
        assert!(count(o, " retransmitted") > 0, "no retransmission\n{o}");
    }
    assert!(
        count(&server, " ICRC drops") + count(&client, " ICRC drops") > 0,
        "corruption not caught by the ICRC\n{server}\n{client}"
    );
}

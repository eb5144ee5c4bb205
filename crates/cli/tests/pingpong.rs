//! `uroce pingpong` server and client on loopback (no root), in every mode, with `-c`: both
//! must exit 0, print rdma-core's summary lines and agree on the exchanged addresses. Each run
//! has its own 127.77.ID.{1,2} addresses and TCP port 18700+ID, so tests run in parallel.

mod common;

use common::{pair, spawn, strings};

/// One server/client run. The server opens its device on the address the client connects to
/// (127.77.ID.1, the default), the client on 127.77.ID.2 (`--dev-ip`; its TCP source would be
/// 127.0.0.1, shared by every test).
fn run_case(id: u8, mode: &str, size: Option<u64>, mtu: Option<u32>, iters: u64, extra: &[&str]) {
    let server_ip = format!("127.77.{id}.1");
    let client_ip = format!("127.77.{id}.2");
    let port = (18700 + u16::from(id)).to_string();
    let mut args = strings(&["pingpong", mode, "-p", &port, "-c", "--timeout", "60"]);
    args.extend(strings(&["-n", &iters.to_string()]));
    if let Some(s) = size {
        args.extend(strings(&["-s", &s.to_string()]));
    }
    if let Some(m) = mtu {
        args.extend(strings(&["-m", &m.to_string()]));
    }
    args.extend(strings(extra));
    let mut client = args.clone();
    client.extend(strings(&["--dev-ip", &client_ip, &server_ip]));
    let default_size = if mode == "--ud" { 1024 } else { 4096 };
    let (server, client) = pair(
        &[],
        &args,
        &[],
        &client,
        size.unwrap_or(default_size),
        iters,
    );
    let gid = |ip: &str| format!("GID ::ffff:{ip}");
    assert!(
        server
            .stdout
            .lines()
            .any(|l| l.contains("local address:") && l.ends_with(&gid(&server_ip))),
        "the server's device is on the address the client connected to\n{server}"
    );
    assert!(
        client
            .stdout
            .lines()
            .any(|l| l.contains("local address:") && l.ends_with(&gid(&client_ip))),
        "{client}"
    );
}

const MIB: u64 = 1 << 20;

#[test]
fn rc_sizes_and_mtus() {
    let mut id = 1;
    for mtu in [1024, 4096] {
        for (size, iters) in [(1, 200), (4000, 200), (MIB, 8)] {
            run_case(id, "--rc", Some(size), Some(mtu), iters, &[]);
            id += 1;
        }
    }
    // rdma-core's defaults: 4096 bytes, MTU 1024.
    run_case(id, "--rc", None, None, 100, &[]);
}

#[test]
fn uc_sizes_and_mtus() {
    let mut id = 10;
    for mtu in [1024, 4096] {
        // UC loses a whole message to one dropped packet and the ping-pong then stalls, as
        // rdma-core's does: keep messages well within the socket buffers.
        for (size, iters) in [(1, 200), (4000, 200), (65536, 50)] {
            run_case(id, "--uc", Some(size), Some(mtu), iters, &[]);
            id += 1;
        }
    }
}

#[test]
fn ud_sizes_up_to_the_port_mtu() {
    let mut id = 20;
    // A UD message is one packet of at most the port MTU; the receive buffer has 40 bytes
    // more for the GRH.
    for (mtu, sizes) in [(1024, &[1, 1000, 1024][..]), (4096, &[1, 4000, 4096][..])] {
        for &size in sizes {
            run_case(id, "--ud", Some(size), Some(mtu), 200, &[]);
            id += 1;
        }
    }
    // No -m: the port MTU is what rxe derives from lo's MTU (65536 → 4096).
    run_case(id, "--ud", Some(4096), None, 100, &[]);
}

#[test]
fn srq_sizes_and_mtus() {
    let mut id = 30;
    for mtu in [1024, 4096] {
        for (size, iters) in [(1, 200), (4000, 200), (MIB, 8)] {
            run_case(id, "--srq", Some(size), Some(mtu), iters, &[]);
            id += 1;
        }
    }
    run_case(id, "--srq", Some(4000), None, 100, &["-q", "3", "-r", "20"]);
}

#[test]
fn events_mode() {
    run_case(40, "--rc", Some(4000), Some(4096), 200, &["-e"]);
    run_case(41, "--uc", Some(4000), Some(1024), 200, &["-e"]);
    run_case(42, "--ud", Some(1000), Some(1024), 200, &["-e"]);
    run_case(43, "--srq", Some(4000), Some(1024), 200, &["-e", "-q", "4"]);
}

#[test]
fn syscall_back_end() {
    run_case(
        45,
        "--rc",
        Some(MIB),
        Some(4096),
        8,
        &["--backend", "syscall"],
    );
    run_case(
        46,
        "--ud",
        Some(4096),
        Some(4096),
        200,
        &["--backend", "syscall"],
    );
    run_case(
        47,
        "--srq",
        Some(4000),
        Some(1024),
        200,
        &["--backend", "syscall", "-e"],
    );
}

#[test]
fn chk_detects_data_without_the_pattern() {
    // The client does not write the pattern (no -c), the server checks (-c): every page's
    // first byte is 0x7b instead of 0.
    let port = "18750";
    let server = spawn(
        &[],
        &strings(&[
            "pingpong",
            "--rc",
            "-p",
            port,
            "-s",
            "10000",
            "-n",
            "10",
            "-c",
            "--timeout",
            "60",
        ]),
    );
    assert!(server.wait_for_stderr("listening", std::time::Duration::from_secs(60)));
    let client = spawn(
        &[],
        &strings(&[
            "pingpong",
            "--rc",
            "-p",
            port,
            "-s",
            "10000",
            "-n",
            "10",
            "--timeout",
            "60",
            "--dev-ip",
            "127.77.50.2",
            "127.77.50.1",
        ]),
    )
    .finish();
    let server = server.finish();
    assert!(client.ok(), "{client}");
    assert!(!server.ok(), "the server must fail\n{server}");
    assert!(
        server.stdout.contains("invalid data in page 0\n"),
        "{server}"
    );
}

#[test]
fn failed_completion_exits_non_zero() {
    // The client sends 8192 bytes into the server's 4096-byte receives: the server's receive
    // completes with a length error, the client's send with the NAK's error.
    let port = "18751";
    let server = spawn(
        &[],
        &strings(&[
            "pingpong",
            "--rc",
            "-p",
            port,
            "-s",
            "4096",
            "-n",
            "10",
            "--timeout",
            "30",
        ]),
    );
    assert!(server.wait_for_stderr("listening", std::time::Duration::from_secs(60)));
    let client = spawn(
        &[],
        &strings(&[
            "pingpong",
            "--rc",
            "-p",
            port,
            "-s",
            "8192",
            "-n",
            "10",
            "--timeout",
            "30",
            "--dev-ip",
            "127.77.51.2",
            "127.77.51.1",
        ]),
    )
    .finish();
    let server = server.finish();
    assert!(!server.ok(), "{server}");
    assert!(
        server
            .stderr
            .contains("Failed status local length error (1) for wr_id 1"),
        "{server}"
    );
    assert!(!client.ok(), "{client}");
}

#[test]
fn ud_size_above_the_port_mtu_is_refused() {
    let o = spawn(
        &[],
        &strings(&[
            "pingpong",
            "--ud",
            "-p",
            "18752",
            "-s",
            "1025",
            "-m",
            "1024",
            "--dev-ip",
            "127.77.52.1",
        ]),
    )
    .finish();
    assert!(!o.ok(), "{o}");
    assert!(
        o.stderr
            .contains("Requested size larger than port MTU (1024)"),
        "{o}"
    );
}

#[test]
fn qp_timeout_sets_the_ack_timeout_a_dead_peer_is_given_up_after() {
    // `-u 16`: 4.096 µs × 2^16 = 268 ms. The "server" is this test: it answers the side channel
    // with a QP at 127.77.53.1, where no device listens, so the client's first SEND is never
    // acknowledged. The first timeout and 7 retries each wait one ACK timeout, so the error
    // cannot come before 7 of them (1.88 s); with pingpong's default (-u 14) it would come
    // after 8 × 67 ms = 537 ms, so the lower bound shows that `-u` reached the QP.
    use std::io::{Read, Write};
    let timeout = uroce::ack_timeout(16).expect("16 is finite");
    let listener = std::net::TcpListener::bind("127.77.53.1:18753").expect("bind");
    let client = spawn(
        &[],
        &strings(&[
            "pingpong",
            "--rc",
            "-p",
            "18753",
            "-u",
            "16",
            "--timeout",
            "60",
            "--dev-ip",
            "127.77.53.2",
            "127.77.53.1",
        ]),
    );
    let (mut tcp, _) = listener.accept().expect("accept");
    let mut theirs = [0u8; 52];
    tcp.read_exact(&mut theirs)
        .expect("the client's QP message");
    // LID 0, QPN 0x11, PSN 0, GID ::ffff:127.77.53.1, NUL-padded to 52 bytes.
    let ours = *b"0000:000011:000000:00000000000000000000ffff7f4d3501\0";
    assert_eq!(ours.len(), 52);
    tcp.write_all(&ours).expect("our QP message");
    let t0 = std::time::Instant::now();
    let seen = client.wait_for_stderr(
        "transport retry counter exceeded",
        timeout * 8 + std::time::Duration::from_secs(20),
    );
    let took = t0.elapsed();
    let client = client.finish();
    assert!(seen, "no retry-exceeded error\n{client}");
    assert!(!client.ok(), "{client}");
    assert!(
        took >= timeout * 7 - std::time::Duration::from_millis(20),
        "gave up after {took:?}: -u 16 allows no error before {:?}\n{client}",
        timeout * 7
    );
}

#[test]
fn devinfo_shows_rxe_layout_for_lo() {
    let o = spawn(&[], &strings(&["devinfo", "--dev-ip", "127.0.0.1"])).finish();
    assert!(o.ok(), "{o}");
    for want in [
        "hca_id:\turoce",
        "transport:\t\t\tInfiniBand (0)",
        "state:\t\t\tPORT_ACTIVE (4)",
        "max_mtu:\t\t4096 (5)",
        "link_layer:\t\tEthernet",
        "::ffff:127.0.0.1, RoCE v2 (this uroce device)",
    ] {
        assert!(o.stdout.contains(want), "{want:?} missing\n{o}");
    }
}

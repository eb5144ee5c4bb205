//! Real UDP sockets on loopback (no root): two devices on two 127/8 addresses move data with
//! every opcode, and the data is checked byte for byte, with each back end (and one of each)
//! in both progress modes. Each test uses its own addresses so tests can run in parallel.

use std::net::IpAddr;
use std::time::Duration;

mod common;

use common::{connect, pattern, Side, Sizes};
use uroce::{
    BackendKind, CompletionChannel, Connect, DeviceConfig, Payload, Progress, QpCap, QpType,
    RecvWr, SendOp, SendWr, UdDest, WcOpcode, WcStatus,
};

const T: Duration = Duration::from_secs(10);

fn side(
    ip: &str,
    backend: BackendKind,
    progress: Progress,
    qp_type: QpType,
    pcap: Option<std::path::PathBuf>,
) -> Side {
    let mut cfg = DeviceConfig::new(ip.parse().unwrap());
    cfg.backend = backend;
    cfg.progress = progress;
    cfg.pcap = pcap;
    side_with(cfg, qp_type)
}

/// A side on a device opened with `cfg`: a 4 MiB region with every right, a CQ and a QP.
fn side_with(cfg: DeviceConfig, qp_type: QpType) -> Side {
    common::side_with(
        cfg,
        qp_type,
        Sizes {
            mr_len: 4 << 20,
            cq_depth: 4096,
            wrs: 512,
        },
    )
}

fn one_ok(s: &Side, op: WcOpcode) -> uroce::Completion {
    common::one_ok(s, op, &[], T)
}

/// Waits for one completion on `s`; in polled mode `other`'s device is driven meanwhile, as the
/// application owning it would.
fn one_ok_driving(s: &Side, op: WcOpcode, other: Option<&Side>) -> uroce::Completion {
    common::one_ok(s, op, other.as_slice(), T)
}

fn every_rc_opcode(backend: BackendKind, progress: Progress, ip_a: &str, ip_b: &str) {
    every_rc_opcode_between(backend, backend, progress, ip_a, ip_b);
}

fn every_rc_opcode_between(
    backend_a: BackendKind,
    backend_b: BackendKind,
    progress: Progress,
    ip_a: &str,
    ip_b: &str,
) {
    let cfg = |ip: &str, backend| {
        let mut c = DeviceConfig::new(ip.parse().unwrap());
        (c.backend, c.progress) = (backend, progress);
        c
    };
    every_rc_opcode_with(cfg(ip_a, backend_a), cfg(ip_b, backend_b));
}

/// Every RC opcode from a device opened with `a` to one opened with `b`, data checked, no
/// packet dropped for its ICRC; the two sides are returned for more checks.
fn every_rc_opcode_with(a: DeviceConfig, b: DeviceConfig) -> (Side, Side) {
    let (backend_a, backend_b) = (a.backend, b.backend);
    let a = side_with(a, QpType::Rc);
    let b = side_with(b, QpType::Rc);
    assert_eq!(a.dev.driver_features().backend, backend_a);
    assert_eq!(b.dev.driver_features().backend, backend_b);
    connect(&a, &b);
    let one_ok = |s: &Side, op| {
        let other = if std::ptr::eq(s, &a) { &b } else { &a };
        one_ok_driving(s, op, Some(other))
    };
    // WRITE 1 MiB + 1 (multi-packet, odd length).
    let data = pattern((1 << 20) + 1, 1);
    a.mr.write(0, &data);
    a.qp.post_send(SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: b.mr.addr() + 64,
            rkey: b.mr.rkey(),
        },
        Payload::Sgl(vec![a.mr.sge(0, data.len() as u32)]),
    ))
    .unwrap();
    one_ok(&a, WcOpcode::RdmaWrite);
    let mut got = vec![0; data.len()];
    b.mr.read(64, &mut got);
    assert!(got == data, "WRITE data differs");
    // READ it back into another place.
    a.qp.post_send(SendWr::new(
        2,
        SendOp::RdmaRead {
            remote_addr: b.mr.addr() + 64,
            rkey: b.mr.rkey(),
        },
        Payload::Sgl(vec![a.mr.sge(2 << 20, data.len() as u32)]),
    ))
    .unwrap();
    one_ok(&a, WcOpcode::RdmaRead);
    a.mr.read(2 << 20, &mut got);
    assert!(got == data, "READ data differs");
    // SEND with immediate into a posted receive.
    b.qp.post_recv(RecvWr {
        wr_id: 9,
        sgl: vec![b.mr.sge(3 << 20, 10_000)],
    })
    .unwrap();
    a.qp.post_send(SendWr::new(
        3,
        SendOp::SendWithImm(0x1234_5678),
        Payload::Sgl(vec![a.mr.sge(0, 9000)]),
    ))
    .unwrap();
    one_ok(&a, WcOpcode::Send);
    let r = one_ok(&b, WcOpcode::Recv);
    assert_eq!((r.wr_id, r.byte_len, r.imm), (9, 9000, Some(0x1234_5678)));
    let mut s = vec![0; 9000];
    b.mr.read(3 << 20, &mut s);
    assert_eq!(s, data[..9000]);
    // WRITE with immediate consumes a receive.
    b.qp.post_recv(RecvWr {
        wr_id: 10,
        sgl: vec![],
    })
    .unwrap();
    a.qp.post_send(SendWr::new(
        4,
        SendOp::RdmaWriteWithImm {
            remote_addr: b.mr.addr(),
            rkey: b.mr.rkey(),
            imm: 7,
        },
        Payload::Inline(vec![0xAB; 100]),
    ))
    .unwrap();
    one_ok(&a, WcOpcode::RdmaWrite);
    let r = one_ok(&b, WcOpcode::RecvRdmaWithImm);
    assert_eq!((r.wr_id, r.byte_len, r.imm), (10, 100, Some(7)));
    // Atomics.
    b.mr.write(8, &40u64.to_ne_bytes());
    a.qp.post_send(SendWr::new(
        5,
        SendOp::FetchAdd {
            remote_addr: b.mr.addr() + 8,
            rkey: b.mr.rkey(),
            add: 2,
        },
        Payload::Sgl(vec![a.mr.sge(16, 8)]),
    ))
    .unwrap();
    one_ok(&a, WcOpcode::FetchAdd);
    a.qp.post_send(SendWr::new(
        6,
        SendOp::CompareSwap {
            remote_addr: b.mr.addr() + 8,
            rkey: b.mr.rkey(),
            compare: 42,
            swap: 1000,
        },
        Payload::Sgl(vec![a.mr.sge(24, 8)]),
    ))
    .unwrap();
    one_ok(&a, WcOpcode::CompSwap);
    let mut w = [0u8; 8];
    a.mr.read(16, &mut w);
    assert_eq!(u64::from_ne_bytes(w), 40);
    a.mr.read(24, &mut w);
    assert_eq!(u64::from_ne_bytes(w), 42);
    b.mr.read(8, &mut w);
    assert_eq!(u64::from_ne_bytes(w), 1000);
    let ca = a.dev.counters();
    assert!(
        ca.tx_packets > 256 && ca.icrc_drops == 0 && ca.malformed == 0,
        "{ca:?}"
    );
    let cb = b.dev.counters();
    assert!(cb.icrc_drops == 0 && cb.malformed == 0, "{cb:?}");
    assert_eq!((a.dev.io_errors(), b.dev.io_errors()), (0, 0));
    (a, b)
}

#[test]
fn rc_every_opcode_syscall_thread() {
    every_rc_opcode(
        BackendKind::Syscall,
        Progress::Thread,
        "127.0.10.1",
        "127.0.10.2",
    );
}

#[test]
fn rc_every_opcode_syscall_polled() {
    every_rc_opcode(
        BackendKind::Syscall,
        Progress::Polled,
        "127.0.11.1",
        "127.0.11.2",
    );
}

#[test]
fn rc_every_opcode_uring_thread() {
    every_rc_opcode(
        BackendKind::Uring,
        Progress::Thread,
        "127.0.20.1",
        "127.0.20.2",
    );
}

/// Busy-polled devices sending from sockets connected to their peer (`connected_tx`): every
/// RC opcode, with multi-packet GSO sends, arrives with an ICRC that verifies for the IPv4 ID
/// it really carried (the receivers solve for the ID, as they must for rxe; a wrong reseal
/// would be a drop), both sides did send that way, and received the peer's datagrams on the
/// same sockets (each sends from the device's port, which the other's socket is connected to).
#[test]
fn rc_every_opcode_from_connected_sockets() {
    let cfg = |ip: &str| {
        let mut c = DeviceConfig::new(ip.parse().unwrap());
        (c.backend, c.progress) = (BackendKind::Uring, Progress::Polled);
        c.connected_tx = true;
        c.accept_any_ipv4_id = true;
        c
    };
    let (a, b) = every_rc_opcode_with(cfg("127.0.21.3"), cfg("127.0.21.4"));
    for s in [&a, &b] {
        let d = s.dev.driver_stats();
        assert!(d.tx_connected > 0 && d.tx_connected == d.tx_sends, "{d:?}");
        assert!(d.rx_connected > 0, "{d:?}");
    }
}

#[test]
fn rc_every_opcode_uring_polled() {
    every_rc_opcode(
        BackendKind::Uring,
        Progress::Polled,
        "127.0.21.1",
        "127.0.21.2",
    );
}

/// A uring device's GSO batches reach a syscall device (no GRO) as packets the kernel
/// segmented, with IPv4 IDs 0, 1, 2, ...; and the other way round.
#[test]
fn rc_every_opcode_uring_to_syscall() {
    every_rc_opcode_between(
        BackendKind::Uring,
        BackendKind::Syscall,
        Progress::Thread,
        "127.0.22.1",
        "127.0.22.2",
    );
    every_rc_opcode_between(
        BackendKind::Syscall,
        BackendKind::Uring,
        Progress::Polled,
        "127.0.22.3",
        "127.0.22.4",
    );
}

#[test]
fn ud_send_receives_grh_and_source_qp() {
    ud_send(
        BackendKind::Syscall,
        Progress::Thread,
        "127.0.12.1",
        "127.0.12.2",
    );
}

#[test]
fn ud_send_receives_grh_and_source_qp_syscall_polled() {
    ud_send(
        BackendKind::Syscall,
        Progress::Polled,
        "127.0.23.1",
        "127.0.23.2",
    );
}

#[test]
fn ud_send_receives_grh_and_source_qp_uring_thread() {
    ud_send(
        BackendKind::Uring,
        Progress::Thread,
        "127.0.24.1",
        "127.0.24.2",
    );
}

#[test]
fn ud_send_receives_grh_and_source_qp_uring_polled() {
    ud_send(
        BackendKind::Uring,
        Progress::Polled,
        "127.0.25.1",
        "127.0.25.2",
    );
}

fn ud_send(backend: BackendKind, progress: Progress, ip_a: &str, ip_b: &str) {
    let a = side(ip_a, backend, progress, QpType::Ud, None);
    let b = side(ip_b, backend, progress, QpType::Ud, None);
    a.qp.ud_ready(0x1111_1111, 1).unwrap();
    b.qp.ud_ready(0x1111_1111, 1).unwrap();
    let ah = a._pd.create_ah(ip_b.parse().unwrap()).unwrap();
    b.qp.post_recv(RecvWr {
        wr_id: 1,
        sgl: vec![b.mr.sge(0, 40 + 512)],
    })
    .unwrap();
    let data = pattern(512, 5);
    a.mr.write(0, &data);
    let mut wr = SendWr::new(1, SendOp::Send, Payload::Sgl(vec![a.mr.sge(0, 512)]));
    wr.ud = Some(UdDest {
        ah: ah.handle(),
        remote_qpn: b.qp.qpn(),
        remote_qkey: 0x1111_1111,
    });
    a.qp.post_send(wr).unwrap();
    one_ok_driving(&a, WcOpcode::Send, Some(&b));
    let r = one_ok_driving(&b, WcOpcode::Recv, Some(&a));
    assert_eq!((r.byte_len, r.src_qp, r.grh), (40 + 512, a.qp.qpn(), true));
    let mut got = vec![0; 512];
    b.mr.read(40, &mut got);
    assert_eq!(got, data);
}

#[test]
fn completion_channel_fires_on_completion() {
    let a = side(
        "127.0.13.1",
        BackendKind::Syscall,
        Progress::Thread,
        QpType::Rc,
        None,
    );
    let ch = CompletionChannel::new().unwrap();
    let cq_b = a.dev.create_cq(16, None).unwrap();
    drop(cq_b);
    let b = side(
        "127.0.13.2",
        BackendKind::Syscall,
        Progress::Thread,
        QpType::Rc,
        None,
    );
    connect(&a, &b);
    let evcq = b.dev.create_cq(16, Some(&ch)).unwrap();
    // A second QP on b whose receive CQ has the channel.
    let qp2 = b
        ._pd
        .create_qp(QpType::Rc, &evcq, &evcq, None, QpCap::default())
        .unwrap();
    let qp_a2 = a
        ._pd
        .create_qp(QpType::Rc, &a.cq, &a.cq, None, QpCap::default())
        .unwrap();
    qp_a2
        .connect(&Connect::new(
            "127.0.13.2".parse().unwrap(),
            qp2.qpn(),
            5,
            6,
        ))
        .unwrap();
    qp2.connect(&Connect::new(
        "127.0.13.1".parse().unwrap(),
        qp_a2.qpn(),
        6,
        5,
    ))
    .unwrap();
    evcq.req_notify(false).unwrap();
    assert_eq!(
        ch.get_event(Duration::from_millis(50)).unwrap(),
        None,
        "no event before a completion"
    );
    qp2.post_recv(RecvWr {
        wr_id: 3,
        sgl: vec![b.mr.sge(0, 64)],
    })
    .unwrap();
    qp_a2
        .post_send(SendWr::new(
            1,
            SendOp::Send,
            Payload::Inline(b"hello".to_vec()),
        ))
        .unwrap();
    assert_eq!(ch.get_event(T).unwrap(), Some(evcq.id()));
    let c = evcq.poll(4).unwrap();
    assert_eq!((c.len(), c[0].byte_len), (1, 5));
}

#[test]
fn pcap_capture_decodes_with_valid_icrcs() {
    pcap_capture(BackendKind::Syscall, "127.0.14.1", "127.0.14.2", 20_000);
}

/// With uring, the sender's GSO segments are recorded with the IPv4 IDs they have on the wire
/// (0, 1, 2, ...); the receiver cannot see the ID, so it solves it from the ICRC and records
/// that. Both files therefore hold GSO/GRO segments with non-zero IDs whose ICRCs verify
/// exactly, as a capture on the wire would.
#[test]
fn pcap_capture_decodes_with_valid_icrcs_uring() {
    let (sent, received) = pcap_capture(BackendKind::Uring, "127.0.26.1", "127.0.26.2", 200_000);
    assert!(sent.nonzero_id > 0, "no GSO segment recorded: {sent:?}");
    assert!(
        received.nonzero_id > 0,
        "no GRO segment recorded with its ID: {received:?}"
    );
    assert_eq!(
        received.solved, 0,
        "every received frame verifies exactly: {received:?}"
    );
}

/// What one capture file held.
#[derive(Debug, Default)]
struct CaptureCheck {
    frames: usize,
    /// Frames whose ICRC verified only with the IPv4 ID solved for.
    solved: usize,
    /// Frames with a non-zero IPv4 ID.
    nonzero_id: usize,
}

/// Checks every frame's ICRC: exactly, or else with the IPv4 ID solved for (below 64, the IDs
/// a GSO batch has).
fn check_capture(file: &std::path::Path) -> CaptureCheck {
    let f = std::fs::File::open(file).unwrap();
    let mut r = uroce_capture::pcap::PcapReader::new(f).unwrap();
    let mut c = CaptureCheck::default();
    while let Some(fr) = r.next_frame() {
        let fr = fr.unwrap();
        let d = uroce_capture::decode::decode(fr.index, fr.link, &fr.data);
        c.frames += 1;
        let p = d
            .roce()
            .unwrap_or_else(|| panic!("frame {}: not RoCE: {d}", fr.index));
        if p.frame.ipv4_id().is_some_and(|id| id != 0) {
            c.nonzero_id += 1;
        }
        if d.icrc_ok() == Some(true) {
            continue;
        }
        let solved = p
            .frame
            .ctx
            .verify(p.frame.payload, uroce_wire::Ipv4IdMode::SolveBelow(128));
        assert!(
            solved.is_ok(),
            "frame {}: ICRC bad even with the ID solved: {d}",
            fr.index
        );
        c.solved += 1;
    }
    c
}

/// Captures on both sides of a `len`-byte WRITE; returns the checks of the sender's and the
/// receiver's files.
fn pcap_capture(
    backend: BackendKind,
    ip_a: &str,
    ip_b: &str,
    len: usize,
) -> (CaptureCheck, CaptureCheck) {
    let dir = std::env::temp_dir().join(format!("uroce-cap-{}-{ip_a}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file_a, file_b) = (dir.join("a.pcap"), dir.join("b.pcap"));
    {
        let a = side(
            ip_a,
            backend,
            Progress::Thread,
            QpType::Rc,
            Some(file_a.clone()),
        );
        let b = side(
            ip_b,
            backend,
            Progress::Thread,
            QpType::Rc,
            Some(file_b.clone()),
        );
        connect(&a, &b);
        let data = pattern(len, 3);
        a.mr.write(0, &data);
        a.qp.post_send(SendWr::new(
            1,
            SendOp::RdmaWrite {
                remote_addr: b.mr.addr(),
                rkey: b.mr.rkey(),
            },
            Payload::Sgl(vec![a.mr.sge(0, len as u32)]),
        ))
        .unwrap();
        one_ok(&a, WcOpcode::RdmaWrite);
        let mut got = vec![0; len];
        b.mr.read(0, &mut got);
        assert!(got == data, "WRITE data differs");
    }
    let (ca, cb) = (check_capture(&file_a), check_capture(&file_b));
    // At MTU 4096: the WRITE packets, plus at least one ACK.
    let packets = len.div_ceil(4096);
    assert!(ca.frames > packets, "only {} frames captured", ca.frames);
    assert!(cb.frames > packets, "only {} frames captured", cb.frames);
    assert_eq!(
        ca.solved, 0,
        "the sender records the IDs on the wire: {ca:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    (ca, cb)
}

/// A 1 MiB WRITE over uring leaves in GSO batches (fewer datagrams than packets) and arrives
/// in GRO super-buffers (fewer receives than datagrams), with every ICRC verified.
#[test]
fn uring_gso_and_gro_on_loopback() {
    for (progress, ip_a, ip_b) in [
        (Progress::Thread, "127.0.27.1", "127.0.27.2"),
        (Progress::Polled, "127.0.27.3", "127.0.27.4"),
    ] {
        let a = side(ip_a, BackendKind::Uring, progress, QpType::Rc, None);
        let b = side(ip_b, BackendKind::Uring, progress, QpType::Rc, None);
        let (fa, fb) = (a.dev.driver_features(), b.dev.driver_features());
        assert!(fa.multishot_recv && fa.gro && fa.gso, "{fa:?}");
        assert!(fb.multishot_recv && fb.gro && fb.gso, "{fb:?}");
        connect(&a, &b);
        let data = pattern(1 << 20, 9);
        a.mr.write(0, &data);
        a.qp.post_send(SendWr::new(
            1,
            SendOp::RdmaWrite {
                remote_addr: b.mr.addr(),
                rkey: b.mr.rkey(),
            },
            Payload::Sgl(vec![a.mr.sge(0, 1 << 20)]),
        ))
        .unwrap();
        one_ok_driving(&a, WcOpcode::RdmaWrite, Some(&b));
        let mut got = vec![0; 1 << 20];
        b.mr.read(0, &mut got);
        assert!(got == data, "WRITE data differs");
        let (ca, cb) = (a.dev.counters(), b.dev.counters());
        assert!(ca.tx_packets >= 256, "{ca:?}");
        assert!(
            ca.tx_datagrams * 4 < ca.tx_packets,
            "GSO batches expected: {ca:?}"
        );
        assert_eq!((cb.icrc_drops, cb.malformed), (0, 0), "{cb:?}");
        assert!(
            cb.icrc_solved_id > 0,
            "segments after the first have IDs 1, 2, ...: {cb:?}"
        );
        let (sa, sb) = (a.dev.driver_stats(), b.dev.driver_stats());
        assert!(sa.tx_gso_sends > 0 && sa.tx_errors == 0, "{sa:?}");
        assert!(
            sb.rx_gro_receives > 0 && sb.rx_receives < sb.rx_datagrams,
            "GRO super-buffers expected: {sb:?}"
        );
        assert_eq!(sb.rx_datagrams, cb.rx_packets);
    }
}

/// RC over real sockets with impaired links (loss, reordering, duplication, corruption on both
/// senders; this kernel has no `tc netem`): every byte arrives, retransmissions happened.
#[test]
fn rc_survives_injected_faults_on_real_sockets() {
    for (backend, ips) in [
        (BackendKind::Uring, ("127.0.30.1", "127.0.30.2")),
        (BackendKind::Syscall, ("127.0.31.1", "127.0.31.2")),
    ] {
        let faults = uroce::Faults {
            loss: 0.02,
            reorder: 0.05,
            duplicate: 0.01,
            corrupt: 0.01,
            seed: 42,
        };
        let mk = |ip: &str| {
            let mut cfg = DeviceConfig::new(ip.parse().unwrap());
            cfg.backend = backend;
            cfg.faults = Some(faults);
            side_with(cfg, QpType::Rc)
        };
        let a = mk(ips.0);
        let b = mk(ips.1);
        let ip = |s: &Side| -> IpAddr { s.dev.local_addr().ip() };
        // A short ACK timeout (2^10 × 4.096 µs ≈ 4 ms) keeps recovery quick.
        let mut c = Connect::new(ip(&b), b.qp.qpn(), 100, 200);
        c.timeout = 10;
        a.qp.connect(&c).unwrap();
        let mut c = Connect::new(ip(&a), a.qp.qpn(), 200, 100);
        c.timeout = 10;
        b.qp.connect(&c).unwrap();
        let data = pattern(2 << 20, 9);
        a.mr.write(0, &data);
        for i in 0..8u64 {
            let off = (i % 2) << 20;
            a.qp.post_send(SendWr::new(
                i,
                SendOp::RdmaWrite {
                    remote_addr: b.mr.addr() + off,
                    rkey: b.mr.rkey(),
                },
                Payload::Sgl(vec![a.mr.sge(off, 1 << 20)]),
            ))
            .unwrap();
        }
        let got = a.cq.wait(8, Duration::from_secs(60)).unwrap();
        assert_eq!(got.len(), 8, "{backend:?}: {got:?}");
        assert!(got.iter().all(|c| c.status == WcStatus::Success), "{got:?}");
        let mut m = vec![0; 2 << 20];
        b.mr.read(0, &mut m);
        assert!(m == data, "{backend:?}: data differs");
        let q = a.qp.counters().unwrap();
        let f = a.dev.driver_stats().faults;
        assert!(f.lost > 0 && f.corrupted > 0 && f.reordered > 0, "{f:?}");
        assert!(q.retransmits > 0, "{q:?}");
        assert!(
            b.dev.counters().icrc_drops > 0 || a.dev.counters().icrc_drops > 0,
            "corruption caught by the ICRC"
        );
    }
}

/// Receives posted as one batch (one engine lock) are consumed in order, like single posts;
/// a batch stops at the first WR the QP refuses (more SGEs than `max_recv_sge`), the WRs
/// before it posted, the rest not.
#[test]
fn a_batch_of_receives_is_posted_in_order_and_stops_at_a_refused_wr() {
    let a = side(
        "127.0.96.1",
        BackendKind::Uring,
        Progress::Thread,
        QpType::Rc,
        None,
    );
    let b = side(
        "127.0.96.2",
        BackendKind::Uring,
        Progress::Thread,
        QpType::Rc,
        None,
    );
    connect(&a, &b);
    let recv = |id: u64| RecvWr {
        wr_id: id,
        sgl: vec![b.mr.sge(id << 12, 4096)],
    };
    b.qp.post_recv_batch((1..=3).map(recv)).unwrap();
    let too_many_sges = RecvWr {
        wr_id: 99,
        sgl: vec![b.mr.sge(0, 8); 5],
    };
    assert!(b
        .qp
        .post_recv_batch([recv(4), too_many_sges, recv(5)])
        .is_err());
    // Five SENDs: the first four land in receives 1..=4; the fifth finds none (receive 5
    // was never posted) until receive 6 is posted, after receive 4 completed.
    for k in 1..=5u8 {
        a.qp.post_send(SendWr::new(
            u64::from(k),
            SendOp::Send,
            Payload::Inline(vec![k; 100]),
        ))
        .unwrap();
    }
    for id in 1..=4 {
        let r = one_ok(&b, WcOpcode::Recv);
        assert_eq!((r.wr_id, r.byte_len), (id, 100));
        let mut got = vec![0; 100];
        b.mr.read((id as usize) << 12, &mut got);
        assert_eq!(got, vec![id as u8; 100]);
    }
    b.qp.post_recv_batch([recv(6)]).unwrap();
    let r = one_ok(&b, WcOpcode::Recv);
    assert_eq!(
        (r.wr_id, r.byte_len),
        (6, 100),
        "receive 5 was posted after all"
    );
    for _ in 1..=5 {
        one_ok(&a, WcOpcode::Send);
    }
}

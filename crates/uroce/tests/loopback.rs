//! Real UDP sockets on loopback (no root): two devices on two 127/8 addresses move data with
//! every opcode, and the data is checked byte for byte. Each test uses its own addresses so
//! tests can run in parallel.

use std::net::IpAddr;
use std::time::Duration;

use uroce::{
    Access, BackendKind, CompletionChannel, Connect, Device, DeviceConfig, MemoryRegion, Payload,
    Progress, QpCap, QpType, QueuePair, RecvWr, SendOp, SendWr, UdDest, WcOpcode, WcStatus,
};

const ALL: Access = Access::from_bits(0xF);
const T: Duration = Duration::from_secs(10);

struct Side {
    dev: Device,
    _pd: uroce::ProtectionDomain,
    cq: uroce::CompletionQueue,
    mr: MemoryRegion,
    qp: QueuePair,
}

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
    let dev = Device::open(cfg).expect("open device");
    let pd = dev.alloc_pd();
    let mr = pd.reg_mr(0x10_0000, 4 << 20, ALL).unwrap();
    let cq = dev.create_cq(4096, None).unwrap();
    let qp = pd
        .create_qp(
            qp_type,
            &cq,
            &cq,
            None,
            QpCap {
                max_send_wr: 512,
                max_recv_wr: 512,
                ..QpCap::default()
            },
        )
        .unwrap();
    Side {
        dev,
        _pd: pd,
        cq,
        mr,
        qp,
    }
}

fn connect(a: &Side, b: &Side) {
    let ip = |s: &Side| -> IpAddr { s.dev.local_addr().ip() };
    a.qp.connect(&Connect::new(ip(b), b.qp.qpn(), 100, 200))
        .unwrap();
    b.qp.connect(&Connect::new(ip(a), a.qp.qpn(), 200, 100))
        .unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn one_ok(s: &Side, op: WcOpcode) -> uroce::Completion {
    one_ok_driving(s, op, None)
}

/// Waits for one completion on `s`; in polled mode `other`'s device is driven meanwhile, as the
/// application owning it would.
fn one_ok_driving(s: &Side, op: WcOpcode, other: Option<&Side>) -> uroce::Completion {
    let end = std::time::Instant::now() + T;
    let mut c = Vec::new();
    while c.is_empty() && std::time::Instant::now() < end {
        c = s.cq.poll(1).unwrap();
        if let Some(o) = other {
            o.dev.progress();
        }
    }
    assert_eq!(c.len(), 1, "no completion within {T:?}");
    assert_eq!(c[0].status, WcStatus::Success, "{:?}", c[0]);
    assert_eq!(c[0].opcode, op);
    c[0]
}

fn every_rc_opcode(backend: BackendKind, progress: Progress, ip_a: &str, ip_b: &str) {
    let a = side(ip_a, backend, progress, QpType::Rc, None);
    let b = side(ip_b, backend, progress, QpType::Rc, None);
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
fn ud_send_receives_grh_and_source_qp() {
    let a = side(
        "127.0.12.1",
        BackendKind::Syscall,
        Progress::Thread,
        QpType::Ud,
        None,
    );
    let b = side(
        "127.0.12.2",
        BackendKind::Syscall,
        Progress::Thread,
        QpType::Ud,
        None,
    );
    a.qp.ud_ready(0x1111_1111, 1).unwrap();
    b.qp.ud_ready(0x1111_1111, 1).unwrap();
    let ah = a._pd.create_ah("127.0.12.2".parse().unwrap()).unwrap();
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
    one_ok(&a, WcOpcode::Send);
    let r = one_ok(&b, WcOpcode::Recv);
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
    let dir = std::env::temp_dir().join(format!("uroce-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a.pcap");
    {
        let a = side(
            "127.0.14.1",
            BackendKind::Syscall,
            Progress::Thread,
            QpType::Rc,
            Some(file.clone()),
        );
        let b = side(
            "127.0.14.2",
            BackendKind::Syscall,
            Progress::Thread,
            QpType::Rc,
            None,
        );
        connect(&a, &b);
        a.mr.write(0, &pattern(20_000, 3));
        a.qp.post_send(SendWr::new(
            1,
            SendOp::RdmaWrite {
                remote_addr: b.mr.addr(),
                rkey: b.mr.rkey(),
            },
            Payload::Sgl(vec![a.mr.sge(0, 20_000)]),
        ))
        .unwrap();
        one_ok(&a, WcOpcode::RdmaWrite);
    }
    let f = std::fs::File::open(&file).unwrap();
    let mut r = uroce_capture::pcap::PcapReader::new(f).unwrap();
    let (mut n, mut ok) = (0, 0);
    while let Some(fr) = r.next_frame() {
        let fr = fr.unwrap();
        let d = uroce_capture::decode::decode(fr.index, fr.link, &fr.data);
        n += 1;
        if d.icrc_ok() == Some(true) {
            ok += 1;
        }
    }
    // 20000 B at MTU 4096 = 5 WRITE packets, plus at least one ACK received.
    assert!(n >= 6, "only {n} frames captured");
    assert_eq!(ok, n, "every captured frame's ICRC verifies");
    std::fs::remove_dir_all(&dir).unwrap();
}

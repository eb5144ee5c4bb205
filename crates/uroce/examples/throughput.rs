//! RDMA WRITE throughput between two devices on loopback, for each back end and progress mode.
//!
//! ```text
//! cargo run --release -p uroce --example throughput -- [uring|syscall|all] [thread|polled|all] [MiB]
//! ```
//!
//! Writes `MiB` (default 64) in 1 MiB messages at MTU 4096, up to 8 in flight, three times per
//! configuration, and prints the best and median rate with the driver's batching counters.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use uroce::{
    Access, BackendKind, Connect, Device, DeviceConfig, Mtu, Payload, Progress, QpCap, QpType,
    SendOp, SendWr, WcOpcode, WcStatus,
};

const MSG: usize = 1 << 20;
const WINDOW: usize = 8;
const RUNS: usize = 3;

struct Run {
    gbit_s: f64,
    tx_packets: u64,
    tx_datagrams: u64,
    rx_receives: u64,
    rx_datagrams: u64,
    retransmits_or_drops: u64,
}

fn run(backend: BackendKind, progress: Progress, ip_a: &str, ip_b: &str, mib: usize) -> Run {
    let open = |ip: &str| {
        let mut cfg = DeviceConfig::new(ip.parse().unwrap());
        cfg.backend = backend;
        cfg.progress = progress;
        cfg.pcap = None;
        Device::open(cfg).expect("open device")
    };
    let (da, db) = (open(ip_a), open(ip_b));
    let (pa, pb) = (da.alloc_pd(), db.alloc_pd());
    let all = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
    let src = pa.reg_mr(0x1000_0000, MSG, all).unwrap();
    let dst = pb.reg_mr(0x2000_0000, mib * MSG, all).unwrap();
    let (ca, cb) = (
        da.create_cq(1024, None).unwrap(),
        db.create_cq(1024, None).unwrap(),
    );
    let cap = QpCap {
        max_send_wr: 64,
        max_recv_wr: 64,
        ..QpCap::default()
    };
    let qa = pa.create_qp(QpType::Rc, &ca, &ca, None, cap).unwrap();
    let qb = pb.create_qp(QpType::Rc, &cb, &cb, None, cap).unwrap();
    let ip = |d: &Device| -> IpAddr { d.local_addr().ip() };
    let mut c = Connect::new(ip(&db), qb.qpn(), 1, 2);
    c.mtu = Mtu::M4096;
    qa.connect(&c).unwrap();
    let mut c = Connect::new(ip(&da), qa.qpn(), 2, 1);
    c.mtu = Mtu::M4096;
    qb.connect(&c).unwrap();
    let pattern: Vec<u8> = (0..MSG).map(|i| (i * 7 + 3) as u8).collect();
    src.write(0, &pattern);

    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    let (mut posted, mut done) = (0, 0);
    while done < mib {
        while posted < mib && posted - done < WINDOW {
            let wr = SendWr::new(
                posted as u64,
                SendOp::RdmaWrite {
                    remote_addr: dst.addr() + (posted * MSG) as u64,
                    rkey: dst.rkey(),
                },
                Payload::Sgl(vec![src.sge(0, MSG as u32)]),
            );
            qa.post_send(wr).unwrap();
            posted += 1;
        }
        for wc in ca.poll(WINDOW).unwrap() {
            assert_eq!(
                (wc.status, wc.opcode),
                (WcStatus::Success, WcOpcode::RdmaWrite)
            );
            done += 1;
        }
        match progress {
            // The peer's application would drive its own device.
            Progress::Polled => db.progress(),
            _ => std::thread::yield_now(),
        }
        assert!(Instant::now() < deadline, "stuck at {done}/{mib} messages");
    }
    let secs = start.elapsed().as_secs_f64();
    let mut got = vec![0; MSG];
    dst.read((mib - 1) * MSG, &mut got);
    assert!(got == pattern, "last message differs");
    let (cta, ctb) = (da.counters(), db.counters());
    let sb = db.driver_stats();
    let qc = qa.counters().unwrap_or_default();
    Run {
        gbit_s: (mib * MSG * 8) as f64 / secs / 1e9,
        tx_packets: cta.tx_packets,
        tx_datagrams: cta.tx_datagrams,
        rx_receives: sb.rx_receives,
        rx_datagrams: sb.rx_datagrams,
        retransmits_or_drops: qc.retransmits + ctb.icrc_drops,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let backends: Vec<BackendKind> = match arg(0, "all").as_str() {
        "all" => vec![BackendKind::Syscall, BackendKind::Uring],
        b => vec![b.parse().expect("back end: uring, syscall or all")],
    };
    let modes: Vec<Progress> = match arg(1, "all").as_str() {
        "all" => vec![Progress::Thread, Progress::Polled],
        "thread" => vec![Progress::Thread],
        "polled" => vec![Progress::Polled],
        m => panic!("unknown progress mode {m} (thread, polled, all)"),
    };
    let mib: usize = arg(2, "64").parse().expect("MiB");
    println!("RDMA WRITE {mib} MiB in 1 MiB messages, MTU 4096, {WINDOW} in flight, best/median of {RUNS}");
    for (bi, &backend) in backends.iter().enumerate() {
        for (mi, &progress) in modes.iter().enumerate() {
            let mut runs: Vec<Run> = (0..RUNS)
                .map(|r| {
                    let net = 60 + bi * 4 + mi * 2;
                    let ip_a = format!("127.0.{net}.{}", 2 * r + 1);
                    let ip_b = format!("127.0.{net}.{}", 2 * r + 2);
                    run(backend, progress, &ip_a, &ip_b, mib)
                })
                .collect();
            runs.sort_by(|a, b| b.gbit_s.total_cmp(&a.gbit_s));
            let best = &runs[0];
            let median = &runs[RUNS / 2];
            println!(
                "{:>7} {:>6}: {:6.2} Gbit/s best, {:6.2} median | {} packets in {} datagrams sent, \
                 {} datagrams in {} receives, {} retransmits/drops",
                backend.name(),
                format!("{progress:?}").to_lowercase(),
                best.gbit_s,
                median.gbit_s,
                best.tx_packets,
                best.tx_datagrams,
                best.rx_datagrams,
                best.rx_receives,
                best.retransmits_or_drops,
            );
        }
    }
}

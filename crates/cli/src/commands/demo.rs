//! `uroce demo`: the README's main job. Two devices on this machine, an RC QP between them,
//! RDMA WRITE / READ / SEND / atomics of checked data, and a short table of throughput, latency
//! and CPU cost. Exits non-zero if any byte or completion is wrong. Needs no root.

use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use uroce::{
    Access, BackendKind, Connect, Device, DeviceConfig, MemoryRegion, Mtu, Payload, QpCap, QpType,
    QueuePair, RecvWr, SendOp, SendWr, WcOpcode, WcStatus,
};

use super::CliError;

/// Options of `uroce demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address of the first device.
    #[arg(long, default_value = "127.0.0.1")]
    pub a: IpAddr,
    /// Address of the second device.
    #[arg(long, default_value = "127.0.0.2")]
    pub b: IpAddr,
    /// UDP port both devices bind (RoCEv2 uses 4791).
    #[arg(long, default_value_t = 4791)]
    pub port: u16,
    /// Socket back end: uring or syscall.
    #[arg(long, default_value = "uring")]
    pub backend: BackendKind,
    /// MiB moved by WRITE and by READ.
    #[arg(long, default_value_t = 256)]
    pub mib: usize,
    /// Message size in KiB for WRITE and READ.
    #[arg(long, default_value_t = 1024)]
    pub msg_kib: usize,
    /// Path MTU in bytes (256, 512, 1024, 2048, 4096).
    #[arg(long, default_value_t = 4096)]
    pub mtu: u32,
    /// Write every packet the first device sends and receives to this pcap file.
    #[arg(long)]
    pub pcap: Option<std::path::PathBuf>,
}

/// The area each side registers: a window that messages cycle through.
const WINDOW: usize = 16 << 20;
/// WRs kept in flight.
const DEPTH: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(60);

struct Side {
    dev: Device,
    _pd: uroce::ProtectionDomain,
    cq: uroce::CompletionQueue,
    mr: MemoryRegion,
    qp: QueuePair,
}

fn open(ip: IpAddr, args: &Args, pcap: Option<std::path::PathBuf>) -> Result<Side, CliError> {
    let mut cfg = DeviceConfig::new(ip);
    cfg.port = args.port;
    cfg.backend = args.backend;
    cfg.pcap = pcap;
    let dev = Device::open(cfg)?;
    let pd = dev.alloc_pd();
    let all =
        Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ | Access::REMOTE_ATOMIC;
    // Two windows: [0, W) is the source/target area, [W, 2W) receives READ results.
    let mr = pd.reg_mr(0x4000_0000, 2 * WINDOW, all)?;
    let cq = dev.create_cq(4096, None)?;
    let cap = QpCap {
        max_send_wr: 256,
        max_recv_wr: 1024,
        ..QpCap::default()
    };
    let qp = pd.create_qp(QpType::Rc, &cq, &cq, None, cap)?;
    Ok(Side {
        dev,
        _pd: pd,
        cq,
        mr,
        qp,
    })
}

fn cpu_seconds() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// Posts `n` WRs made by `make(i)`, keeping `DEPTH` in flight, and checks every completion.
fn pipeline(
    s: &Side,
    n: usize,
    op: WcOpcode,
    make: impl Fn(usize) -> SendWr,
) -> Result<(), CliError> {
    let (mut posted, mut done) = (0, 0);
    let end = Instant::now() + TIMEOUT;
    while done < n {
        // Refill the window with one post of a WR list (`ibv_post_send` with a chain): its
        // packets leave in one batch instead of one send (and one wake-up of the peer) each.
        let room = (DEPTH - (posted - done)).min(n - posted);
        if room > 0 {
            s.qp.post_send_batch((posted..posted + room).map(&make))?;
            posted += room;
        }
        for c in s.cq.poll(DEPTH)? {
            if c.status != WcStatus::Success || c.opcode != op {
                return Err(CliError::Failed(format!("completion {c:?}")));
            }
            done += 1;
        }
        if Instant::now() > end {
            return Err(CliError::Failed(format!(
                "{op:?}: {done} of {n} completed in {TIMEOUT:?}"
            )));
        }
    }
    Ok(())
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

struct Row {
    what: &'static str,
    bytes: u64,
    secs: f64,
    cpu: f64,
}

/// Runs the demo.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let mtu = Mtu::from_bytes(args.mtu)
        .ok_or_else(|| CliError::Failed(format!("MTU {} is not 256..4096", args.mtu)))?;
    let msg = args.msg_kib * 1024;
    if msg == 0 || msg > WINDOW || WINDOW % msg != 0 {
        return Err(CliError::Failed(format!(
            "message size must divide {} MiB",
            WINDOW >> 20
        )));
    }
    let a = open(args.a, args, args.pcap.clone())?;
    let b = open(args.b, args, None)?;
    let mut ca = Connect::new(args.b, b.qp.qpn(), 0x100, 0x200);
    ca.mtu = mtu;
    let mut cb = Connect::new(args.a, a.qp.qpn(), 0x200, 0x100);
    cb.mtu = mtu;
    a.qp.connect(&ca)?;
    b.qp.connect(&cb)?;
    writeln!(
        out,
        "uroce demo: {} ↔ {} port {}, back end {}, RC, path MTU {}, {} KiB messages",
        args.a,
        args.b,
        args.port,
        args.backend.name(),
        args.mtu,
        args.msg_kib
    )?;

    let src = pattern(WINDOW);
    a.mr.write(0, &src);
    let slots = WINDOW / msg;
    let n = (args.mib << 20).div_ceil(msg);
    let mut rows = Vec::new();

    // RDMA WRITE: A's window → B's window, cycling through the slots.
    let (t0, c0) = (Instant::now(), cpu_seconds());
    pipeline(&a, n, WcOpcode::RdmaWrite, |i| {
        let off = (i % slots * msg) as u64;
        SendWr::new(
            i as u64,
            SendOp::RdmaWrite {
                remote_addr: b.mr.addr() + off,
                rkey: b.mr.rkey(),
            },
            Payload::Sgl(vec![a.mr.sge(off, msg as u32)]),
        )
    })?;
    rows.push(Row {
        what: "RDMA WRITE",
        bytes: (n * msg) as u64,
        secs: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c0,
    });
    // Only the slots the messages reached hold data.
    let span = n.min(slots) * msg;
    let mut got = vec![0; span];
    b.mr.read(0, &mut got);
    if got != src[..span] {
        return Err(CliError::Failed(
            "RDMA WRITE: data at the target differs".into(),
        ));
    }

    // RDMA READ: B's window → A's second window.
    let (t0, c0) = (Instant::now(), cpu_seconds());
    pipeline(&a, n, WcOpcode::RdmaRead, |i| {
        let off = (i % slots * msg) as u64;
        SendWr::new(
            i as u64,
            SendOp::RdmaRead {
                remote_addr: b.mr.addr() + off,
                rkey: b.mr.rkey(),
            },
            Payload::Sgl(vec![a.mr.sge(WINDOW as u64 + off, msg as u32)]),
        )
    })?;
    rows.push(Row {
        what: "RDMA READ",
        bytes: (n * msg) as u64,
        secs: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c0,
    });
    a.mr.read(WINDOW, &mut got);
    if got != src[..span] {
        return Err(CliError::Failed("RDMA READ: data read back differs".into()));
    }

    // SEND: 4 KiB messages into posted receives on B, every one checked.
    let sends = 1024usize.min(WINDOW / 4096);
    let sz = 4096usize;
    for i in 0..sends {
        b.qp.post_recv(RecvWr {
            wr_id: i as u64,
            sgl: vec![b.mr.sge((WINDOW + i * sz) as u64, sz as u32)],
        })?;
    }
    let (t0, c0) = (Instant::now(), cpu_seconds());
    pipeline(&a, sends, WcOpcode::Send, |i| {
        SendWr::new(
            i as u64,
            SendOp::Send,
            Payload::Sgl(vec![a.mr.sge((i * sz) as u64, sz as u32)]),
        )
    })?;
    let recvd = b.cq.wait(sends, TIMEOUT)?;
    rows.push(Row {
        what: "SEND 4 KiB",
        bytes: (sends * sz) as u64,
        secs: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c0,
    });
    if recvd.len() != sends
        || recvd
            .iter()
            .any(|c| c.status != WcStatus::Success || c.byte_len != sz as u32)
    {
        return Err(CliError::Failed(format!(
            "SEND: {} of {sends} receives completed correctly",
            recvd
                .iter()
                .filter(|c| c.status == WcStatus::Success)
                .count()
        )));
    }
    let mut r = vec![0; sends * sz];
    b.mr.read(WINDOW, &mut r);
    if r != src[..sends * sz] {
        return Err(CliError::Failed("SEND: received data differs".into()));
    }

    // Atomics: 1000 fetch-adds of 1 and a compare-swap on B's first word.
    b.mr.write(0, &0u64.to_ne_bytes());
    let adds = 1000usize;
    pipeline(&a, adds, WcOpcode::FetchAdd, |i| {
        SendWr::new(
            i as u64,
            SendOp::FetchAdd {
                remote_addr: b.mr.addr(),
                rkey: b.mr.rkey(),
                add: 1,
            },
            Payload::Sgl(vec![a.mr.sge(8, 8)]),
        )
    })?;
    pipeline(&a, 1, WcOpcode::CompSwap, |_| {
        SendWr::new(
            0,
            SendOp::CompareSwap {
                remote_addr: b.mr.addr(),
                rkey: b.mr.rkey(),
                compare: adds as u64,
                swap: 7,
            },
            Payload::Sgl(vec![a.mr.sge(16, 8)]),
        )
    })?;
    let mut w = [0u8; 8];
    b.mr.read(0, &mut w);
    let mut old = [0u8; 8];
    a.mr.read(16, &mut old);
    if u64::from_ne_bytes(w) != 7 || u64::from_ne_bytes(old) != adds as u64 {
        return Err(CliError::Failed(format!(
            "atomics: target {} (want 7), swap returned {} (want {adds})",
            u64::from_ne_bytes(w),
            u64::from_ne_bytes(old)
        )));
    }

    // Latency: 8-byte RDMA WRITEs, one at a time, completion to completion.
    let mut lat = Vec::with_capacity(2000);
    for i in 0..2000u64 {
        let t = Instant::now();
        pipeline(&a, 1, WcOpcode::RdmaWrite, |_| {
            SendWr::new(
                i,
                SendOp::RdmaWrite {
                    remote_addr: b.mr.addr() + 64,
                    rkey: b.mr.rkey(),
                },
                Payload::Inline(i.to_ne_bytes().to_vec()),
            )
        })?;
        lat.push(t.elapsed());
    }
    lat.sort();
    b.mr.read(64, &mut w);
    if u64::from_ne_bytes(w) != 1999 {
        return Err(CliError::Failed(
            "latency WRITEs: last value not at the target".into(),
        ));
    }

    writeln!(
        out,
        "{:<12} {:>10} {:>10} {:>12}",
        "operation", "MiB", "Gbit/s", "CPU s/GB"
    )?;
    for r in &rows {
        let gb = r.bytes as f64 / 1e9;
        writeln!(
            out,
            "{:<12} {:>10} {:>10.2} {:>12.3}",
            r.what,
            r.bytes >> 20,
            gb * 8.0 / r.secs,
            r.cpu / gb
        )?;
    }
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    writeln!(
        out,
        "8 B RDMA WRITE latency: median {:.1} µs, p99 {:.1} µs (2000 samples)",
        pct(0.5),
        pct(0.99)
    )?;
    writeln!(
        out,
        "atomics: {adds} fetch-adds and a compare-swap, result checked"
    )?;
    let (da, db) = (a.dev.counters(), b.dev.counters());
    let qa = a.qp.counters().unwrap_or_default();
    writeln!(
        out,
        "packets: {} sent, {} received, {} retransmitted, {} ICRC drops; all data verified",
        da.tx_packets + db.tx_packets,
        da.rx_packets + db.rx_packets,
        qa.retransmits,
        da.icrc_drops + db.icrc_drops
    )?;
    Ok(ExitCode::SUCCESS)
}

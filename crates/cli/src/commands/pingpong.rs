//! `uroce pingpong`: the peer of rdma-core's `ibv_rc_pingpong`, `ibv_uc_pingpong`,
//! `ibv_ud_pingpong` and `ibv_srq_pingpong`. Same TCP side channel (port 18515, one 52-byte
//! text message per QP, the client's `"done"`), same QP set-up, same ping-pong of SENDs driven
//! by completions, same buffer pattern for `-c` and the same summary lines, so either side can
//! be the real program on the kernel's rxe.
//!
//! Differences, all for running without an IB device: the device is a uroce device on one IP
//! address (`--dev-ip`, by default the address of the TCP connection); the GID sent is always
//! that address's (IPv4 as ::ffff:a.b.c.d), whatever `-g` says, where rdma-core sends a zero
//! GID without `-g`; a peer's zero GID is replaced by its TCP address; LIDs are 0; `-l` (SL)
//! is accepted and ignored; `-c` checks every byte of the buffer on both sides, not just the
//! first byte of each page on the server, and any error exits non-zero. Additions: `--timeout`
//! (give up without progress), `--counters`, `--steer`, and perftest's `-u` (the RC ACK
//! timeout, which ibv_rc_pingpong fixes at 14).

mod exchange;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use uroce::{
    Access, AddressHandle, BackendKind, CompletionChannel, CompletionQueue, Device, DeviceConfig,
    MemoryRegion, Mtu, Payload, Progress, ProtectionDomain, QpAttr, QpCap, QpState, QpType,
    QueuePair, RecvWr, SendOp, SendWr, SharedReceiveQueue, UdDest, WcStatus,
};

use super::{netif, CliError};
use exchange::Dest;

/// `PINGPONG_RECV_WRID`.
const RECV_WRID: u64 = 1;
/// `PINGPONG_SEND_WRID`.
const SEND_WRID: u64 = 2;
/// The Q_Key `ibv_ud_pingpong` gives its QP and sends with.
const UD_QKEY: u32 = 0x1111_1111;
/// Bytes of GRH in front of every UD receive.
const GRH: usize = 40;
/// `MAX_QP` of `ibv_srq_pingpong`: at most 255 QPs.
const MAX_QP: u32 = 256;
/// Where the buffer sits in the device's address space (any value does).
const BUF_IOVA: u64 = 0x1000_0000;

/// Options of `uroce pingpong`, with rdma-core's letters and long names.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").args(["rc", "uc", "ud", "srq"])))]
#[command(args_override_self = true)]
pub struct Args {
    /// Server to connect to (name or address); without it, wait for a client.
    pub host: Option<String>,
    /// Reliable Connected, as ibv_rc_pingpong (the default).
    #[arg(long)]
    pub rc: bool,
    /// Unreliable Connected, as ibv_uc_pingpong.
    #[arg(long)]
    pub uc: bool,
    /// Unreliable Datagram, as ibv_ud_pingpong.
    #[arg(long)]
    pub ud: bool,
    /// RC QPs sharing one receive queue, as ibv_srq_pingpong.
    #[arg(long)]
    pub srq: bool,
    /// TCP port of the side channel.
    #[arg(short = 'p', long, default_value_t = 18515)]
    pub port: u16,
    /// Local address to open the uroce device on. Default: a client uses the local address of
    /// its TCP connection, a server the address the client connected to. Two uroce peers on
    /// one host need two addresses (e.g. 127.0.0.1 and 127.0.0.2): give the client this.
    #[arg(long)]
    pub dev_ip: Option<IpAddr>,
    /// Message size in bytes [default: 4096, with --ud 1024].
    #[arg(short = 's', long)]
    pub size: Option<u32>,
    /// Path MTU: 256, 512, 1024, 2048 or 4096 [default: 1024]. With --ud it is the port MTU,
    /// by default what rxe derives from the link MTU (link MTU - 80, rounded down).
    #[arg(short = 'm', long)]
    pub mtu: Option<u32>,
    /// Receives to keep posted.
    #[arg(short = 'r', long, default_value_t = 500)]
    pub rx_depth: u32,
    /// Exchanges.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub iters: u32,
    /// Service level (accepted; uroce sends no SL).
    #[arg(short = 'l', long, default_value_t = 0)]
    pub sl: u8,
    /// Sleep on CQ events instead of polling.
    #[arg(short = 'e', long)]
    pub events: bool,
    /// GID index (accepted; uroce always advertises the GID of --dev-ip).
    #[arg(short = 'g', long)]
    pub gid_idx: Option<i32>,
    /// Fill the buffer with the examples' pattern and check what was received.
    #[arg(short = 'c', long)]
    pub chk: bool,
    /// Number of QPs (--srq).
    #[arg(short = 'q', long, default_value_t = 16)]
    pub num_qp: u32,
    /// IB device name (accepted; uroce has one device per address).
    #[arg(short = 'd', long)]
    pub ib_dev: Option<String>,
    /// IB port (uroce devices have port 1 only).
    #[arg(short = 'i', long, default_value_t = 1)]
    pub ib_port: u8,
    /// Socket back end, uring or syscall [default: uroce's default].
    #[arg(long)]
    pub backend: Option<BackendKind>,
    /// UDP port of RoCEv2 (4791; other values only for tests between uroce peers).
    #[arg(long, default_value_t = 4791)]
    pub udp_port: u16,
    /// Give up after this many seconds without progress (0: wait forever, as rdma-core does).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// RC local ACK timeout, 4.096 µs × 2^N, as perftest's `-u` (ibv_rc_pingpong sets 14,
    /// 67 ms, and has no option for it). A path slower than the one the value was chosen for
    /// (an emulated guest) needs a larger one: go-back-N gives up after `retry_cnt` timeouts
    /// without progress (IBTA §9.7.6.1.3).
    #[arg(short = 'u', long, default_value_t = 14, value_parser = clap::value_parser!(u8).range(1..=31))]
    pub qp_timeout: u8,
    /// Print the device's counters to stderr at the end (ICRC verified exactly vs through the
    /// unknown-IPv4-ID path, retransmits, drops).
    #[arg(long)]
    pub counters: bool,
    /// Share the local address with other uroce processes: QPN-steered receive (see
    /// docs/ARCHITECTURE.md); prints the slot taken to stderr. `UROCE_STEER=1` does the same.
    #[arg(long)]
    pub steer: bool,
}

/// Which example to behave as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Rc,
    Uc,
    Ud,
    Srq,
}

impl Mode {
    fn of(args: &Args) -> Mode {
        if args.uc {
            Mode::Uc
        } else if args.ud {
            Mode::Ud
        } else if args.srq {
            Mode::Srq
        } else {
            Mode::Rc
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Rc => "RC",
            Mode::Uc => "UC",
            Mode::Ud => "UD",
            Mode::Srq => "SRQ (RC)",
        }
    }
}

/// Checked options.
#[derive(Debug, Clone, Copy)]
struct Opts {
    mode: Mode,
    size: usize,
    /// `-m`, if given.
    mtu: Option<Mtu>,
    rx_depth: usize,
    iters: u32,
    num_qp: usize,
    events: bool,
    chk: bool,
    /// The fill byte of the buffer: the examples memset 0x7b, srq_pingpong 0.
    fill: u8,
    page: usize,
    backend: BackendKind,
    udp_port: u16,
    steer: bool,
    timeout: Option<Duration>,
    /// `-u`: the RC local ACK timeout exponent.
    qp_timeout: u8,
}

fn fail(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}

impl Opts {
    fn new(args: &Args) -> Result<Opts, CliError> {
        let mode = Mode::of(args);
        let mtu =
            match args.mtu {
                Some(m) => Some(Mtu::from_bytes(m).ok_or_else(|| {
                    fail(format!("invalid MTU {m}: 256, 512, 1024, 2048 or 4096"))
                })?),
                None => None,
            };
        let size = args
            .size
            .unwrap_or(if mode == Mode::Ud { 1024 } else { 4096 }) as usize;
        if size == 0 {
            return Err(fail("the message size must be at least 1"));
        }
        if args.rx_depth == 0 || args.iters == 0 {
            return Err(fail("-r and -n must be at least 1"));
        }
        if args.ib_port != 1 {
            return Err(fail("uroce devices have one port, port 1"));
        }
        let num_qp = if mode == Mode::Srq {
            if args.num_qp == 0 {
                return Err(fail("-q must be at least 1"));
            }
            if args.num_qp > args.rx_depth {
                return Err(fail(format!(
                    "rx_depth {} is too small for {} QPs -- must have at least one receive per QP.",
                    args.rx_depth, args.num_qp
                )));
            }
            if args.num_qp >= MAX_QP {
                return Err(fail(format!("num_qp {} must be < {MAX_QP}", args.num_qp)));
            }
            args.num_qp as usize
        } else {
            1
        };
        Ok(Opts {
            mode,
            size,
            mtu,
            rx_depth: args.rx_depth as usize,
            iters: args.iters,
            num_qp,
            events: args.events,
            chk: args.chk,
            fill: if mode == Mode::Srq { 0 } else { 0x7b },
            page: page_size(),
            backend: args.backend.unwrap_or_default(),
            udp_port: args.udp_port,
            steer: args.steer,
            timeout: (args.timeout > 0).then(|| Duration::from_secs(args.timeout)),
            qp_timeout: args.qp_timeout,
        })
    }

    /// Bytes of the buffer: the message, and for UD the GRH in front of it.
    fn buf_len(&self) -> usize {
        self.size + if self.mode == Mode::Ud { GRH } else { 0 }
    }

    /// Where the message starts in the buffer.
    fn payload_offset(&self) -> usize {
        if self.mode == Mode::Ud {
            GRH
        } else {
            0
        }
    }
}

/// `sysconf(_SC_PAGESIZE)`: the examples mark the first byte of every page for `-c`.
fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| usize::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(4096)
}

/// What `-c` expects in the message: the fill byte, except the first byte of each page, which
/// the client sets to `i / page_size % sizeof(char)`, that is 0.
fn pattern(o: &Opts) -> Vec<u8> {
    (0..o.size)
        .map(|i| if i % o.page == 0 { 0 } else { o.fill })
        .collect()
}

/// A random 24-bit PSN (`lrand48() & 0xffffff` in the examples).
fn random_psn() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    (h.finish() & 0xff_ffff) as u32
}

/// `ibv_wc_status_str`.
fn status_str(s: WcStatus) -> &'static str {
    match s {
        WcStatus::Success => "success",
        WcStatus::LocLenErr => "local length error",
        WcStatus::LocQpOpErr => "local QP operation error",
        WcStatus::LocProtErr => "local protection error",
        WcStatus::WrFlushErr => "Work Request Flushed Error",
        WcStatus::BadRespErr => "bad response error",
        WcStatus::RemInvReqErr => "remote invalid request error",
        WcStatus::RemAccessErr => "remote access error",
        WcStatus::RemOpErr => "remote operation error",
        WcStatus::RetryExcErr => "transport retry counter exceeded",
        WcStatus::RnrRetryExcErr => "RNR retry counter exceeded",
        WcStatus::GeneralErr => "general error",
        _ => "unknown",
    }
}

/// The verbs objects of one side. Fields drop in order: QPs before the queues they use, the
/// device last.
struct Ctx {
    qps: Vec<QueuePair>,
    ah: Option<AddressHandle>,
    srq: Option<SharedReceiveQueue>,
    cq: CompletionQueue,
    mr: MemoryRegion,
    pd: ProtectionDomain,
    channel: Option<CompletionChannel>,
    dev: Device,
    o: Opts,
    /// The port MTU (UD) or path MTU (connected QPs).
    mtu: Mtu,
    /// UD: the peer's QPN.
    ud_remote_qpn: u32,
}

fn verb(what: &str) -> impl FnOnce(uroce::Error) -> CliError + '_ {
    move |e| fail(format!("{what}: {e}"))
}

impl Ctx {
    /// `pp_init_ctx`: device, PD, buffer, CQ, (SRQ,) QPs in INIT, then all receives posted.
    fn open(o: Opts, dev_ip: IpAddr) -> Result<Ctx, CliError> {
        let mtu = match o.mode {
            Mode::Ud => {
                let m = match o.mtu {
                    Some(m) => m,
                    None => port_mtu(dev_ip),
                };
                if o.size > m.bytes() as usize {
                    return Err(fail(format!(
                        "Requested size larger than port MTU ({})",
                        m.bytes()
                    )));
                }
                m
            }
            _ => o.mtu.unwrap_or(Mtu::M1024),
        };
        let mut cfg = DeviceConfig::new(dev_ip);
        cfg.port = o.udp_port;
        cfg.backend = o.backend;
        cfg.steer |= o.steer;
        // Polling needs no thread; sleeping on events needs one to receive meanwhile.
        cfg.progress = if o.events {
            Progress::Thread
        } else {
            Progress::Polled
        };
        // The peer may be rxe, whose IPv4 Identification the ICRC check cannot see.
        cfg.accept_any_ipv4_id = true;
        let dev = Device::open(cfg)
            .map_err(|e| fail(format!("couldn't open a uroce device on {dev_ip}: {e}")))?;
        if let Some(l) = super::steer_line(&dev) {
            eprintln!("{l}");
        }
        let channel = if o.events {
            Some(CompletionChannel::new()?)
        } else {
            None
        };
        let pd = dev.alloc_pd();
        let mr = pd
            .reg_mr(BUF_IOVA, o.buf_len(), Access::LOCAL_WRITE)
            .map_err(verb("Couldn't register MR"))?;
        mr.write(0, &vec![o.fill; o.buf_len()]);
        let cq_depth = o.rx_depth + if o.mode == Mode::Srq { o.num_qp } else { 1 };
        let cq = dev
            .create_cq(cq_depth, channel.as_ref())
            .map_err(verb("Couldn't create CQ"))?;
        let srq = if o.mode == Mode::Srq {
            Some(
                pd.create_srq(o.rx_depth as u32, 1)
                    .map_err(verb("Couldn't create SRQ"))?,
            )
        } else {
            None
        };
        let qp_type = match o.mode {
            Mode::Rc | Mode::Srq => QpType::Rc,
            Mode::Uc => QpType::Uc,
            Mode::Ud => QpType::Ud,
        };
        let cap = QpCap {
            max_send_wr: 1,
            max_recv_wr: if srq.is_some() { 1 } else { o.rx_depth as u32 },
            max_send_sge: 1,
            max_recv_sge: 1,
            ..QpCap::default()
        };
        let mut qps = Vec::with_capacity(o.num_qp);
        for _ in 0..o.num_qp {
            qps.push(
                pd.create_qp(qp_type, &cq, &cq, srq.as_ref(), cap)
                    .map_err(verb("Couldn't create QP"))?,
            );
        }
        for qp in &qps {
            let mut init = QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                port: Some(1),
                ..QpAttr::default()
            };
            if o.mode == Mode::Ud {
                init.qkey = Some(UD_QKEY);
            } else {
                init.access = Some(Access::NONE);
            }
            qp.modify(&init)
                .map_err(verb("Failed to modify QP to INIT"))?;
        }
        let ctx = Ctx {
            qps,
            ah: None,
            srq,
            cq,
            mr,
            pd,
            channel,
            dev,
            o,
            mtu,
            ud_remote_qpn: 0,
        };
        let posted = ctx.post_recv(o.rx_depth);
        if posted < o.rx_depth {
            return Err(fail(format!("Couldn't post receive ({posted})")));
        }
        if ctx.channel.is_some() {
            ctx.cq
                .req_notify(false)
                .map_err(verb("Couldn't request CQ notification"))?;
        }
        Ok(ctx)
    }

    /// Posts `n` receives of the whole buffer; returns how many were posted.
    fn post_recv(&self, n: usize) -> usize {
        for i in 0..n {
            let wr = RecvWr {
                wr_id: RECV_WRID,
                sgl: vec![self.mr.sge(0, self.o.buf_len() as u32)],
            };
            let r = match &self.srq {
                Some(s) => s.post_recv(wr),
                None => self.qps[0].post_recv(wr),
            };
            if r.is_err() {
                return i;
            }
        }
        n
    }

    /// Sends the message on QP `i`.
    fn post_send(&self, i: usize) -> Result<(), CliError> {
        let sge = self
            .mr
            .sge(self.o.payload_offset() as u64, self.o.size as u32);
        let mut wr = SendWr::new(SEND_WRID, SendOp::Send, Payload::Sgl(vec![sge]));
        if let Some(ah) = &self.ah {
            wr.ud = Some(UdDest {
                ah: ah.handle(),
                remote_qpn: self.ud_remote_qpn,
                remote_qkey: UD_QKEY,
            });
        }
        self.qps[i]
            .post_send(wr)
            .map_err(verb("Couldn't post send"))
    }

    /// Our side of the exchange: one entry per QP, then zero entries up to `count`.
    fn my_dests(&self, psns: &[u32], count: usize) -> Vec<Dest> {
        let gid = netif::gid_of(self.dev.local_addr().ip()).octets();
        let mut v: Vec<Dest> = self
            .qps
            .iter()
            .zip(psns)
            .map(|(qp, &psn)| Dest {
                lid: 0,
                qpn: qp.qpn(),
                psn,
                gid,
            })
            .collect();
        v.resize(count, Dest::default());
        v
    }

    /// `pp_connect_ctx`: RTR and RTS (and for UD the address handle).
    fn connect(&mut self, peer: IpAddr, my: &[Dest], remote: &[Dest]) -> Result<(), CliError> {
        let mtu = self.mtu;
        for (i, qp) in self.qps.iter().enumerate() {
            let (rtr, rts) = match self.o.mode {
                Mode::Rc | Mode::Srq => (
                    QpAttr {
                        state: Some(QpState::Rtr),
                        path_mtu: Some(mtu),
                        dest_ip: Some(peer),
                        dest_qpn: Some(remote[i].qpn),
                        rq_psn: Some(remote[i].psn),
                        max_dest_rd_atomic: Some(1),
                        min_rnr_timer: Some(12),
                        ..QpAttr::default()
                    },
                    QpAttr {
                        state: Some(QpState::Rts),
                        timeout: Some(self.o.qp_timeout),
                        retry_cnt: Some(7),
                        rnr_retry: Some(7),
                        sq_psn: Some(my[i].psn),
                        max_rd_atomic: Some(1),
                        ..QpAttr::default()
                    },
                ),
                Mode::Uc => (
                    QpAttr {
                        state: Some(QpState::Rtr),
                        path_mtu: Some(mtu),
                        dest_ip: Some(peer),
                        dest_qpn: Some(remote[i].qpn),
                        rq_psn: Some(remote[i].psn),
                        ..QpAttr::default()
                    },
                    QpAttr {
                        state: Some(QpState::Rts),
                        sq_psn: Some(my[i].psn),
                        ..QpAttr::default()
                    },
                ),
                Mode::Ud => (
                    // rdma-core's UD QP takes its MTU from the port; uroce's from the QP.
                    QpAttr {
                        state: Some(QpState::Rtr),
                        path_mtu: Some(mtu),
                        ..QpAttr::default()
                    },
                    QpAttr {
                        state: Some(QpState::Rts),
                        sq_psn: Some(my[i].psn),
                        ..QpAttr::default()
                    },
                ),
            };
            qp.modify(&rtr)
                .map_err(verb("Failed to modify QP to RTR"))?;
            qp.modify(&rts)
                .map_err(verb("Failed to modify QP to RTS"))?;
        }
        if self.o.mode == Mode::Ud {
            self.ah = Some(
                self.pd
                    .create_ah(peer)
                    .map_err(verb("Failed to create AH"))?,
            );
            self.ud_remote_qpn = remote[0].qpn;
        }
        Ok(())
    }

    /// Waits for completions: one event then a poll with `-e`, else busy polling.
    fn next_completions(&self, max: usize) -> Result<Vec<uroce::Completion>, CliError> {
        let start = Instant::now();
        let timed_out = || {
            self.o
                .timeout
                .is_some_and(|t| start.elapsed() >= t)
                .then(|| {
                    fail(format!(
                        "no completion in {} s",
                        self.o.timeout.unwrap_or_default().as_secs()
                    ))
                })
        };
        if let Some(ch) = &self.channel {
            loop {
                let wait = self.o.timeout.unwrap_or(Duration::from_secs(3600));
                match ch.get_event(wait)? {
                    Some(id) if id == self.cq.id() => break,
                    Some(id) => return Err(fail(format!("CQ event for unknown CQ {id}"))),
                    None => {
                        if let Some(e) = timed_out() {
                            return Err(e);
                        }
                    }
                }
            }
            self.cq
                .req_notify(false)
                .map_err(verb("Couldn't request CQ notification"))?;
            return self.cq.poll(max).map_err(verb("poll CQ failed"));
        }
        let mut spins = 0u32;
        loop {
            let wcs = self.cq.poll(max).map_err(verb("poll CQ failed"))?;
            if !wcs.is_empty() {
                return Ok(wcs);
            }
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0 {
                if let Some(e) = timed_out() {
                    return Err(e);
                }
            }
            // Busy polling, but let the peer run when both share a core.
            std::thread::yield_now();
        }
    }

    /// The ping-pong: the main loop of the examples. Returns the elapsed time.
    fn run(&self, client: bool) -> Result<Duration, CliError> {
        let o = &self.o;
        let n = self.qps.len();
        // An SRQ is refilled when at most one receive per QP is left, a QP's queue at 1.
        let low = if self.srq.is_some() { n } else { 1 };
        let max_wc = if self.srq.is_some() {
            o.rx_depth + n
        } else {
            2
        };
        let expect_len = o.buf_len() as u32;
        let mut routs = o.rx_depth;
        let mut pending = vec![RECV_WRID; n];
        if client {
            if o.chk {
                self.mr.write(o.payload_offset(), &pattern(o));
            }
            for (i, p) in pending.iter_mut().enumerate() {
                self.post_send(i)?;
                *p |= SEND_WRID;
            }
        }
        let start = Instant::now();
        let (mut rcnt, mut scnt) = (0u32, 0u32);
        while rcnt < o.iters || scnt < o.iters {
            for wc in self.next_completions(max_wc)? {
                if wc.status != WcStatus::Success {
                    return Err(fail(format!(
                        "Failed status {} ({}) for wr_id {}",
                        status_str(wc.status),
                        wc.status as u32,
                        wc.wr_id
                    )));
                }
                let qi = self
                    .qps
                    .iter()
                    .position(|q| q.qpn() == wc.qp_num)
                    .ok_or_else(|| fail(format!("Couldn't find QPN {:06x}", wc.qp_num)))?;
                match wc.wr_id {
                    SEND_WRID => scnt += 1,
                    RECV_WRID => {
                        if o.chk && wc.byte_len != expect_len {
                            return Err(fail(format!(
                                "received {} bytes, expected {expect_len}",
                                wc.byte_len
                            )));
                        }
                        routs -= 1;
                        if routs <= low {
                            routs += self.post_recv(o.rx_depth - routs);
                            if routs < o.rx_depth {
                                return Err(fail(format!("Couldn't post receive ({routs})")));
                            }
                        }
                        rcnt += 1;
                    }
                    other => return Err(fail(format!("Completion for unknown wr_id {other}"))),
                }
                pending[qi] &= !wc.wr_id;
                if scnt < o.iters && pending[qi] == 0 {
                    self.post_send(qi)?;
                    pending[qi] = RECV_WRID | SEND_WRID;
                }
            }
        }
        Ok(start.elapsed())
    }

    /// `-c`: compares the message area with the pattern; prints the examples' line for every
    /// page that differs and returns how many did.
    fn check(&self, out: &mut dyn Write) -> Result<usize, CliError> {
        let o = &self.o;
        let want = pattern(o);
        let mut got = vec![0u8; o.size];
        self.mr.read(o.payload_offset(), &mut got);
        let mut bad = 0;
        for (p, (g, w)) in got.chunks(o.page).zip(want.chunks(o.page)).enumerate() {
            if g != w {
                writeln!(out, "invalid data in page {p}")?;
                bad += 1;
            }
        }
        Ok(bad)
    }
}

/// The UD port MTU when `-m` is not given: what rxe would make of the link MTU of the
/// interface holding `ip`, 1024 (rxe's for a 1500-byte link) if unknown.
fn port_mtu(ip: IpAddr) -> Mtu {
    let link = netif::interfaces()
        .ok()
        .and_then(|l| netif::interface_of(&l, ip).and_then(|i| i.link_mtu()));
    match link {
        Some(l) => Mtu::from_bytes(netif::rxe_active_mtu(l)).unwrap_or(Mtu::M1024),
        None => {
            eprintln!("uroce pingpong: no interface holds {ip}; port MTU 1024 (use -m)");
            Mtu::M1024
        }
    }
}

/// The server's listening socket: dual-stack on every address, else IPv4 only.
fn listen(port: u16) -> Result<TcpListener, CliError> {
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .map_err(|e| fail(format!("Couldn't listen to port {port}: {e}")))
}

/// The client's connection: every address of `host` in turn.
fn dial(host: &str, port: u16) -> Result<TcpStream, CliError> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("{e} for {host}:{port}")))?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(fail(format!(
        "Couldn't connect to {host}:{port}{}",
        last.map(|e| format!(": {e}")).unwrap_or_default()
    )))
}

/// Where the peer's packets go: the IP its GID stands for, or its TCP address if it sent none.
fn peer_ip(remote: &Dest, tcp_peer: IpAddr, dev_ip: IpAddr) -> Result<IpAddr, CliError> {
    let ip = match remote.ip() {
        Some(ip) => ip,
        None => {
            eprintln!(
                "uroce pingpong: the peer sent a zero GID (give rdma-core's example -g); \
                 using its TCP address {tcp_peer}"
            );
            tcp_peer
        }
    };
    if let IpAddr::V6(v6) = ip {
        if v6.segments()[0] & 0xffc0 == 0xfe80 {
            return Err(fail(format!(
                "the peer's GID {v6} is link-local, which uroce cannot reach: give the peer \
                 -g with the index of a global IPv6 or IPv4-mapped GID"
            )));
        }
    }
    if ip.is_ipv4() != dev_ip.is_ipv4() {
        return Err(fail(format!(
            "the peer's address {ip} and the device's {dev_ip} are of different families \
             (use --dev-ip, or -g on the peer)"
        )));
    }
    Ok(ip)
}

fn print_dest(out: &mut dyn Write, what: &str, d: &Dest, sep: char) -> std::io::Result<()> {
    writeln!(
        out,
        "  {what} LID 0x{:04x}, QPN 0x{:06x}, PSN 0x{:06x}{sep} GID {}",
        d.lid,
        d.qpn,
        d.psn,
        d.gid_addr()
    )
}

/// Runs `uroce pingpong`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let o = Opts::new(args)?;
    let io_timeout = o.timeout;
    let tcp_err = |what: &'static str| move |e: std::io::Error| fail(format!("{what}: {e}"));

    // Connect or accept; a server given --dev-ip sets up before it waits, like the examples.
    let (mut stream, mut ctx) = match &args.host {
        Some(host) => {
            let s = dial(host, args.port)?;
            let local = netif::canonical(s.local_addr().map_err(tcp_err("socket"))?.ip());
            let ip = args.dev_ip.unwrap_or(local);
            (s, Ctx::open(o, ip)?)
        }
        None => {
            let listener = listen(args.port)?;
            let early = match args.dev_ip {
                Some(ip) => Some(Ctx::open(o, ip)?),
                None => None,
            };
            eprintln!(
                "uroce pingpong: listening on TCP port {} ({})",
                args.port,
                o.mode.name()
            );
            let (s, _) = listener.accept().map_err(tcp_err("accept() failed"))?;
            drop(listener);
            let ctx = match early {
                Some(c) => c,
                None => {
                    let ip = netif::canonical(s.local_addr().map_err(tcp_err("accept"))?.ip());
                    Ctx::open(o, ip)?
                }
            };
            (s, ctx)
        }
    };
    stream
        .set_read_timeout(io_timeout)
        .map_err(tcp_err("socket"))?;
    let tcp_peer = netif::canonical(stream.peer_addr().map_err(tcp_err("socket"))?.ip());
    let dev_ip = ctx.dev.local_addr().ip();
    let client = args.host.is_some();

    let psns: Vec<u32> = (0..o.num_qp).map(|_| random_psn()).collect();
    let count = if o.mode == Mode::Srq {
        exchange::SRQ_MSGS
    } else {
        1
    };
    let mine = ctx.my_dests(&psns, count);
    // ibv_ud_pingpong prints a colon before the local GID.
    let sep = if o.mode == Mode::Ud { ':' } else { ',' };
    for d in &mine[..o.num_qp] {
        print_dest(out, "local address: ", d, sep)?;
    }
    out.flush()?;

    let remote = if client {
        exchange::write_dests(&mut stream, &mine)
            .map_err(tcp_err("Couldn't send local address"))?;
        let remote = exchange::read_dests(&mut stream, count).map_err(fail)?;
        stream
            .write_all(exchange::DONE)
            .map_err(tcp_err("Couldn't write \"done\""))?;
        drop(stream);
        remote
    } else {
        let remote = exchange::read_dests(&mut stream, count).map_err(fail)?;
        check_remote(&remote, o.num_qp)?;
        let peer = peer_ip(&remote[0], tcp_peer, dev_ip)?;
        ctx.connect(peer, &mine, &remote)?;
        exchange::write_dests(&mut stream, &mine)
            .map_err(tcp_err("Couldn't send local address"))?;
        exchange::read_done(&mut stream).map_err(fail)?;
        drop(stream);
        remote
    };
    for d in &remote[..o.num_qp] {
        print_dest(out, "remote address:", d, ',')?;
    }
    if client {
        check_remote(&remote, o.num_qp)?;
        let peer = peer_ip(&remote[0], tcp_peer, dev_ip)?;
        ctx.connect(peer, &mine, &remote)?;
    }
    eprintln!(
        "uroce pingpong: {} between {dev_ip} and {}, MTU {}, {} B x {}",
        o.mode.name(),
        remote[0].ip().unwrap_or(tcp_peer),
        ctx.mtu.bytes(),
        o.size,
        o.iters
    );

    let elapsed = ctx.run(client)?;
    if matches!(o.mode, Mode::Rc | Mode::Srq) {
        // Linger, as TCP's TIME_WAIT: if our ACK of the peer's last message was lost, the
        // peer retransmits it after its ACK timeout, and a responder that has already gone
        // turns that into the peer's retry-exceeded error although all data arrived. Keep
        // re-ACKing duplicates (the responder's duplicate handling, as rxe's) for three ACK
        // timeouts (both sides are given the same `-u`), but not longer than 10 s: `-u 31` is
        // 2.4 hours.
        let linger = uroce::ack_timeout(o.qp_timeout)
            .map_or(Duration::ZERO, |t| (3 * t).min(Duration::from_secs(10)));
        let end = std::time::Instant::now() + linger;
        while std::time::Instant::now() < end {
            ctx.dev.progress();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    if args.counters {
        let c = ctx.dev.counters();
        let q = ctx
            .qps
            .iter()
            .filter_map(QueuePair::counters)
            .fold((0, 0, 0), |(r, t, s), q| {
                (r + q.retransmits, t + q.timeouts, s + q.spurious_timeouts)
            });
        eprintln!(
            "counters: rx {} packets ({} ICRC exact, {} with a solved IPv4 ID, {} ICRC drops, {} malformed), \
             tx {} packets in {} datagrams, {} retransmitted, {} ACK timeouts ({} found spurious by their probe); {:?}",
            c.rx_packets,
            c.rx_packets.saturating_sub(c.icrc_solved_id + c.icrc_drops + c.malformed),
            c.icrc_solved_id,
            c.icrc_drops,
            c.malformed,
            c.tx_packets,
            c.tx_datagrams,
            q.0,
            q.1,
            q.2,
            c
        );
        if let Some(l) = super::steer_line(&ctx.dev) {
            eprintln!("{l}");
        }
        let w = ctx.dev.lock_waits();
        eprintln!(
            "engine lock: the application waited {} times, {:.3} ms in all, longest {:.3} ms",
            w.waits,
            w.total_ns as f64 / 1e6,
            w.longest_ns as f64 / 1e6
        );
    }

    // As the examples: float microseconds, bytes both ways.
    let usec = elapsed.as_micros() as f32;
    let bytes = o.size as i64 * i64::from(o.iters) * 2;
    writeln!(
        out,
        "{bytes} bytes in {:.2} seconds = {:.2} Mbit/sec",
        f64::from(usec) / 1_000_000.0,
        bytes as f64 * 8.0 / f64::from(usec)
    )?;
    writeln!(
        out,
        "{} iters in {:.2} seconds = {:.2} usec/iter",
        o.iters,
        f64::from(usec) / 1_000_000.0,
        f64::from(usec / o.iters as f32)
    )?;
    if o.chk {
        let bad = ctx.check(out)?;
        if bad > 0 {
            return Err(fail(format!(
                "received data differs from the pattern in {bad} page(s)"
            )));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every QP we have needs a peer QP.
fn check_remote(remote: &[Dest], n: usize) -> Result<(), CliError> {
    if let Some(i) = remote[..n].iter().position(|d| d.qpn == 0) {
        return Err(fail(format!(
            "the peer described only {i} QPs, we have {n} (give both sides the same -q)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_marks_page_starts() {
        let args = <Args as clap::FromArgMatches>::from_arg_matches(
            &<Args as clap::Args>::augment_args(clap::Command::new("t"))
                .get_matches_from(["t", "-s", "9000", "-c"]),
        )
        .unwrap();
        let mut o = Opts::new(&args).unwrap();
        o.page = 4096;
        let p = pattern(&o);
        assert_eq!(
            (p[0], p[1], p[4095], p[4096], p[8192]),
            (0, 0x7b, 0x7b, 0, 0)
        );
        assert_eq!(o.buf_len(), 9000);
    }
}

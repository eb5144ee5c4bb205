//! `uroce bench`: the peer of perftest's `ib_write_bw`, `ib_read_bw`, `ib_send_bw`,
//! `ib_atomic_bw`, `ib_write_lat`, `ib_read_lat`, `ib_send_lat` and `ib_atomic_lat` (perftest
//! 4.5-0.17, Debian's `perftest`, version "6.06"), or of another uroce. Same TCP side channel
//! (port 18515: versions, page and cache-line sizes, MTU, one 108-byte key message per QP and
//! handshake, the client's report), same buffer layout and addresses, same RC QP set-up, same
//! posting pattern, so either side can be the real program on the kernel's rxe.
//!
//! Protocol, after perftest's `main` of each test and `src/perftest_communication.c`:
//!
//! 1. TCP connection; `exchange_versions` (16 bytes), `check_sys_data` (page size, cache line
//!    size), `check_mtu` (the `ibv_mtu` number as text).
//! 2. Key messages (`ctx_hand_shake`): one per QP, then RTR/RTS, then for SEND one for QP 0
//!    and one per QP, for the others one per QP and one for QP 0; the WRITE/READ/atomic
//!    latency tests start with one for QP 0.
//! 3. The run. WRITE/READ/atomic bw: the server only waits in a handshake for the client to
//!    finish, takes its report (`xchg_bw_reports`) and prints it. SEND bw: the server posts its
//!    receives before a handshake, counts and times them (with `-a` a handshake before and
//!    after each size). write_lat: a ping-pong of WRITEs on the last byte of the buffer.
//!    read_lat/atomic_lat: the client times one operation at a time; the server goes straight
//!    to the closing handshake. send_lat: receives and a handshake per size, a SEND ping-pong.
//! 4. `ctx_close_connection`: a last handshake and "done" (not for write_lat).
//!
//! Differences, all for running without an IB device: the device is a uroce device on one
//! address (`--dev-ip`, or the address at `-x` in rxe's GID numbering of the interface of
//! the TCP connection, or that address itself); buffers hold a known pattern instead of
//! random bytes, and what arrives is checked where the sender is known (another uroce, whose
//! version message carries a mark after the string perftest reads; atomics against any peer);
//! bandwidth is the average (no peak); latency percentiles come from an HDR histogram of all
//! samples (perftest drops the two largest), each iteration stamped when its post returned
//! (perftest: just before it; the differences are the same round trips); `-D` only on a
//! WRITE/READ/atomic bandwidth client; RC only; no `--run_infinitely`, bidirectional (`-b`)
//! or rdma_cm modes.

mod channel;
mod ctx;
mod report;
mod threads;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use uroce::{BackendKind, Mtu};

use super::netif;
use super::CliError;
use channel::{BwReport, Channel, Dest};
use ctx::{BwParams, Ctx, DevOpts, Geometry, Op};
use report::{BwRow, Context, DataCheck, Health, LatRow, Reporter, Ticker};

/// Which perftest program to be the peer of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Test {
    /// RDMA WRITE (ib_write_bw, ib_write_lat).
    Write,
    /// RDMA READ (ib_read_bw).
    Read,
    /// SEND (ib_send_bw).
    Send,
    /// Atomics (ib_atomic_bw).
    Atomic,
}

/// Bandwidth or latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Bandwidth.
    Bw,
    /// Latency.
    Lat,
}

/// Who drives the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A progress thread; the test thread sleeps on completion events when idle.
    Thread,
    /// No thread: the test thread busy-polls (lowest latency, a core at 100%).
    Polled,
}

/// perftest's `-A`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AtomicType {
    /// Fetch and add 1.
    #[value(name = "FETCH_AND_ADD")]
    FetchAndAdd,
    /// Compare with 0 and swap 0.
    #[value(name = "CMP_AND_SWAP")]
    CmpAndSwap,
}

/// Options of `uroce bench`, with perftest's letters and long names where it has them.
#[derive(Debug, Clone, clap::Args)]
#[command(args_override_self = true)]
pub struct Args {
    /// Operation.
    #[arg(value_enum)]
    pub test: Test,
    /// bw or lat.
    #[arg(value_enum)]
    pub kind: Kind,
    /// Server to connect to; without it, wait for a client.
    pub host: Option<String>,
    /// TCP port of the side channel.
    #[arg(short = 'p', long, default_value_t = 18515)]
    pub port: u16,
    /// Message size [default: 65536 for bw, 2 for lat, 8 for atomic].
    #[arg(short = 's', long)]
    pub size: Option<u64>,
    /// Iterations per QP [default: 5000 for write bw, else 1000].
    #[arg(short = 'n', long)]
    pub iters: Option<u64>,
    /// All sizes from 2 B to 8 MiB by powers of 2 (give it to both sides, as with perftest).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// A list of sizes instead (uroce only: a perftest peer knows only -s and -a).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["all", "size"])]
    pub sizes: Vec<u64>,
    /// Path MTU: 256, 512, 1024, 2048 or 4096 [default: the port's, from the link MTU as rxe].
    #[arg(short = 'm', long)]
    pub mtu: Option<u32>,
    /// GID index: use the address at this index of rxe's GID table of the interface the TCP
    /// connection uses (see `uroce devinfo`).
    #[arg(short = 'x', long = "gid-index")]
    pub gid_index: Option<usize>,
    /// Local address of the uroce device [default: the local address of the TCP connection].
    /// Two uroce peers on one host need two addresses: give the client this.
    #[arg(long)]
    pub dev_ip: Option<IpAddr>,
    /// UDP port of RoCEv2 (4791; other values only between uroce peers, for tests).
    #[arg(long, default_value_t = 4791)]
    pub udp_port: u16,
    /// Socket back end: uring or syscall.
    #[arg(long, default_value = "uring")]
    pub backend: BackendKind,
    /// Progress: thread, or polled (busy polling, the latency mode).
    #[arg(long, value_enum, default_value = "thread")]
    pub progress: ProgressMode,
    /// io_uring back end: a kernel thread takes the submissions (SQPOLL). For the sending
    /// side of a bulk transfer (the WRITE/SEND client, the READ server): the kernel's send
    /// work then runs beside the engine, at the cost of the thread's polling.
    #[arg(long)]
    pub sqpoll: bool,
    /// How long the `--sqpoll` thread polls after its last submission before it sleeps.
    #[arg(long, value_name = "MS", default_value_t = 1, requires = "sqpoll")]
    pub sqpoll_idle_ms: u64,
    /// io_uring back end: a thread of uroce's own makes the sends (`sendmsg`) while the
    /// progress thread builds the next batch, and sleeps when there is nothing to send. For
    /// the sending side of a bulk transfer, like `--sqpoll` (which it replaces when both are
    /// given).
    #[arg(long)]
    pub tx_thread: bool,
    /// io_uring back end, `--progress polled`, IPv4 or IPv6: send to and receive from the
    /// peer through a socket connected to it (on IPv4 each packet's ICRC resealed for its ID;
    /// the peer must accept any IPv4 ID, as rxe and `uroce bench` do).
    #[arg(long)]
    pub connected_tx: bool,
    /// QPs, all used at once (perftest's -q).
    #[arg(short = 'q', long = "qps", visible_alias = "qp", default_value_t = 1)]
    pub qps: u32,
    /// One JSON object per result line on stdout (and nothing else there).
    #[arg(long)]
    pub json: bool,
    /// Send queue depth [default: 128 for bw, 1 for lat].
    #[arg(short = 't', long = "tx-depth")]
    pub tx_depth: Option<u32>,
    /// Receive queue depth of the SEND server [default: 4096; perftest's is 512].
    #[arg(short = 'r', long = "rx-depth")]
    pub rx_depth: Option<u32>,
    /// One completion in this many sends [default: 100, 1 above 8 KiB without -a].
    #[arg(short = 'Q', long = "cq-mod")]
    pub cq_mod: Option<u32>,
    /// Outstanding READs/atomics to offer the peer [default: 128, uroce's maximum as rxe's].
    #[arg(short = 'o', long = "outs")]
    pub outs: Option<u32>,
    /// Run this many seconds instead of -n (WRITE/READ/atomic client).
    #[arg(short = 'D', long)]
    pub duration: Option<u64>,
    /// Accepted for perftest compatibility (uroce measures with the monotonic clock).
    #[arg(short = 'F', long = "CPU-freq")]
    pub cpu_freq: bool,
    /// Exchange and show the client's report in Gb/s instead of MB/s, as perftest.
    #[arg(long = "report_gbits", visible_alias = "report-gbits")]
    pub report_gbits: bool,
    /// Atomic operation.
    #[arg(
        short = 'A',
        long = "atomic_type",
        value_enum,
        default_value = "FETCH_AND_ADD"
    )]
    pub atomic_type: AtomicType,
    /// Connection type (RC only).
    #[arg(short = 'c', long = "connection", default_value = "RC")]
    pub connection: String,
    /// IB device (accepted; a uroce device is an address).
    #[arg(short = 'd', long = "ib-dev")]
    pub ib_dev: Option<String>,
    /// IB port (uroce devices have port 1 only).
    #[arg(short = 'i', long = "ib-port", default_value_t = 1)]
    pub ib_port: u8,
    /// Give up after this many seconds without progress (0: wait forever, as perftest).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// A client retries a refused connection for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
    /// Share the local address with other uroce processes: QPN-steered receive (see
    /// docs/ARCHITECTURE.md). `UROCE_STEER=1` does the same.
    #[arg(long)]
    pub steer: bool,
    /// Engine threads: N steered devices on the address, each with its own socket, io_uring,
    /// progress thread and test thread driving --qps/N of the QPs over its own session on TCP
    /// port -p + i. Both sides must give the same N (not perftest). Prints every thread's
    /// lines and the aggregate.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
}

/// `DEF_ITERS_WB`, `DEF_ITERS`.
const ITERS_WRITE_BW: u64 = 5000;
const ITERS_DEFAULT: u64 = 1000;
/// `MIN_ITER`.
const MIN_ITER: u64 = 5;
/// `MSG_SIZE_CQ_MOD_LIMIT`: above this, every send is signaled (`force_dependecies`).
const CQ_MOD_LIMIT: u64 = 8192;
/// `MAX_OUT_READ_HERMON`-like default: rxe's and uroce's `max_qp_rd_atom`.
const MAX_OUT_READS: u32 = 128;
/// The SEND server's receive queue depth. perftest's `DEF_RX_SEND` is 512, for a server that
/// busy-polls its CQ; this one sleeps on it with thread progress, and where four threads
/// share two cores it was off-CPU long enough for 512 receives of 4 KiB (≈ 1.3 ms at 12
/// Gbit/s) to run dry: RNR NAKs in 3 of 6 runs by hand, none in 6 with 4096 (2026-11-28).
const DEFAULT_RX_DEPTH: u32 = 4096;

fn fail(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}

/// Checked options.
#[derive(Debug, Clone)]
struct Opts {
    test: Test,
    kind: Kind,
    op: Op,
    sizes: Vec<u64>,
    /// perftest's RUN_ALL: several sizes, no per-size sync except for SEND.
    run_all: bool,
    alloc_size: u64,
    iters: u64,
    duration: Option<Duration>,
    tx_depth: u64,
    rx_depth: u64,
    cq_mod: u64,
    out_reads: u32,
    qps: u64,
    mtu: Option<Mtu>,
    dev: DevOpts,
}

impl Opts {
    fn new(a: &Args) -> Result<Opts, CliError> {
        if !a.connection.eq_ignore_ascii_case("RC") {
            return Err(fail("uroce bench runs RC only (-c RC)"));
        }
        if a.ib_port != 1 {
            return Err(fail("uroce devices have one port, port 1"));
        }
        if a.qps == 0 {
            return Err(fail("-q must be at least 1"));
        }
        let op = match (a.test, a.atomic_type) {
            (Test::Write, _) => Op::Write,
            (Test::Read, _) => Op::Read,
            (Test::Send, _) => Op::Send,
            (Test::Atomic, AtomicType::FetchAndAdd) => Op::FetchAdd,
            (Test::Atomic, AtomicType::CmpAndSwap) => Op::CmpSwap,
        };
        let default_size = match (a.test, a.kind) {
            (Test::Atomic, _) => 8,
            (_, Kind::Lat) => 2,
            _ => 65536,
        };
        let (sizes, run_all, alloc_size) = if a.test == Test::Atomic {
            if a.size.is_some_and(|s| s != 8) || a.sizes.iter().any(|&s| s != 8) {
                return Err(fail("Message size cannot be changed for Atomic tests"));
            }
            (vec![8], false, 8)
        } else if a.all {
            ((1..24).map(|i| 1u64 << i).collect(), true, ctx::MAX_SIZE)
        } else if !a.sizes.is_empty() {
            let max = a.sizes.iter().copied().max().unwrap_or(default_size);
            (a.sizes.clone(), a.sizes.len() > 1, max)
        } else {
            let s = a.size.unwrap_or(default_size);
            (vec![s], false, s)
        };
        if sizes.iter().any(|&s| s == 0 || s > u64::from(u32::MAX)) {
            return Err(fail("message sizes must be 1 B .. 4 GiB"));
        }
        let iters = a
            .iters
            .unwrap_or(if a.test == Test::Write && a.kind == Kind::Bw {
                ITERS_WRITE_BW
            } else {
                ITERS_DEFAULT
            });
        if iters < MIN_ITER {
            return Err(fail(format!("iterations must be at least {MIN_ITER}")));
        }
        let duration = a.duration.map(Duration::from_secs);
        if duration.is_some() && (a.kind == Kind::Lat || a.test == Test::Send) {
            return Err(fail(
                "-D is implemented for the WRITE/READ/atomic bandwidth client only",
            ));
        }
        if duration.is_some() && run_all {
            return Err(fail(
                "Duration mode currently doesn't support running on all sizes.",
            ));
        }
        // force_dependecies: tx_depth and rx_depth no larger than the iterations; no CQ
        // moderation for large messages (but with -a).
        let tx_default = if a.kind == Kind::Bw { 128 } else { 1 };
        let tx_depth = u64::from(a.tx_depth.unwrap_or(tx_default).max(1)).min(iters);
        let rx_depth = u64::from(a.rx_depth.unwrap_or(DEFAULT_RX_DEPTH).max(1)).min(iters);
        let mut cq_mod = u64::from(a.cq_mod.unwrap_or(100).max(1));
        if a.cq_mod.is_none() && sizes[0] > CQ_MOD_LIMIT && !run_all {
            cq_mod = 1;
        }
        let cq_mod = cq_mod.min(tx_depth);
        let out_reads = match op {
            Op::Read | Op::FetchAdd | Op::CmpSwap => a.outs.unwrap_or(MAX_OUT_READS).clamp(1, 128),
            _ => 1,
        };
        let mtu = match a.mtu {
            Some(m) => Some(Mtu::from_bytes(m).ok_or_else(|| {
                fail(format!(
                    "Invalid MTU - {m}: choose from {{256,512,1024,2048,4096}}"
                ))
            })?),
            None => None,
        };
        Ok(Opts {
            test: a.test,
            kind: a.kind,
            op,
            sizes,
            run_all,
            alloc_size,
            iters,
            duration,
            tx_depth,
            rx_depth,
            cq_mod,
            out_reads,
            qps: u64::from(a.qps),
            mtu,
            dev: DevOpts {
                backend: a.backend,
                polled: a.progress == ProgressMode::Polled,
                // A busy-polled ping-pong sends each ACK with the reply (ctx.rs, LAT_ACK_DELAY).
                ack_delay: if a.progress == ProgressMode::Polled && a.kind == Kind::Lat {
                    ctx::LAT_ACK_DELAY
                } else {
                    Duration::ZERO
                },
                udp_port: a.udp_port,
                timeout: (a.timeout > 0).then(|| Duration::from_secs(a.timeout)),
                steer: a.steer,
                sq_poll: a.sqpoll.then(|| Duration::from_millis(a.sqpoll_idle_ms)),
                tx_thread: a.tx_thread,
                connected_tx: a.connected_tx,
            },
        })
    }

    fn name(&self) -> &'static str {
        match self.test {
            Test::Write => "write",
            Test::Read => "read",
            Test::Send => "send",
            Test::Atomic => "atomic",
        }
    }
}

/// `sysconf(_SC_PAGESIZE)`: perftest's cycle buffer.
fn page_size() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(4096)
}

/// perftest's `get_cache_line_size`: the L1 data cache line, 64 if unknown.
fn cache_line_size() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index0/coherency_line_size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&v: &u32| v > 0)
        .unwrap_or(64)
}

/// A random 24-bit PSN (`lrand48() & 0xffffff` in `set_up_connection`).
fn random_psn(salt: u64) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u64(salt);
    (h.finish() & 0xff_ffff) as u32
}

/// The port MTU rxe would have on the interface holding `ip` (link MTU less 80, rounded
/// down); 1024 if unknown.
fn port_mtu(ip: IpAddr) -> u32 {
    netif::interfaces()
        .ok()
        .and_then(|l| netif::interface_of(&l, ip).and_then(|i| i.link_mtu()))
        .map_or(1024, netif::rxe_active_mtu)
}

/// The address at GID index `idx` of rxe's table for the interface holding `anchor`: index 0
/// the default GID (link-local, from the MAC), then IPv4 addresses (as ::ffff:a.b.c.d), then
/// IPv6 ones, as `uroce devinfo` lists them.
fn gid_index_ip(anchor: IpAddr, idx: usize) -> Result<IpAddr, CliError> {
    let list = netif::interfaces().map_err(|e| fail(format!("listing interfaces: {e}")))?;
    let i = netif::interface_of(&list, anchor)
        .ok_or_else(|| fail(format!("no network interface holds {anchor} (for -x)")))?;
    let mut gids: Vec<Ipv6Addr> = Vec::new();
    if let Some(mac) = i.mac {
        gids.push(netif::default_gid(mac));
    }
    for &(a, _) in &i.addrs {
        if let IpAddr::V4(v4) = a {
            gids.push(v4.to_ipv6_mapped());
        }
    }
    for &(a, _) in &i.addrs {
        if let IpAddr::V6(v6) = a {
            if !gids.contains(&v6) {
                gids.push(v6);
            }
        }
    }
    let g = gids.get(idx).ok_or_else(|| {
        fail(format!(
            "{} has {} GIDs; there is no GID index {idx}",
            i.name,
            gids.len()
        ))
    })?;
    if g.segments()[0] & 0xffc0 == 0xfe80 {
        return Err(fail(format!(
            "GID index {idx} of {} is the link-local {g}, which uroce cannot use",
            i.name
        )));
    }
    Ok(netif::canonical(IpAddr::V6(*g)))
}

/// The server's listening socket: dual-stack on every address, else IPv4 only.
fn listen(port: u16) -> Result<TcpListener, CliError> {
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .map_err(|e| fail(format!("Couldn't listen to port {port}: {e}")))
}

/// The client's connection: every address of `host` in turn, retried until `within` passed
/// (the server may not be listening yet).
fn dial(host: &str, port: u16, within: Duration) -> Result<TcpStream, CliError> {
    let end = Instant::now() + within;
    loop {
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| fail(format!("{e} for {host}:{port}")))?;
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        if Instant::now() >= end {
            return Err(fail(format!(
                "Couldn't connect to {host}:{port}{}",
                last.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the peer's packets go: the IP its GID stands for (its TCP address for a zero GID).
fn peer_ip(rem: &Dest, tcp_peer: IpAddr, dev_ip: IpAddr) -> Result<IpAddr, CliError> {
    let g = rem.gid_addr();
    let ip = if g.is_unspecified() {
        eprintln!(
            "uroce bench: the peer sent a zero GID; using its TCP address {tcp_peer} (give \
             perftest -x)"
        );
        tcp_peer
    } else {
        netif::canonical(IpAddr::V6(g))
    };
    if let IpAddr::V6(v6) = ip {
        if v6.segments()[0] & 0xffc0 == 0xfe80 {
            return Err(fail(format!(
                "the peer's GID {v6} is link-local, which uroce cannot reach: give the peer -x \
                 with the index of a global IPv6 or IPv4-mapped GID"
            )));
        }
    }
    // ctx_check_gid_compatibility: both GIDs IPv4-mapped, or neither.
    if ip.is_ipv4() != dev_ip.is_ipv4() {
        return Err(fail(format!(
            "Found Incompatibility issue with GID types: the peer's {ip}, ours {dev_ip}. \
             Please Try to use a different IP version (--dev-ip, or -x on the peer)."
        )));
    }
    Ok(ip)
}

fn print_dest(what: &str, d: &Dest) {
    eprintln!(
        " {what} address: LID {:#06x} QPN {:#08x} PSN {:#08x} OUT {:#04x} RKey {:#010x} VAddr \
         {:#018x} GID {}",
        d.lid,
        d.qpn,
        d.psn,
        d.out_reads,
        d.rkey,
        d.vaddr,
        d.gid_addr()
    );
}

/// Checks QP `q`'s area at `area` after messages covering `cov`: covered bytes hold the
/// pattern, the others the pattern (an earlier size) or zero.
fn check_area(c: &Ctx, area: u64, q: u64, cov: &[(u64, u64)]) -> Result<(), String> {
    let len = cov
        .iter()
        .map(|&(_, e)| e)
        .max()
        .unwrap_or(0)
        .max(c.geo.cycle.min(c.geo.bsize));
    let mut got = vec![0u8; len as usize];
    c.mr.read(area as usize, &mut got);
    let mut covered = vec![false; len as usize];
    for &(a, b) in cov {
        covered[a as usize..b as usize].fill(true);
    }
    for (o, (&g, &cv)) in got.iter().zip(&covered).enumerate() {
        let want = ctx::pattern_byte(q, o as u64);
        if g != want && (cv || g != 0) {
            return Err(format!(
                "QP {q}: byte {o} of the area is {g:#04x}, expected {want:#04x}{}",
                if cv { "" } else { " or 0" }
            ));
        }
    }
    Ok(())
}

/// Per-slot counts of `count` atomics over `slots` slots.
fn slot_counts(count: u64, slots: u64) -> Vec<u64> {
    (0..slots)
        .map(|k| count / slots + u64::from(k < count % slots))
        .collect()
}

/// Checks atomic targets: `after[k] == before[k] + counts[k]` for fetch-and-add, unchanged for
/// compare-and-swap (compare 0, swap 0).
fn check_atomics(
    op: Op,
    q: usize,
    before: &[u64],
    after: &[u64],
    counts: &[u64],
) -> Result<(), String> {
    for (k, ((&b, &a), &n)) in before.iter().zip(after).zip(counts).enumerate() {
        let want = if op == Op::FetchAdd {
            b.wrapping_add(n)
        } else {
            b
        };
        if a != want {
            return Err(format!(
                "QP {q}: atomic slot {k} holds {a:#x}, expected {want:#x} ({b:#x} and {n} \
                 operations)"
            ));
        }
    }
    Ok(())
}

/// The 64-bit words of QP `q`'s pattern at the atomic slots.
fn pattern_words(geo: &Geometry, q: u64, slots: u64) -> Vec<u64> {
    (0..slots)
        .map(|k| {
            let o = geo.slot(8, k);
            let mut w = [0u8; 8];
            for (i, b) in w.iter_mut().enumerate() {
                *b = ctx::pattern_byte(q, o + i as u64);
            }
            u64::from_ne_bytes(w)
        })
        .collect()
}

/// Everything a run needs after the connection is up.
struct Session<'a, 'c> {
    o: &'a Opts,
    c: &'c Ctx,
    ch: Channel<'c>,
    my: Vec<Dest>,
    rem: Vec<Dest>,
    peer_uroce: bool,
    client: bool,
    report_gbits: bool,
}

impl Session<'_, '_> {
    fn hs0(&mut self) -> Result<Dest, CliError> {
        self.ch.hand_shake(&self.my[0]).map_err(fail)
    }

    fn hs_each(&mut self) -> Result<Vec<Dest>, CliError> {
        let mut v = Vec::with_capacity(self.my.len());
        for d in self.my.clone() {
            v.push(self.ch.hand_shake(&d).map_err(fail)?);
        }
        Ok(v)
    }

    /// Steps 2 of the module comment: key messages and RTR/RTS, in the test's order.
    fn establish(&mut self, tcp_peer: IpAddr, mtu: Mtu) -> Result<(), CliError> {
        let lat = self.o.kind == Kind::Lat;
        let send = self.o.test == Test::Send;
        if lat && !send {
            // write_lat.c, read_lat.c, atomic_lat.c: a first handshake for QP 0.
            self.hs0()?;
        }
        self.rem = self.hs_each()?;
        let dev_ip = self.c.dev.local_addr().ip();
        for q in 0..self.my.len() {
            let ip = peer_ip(&self.rem[q], tcp_peer, dev_ip)?;
            self.c.connect(q, ip, mtu, &self.my[q], &self.rem[q])?;
        }
        if send {
            // send_bw.c, send_lat.c: one for QP 0, then one per QP.
            self.hs0()?;
            self.hs_each()?;
        } else {
            // write_bw.c, read_bw.c, atomic_bw.c and the *_lat.c: one per QP, then "an
            // additional handshake ... after moving qp to RTR".
            self.hs_each()?;
            self.hs0()?;
        }
        Ok(())
    }

    fn bw_params(&self) -> BwParams {
        BwParams {
            op: self.o.op,
            iters: self.o.iters,
            duration: self.o.duration,
            tx_depth: self.o.tx_depth,
            cq_mod: self.o.cq_mod,
        }
    }

    fn units(&self) -> f64 {
        if self.report_gbits {
            125_000_000.0
        } else {
            1_048_576.0
        }
    }

    /// The client of a bandwidth test: `run_iter_bw` for every size.
    fn bw_client(&mut self) -> Result<Vec<BwRow>, CliError> {
        let o = self.o.clone();
        let c = self.c;
        let n = self.my.len() as u64;
        let mut rows = Vec::new();
        let mut last_report = BwReport::default();
        let mut tick = Ticker::new();
        for &size in &o.sizes {
            if o.test == Test::Send {
                // send_bw.c: the server posted its receives before this handshake.
                self.hs0()?;
            }
            let atomic = matches!(o.op, Op::FetchAdd | Op::CmpSwap);
            let slots = c.geo.slots(8);
            let before = if atomic {
                Some(c.atomic_probe(&self.rem, slots, 0, o.tx_depth)?)
            } else {
                None
            };
            let h0 = Health::of(&c.dev, &c.qps);
            let cpu0 = report::cpu_times();
            let label = format!("{} {size} B", o.name());
            let run = c.run_bw_client(&self.bw_params(), size, &self.rem, &mut tick, &label)?;
            let cpu = report::cpu_times().since(&cpu0);
            let health = Health::of(&c.dev, &c.qps).since(&h0);
            let data = match (o.op, before) {
                (Op::FetchAdd | Op::CmpSwap, Some(before)) => {
                    let after = c.atomic_probe(&self.rem, slots, c.geo.bsize / 2, o.tx_depth)?;
                    let mut r = Ok(());
                    for q in 0..n as usize {
                        let counts = slot_counts(run.per_qp[q], slots);
                        r = r.and_then(|_| check_atomics(o.op, q, &before[q], &after[q], &counts));
                        // The last value each slot returned is the one before the last op.
                        for k in 0..slots {
                            if counts[k as usize] == 0 {
                                continue;
                            }
                            let mut w = [0u8; 8];
                            c.mr.read((c.geo.local(q as u64) + c.geo.slot(8, k)) as usize, &mut w);
                            let got = u64::from_ne_bytes(w);
                            let want = if o.op == Op::FetchAdd {
                                after[q][k as usize].wrapping_sub(1)
                            } else {
                                before[q][k as usize]
                            };
                            if got != want && r.is_ok() {
                                r = Err(format!(
                                    "QP {q}: atomic slot {k} returned {got:#x} last, expected \
                                     {want:#x}"
                                ));
                            }
                        }
                    }
                    match r {
                        Ok(()) => DataCheck::Verified,
                        Err(e) => DataCheck::Failed(e),
                    }
                }
                (Op::Read, _) if self.peer_uroce => {
                    let mut r = Ok(());
                    for q in 0..n {
                        let cov = c.geo.coverage(size, run.per_qp[q as usize]);
                        r = r.and_then(|_| check_area(c, c.geo.local(q), q, &cov));
                    }
                    match r {
                        Ok(()) => DataCheck::Verified,
                        Err(e) => DataCheck::Failed(e),
                    }
                }
                (Op::Read, _) => DataCheck::NotChecked("perftest's buffer holds random bytes"),
                // Settled by the server's verdict at the end.
                _ if self.peer_uroce => DataCheck::VerifiedByPeer,
                _ => DataCheck::NotChecked("perftest does not check what it receives"),
            };
            let bytes = size * run.msgs;
            last_report = BwReport {
                size,
                iters: run.msgs,
                bw_peak: bytes as f64 / run.secs.max(1e-12) / self.units(),
                bw_avg: bytes as f64 / run.secs.max(1e-12) / self.units(),
                msg_rate: run.msgs as f64 / run.secs.max(1e-12) / 1e6,
            };
            rows.push(BwRow {
                size,
                iters: run.msgs,
                secs: run.secs,
                cpu: cpu.total(),
                cpu_user: cpu.user,
                cpu_bytes: bytes,
                source: "measured",
                health,
                data,
            });
            if o.test == Test::Send && o.run_all {
                // send_bw.c RUN_ALL: a handshake after every size.
                self.hs0()?;
            }
        }
        if o.test != Test::Send {
            // write_bw.c: "For half duplex tests, server just waits for client to exit".
            self.hs0()?;
            self.ch
                .xchg_bw_reports(&last_report)
                .map_err(|e| fail(format!("exchanging reports: {e}")))?;
        }
        let theirs = self.ch.close(&self.my[0]).map_err(fail)?;
        if self.peer_uroce && matches!(o.op, Op::Write | Op::Send) {
            let verdict = match theirs.srqn {
                channel::VERDICT_OK => DataCheck::VerifiedByPeer,
                channel::VERDICT_BAD => {
                    DataCheck::Failed("the uroce server found wrong data (see its output)".into())
                }
                _ => DataCheck::NotChecked("the uroce server did not check"),
            };
            for r in &mut rows {
                r.data = verdict.clone();
            }
        }
        Ok(rows)
    }

    /// The server of a SEND bandwidth test: `run_iter_bw_server` for every size.
    fn send_server(&mut self) -> Result<Vec<BwRow>, CliError> {
        let o = self.o.clone();
        let c = self.c;
        let n = self.my.len() as u64;
        let mut rows = Vec::new();
        let mut tick = Ticker::new();
        let mut all_ok = true;
        for &size in &o.sizes {
            let initial = o.rx_depth.min(o.iters);
            c.post_initial_recvs(size, initial, true)?;
            self.hs0()?;
            let h0 = Health::of(&c.dev, &c.qps);
            let cpu0 = report::cpu_times();
            let label = format!("send {size} B");
            let run = c.run_send_server(size, o.iters, initial, &mut tick, &label)?;
            let cpu = report::cpu_times().since(&cpu0);
            let health = Health::of(&c.dev, &c.qps).since(&h0);
            let data = if self.peer_uroce {
                let mut r = Ok(());
                for q in 0..n {
                    let cov = c.geo.coverage(size, o.iters);
                    r = r.and_then(|_| check_area(c, c.geo.remote(q), q, &cov));
                }
                match r {
                    Ok(()) => DataCheck::Verified,
                    Err(e) => DataCheck::Failed(e),
                }
            } else {
                DataCheck::NotChecked("perftest sends random bytes (lengths were checked)")
            };
            all_ok &= !data.failed();
            rows.push(BwRow {
                size,
                iters: run.msgs,
                secs: run.secs,
                cpu: cpu.total(),
                cpu_user: cpu.user,
                cpu_bytes: size * run.msgs,
                source: "measured",
                health,
                data,
            });
            if o.run_all {
                self.hs0()?;
            }
        }
        let mut last = self.my[0];
        last.srqn = self.verdict(all_ok);
        self.ch.close(&last).map_err(fail)?;
        Ok(rows)
    }

    fn verdict(&self, ok: bool) -> u32 {
        if !self.peer_uroce {
            0
        } else if ok {
            channel::VERDICT_OK
        } else {
            channel::VERDICT_BAD
        }
    }

    /// The server of a WRITE/READ/atomic bandwidth test: waits for the client, takes its
    /// report, checks what it can.
    fn rdma_server(&mut self) -> Result<Vec<BwRow>, CliError> {
        let o = self.o.clone();
        let c = self.c;
        let n = self.my.len() as u64;
        let h0 = Health::of(&c.dev, &c.qps);
        let cpu0 = report::cpu_times();
        eprintln!("uroce bench: waiting for the client to finish");
        self.hs0()?;
        let rep = self
            .ch
            .xchg_bw_reports(&BwReport::default())
            .map_err(|e| fail(format!("exchanging reports: {e}")))?;
        let cpu = report::cpu_times().since(&cpu0);
        let health = Health::of(&c.dev, &c.qps).since(&h0);
        let per_qp = rep.iters / n.max(1);
        let data = match o.op {
            Op::Write if self.peer_uroce => {
                let mut r = Ok(());
                for q in 0..n {
                    let cov = c.geo.coverage(rep.size, per_qp);
                    r = r.and_then(|_| check_area(c, c.geo.remote(q), q, &cov));
                }
                match r {
                    Ok(()) => DataCheck::Verified,
                    Err(e) => DataCheck::Failed(e),
                }
            }
            Op::Write => DataCheck::NotChecked("perftest writes random bytes"),
            Op::Read => DataCheck::NotChecked("the client checks what it READs"),
            Op::FetchAdd | Op::CmpSwap => {
                // Any client: this side knows the values it started with, and perftest's
                // client steps through the slots round-robin (`increase_rem_addr`), so the
                // increments must be the same on every slot, one more on a prefix of them,
                // and add up to the client's count. (A perftest client with -D reports only
                // the operations of its sampling window: then more may have arrived.)
                let slots = c.geo.slots(8);
                let mut r = Ok(());
                for q in 0..n {
                    let before = pattern_words(&c.geo, q, slots);
                    let after: Vec<u64> = (0..slots)
                        .map(|k| {
                            let mut w = [0u8; 8];
                            c.mr.read((c.geo.remote(q) + c.geo.slot(8, k)) as usize, &mut w);
                            u64::from_ne_bytes(w)
                        })
                        .collect();
                    if r.is_err() {
                        break;
                    }
                    r = if o.op == Op::CmpSwap {
                        check_atomics(o.op, q as usize, &before, &after, &vec![0; slots as usize])
                    } else {
                        let deltas: Vec<u64> = after
                            .iter()
                            .zip(&before)
                            .map(|(a, b)| a.wrapping_sub(*b))
                            .collect();
                        let total: u64 = deltas.iter().sum();
                        if deltas != slot_counts(total, slots) {
                            Err(format!(
                                "QP {q}: the fetch-and-adds did not land once each, round-robin                                  over the {slots} slots: increments {deltas:?}"
                            ))
                        } else if total != per_qp && (self.peer_uroce || total < per_qp) {
                            Err(format!(
                                "QP {q}: {total} fetch-and-adds arrived, the client reported                                  {per_qp}"
                            ))
                        } else {
                            Ok(())
                        }
                    };
                }
                match r {
                    Ok(()) => DataCheck::Verified,
                    Err(e) => DataCheck::Failed(e),
                }
            }
            Op::Send => DataCheck::NotChecked("not a SEND server"),
        };
        let mut last = self.my[0];
        last.srqn = self.verdict(!data.failed());
        self.ch.close(&last).map_err(fail)?;
        // The client's numbers, as perftest's server prints them, in this side's units.
        let bytes = rep.size * rep.iters;
        let secs = if rep.bw_avg > 0.0 {
            bytes as f64 / (rep.bw_avg * self.units())
        } else {
            0.0
        };
        let cpu_bytes = if o.run_all {
            rep.iters * o.sizes.iter().sum::<u64>()
        } else {
            bytes
        };
        Ok(vec![BwRow {
            size: rep.size,
            iters: rep.iters,
            secs,
            cpu: cpu.total(),
            cpu_user: cpu.user,
            cpu_bytes,
            source: "peer-report",
            health,
            data,
        }])
    }

    /// Half round trips (SEND, WRITE ping-pongs) or round trips (READ, atomics: perftest's
    /// `rtt_factor`) between consecutive posts.
    fn histogram(&self, t: &[Instant]) -> hdrhistogram::Histogram<u64> {
        let factor = if matches!(self.o.op, Op::Write | Op::Send) {
            2
        } else {
            1
        };
        let mut hist = LatRow::histogram();
        for w in t.windows(2) {
            let ns = (w[1] - w[0]).as_nanos() as u64 / factor;
            hist.saturating_record(ns.max(1));
        }
        hist
    }

    /// The client of read_lat and atomic_lat: `run_iter_lat` for every size, then
    /// `ctx_close_connection`.
    fn req_lat(&mut self) -> Result<Vec<LatRow>, CliError> {
        let o = self.o.clone();
        let c = self.c;
        let mut rows = Vec::new();
        let mut tick = Ticker::new();
        let atomic = matches!(o.op, Op::FetchAdd | Op::CmpSwap);
        for &size in &o.sizes {
            let before = if atomic {
                Some(c.atomic_probe(&self.rem[..1], 1, 0, 1)?)
            } else {
                None
            };
            let h0 = Health::of(&c.dev, &c.qps);
            let t = c.run_lat_req(o.op, size, o.iters, &self.rem[0], &mut tick)?;
            let health = Health::of(&c.dev, &c.qps).since(&h0);
            let data = if let Some(before) = before {
                let after = c.atomic_probe(&self.rem[..1], 1, c.geo.bsize / 2, 1)?;
                let mut w = [0u8; 8];
                c.mr.read(c.geo.local(0) as usize, &mut w);
                let last = u64::from_ne_bytes(w);
                let want_last = if o.op == Op::FetchAdd {
                    after[0][0].wrapping_sub(1)
                } else {
                    before[0][0]
                };
                match check_atomics(o.op, 0, &before[0], &after[0], &[o.iters]) {
                    Err(e) => DataCheck::Failed(e),
                    Ok(()) if last != want_last => DataCheck::Failed(format!(
                        "the last atomic returned {last:#x}, expected {want_last:#x}"
                    )),
                    Ok(()) => DataCheck::Verified,
                }
            } else if self.peer_uroce {
                match check_area(c, c.geo.local(0), 0, &[(0, size)]) {
                    Ok(()) => DataCheck::Verified,
                    Err(e) => DataCheck::Failed(e),
                }
            } else {
                DataCheck::NotChecked("perftest's buffer holds random bytes")
            };
            rows.push(LatRow {
                size,
                iters: o.iters,
                hist: self.histogram(&t),
                health,
                data,
            });
        }
        self.ch.close(&self.my[0]).map_err(fail)?;
        Ok(rows)
    }

    /// The server of read_lat and atomic_lat only hosts the buffer: it goes straight to
    /// `ctx_close_connection`, whose handshake returns when the client is done, and prints
    /// nothing (as perftest's).
    fn req_lat_server(&mut self) -> Result<Vec<LatRow>, CliError> {
        eprintln!("uroce bench: waiting for the client to finish (the client measures)");
        self.ch.close(&self.my[0]).map_err(fail)?;
        Ok(Vec::new())
    }

    /// Both sides of send_lat: for every size, receives posted, a handshake, the ping-pong;
    /// then `ctx_close_connection`.
    fn send_lat(&mut self) -> Result<Vec<LatRow>, CliError> {
        let o = self.o.clone();
        let c = self.c;
        let mut rows = Vec::new();
        let mut tick = Ticker::new();
        for &size in &o.sizes {
            let initial = o.rx_depth.min(o.iters);
            c.post_initial_recvs(size, initial, false)?;
            self.hs0()?;
            let h0 = Health::of(&c.dev, &c.qps);
            let t = c.run_lat_send(size, o.iters, initial, self.client, &mut tick)?;
            let health = Health::of(&c.dev, &c.qps).since(&h0);
            let data = if self.peer_uroce {
                match check_area(c, c.geo.remote(0), 0, &[(0, size)]) {
                    Ok(()) => DataCheck::Verified,
                    Err(e) => DataCheck::Failed(e),
                }
            } else {
                DataCheck::NotChecked("perftest sends random bytes (lengths were checked)")
            };
            rows.push(LatRow {
                size,
                iters: o.iters,
                hist: self.histogram(&t),
                health,
                data,
            });
        }
        self.ch.close(&self.my[0]).map_err(fail)?;
        Ok(rows)
    }

    /// Both sides of write_lat, every size.
    fn lat(&mut self) -> Result<Vec<LatRow>, CliError> {
        let o = self.o.clone();
        let c = self.c;
        let mut rows = Vec::new();
        let mut tick = Ticker::new();
        let mut done: Vec<u64> = Vec::new();
        for &size in &o.sizes {
            let h0 = Health::of(&c.dev, &c.qps);
            let t = c.run_lat_write(size, o.iters, !self.client, &self.rem[0], &mut tick)?;
            let health = Health::of(&c.dev, &c.qps).since(&h0);
            let hist = self.histogram(&t);
            // What the peer wrote last: its buffer, zeroed at the start as perftest's, with
            // its count in the last byte, and the final counts of earlier sizes in theirs.
            let mut got = vec![0u8; size as usize];
            c.mr.read(c.geo.remote(0) as usize, &mut got);
            let last = o.iters as u8;
            let mut want = vec![0u8; size as usize];
            for &s in done.iter().chain([&size]) {
                if s <= size {
                    want[s as usize - 1] = last;
                }
            }
            let data = match got.iter().zip(&want).position(|(g, w)| g != w) {
                None => DataCheck::Verified,
                Some(i) => DataCheck::Failed(format!(
                    "{size} B: byte {i} of the peer's message is {:#04x}, expected {:#04x}",
                    got[i], want[i]
                )),
            };
            done.push(size);
            rows.push(LatRow {
                size,
                iters: o.iters,
                hist,
                health,
                data,
            });
        }
        Ok(rows)
    }
}

/// Runs `uroce bench`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    if args.threads > 1 {
        return threads::run(args, out);
    }
    let o = Opts::new(args)?;
    let client = args.host.is_some();
    let tcp_err = |what: &'static str| move |e: std::io::Error| fail(format!("{what}: {e}"));

    let stream = match &args.host {
        Some(h) => dial(h, args.port, Duration::from_secs(args.connect_timeout))?,
        None => {
            let l = listen(args.port)?;
            eprintln!(
                "uroce bench: listening on TCP port {} ({} {})",
                args.port,
                o.name(),
                if o.kind == Kind::Bw { "bw" } else { "lat" }
            );
            let (s, _) = l.accept().map_err(tcp_err("accept() failed"))?;
            s
        }
    };
    let tcp_local = netif::canonical(stream.local_addr().map_err(tcp_err("socket"))?.ip());
    let tcp_peer = netif::canonical(stream.peer_addr().map_err(tcp_err("socket"))?.ip());
    let dev_ip = match (args.dev_ip, args.gid_index) {
        (Some(ip), _) => netif::canonical(ip),
        (None, Some(x)) => gid_index_ip(tcp_local, x)?,
        (None, None) => tcp_local,
    };
    let mut ch = Channel::new(stream, client, o.dev.timeout).map_err(tcp_err("socket"))?;

    // exchange_versions, check_version_compatibility.
    let theirs = ch
        .exchange_versions()
        .map_err(tcp_err("exchanging versions"))?;
    let (ver, vnum, peer_uroce) = channel::parse_version(&theirs);
    if vnum < channel::MIN_PEER_VERSION {
        return Err(fail(format!(
            "the peer's perftest version {ver:?} is older than 5.70, which perftest {} does \
             not work with either",
            channel::VERSION
        )));
    }
    // check_sys_data, check_mtu.
    let (cycle, cl) = ch
        .check_sys_data(page_size(), cache_line_size())
        .map_err(tcp_err("exchanging page and cache line sizes"))?;
    let active = port_mtu(dev_ip);
    let mine = o.mtu.map_or(active, |m| m.bytes().min(active));
    let mtu_enum = ch
        .check_mtu(netif::mtu_enum(mine))
        .map_err(tcp_err("exchanging MTUs"))?;
    let mtu = Mtu::from_bytes(128 << mtu_enum).unwrap_or(Mtu::M1024);

    let geo = Geometry::new(o.qps, o.alloc_size, u64::from(cycle), u64::from(cl));
    let rx_depth = if o.test == Test::Send && (!client || o.kind == Kind::Lat) {
        o.rx_depth
    } else {
        1
    };
    let c = Ctx::open(
        dev_ip,
        o.dev,
        geo,
        o.op,
        o.tx_depth as u32 + 1,
        rx_depth as u32,
    )?;
    let pump = || c.pump();
    if o.dev.polled {
        ch.set_pump(Some(&pump)).map_err(tcp_err("socket"))?;
    }

    // The data: a known pattern where this side is the source (perftest fills random bytes).
    let source_local = match o.kind {
        Kind::Bw => client && matches!(o.op, Op::Write | Op::Send),
        // write_lat's buffer is zeroed (create_single_mr); both sides of send_lat send.
        Kind::Lat => o.op == Op::Send,
    };
    let source_remote = !client && matches!(o.op, Op::Read | Op::FetchAdd | Op::CmpSwap);
    for q in 0..o.qps {
        if source_local {
            c.mr.write(geo.local(q) as usize, &ctx::pattern(q, geo.bsize));
        }
        if source_remote {
            c.mr.write(geo.remote(q) as usize, &ctx::pattern(q, geo.bsize));
        }
    }

    let gid = netif::gid_of(dev_ip).octets();
    let my: Vec<Dest> = c
        .qps
        .iter()
        .enumerate()
        .map(|(q, qp)| Dest {
            lid: 0,
            out_reads: o.out_reads,
            qpn: qp.qpn(),
            psn: random_psn(q as u64),
            rkey: c.mr.rkey(),
            vaddr: c.addr(geo.remote(q as u64)),
            gid,
            srqn: 0,
        })
        .collect();
    let mut s = Session {
        o: &o,
        c: &c,
        ch,
        my,
        rem: Vec::new(),
        peer_uroce,
        client,
        report_gbits: args.report_gbits,
    };
    s.establish(tcp_peer, mtu)?;
    let peer = if peer_uroce {
        "uroce".to_string()
    } else {
        format!("perftest {ver}")
    };
    for d in &s.my {
        print_dest("local", d);
    }
    for d in &s.rem {
        print_dest("remote", d);
    }
    eprintln!(
        "uroce bench: {} {} {} with {peer} at {}, device {dev_ip} ({}, {} progress), RC, {} \
         QP(s), MTU {}, cycle buffer {cycle}, cache line {cl}",
        if client { "client" } else { "server" },
        o.name(),
        if o.kind == Kind::Bw { "bw" } else { "lat" },
        s.rem[0].gid_addr(),
        o.dev.backend.name(),
        if o.dev.polled { "polled" } else { "thread" },
        o.qps,
        mtu.bytes()
    );

    let mut rep = Reporter::new(
        out,
        args.json,
        Context {
            test: o.name(),
            kind: if o.kind == Kind::Bw { "bw" } else { "lat" },
            role: if client { "client" } else { "server" },
            peer,
            backend: o.dev.backend.name(),
            progress: if o.dev.polled { "polled" } else { "thread" },
            sq_poll: c.dev.driver_features().sq_poll,
            tx_thread: c.dev.driver_features().tx_thread,
            qps: o.qps as usize,
            mtu: mtu.bytes(),
            report_gbits: args.report_gbits,
        },
    );
    let mut failures = Vec::new();
    match o.kind {
        Kind::Lat => {
            let rows = match o.op {
                Op::Write => s.lat()?,
                Op::Send => s.send_lat()?,
                _ if client => s.req_lat()?,
                _ => s.req_lat_server()?,
            };
            for r in rows {
                if let DataCheck::Failed(e) = &r.data {
                    failures.push(e.clone());
                }
                rep.lat(&r)?;
            }
        }
        Kind::Bw => {
            let rows = if client {
                s.bw_client()?
            } else if o.test == Test::Send {
                s.send_server()?
            } else {
                s.rdma_server()?
            };
            for r in &rows {
                if let DataCheck::Failed(e) = &r.data {
                    failures.push(e.clone());
                }
                if let Some(v) = r.health.verdict(r.size) {
                    eprintln!("uroce bench: {v}");
                }
                rep.bw(r)?;
            }
        }
    }
    rep.finish()?;
    if let Some(l) = crate::commands::steer_line(&c.dev) {
        eprintln!("{l}");
    }
    if !failures.is_empty() {
        return Err(fail(format!("data check failed: {}", failures.join("; "))));
    }
    Ok(ExitCode::SUCCESS)
}

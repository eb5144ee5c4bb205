//! The device: an engine, a socket back end and the progress that moves data between them.
//!
//! Locking: the engine and the back end sit behind one mutex. Application calls (post, poll)
//! take it briefly and send what the engine has to send from the calling thread, so a post
//! costs no thread wake-up. In [`Progress::Thread`] mode a progress thread waits (without the
//! lock) for the socket, a wake-up event or the engine's next timer, then takes the lock to
//! receive, fire timers and transmit. In [`Progress::Polled`] mode there is no thread: polling
//! a CQ does that work, for the lowest latency when the application busy-polls.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use uroce_proto::{Config, DeviceCounters, Instant};
use uroce_wire::{IcrcContext, Ipv4IdMode};

use crate::driver::{
    faults::{Faults, FaultyBackend},
    syscall::SyscallBackend,
    uring::UringBackend,
    Backend, BackendKind, DriverFeatures, DriverStats,
};
use crate::engine_lock::{EngineLock, HAND_OVER, PATIENCE};
use crate::{Error, Result};

/// Who drives progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Progress {
    /// A progress thread per device (default).
    #[default]
    Thread,
    /// No thread: polling a CQ receives, fires timers and transmits.
    Polled,
}

/// How to open a device.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Local address to bind.
    pub local_ip: IpAddr,
    /// UDP port (4791; other values only for tests, since RoCE peers always send to 4791).
    pub port: u16,
    /// Socket back end.
    pub backend: BackendKind,
    /// Progress mode.
    pub progress: Progress,
    /// Write every sent and received RoCE packet to this pcap file.
    pub pcap: Option<PathBuf>,
    /// Accept IPv4 packets whose ICRC verifies only for an unknown IP Identification (what the
    /// kernel's rxe sends), at a 2^-16 false-accept chance; see `docs/ARCHITECTURE.md`.
    pub accept_any_ipv4_id: bool,
    /// Impair outgoing packets (tests over real sockets); `UROCE_FAULTS` by default.
    pub faults: Option<Faults>,
    /// Share the address with other uroce engines (processes, or devices of this one): join
    /// its `SO_REUSEPORT` group, take a slot of QPNs and have the kernel steer each packet to
    /// the engine owning its DestQP (`steer.rs`). Off by default (the device owns the address);
    /// `UROCE_STEER=1` turns it on.
    pub steer: bool,
    /// Where to report asynchronous events (dropped when `None`).
    pub async_events: Option<crate::AsyncEvents>,
    /// How long a responder may hold an ACK to SEND/WRITE so that it leaves together with the
    /// application's reply (proto's `Config::ack_delay`; `None`: zero, ACK at once;
    /// `UROCE_ACK_DELAY_US` sets it). For a busy-polling ping-pong: the reply is posted a few
    /// microseconds after the poll that received the request, and the ACK then rides in the
    /// same `sendmsg` (a GSO batch of two) instead of costing a send of its own on the
    /// critical path. In polled mode a held ACK leaves only from a poll: the application must
    /// keep polling for this long after its last receive (as it must anyway to answer a
    /// retransmission). Keep it far below the peers' local ACK timeout.
    pub ack_delay: Option<Duration>,
    /// io_uring back end: have a kernel thread take the ring's submissions (`SQPOLL`),
    /// polling for this long after each before it sleeps (`None`: off, the default;
    /// `UROCE_SQPOLL_MS` sets it). For a device that sends bulk data with a progress thread:
    /// the kernel's share of each send then runs on another CPU than the engine, and a
    /// 1 MiB WRITE stream moves more (docs/perf/JOURNAL.md, "A kernel thread for the
    /// sends"). The polling costs CPU time; a device that mostly receives, or waits for
    /// single small messages, is better off without it.
    pub sq_poll: Option<Duration>,
    /// io_uring back end: hand the sends to a thread of the back end's own, which makes them
    /// with `sendmsg` while the progress thread builds the next batch (off by default;
    /// `UROCE_TXTHREAD=1` sets it; `sq_poll` is then not used). Like `sq_poll`, for a device
    /// that streams bulk data out: the kernel's share of the sends runs on another CPU, and
    /// the thread sleeps when there is nothing to send instead of polling
    /// (docs/perf/JOURNAL.md, "A user-space send thread").
    pub tx_thread: bool,
    /// io_uring back end, polled progress, a specific IPv4 or IPv6 (not link-local) address:
    /// send to and receive from each peer through a UDP socket connected to it (bound beside
    /// the device's socket, to its address and port), whose route the kernel keeps instead
    /// of looking it up per datagram each way (off by default; `UROCE_CONNECTED_TX=1` sets
    /// it). On IPv4 each packet's ICRC is resealed for the socket's ID counter, learned from a
    /// looped-back transmit timestamp (docs/perf/JOURNAL.md, "Latency: a connected send
    /// path"); IPv6 has no ID.
    pub connected_tx: bool,
    /// Send each packet of a multi-packet RC RDMA WRITE as its own WRITE ONLY, so that WRITE
    /// streams batch into full GSO sends (proto's `Config::split_writes`, which says what
    /// changes on the wire). On by default; `UROCE_SPLIT_WRITES=0` frames WRITEs as
    /// FIRST/MIDDLE/LAST, as rxe and NICs do.
    pub split_writes: bool,
    /// Ask for a READ of a few packets with one request per packet, whose READ RESPONSE
    /// ONLYs batch into full GSO sends (proto's `Config::split_reads`, which says when). On by
    /// default; `UROCE_SPLIT_READS=0` asks with one request per READ, as rxe and NICs do.
    pub split_reads: bool,
}

impl DeviceConfig {
    /// Defaults for `local_ip`: port 4791, io_uring back end, progress thread, capture from
    /// `UROCE_PCAP` if set.
    pub fn new(local_ip: IpAddr) -> Self {
        DeviceConfig {
            local_ip,
            port: uroce_wire::ROCE_UDP_PORT,
            backend: BackendKind::default(),
            progress: Progress::default(),
            pcap: std::env::var_os("UROCE_PCAP").map(PathBuf::from),
            accept_any_ipv4_id: false,
            faults: None,
            steer: env_flag("UROCE_STEER"),
            async_events: None,
            ack_delay: std::env::var("UROCE_ACK_DELAY_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_micros),
            sq_poll: std::env::var("UROCE_SQPOLL_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
            tx_thread: env_flag("UROCE_TXTHREAD"),
            connected_tx: env_flag("UROCE_CONNECTED_TX"),
            split_writes: env_flag_default_on("UROCE_SPLIT_WRITES"),
            split_reads: env_flag_default_on("UROCE_SPLIT_READS"),
        }
    }
}

/// Whether the environment variable `name` turns an option on: set, not empty, not "0".
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether an option that is on by default stays on: unless `name` is set to "0".
fn env_flag_default_on(name: &str) -> bool {
    std::env::var(name).map_or(true, |v| v != "0")
}

/// Writes both directions of traffic to a pcap file.
struct Capture {
    writer: uroce_capture::pcap::PcapWriter<std::io::BufWriter<std::fs::File>>,
    solver: uroce_wire::Ipv4IdSolver,
}

impl Capture {
    /// Records one packet; `ipv4_id` is the Identification it has on the wire (0 for a lone
    /// packet, `i` for segment `i` of a GSO batch), or `None` for a received packet, whose ID a
    /// UDP socket does not see: it is then solved from the ICRC, so that the file holds the
    /// packet as it was on the wire and its ICRC verifies (a corrupted packet keeps ID 0).
    fn record(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        ipv4_id: Option<u16>,
        bytes: &[u8],
    ) {
        let Some(mut ctx) = IcrcContext::between(src, dst, ipv4_id.unwrap_or(0)) else {
            return;
        };
        if ipv4_id.is_none() {
            if let Ok(uroce_wire::IcrcCheck::SolvedIpv4Id(id)) =
                ctx.verify_with(bytes, Ipv4IdMode::Solve, &mut self.solver)
            {
                ctx = ctx.with_ipv4_id(id);
            }
        }
        let ts = Duration::from_nanos(now.as_nanos());
        // Capture is best effort: a full disk must not stop the data path.
        let _ = self.writer.write_roce(ts, &ctx, bytes);
    }
}

pub(crate) struct Inner {
    pub eng: uroce_proto::Device,
    backend: Box<dyn Backend>,
    capture: Option<Capture>,
    stats: Option<crate::stats::StatsFile>,
    pub(crate) channels: HashMap<u32, Arc<crate::verbs::ChannelShared>>,
    async_events: Option<Arc<crate::events::EventsShared>>,
    local: SocketAddr,
    pub(crate) io_errors: u64,
    /// Calls whose packets were left for the busy progress thread to send
    /// ([`Device::sends_left_to_progress`]).
    pub(crate) left_to_progress: u64,
    /// Set on a steered device: drops packets for other engines' QPs before the engine.
    steer: Option<Arc<crate::steer::SteerShared>>,
    /// Back-end receive budgets one pump takes: [`RX_ROUNDS`], or one when busy-polled (a
    /// round that finds nothing costs a receive syscall between a datagram and the reply the
    /// application is about to post; the next poll follows at once).
    rx_rounds: usize,
    /// The latest `now` given to the engine (nanoseconds since the device's epoch).
    last_now: u64,
}

/// `now`, or `*last` if that is later; `*last` becomes the result.
fn not_before(last: &mut u64, now: Instant) -> Instant {
    *last = (*last).max(now.as_nanos());
    Instant::from_nanos(*last)
}

/// Most back-end receive budgets one pump takes in before timers and transmission (syscall:
/// 64 datagrams each, io_uring: 32 buffers each), so a flood cannot starve them.
const RX_ROUNDS: usize = 16;

/// Most transmits (datagrams or GSO batches) one pump sends before receiving again. Without a
/// bound a 1 MiB SEND went out whole (256 `sendmsg` calls on the syscall back end, ~0.5 s in
/// the TCG guest of scripts/rxe/netem.sh) while the peer's retransmissions waited for their
/// ACK: the peer ran out of retry_cnt × ACK timeout (8 × 67 ms) and failed with
/// RETRY_EXC_ERR. The rest goes out on the next pump, after receiving.
const TX_BUDGET: usize = 64;

impl Inner {
    /// `now` as the engine may take it: never before the last instant it was given (the
    /// engine's call contract), whatever the cores' counters say.
    fn after(&mut self, now: Instant) -> Instant {
        not_before(&mut self.last_now, now)
    }

    /// Receives what is waiting, fires due timers, transmits, and signals CQ events.
    pub(crate) fn pump(&mut self, now: Instant) {
        let Inner {
            eng,
            backend,
            capture,
            local,
            io_errors,
            steer,
            rx_rounds,
            ..
        } = self;
        let local = *local;
        // Take in what is already received (up to RX_ROUNDS back-end budgets) before firing
        // timers: after the thread was descheduled, the ACK that answers an expired ACK timer
        // may wait behind more than one budget of packets, and firing first would count a
        // spurious timeout (one of retry_cnt) and retransmit the window go-back-N.
        for _ in 0..*rx_rounds {
            // Steering and capture look at every datagram's bytes: the copying receive.
            let r = if steer.is_none() && capture.is_none() {
                backend.recv_ready_placing(eng, now)
            } else {
                backend.recv_ready(&mut |from, to, bytes| {
                    if steer.as_ref().is_some_and(|s| !s.admit(bytes)) {
                        return;
                    }
                    if let Some(c) = capture.as_mut() {
                        c.record(now, from, SocketAddr::new(to, local.port()), None, bytes);
                    }
                    eng.handle_datagram(now, from, to, bytes);
                })
            };
            match r {
                Ok(n) if n > 0 || backend.rx_pending() => {}
                Ok(_) => break,
                Err(_) => {
                    *io_errors += 1;
                    break;
                }
            }
        }
        if eng.poll_timeout().is_some_and(|t| t <= now) {
            eng.handle_timeout(now);
        }
        self.transmit(now);
        if let Some(f) = self.stats.as_mut().filter(|f| f.due(now)) {
            f.maybe_write(now, self.local, &self.eng, &self.backend.stats());
        }
    }

    /// Sends everything the engine has ready and raises CQ events.
    pub(crate) fn transmit(&mut self, now: Instant) {
        // The engine writes each transmit straight into the back end's send buffer. Nothing
        // to send (every pass of a busy poll but one): no send buffer is taken.
        let budget = if self.eng.has_transmit() {
            TX_BUDGET
        } else {
            0
        };
        for _ in 0..budget {
            let Ok(buf) = self.backend.tx_buffer() else {
                self.io_errors += 1;
                break;
            };
            let Some(t) = self.eng.poll_transmit(now, buf) else {
                break;
            };
            if let Some(c) = self.capture.as_mut() {
                if let Some(data) = buf.get(..t.len) {
                    let seg = t.segment_size.unwrap_or(t.len).max(1);
                    for (i, p) in data.chunks(seg).enumerate() {
                        c.record(now, self.local, t.dst, Some(i as u16), p);
                    }
                }
            }
            if self
                .backend
                .send_written(t.dst, t.len, t.segment_size)
                .is_err()
            {
                self.io_errors += 1;
            }
        }
        if self.backend.flush().is_err() {
            self.io_errors += 1;
        }
        while let Some(cq) = self.eng.poll_cq_event() {
            if let Some(ch) = self.channels.get(&cq.0) {
                ch.notify(cq.0);
            }
        }
        while let Some(e) = self.eng.poll_async_event() {
            if let Some(a) = &self.async_events {
                a.push(e);
            }
        }
    }
}

pub(crate) struct Shared {
    inner: EngineLock<Inner>,
    /// The engine's clock: the CPU's invariant time-stamp counter where there is one (quanta
    /// falls back to the OS clock otherwise). A read took 9.8 ns here against 25.5 ns for
    /// `std::time::Instant`, and a busy-polled device reads it on every pass and every post.
    clock: quanta::Clock,
    epoch: quanta::Instant,
    wake: EventFd,
    stop: AtomicBool,
    /// Nanoseconds (since epoch) the progress thread sleeps until; a call that makes the engine
    /// want an earlier wake-up writes the event fd.
    sleeping_until: AtomicU64,
    /// The progress thread's last pass left work (received data, transmits or a due timer):
    /// it runs another pass right after it releases the lock, and sends what a caller
    /// queued meanwhile. Written under the lock at the end of each pass, so a caller holding
    /// the lock sees the state the thread will act on.
    progress_busy: AtomicBool,
    pub(crate) polled: bool,
    pub(crate) local: SocketAddr,
}

impl Shared {
    pub(crate) fn now(&self) -> Instant {
        let since = self.clock.now().saturating_duration_since(self.epoch);
        Instant::from_nanos(since.as_nanos() as u64)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Locks the engine and reads the clock, in that order, so that the engine's `now` never
    /// goes backwards (its call contract). Reading the clock first broke it: a thread that
    /// then waited for the lock (or was descheduled) while another thread handled ACKs armed
    /// the ACK timer from a stale instant, and the next pass fired it at once: a spurious ACK
    /// timeout, the window resent, all duplicates at the peer.
    pub(crate) fn lock_now(&self) -> (MutexGuard<'_, Inner>, Instant) {
        let mut g = self.lock();
        let now = g.after(self.now());
        (g, now)
    }

    /// [`Shared::lock_now`] for the progress thread, whose waits are not the application's
    /// ([`crate::LockWaits`]).
    fn lock_now_progress(&self) -> (MutexGuard<'_, Inner>, Instant) {
        let mut g = self.inner.lock_progress();
        let now = g.after(self.now());
        (g, now)
    }

    /// Wakes the progress thread if the engine now wants a timer earlier than it sleeps
    /// until, or the back end holds received data its descriptor no longer signals.
    fn wake_if_needed(&self, g: &Inner) {
        let early = g
            .eng
            .poll_timeout()
            .is_some_and(|t| t.as_nanos() < self.sleeping_until.load(Ordering::Acquire));
        // A send path may have taken received data off the back end's descriptor, which
        // then no longer wakes the progress thread.
        if early || g.backend.rx_pending() || g.eng.has_transmit() {
            let _ = self.wake.write(1);
        }
    }

    /// Runs `f` on the engine, then transmits (and in polled mode receives) and makes sure the
    /// progress thread wakes in time for any new timer.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Inner, Instant) -> T) -> T {
        let (mut g, now) = self.lock_now();
        let r = f(&mut g, now);
        if self.polled {
            // Send what `f` made first (a post's packets, and a held ACK with them), then
            // receive: the receive syscall would otherwise delay the send.
            g.transmit(now);
            g.pump(now);
        } else if !self.progress_busy.load(Ordering::Acquire) {
            g.transmit(now);
            self.wake_if_needed(&g);
        } else if g.eng.has_transmit() {
            g.left_to_progress += 1;
        }
        // Else the progress thread is busy and sends what `f` queued in its next pass, which
        // begins as soon as this lock is released; nothing to wake, it does not sleep. Sent
        // from here, the packets would only cost the caller's core a send that one thread
        // makes anyway (both take turns at the engine), and a post the time of that send
        // (docs/perf/JOURNAL.md, "The progress thread sends while it is busy").
        r
    }
}

/// An open uroce device: one local address, one socket, one engine.
pub struct Device {
    pub(crate) shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    steer: Option<Steered>,
}

/// A steered device's membership and the thread that checks it.
struct Steered {
    m: Arc<crate::membership::Membership>,
    checker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("local", &self.shared.local)
            .finish()
    }
}

impl Device {
    /// Opens a device on `cfg.local_ip:cfg.port`.
    pub fn open(cfg: DeviceConfig) -> Result<Device> {
        let local = SocketAddr::new(cfg.local_ip, cfg.port);
        let mut claimed = if cfg.steer {
            Some(crate::membership::claim(local)?)
        } else {
            None
        };
        let mut membership = None;
        let mut socket = |gro: bool| -> Result<_> {
            let (sock, features) = crate::sys::roce_socket_in(local, gro, cfg.steer)?;
            if let Some((dir, slot)) = claimed.take() {
                membership = Some(crate::membership::Membership::new(
                    dir,
                    slot,
                    sock.try_clone()?,
                    local,
                )?);
            }
            Ok((sock, features))
        };
        let backend: Box<dyn Backend> = match cfg.backend {
            BackendKind::Syscall => {
                let (sock, features) = socket(false)?;
                Box::new(SyscallBackend::new(sock, features.gro))
            }
            BackendKind::Uring => {
                let (sock, features) = socket(true)?;
                let opts = crate::driver::uring::Options {
                    sq_poll: cfg.sq_poll,
                    tx_thread: cfg.tx_thread,
                    connected_tx: cfg.connected_tx,
                    ..Default::default()
                };
                match UringBackend::with_options(sock, features.gro, opts) {
                    Ok(b) => Box::new(b),
                    Err((sock, e)) => {
                        tracing::warn!(
                            "io_uring unusable ({e}): {local} uses the syscall back end"
                        );
                        Box::new(SyscallBackend::new(sock, features.gro))
                    }
                }
            }
        };
        let faults = match cfg.faults {
            Some(f) => Some(f),
            None => Faults::from_env().map_err(Error::Config)?,
        };
        let backend: Box<dyn Backend> = match faults {
            Some(f) => {
                tracing::warn!(?f, "injecting faults into outgoing packets");
                Box::new(FaultyBackend::new(backend, f))
            }
            None => backend,
        };
        let mut backend = backend;
        backend.set_busy_poll(cfg.progress == Progress::Polled);
        if cfg.progress == Progress::Thread {
            // Only the progress thread arms receives (it claims them when it starts).
            backend.set_receive_owner(None);
        }
        let features = backend.features();
        let membership = membership.map(Arc::new);
        let mut ecfg = Config::new(cfg.local_ip);
        ecfg.udp_port = cfg.port;
        if let Some(m) = &membership {
            (ecfg.first_qpn, ecfg.last_qpn) = crate::steer::qpn_range(m.shared.slot);
        }
        ecfg.max_segments = backend.max_segments();
        if cfg.accept_any_ipv4_id {
            ecfg.ipv4_id_mode = Ipv4IdMode::Solve;
        }
        ecfg.ack_delay = cfg.ack_delay.unwrap_or_default();
        ecfg.split_writes = cfg.split_writes;
        ecfg.split_reads = cfg.split_reads;
        let capture = match &cfg.pcap {
            Some(p) => {
                let f = std::fs::File::create(p)?;
                let writer = uroce_capture::pcap::PcapWriter::new(std::io::BufWriter::new(f))
                    .map_err(|e| Error::Config(format!("pcap {}: {e}", p.display())))?;
                Some(Capture {
                    writer,
                    solver: uroce_wire::Ipv4IdSolver::default(),
                })
            }
            None => None,
        };
        let wait = backend.wait_fd()?;
        let clock = quanta::Clock::new();
        let shared = Arc::new(Shared {
            inner: EngineLock::new(Inner {
                eng: uroce_proto::Device::new(ecfg),
                backend,
                capture,
                stats: crate::stats::StatsFile::new(local),
                channels: HashMap::new(),
                async_events: cfg.async_events.as_ref().map(|a| a.shared.clone()),
                local,
                io_errors: 0,
                left_to_progress: 0,
                steer: membership.as_ref().map(|m| m.shared.clone()),
                rx_rounds: if cfg.progress == Progress::Polled {
                    1
                } else {
                    RX_ROUNDS
                },
                last_now: 0,
            }),
            clock: clock.clone(),
            epoch: clock.now(),
            wake: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            stop: AtomicBool::new(false),
            sleeping_until: AtomicU64::new(0),
            progress_busy: AtomicBool::new(false),
            polled: cfg.progress == Progress::Polled,
            local,
        });
        if let Some(m) = &membership {
            // Nothing runs the engine yet: learning our group index pumps it from here.
            let s = shared.clone();
            m.establish(&move || {
                let (mut g, now) = s.lock_now();
                g.pump(now);
            })?;
        }
        let thread = match cfg.progress {
            Progress::Thread => {
                let s = shared.clone();
                Some(
                    std::thread::Builder::new()
                        .name(format!("uroce-{}", cfg.local_ip))
                        .spawn(move || progress_loop(&s, wait))?,
                )
            }
            Progress::Polled => None,
        };
        tracing::info!(
            %local,
            backend = features.backend.name(),
            multishot_recv = features.multishot_recv,
            gro = features.gro,
            gso = features.gso,
            progress = ?cfg.progress,
            "device open"
        );
        let steer = match membership {
            Some(m) => {
                let s = shared.clone();
                let polled = cfg.progress == Progress::Polled;
                // In polled mode nothing else receives the checker's probes.
                let pump = Box::new(move || {
                    if polled {
                        let (mut g, now) = s.lock_now();
                        g.pump(now);
                    }
                });
                let checker = Some(m.spawn_checker(pump)?);
                tracing::info!(
                    %local,
                    slot = m.shared.slot,
                    index = m.shared.index.load(Ordering::Relaxed),
                    dir = %m.dir().display(),
                    "sharing the address: QPN-steered receive"
                );
                Some(Steered { m, checker })
            }
            None => None,
        };
        Ok(Device {
            shared,
            thread,
            steer,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Device counters.
    pub fn counters(&self) -> DeviceCounters {
        self.shared.lock().eng.counters()
    }

    /// How often and how long the application's calls waited for the engine lock, which the
    /// progress thread holds while it receives and sends (thread progress; in polled mode
    /// only application threads contend). Read without the lock.
    pub fn lock_waits(&self) -> crate::LockWaits {
        self.shared.inner.waits()
    }

    /// The device's limits (`ibv_query_device`); verbs beyond them fail with
    /// [`uroce_proto::Error::Limit`].
    pub fn query_device(&self) -> uroce_proto::DeviceAttr {
        self.shared.lock().eng.query_device()
    }

    /// How many verbs objects the engine holds now (its table sizes).
    pub fn usage(&self) -> uroce_proto::Usage {
        self.shared.lock().eng.usage()
    }

    /// Socket errors seen by the driver (sends that failed for reasons other than a full
    /// buffer).
    pub fn io_errors(&self) -> u64 {
        let g = self.shared.lock();
        g.io_errors + g.backend.stats().tx_errors
    }

    /// What the driver does (back end, multishot receive, GRO, GSO).
    pub fn driver_features(&self) -> DriverFeatures {
        self.shared.lock().backend.features()
    }

    /// Tells the progress thread, if any, to stop, wakes it and waits for it: it sends what
    /// it was left on its way out. `Err` if it panicked.
    fn stop_progress_thread(&mut self) -> std::thread::Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.shared.wake.write(1);
        self.thread.take().map_or(Ok(()), |t| t.join())
    }

    /// How many calls (posts, polls) on this device left the packets they made for the busy
    /// progress thread to send in its next pass instead of sending them on the caller's
    /// thread (thread progress only).
    pub fn sends_left_to_progress(&self) -> u64 {
        self.shared.lock().left_to_progress
    }

    /// The driver's counters (receives, GRO super-buffers, GSO sends, ...).
    pub fn driver_stats(&self) -> DriverStats {
        self.shared.lock().backend.stats()
    }

    /// Where a steered device (`DeviceConfig::steer`) sits in its address's group, and what
    /// steering did; `None` when the device owns its address.
    pub fn steer_info(&self) -> Option<crate::steer::SteerInfo> {
        self.steer.as_ref().map(|s| {
            let sh = &s.m.shared;
            crate::steer::SteerInfo {
                slot: sh.slot,
                index: sh.index.load(Ordering::Relaxed),
                qpns: crate::steer::qpn_range(sh.slot),
                counters: sh.counters(),
            }
        })
    }

    /// Runs progress once (useful in polled mode without polling a CQ).
    pub fn progress(&self) {
        let (mut g, now) = self.shared.lock_now();
        g.pump(now);
        if !self.shared.polled {
            // This thread may have left the receive for the progress thread to re-arm.
            self.shared.wake_if_needed(&g);
        }
    }

    /// Allocates a protection domain.
    pub fn alloc_pd(&self) -> crate::ProtectionDomain {
        let h = self.shared.lock().eng.alloc_pd();
        crate::ProtectionDomain {
            shared: self.shared.clone(),
            h,
        }
    }

    /// Creates a completion queue of `depth` entries, optionally reporting events on `channel`.
    pub fn create_cq(
        &self,
        depth: usize,
        channel: Option<&crate::CompletionChannel>,
    ) -> Result<crate::CompletionQueue> {
        let mut g = self.shared.lock();
        let h = g.eng.create_cq(depth)?;
        if let Some(ch) = channel {
            g.channels.insert(h.0, ch.shared.clone());
        }
        Ok(crate::CompletionQueue {
            shared: self.shared.clone(),
            h,
        })
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(st) = self.steer.as_mut() {
            st.m.stop();
            if let Some(t) = st.checker.take() {
                t.thread().unpark();
                let _ = t.join();
            }
            if let Err(e) = st.m.leave() {
                tracing::warn!("leaving the steering group: {e}");
            }
        }
        let _ = self.stop_progress_thread();
        // Flush the capture file, remove the counters file.
        let mut g = self.shared.lock();
        g.capture = None;
        g.stats = None;
    }
}

/// The progress thread: wait for the socket, a wake-up or the next timer; then pump.
fn progress_loop(s: &Shared, wait: OwnedFd) {
    s.lock()
        .backend
        .set_receive_owner(Some(std::thread::current().id()));
    while !s.stop.load(Ordering::Acquire) {
        // Threads that have waited long for the lock get it before the next pass
        // (engine_lock.rs: std's Mutex would give it back to this thread).
        if s.inner.waited_longer_than(PATIENCE) {
            s.inner.hand_over(HAND_OVER);
        }
        let until = {
            let (mut g, now) = s.lock_now_progress();
            // Sleep at most 100 ms so a stop request is seen even without a wake-up. The
            // deadline is published under the lock, so a call that arms an earlier timer sees
            // it and wakes us.
            let cap = now.as_nanos() + 100_000_000;
            g.pump(now);
            // Received data held by the back end, or transmits left over from the budget.
            let until = if g.backend.rx_pending() || g.eng.has_transmit() {
                now.as_nanos()
            } else {
                g.eng.poll_timeout().map_or(cap, |t| t.as_nanos().min(cap))
            };
            s.sleeping_until.store(until, Ordering::Release);
            s.progress_busy
                .store(until <= now.as_nanos(), Ordering::Release);
            until
        };
        let now2 = s.now().as_nanos();
        if until <= now2 {
            continue;
        }
        let ms = (until - now2).div_ceil(1_000_000).min(100) as u16;
        let mut fds = [
            PollFd::new(wait.as_fd(), PollFlags::POLLIN),
            PollFd::new(s.wake.as_fd(), PollFlags::POLLIN),
        ];
        let _ = poll(&mut fds, PollTimeout::from(ms));
        if fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            let _ = s.wake.read();
        }
    }
    // Callers send for themselves from now on; what one queued while this thread was busy
    // goes out now rather than wait for the next call.
    let (mut g, now) = s.lock_now_progress();
    s.progress_busy.store(false, Ordering::Release);
    g.transmit(now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Access, Connect, Payload, QpCap, QpType, SendOp, SendWr};
    use std::sync::mpsc;

    #[test]
    fn the_engines_now_never_goes_back() {
        let mut last = 0;
        let got: Vec<u64> = [5u64, 9, 7, 9, 12, 3]
            .into_iter()
            .map(|t| not_before(&mut last, Instant::from_nanos(t)).as_nanos())
            .collect();
        assert_eq!(got, [5, 9, 9, 9, 12, 12]);
    }

    /// Stops `dev`'s progress thread (as `Drop` does) and lets it run again later.
    fn stop_progress(dev: &mut Device) {
        assert!(dev.thread.is_some(), "a progress thread to stop");
        dev.stop_progress_thread().unwrap();
        dev.shared.stop.store(false, Ordering::Release);
    }

    /// Starts a progress thread on `dev`, told to stop at once if `stop`.
    fn start_progress(dev: &mut Device, stop: bool) {
        dev.shared.stop.store(stop, Ordering::Release);
        let s = dev.shared.clone();
        let wait = dev.shared.lock().backend.wait_fd().unwrap();
        dev.thread = Some(std::thread::spawn(move || progress_loop(&s, wait)));
    }

    /// A device on `ip` with `progress` and an RC QP connected (`Connect` returned) to a
    /// plain socket on `peer_ip`, which never answers, and a WRITE of 8 bytes to post (it
    /// holds the region).
    fn write_to_a_socket(
        ip: &str,
        progress: Progress,
        peer_ip: &str,
    ) -> (
        Device,
        crate::QueuePair,
        std::net::UdpSocket,
        Connect,
        impl Fn(u64) -> SendWr,
    ) {
        let mut cfg = DeviceConfig::new(ip.parse().unwrap());
        cfg.progress = progress;
        let dev = Device::open(cfg).unwrap();
        let pd = dev.alloc_pd();
        let mr = pd.reg_mr(0x10_0000, 4096, Access::from_bits(0xF)).unwrap();
        let cq = dev.create_cq(16, None).unwrap();
        let qp = pd
            .create_qp(QpType::Rc, &cq, &cq, None, QpCap::default())
            .unwrap();
        let peer = std::net::UdpSocket::bind((peer_ip, 4791)).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let c = Connect::new(peer_ip.parse().unwrap(), 0x11, 1, 1);
        qp.connect(&c).unwrap();
        let wr = move |id| {
            let op = SendOp::RdmaWrite {
                remote_addr: 0,
                rkey: 1,
            };
            SendWr::new(id, op, Payload::Sge(mr.sge(0, 8)))
        };
        (dev, qp, peer, c, wr)
    }

    /// The opcode and PSN of the next packet `peer` receives (an RC WRITE ONLY is 0x0A).
    fn next_packet(peer: &std::net::UdpSocket) -> (u8, u32) {
        let mut buf = [0u8; 2048];
        let n = peer.recv(&mut buf).expect("a packet within 10 s");
        let bth = uroce_wire::headers::Bth::new_checked(&buf[..n]).expect("a BTH");
        (bth.opcode(), bth.psn())
    }

    #[test]
    fn a_post_while_the_progress_thread_is_busy_is_left_to_that_thread() {
        let (mut dev, qp, peer, _, wr) =
            write_to_a_socket("127.0.56.1", Progress::Thread, "127.0.56.2");
        // The test publishes what the thread would: it is stopped, so nobody else sends.
        stop_progress(&mut dev);
        qp.post_send(wr(1)).unwrap();
        assert_eq!(dev.sends_left_to_progress(), 0, "idle: the caller sends");
        assert!(!dev.shared.lock().eng.has_transmit());
        assert_eq!(next_packet(&peer), (0x0A, 1));

        dev.shared.progress_busy.store(true, Ordering::Release);
        qp.post_send(wr(2)).unwrap();
        assert_eq!(dev.sends_left_to_progress(), 1, "busy: left to the thread");
        assert!(dev.shared.lock().eng.has_transmit(), "queued, not sent");
        // The thread's next pass sends it.
        start_progress(&mut dev, false);
        assert_eq!(next_packet(&peer), (0x0A, 2));
    }

    #[test]
    fn a_progress_thread_that_stops_sends_what_was_left_to_it() {
        let (mut dev, qp, peer, _, wr) =
            write_to_a_socket("127.0.56.3", Progress::Thread, "127.0.56.4");
        stop_progress(&mut dev);
        dev.shared.progress_busy.store(true, Ordering::Release);
        qp.post_send(wr(1)).unwrap();
        assert_eq!(dev.sends_left_to_progress(), 1);
        // Told to stop before its first pass: on its way out it sends what it was left.
        start_progress(&mut dev, true);
        dev.thread.take().unwrap().join().unwrap();
        assert_eq!(next_packet(&peer), (0x0A, 1));
        assert!(!dev.shared.progress_busy.load(Ordering::Acquire));
        assert!(!dev.shared.lock().eng.has_transmit());
    }

    /// A post that waited for the engine's lock arms the ACK timer from when it got the
    /// lock, not from before: another thread may have run the engine meanwhile, and a timer
    /// armed from the past fired at once (a spurious ACK timeout, the window resent).
    #[test]
    fn a_post_that_waited_for_the_lock_arms_the_ack_timer_from_then() {
        let (dev, qp, _peer, c, wr) =
            write_to_a_socket("127.0.41.1", Progress::Polled, "127.0.41.2");
        let ack_timeout = uroce_proto::time::ack_timeout(c.timeout).unwrap();
        let (ready, go) = mpsc::channel();
        let held = dev.shared.lock();
        let wr = wr(1);
        let poster = std::thread::scope(|s| {
            let h = s.spawn(|| {
                ready.send(()).unwrap();
                qp.post_send(wr)
            });
            go.recv().unwrap();
            // The poster is at (or about to block on) the lock: keep it there a while.
            std::thread::sleep(Duration::from_millis(100));
            let released = dev.shared.now();
            drop(held);
            (h.join().unwrap(), released)
        });
        let (posted, released) = poster;
        posted.unwrap();
        let deadline = dev.shared.lock().eng.poll_timeout().unwrap();
        assert!(
            deadline.as_nanos() >= released.as_nanos() + ack_timeout.as_nanos() as u64,
            "ACK timer armed {} ms before the post got the lock",
            (released.as_nanos() + ack_timeout.as_nanos() as u64 - deadline.as_nanos()) / 1_000_000
        );
    }
}

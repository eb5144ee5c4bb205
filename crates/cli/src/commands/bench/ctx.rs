//! The verbs side of a bench run: one uroce device, one buffer laid out as perftest lays out
//! its own, RC QPs, and the data-path loops of perftest's `run_iter_bw`,
//! `run_iter_bw_server` and `run_iter_lat_write` (`src/perftest_resources.c`).
//!
//! Buffer (`alloc_ctx`, `create_mr`, `set_up_connection`): with N QPs and `BUFF_SIZE` = the
//! larger of the message size (8 MiB with `-a`) and the cycle buffer (the page size), one
//! region of `INC(BUFF_SIZE) * 2 * N` bytes. QP i sends from (and READs into) offset
//! `i * BUFF_SIZE`, and advertises `(N + i) * BUFF_SIZE` as the address its peer WRITEs,
//! READs or targets with atomics. Messages no larger than half the cycle buffer step through
//! the first cycle buffer of both areas in `INC(size)` strides (`increase_loc_addr`,
//! `increase_rem_addr`), `INC` rounding up to the cache line; larger ones all use offset 0.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use uroce::{
    Access, BackendKind, Completion, CompletionChannel, CompletionQueue, Device, DeviceConfig,
    MemoryRegion, Mtu, Payload, Progress, ProtectionDomain, QpAttr, QpCap, QpState, QpType,
    QueuePair, RecvWr, SendFlags, SendOp, SendWr, WcOpcode, WcStatus,
};

use super::channel::Dest;
use super::report::Ticker;
use crate::commands::CliError;

/// `MAX_SIZE`: the buffer size with `-a`.
pub const MAX_SIZE: u64 = 8 << 20;
/// Where the buffer sits in the device's address space (any page-aligned value does).
const BUF_IOVA: u64 = 0x7f00_0000_0000;
/// `MIN_RNR_TIMER`.
const MIN_RNR_TIMER: u8 = 12;
/// `DEF_QP_TIME`: local ACK timeout exponent.
const QP_TIMEOUT: u8 = 14;
/// ACK delay of a polled latency run: the peer's reply follows its poll by a few microseconds
/// on a quiet machine; far below the ACK timeout of `QP_TIMEOUT` (67 ms).
pub const LAT_ACK_DELAY: Duration = Duration::from_micros(20);
/// How long a polled ping-pong keeps the device running after its last iteration: well past
/// [`LAT_ACK_DELAY`].
const LINGER: Duration = Duration::from_millis(2);
/// Ping-pong iterations per progress-line check (a clock read).
const TICK_EVERY: u64 = 1024;
/// Bits of a WR id that hold the message index; the QP index sits above.
const QP_SHIFT: u32 = 40;
const IDX_MASK: u64 = (1 << QP_SHIFT) - 1;
/// WR ids of the atomic probes.
const PROBE_BIT: u64 = 1 << 63;

fn fail(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}

/// perftest's buffer geometry (see the module comment).
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// QPs.
    pub n: u64,
    /// `BUFF_SIZE(size, cycle_buffer)`.
    pub bsize: u64,
    /// Cycle buffer (the larger page size of the two sides).
    pub cycle: u64,
    /// Cache line (the larger of the two sides).
    pub cl: u64,
}

impl Geometry {
    /// The layout for `n` QPs and messages up to `max_size`.
    pub fn new(n: u64, max_size: u64, cycle: u64, cl: u64) -> Geometry {
        Geometry {
            n,
            bsize: if max_size < cycle { cycle } else { max_size },
            cycle,
            cl: cl.max(1),
        }
    }

    /// `INC(size, cache_line_size)`.
    pub fn inc(&self, size: u64) -> u64 {
        if size > self.cl {
            size.div_ceil(self.cl) * self.cl
        } else {
            self.cl
        }
    }

    /// Bytes to register (`ctx->buff_size`).
    pub fn total(&self) -> u64 {
        self.inc(self.bsize) * 2 * self.n
    }

    /// Offset of QP `q`'s own area.
    pub fn local(&self, q: u64) -> u64 {
        q * self.bsize
    }

    /// Offset of the area QP `q` advertises.
    pub fn remote(&self, q: u64) -> u64 {
        (self.n + q) * self.bsize
    }

    /// Whether messages of `size` step through the cycle buffer.
    fn cycles(&self, size: u64) -> bool {
        size <= self.cycle / 2
    }

    /// Distinct slots messages of `size` use.
    pub fn slots(&self, size: u64) -> u64 {
        if self.cycles(size) {
            (self.cycle / self.inc(size)).max(1)
        } else {
            1
        }
    }

    /// Offset (within an area) of message `k` of `size`.
    pub fn slot(&self, size: u64, k: u64) -> u64 {
        if self.cycles(size) {
            (k % self.slots(size)) * self.inc(size)
        } else {
            0
        }
    }

    /// The byte ranges `count` messages of `size` cover in an area.
    pub fn coverage(&self, size: u64, count: u64) -> Vec<(u64, u64)> {
        (0..count.min(self.slots(size)))
            .map(|k| {
                let o = self.slot(size, k);
                (o, o + size)
            })
            .collect()
    }
}

/// The data uroce puts in a sending area: a function of the QP and the offset, so a uroce
/// receiver can check what landed where.
pub fn pattern_byte(q: u64, o: u64) -> u8 {
    let mut x = (o / 8)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((q + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    (x >> (8 * (o % 8))) as u8
}

/// `len` bytes of QP `q`'s pattern.
pub fn pattern(q: u64, len: u64) -> Vec<u8> {
    (0..len).map(|o| pattern_byte(q, o)).collect()
}

/// Which operation the bandwidth client posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// RDMA WRITE.
    Write,
    /// RDMA READ.
    Read,
    /// SEND.
    Send,
    /// Fetch and add of 1 (`ATOMIC_ADD_VALUE`).
    FetchAdd,
    /// Compare and swap of 0 with 0 (`ATOMIC_SWAP_VALUE`, compare 0).
    CmpSwap,
}

impl Op {
    fn wc(self) -> WcOpcode {
        match self {
            Op::Write => WcOpcode::RdmaWrite,
            Op::Read => WcOpcode::RdmaRead,
            Op::Send => WcOpcode::Send,
            Op::FetchAdd => WcOpcode::FetchAdd,
            Op::CmpSwap => WcOpcode::CompSwap,
        }
    }

    /// The QP and MR rights perftest grants for the test (`ctx_modify_qp_to_init`,
    /// `create_single_mr`).
    pub fn access(self) -> Access {
        match self {
            Op::Write => Access::REMOTE_WRITE,
            Op::Read => Access::REMOTE_READ,
            Op::Send => Access::REMOTE_WRITE | Access::LOCAL_WRITE,
            Op::FetchAdd | Op::CmpSwap => Access::REMOTE_ATOMIC,
        }
    }
}

/// How the bandwidth client runs.
#[derive(Debug, Clone, Copy)]
pub struct BwParams {
    /// Operation.
    pub op: Op,
    /// Messages per QP (iterations mode).
    pub iters: u64,
    /// Run this long instead (`-D`).
    pub duration: Option<Duration>,
    /// WRs in flight per QP.
    pub tx_depth: u64,
    /// One signaled WR in this many.
    pub cq_mod: u64,
}

/// What one bandwidth run did.
#[derive(Debug, Clone)]
pub struct BwRun {
    /// Messages completed, all QPs.
    pub msgs: u64,
    /// Messages completed by each QP.
    pub per_qp: Vec<u64>,
    /// Seconds from the first post to the last completion.
    pub secs: f64,
}

/// How to open the device.
#[derive(Debug, Clone, Copy)]
pub struct DevOpts {
    /// Socket back end.
    pub backend: BackendKind,
    /// Busy polling without a progress thread.
    pub polled: bool,
    /// How long the responder may hold an ACK for the reply to carry it (unless
    /// `UROCE_ACK_DELAY_US` says otherwise).
    pub ack_delay: Duration,
    /// RoCE UDP port.
    pub udp_port: u16,
    /// Give up after this long without a completion.
    pub timeout: Option<Duration>,
    /// Share the address (QPN-steered receive).
    pub steer: bool,
    /// io_uring `SQPOLL` with this idle time (`None`: as `UROCE_SQPOLL_MS` says).
    pub sq_poll: Option<Duration>,
    /// A send thread (`false`: as `UROCE_TXTHREAD` says).
    pub tx_thread: bool,
    /// Connected send sockets (`false`: as `UROCE_CONNECTED_TX` says).
    pub connected_tx: bool,
}

/// The verbs objects. Fields drop in order: QPs before the queues they use, the device last.
pub struct Ctx {
    /// One RC QP per perftest QP.
    pub qps: Vec<QueuePair>,
    cq: CompletionQueue,
    /// The buffer.
    pub mr: MemoryRegion,
    _pd: ProtectionDomain,
    events: Option<CompletionChannel>,
    /// The device.
    pub dev: Device,
    /// Polled progress.
    pub polled: bool,
    /// Layout.
    pub geo: Geometry,
    timeout: Option<Duration>,
}

impl Ctx {
    /// Opens the device on `ip`, registers the buffer and creates `geo.n` QPs in INIT with
    /// the test's rights (`ctx_init`, `ctx_modify_qp_to_init`).
    pub fn open(
        ip: IpAddr,
        d: DevOpts,
        geo: Geometry,
        op: Op,
        tx_depth: u32,
        rx_depth: u32,
    ) -> Result<Ctx, CliError> {
        let mut cfg = DeviceConfig::new(ip);
        cfg.port = d.udp_port;
        cfg.backend = d.backend;
        cfg.steer |= d.steer;
        cfg.ack_delay.get_or_insert(d.ack_delay);
        if d.sq_poll.is_some() {
            cfg.sq_poll = d.sq_poll;
        }
        cfg.tx_thread |= d.tx_thread;
        cfg.connected_tx |= d.connected_tx;
        cfg.progress = if d.polled {
            Progress::Polled
        } else {
            Progress::Thread
        };
        // The peer may be rxe, whose IPv4 Identification the ICRC check cannot see.
        cfg.accept_any_ipv4_id = true;
        let dev = Device::open(cfg)
            .map_err(|e| fail(format!("couldn't open a uroce device on {ip}: {e}")))?;
        if let Some(l) = crate::commands::steer_line(&dev) {
            eprintln!("{l}");
        }
        let events = if d.polled {
            None
        } else {
            Some(CompletionChannel::new()?)
        };
        let pd = dev.alloc_pd();
        let len = usize::try_from(geo.total()).map_err(|_| fail("buffer too large"))?;
        let mr = pd
            .reg_mr(BUF_IOVA, len, Access::LOCAL_WRITE | op.access())
            .map_err(|e| fail(format!("Couldn't allocate MR of {len} bytes: {e}")))?;
        let n = geo.n as usize;
        let depth = n * (tx_depth as usize + rx_depth as usize) + 256;
        let cq = dev
            .create_cq(depth, events.as_ref())
            .map_err(|e| fail(format!("Couldn't create CQ: {e}")))?;
        let cap = QpCap {
            max_send_wr: tx_depth.max(1),
            max_recv_wr: rx_depth.max(1),
            max_send_sge: 1,
            max_recv_sge: 1,
            ..QpCap::default()
        };
        let mut qps = Vec::with_capacity(n);
        for _ in 0..n {
            let qp = pd
                .create_qp(QpType::Rc, &cq, &cq, None, cap)
                .map_err(|e| fail(format!("Couldn't create QP: {e}")))?;
            qp.modify(&QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                port: Some(1),
                access: Some(op.access()),
                ..QpAttr::default()
            })
            .map_err(|e| fail(format!("Failed to modify QP to INIT: {e}")))?;
            qps.push(qp);
        }
        Ok(Ctx {
            qps,
            cq,
            mr,
            _pd: pd,
            events,
            dev,
            polled: d.polled,
            geo,
            timeout: d.timeout,
        })
    }

    /// The address of offset `off` of the buffer.
    pub fn addr(&self, off: u64) -> u64 {
        self.mr.addr() + off
    }

    /// `ctx_connect`: RTR (`ctx_modify_qp_to_rtr`) and RTS (`ctx_modify_qp_to_rts`) for QP
    /// `q` towards `peer`. perftest leaves a bandwidth server's QPs in RTR; uroce moves them
    /// to RTS too, which changes nothing on the wire.
    pub fn connect(
        &self,
        q: usize,
        peer: IpAddr,
        mtu: Mtu,
        my: &Dest,
        rem: &Dest,
    ) -> Result<(), CliError> {
        let qp = &self.qps[q];
        let rd = |v: u32| v.clamp(1, 128) as u8;
        qp.modify(&QpAttr {
            state: Some(QpState::Rtr),
            path_mtu: Some(mtu),
            dest_ip: Some(peer),
            dest_qpn: Some(rem.qpn),
            rq_psn: Some(rem.psn),
            max_dest_rd_atomic: Some(rd(my.out_reads)),
            min_rnr_timer: Some(MIN_RNR_TIMER),
            ..QpAttr::default()
        })
        .map_err(|e| fail(format!("Failed to modify QP {:#x} to RTR: {e}", qp.qpn())))?;
        qp.modify(&QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(my.psn),
            timeout: Some(QP_TIMEOUT),
            retry_cnt: Some(7),
            rnr_retry: Some(7),
            max_rd_atomic: Some(rd(rem.out_reads)),
            ..QpAttr::default()
        })
        .map_err(|e| fail(format!("Failed to modify QP to RTS: {e}")))
    }

    /// Runs the device once (polled mode has no thread to do it).
    pub fn pump(&self) {
        if self.polled {
            self.dev.progress();
        }
    }

    /// After the last iteration of a polled ping-pong: keeps the device running for
    /// [`LINGER`], so that the ACK of the peer's last message, held for our reply that never
    /// comes (`DevOpts::ack_delay`), leaves at its deadline, and a retransmission of it is
    /// answered. (perftest's write_lat ends without a handshake: the peer may still wait.)
    pub fn linger(&self) {
        if !self.polled {
            return;
        }
        let end = Instant::now() + LINGER;
        // The last pass starts after `end`, hence after the held ACK's deadline. A `while`
        // loop let a thread descheduled past `end` between a pass and the check leave
        // without sending it: the peer's last WRITE then fails with RETRY_EXC_ERR once this
        // process is gone (probably what one client in ~50 runs on a loaded machine saw).
        loop {
            let past = Instant::now() >= end;
            self.dev.progress();
            if past {
                break;
            }
        }
    }

    fn timed_out(&self, since: Instant) -> bool {
        self.timeout.is_some_and(|t| since.elapsed() >= t)
    }

    fn timeout_error(&self, what: &str) -> CliError {
        fail(format!(
            "{what}: nothing happened in {} s (--timeout)",
            self.timeout.unwrap_or_default().as_secs()
        ))
    }

    /// Waits for at least one completion: busy polling in polled mode; in thread mode a few
    /// polls, then sleeping on the CQ's completion channel.
    fn wait_some(&self, max: usize, what: &str) -> Result<Vec<Completion>, CliError> {
        let mut w = Vec::new();
        self.wait_some_into(max, what, &mut w)?;
        Ok(w)
    }

    /// [`Self::wait_some`] into `w` (cleared first), which the caller reuses.
    fn wait_some_into(
        &self,
        max: usize,
        what: &str,
        w: &mut Vec<Completion>,
    ) -> Result<(), CliError> {
        w.clear();
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if self.cq.poll_into(max, w)? > 0 {
                return Ok(());
            }
            spins = spins.wrapping_add(1);
            match &self.events {
                Some(ch) if spins > 16 => {
                    self.cq.req_notify(false)?;
                    if self.cq.poll_into(max, w)? > 0 {
                        return Ok(());
                    }
                    ch.get_event(Duration::from_millis(100))?;
                    if self.timed_out(start) {
                        return Err(self.timeout_error(what));
                    }
                }
                _ => {
                    if spins % 256 == 0 {
                        std::thread::yield_now();
                        if self.timed_out(start) {
                            return Err(self.timeout_error(what));
                        }
                    }
                }
            }
        }
    }

    fn check_wc(c: &Completion, want: WcOpcode, what: &str) -> Result<(), CliError> {
        if c.status != WcStatus::Success {
            return Err(fail(format!(
                "{what}: completion with error {:?} (QP {:#x}, wr_id {:#x})",
                c.status, c.qp_num, c.wr_id
            )));
        }
        if c.opcode != want {
            return Err(fail(format!(
                "{what}: completion for {:?}, expected {want:?}",
                c.opcode
            )));
        }
        Ok(())
    }

    fn send_wr(&self, op: Op, q: u64, k: u64, size: u64, rem: &Dest, signaled: bool) -> SendWr {
        self.send_wr_at(op, q, k, self.geo.slot(size, k), size, rem, signaled)
    }

    /// [`Self::send_wr`] for message `k` at `off` (its `Geometry::slot`), which the caller
    /// steps without a division per WR.
    #[allow(clippy::too_many_arguments)]
    fn send_wr_at(
        &self,
        op: Op,
        q: u64,
        k: u64,
        off: u64,
        size: u64,
        rem: &Dest,
        signaled: bool,
    ) -> SendWr {
        let remote_addr = rem.vaddr + off;
        let rkey = rem.rkey;
        let op_ = match op {
            Op::Write => SendOp::RdmaWrite { remote_addr, rkey },
            Op::Read => SendOp::RdmaRead { remote_addr, rkey },
            Op::Send => SendOp::Send,
            Op::FetchAdd => SendOp::FetchAdd {
                remote_addr,
                rkey,
                add: 1,
            },
            Op::CmpSwap => SendOp::CompareSwap {
                remote_addr,
                rkey,
                compare: 0,
                swap: 0,
            },
        };
        let sge = self.mr.sge(self.geo.local(q) + off, size as u32);
        SendWr {
            wr_id: (q << QP_SHIFT) | k,
            op: op_,
            payload: Payload::Sge(sge),
            flags: SendFlags {
                signaled,
                ..SendFlags::default()
            },
            ud: None,
        }
    }

    /// `run_iter_bw`: keeps `tx_depth` WRs in flight on every QP, one in `cq_mod` signaled
    /// (and the last), until every QP completed `iters` (or the duration passed).
    pub fn run_bw_client(
        &self,
        b: &BwParams,
        size: u64,
        rem: &[Dest],
        tick: &mut Ticker,
        label: &str,
    ) -> Result<BwRun, CliError> {
        let n = self.qps.len();
        let mut scnt = vec![0u64; n];
        let mut ccnt = vec![0u64; n];
        let mut limit = vec![
            if b.duration.is_some() {
                u64::MAX
            } else {
                b.iters
            };
            n
        ];
        let cq_mod = if b.duration.is_some() {
            1
        } else {
            b.cq_mod.max(1)
        };
        let want = b.op.wc();
        let total = b.duration.is_none().then_some(b.iters * n as u64);
        // Message k's offset is (k % slots) * inc: `Geometry::slot`.
        let (slots, inc) = (self.geo.slots(size), self.geo.inc(size));
        let start = Instant::now();
        let mut last_event = start;
        loop {
            if let Some(d) = b.duration {
                if limit[0] == u64::MAX && start.elapsed() >= d {
                    limit.clone_from(&scnt);
                }
            }
            let mut posted = false;
            for q in 0..n {
                let room = (limit[q] - scnt[q]).min(b.tx_depth.saturating_sub(scnt[q] - ccnt[q]));
                if room > 0 {
                    posted = true;
                    let (first, last) = (scnt[q], limit[q]);
                    // Built as they are posted: no batch vector filled and moved per WR. The
                    // slot and the signaled one-in-`cq_mod` are stepped, not divided out per
                    // WR (two divisions were ~10 % of a 64-byte client's cycles).
                    let mut slot = first % slots;
                    let mut until_signal = (first + 1) % cq_mod;
                    let wrs = (first..first + room).map(|k| {
                        let signaled = until_signal == 0 || k + 1 == last;
                        let off = slot * inc;
                        slot += 1;
                        if slot == slots {
                            slot = 0;
                        }
                        until_signal += 1;
                        if until_signal == cq_mod {
                            until_signal = 0;
                        }
                        self.send_wr_at(b.op, q as u64, k, off, size, &rem[q], signaled)
                    });
                    self.qps[q]
                        .post_send_batch(wrs)
                        .map_err(|e| fail(format!("Couldn't post send: qp {q}: {e}")))?;
                    scnt[q] += room;
                }
            }
            if (0..n).all(|q| ccnt[q] >= limit[q]) {
                break;
            }
            let wcs = if posted {
                self.cq.poll(64)?
            } else {
                self.wait_some(64, label)?
            };
            if !wcs.is_empty() {
                last_event = Instant::now();
            } else if self.timed_out(last_event) {
                return Err(self.timeout_error(label));
            }
            for c in &wcs {
                Self::check_wc(c, want, label)?;
                let q = (c.wr_id >> QP_SHIFT) as usize;
                let k = c.wr_id & IDX_MASK;
                if q < n {
                    ccnt[q] = ccnt[q].max(k + 1);
                }
            }
            let done: u64 = ccnt.iter().sum();
            tick.tick(label, done, total, done * size);
        }
        Ok(BwRun {
            msgs: ccnt.iter().sum(),
            per_qp: ccnt,
            secs: start.elapsed().as_secs_f64(),
        })
    }

    /// Reads the 64-bit words of `slots` atomic slots of each peer area with fetch-and-add of
    /// 0, into this side's advertised area (unused by a client) at `at`. Returns them per QP.
    pub fn atomic_probe(
        &self,
        rem: &[Dest],
        slots: u64,
        at: u64,
        tx_depth: u64,
    ) -> Result<Vec<Vec<u64>>, CliError> {
        let mut all = Vec::new();
        for (q, r) in rem.iter().enumerate().take(self.qps.len()) {
            let base = self.geo.remote(q as u64) + at;
            let mut k = 0;
            while k < slots {
                let chunk = (slots - k).min(tx_depth.max(1));
                let wrs: Vec<SendWr> = (k..k + chunk)
                    .map(|j| {
                        SendWr::new(
                            PROBE_BIT | j,
                            SendOp::FetchAdd {
                                remote_addr: r.vaddr + self.geo.slot(8, j),
                                rkey: r.rkey,
                                add: 0,
                            },
                            Payload::Sgl(vec![self.mr.sge(base + j * 8, 8)]),
                        )
                    })
                    .collect();
                self.qps[q].post_send_batch(wrs)?;
                let mut got = 0;
                while got < chunk {
                    for c in self.wait_some(64, "atomic probe")? {
                        Self::check_wc(&c, WcOpcode::FetchAdd, "atomic probe")?;
                        got += 1;
                    }
                }
                k += chunk;
            }
            let mut v = Vec::with_capacity(slots as usize);
            for j in 0..slots {
                let mut w = [0u8; 8];
                self.mr.read((base + j * 8) as usize, &mut w);
                v.push(u64::from_ne_bytes(w));
            }
            all.push(v);
        }
        Ok(all)
    }

    /// Posts receive number `p` of QP `q` for messages of `size`: into slot `p` of the QP's
    /// advertised area, so message `p` lands where the sender's slot `p` is (bandwidth tests;
    /// latency tests use offset 0, as perftest steps addresses in bandwidth tests only).
    fn post_recv(&self, q: u64, p: u64, size: u64, cycle: bool) -> Result<(), CliError> {
        self.qps[q as usize]
            .post_recv(self.recv_wr(q, p, size, cycle))
            .map_err(|e| fail(format!("Couldn't post recv Qp={q}: {e}")))
    }

    /// Receive number `p` of QP `q` ([`Ctx::post_recv`]).
    fn recv_wr(&self, q: u64, p: u64, size: u64, cycle: bool) -> RecvWr {
        let slot = if cycle { self.geo.slot(size, p) } else { 0 };
        let off = self.geo.remote(q) + slot;
        RecvWr {
            wr_id: (q << QP_SHIFT) | p,
            sgl: vec![self.mr.sge(off, size as u32)],
        }
    }

    /// `ctx_set_recv_wqes`: `count` receives on every QP, before the handshake that lets the
    /// client start.
    pub fn post_initial_recvs(&self, size: u64, count: u64, cycle: bool) -> Result<(), CliError> {
        for q in 0..self.qps.len() as u64 {
            for p in 0..count {
                self.post_recv(q, p, size, cycle)?;
            }
        }
        Ok(())
    }

    /// `run_iter_bw_server`: counts `iters` receives per QP, reposting while fewer than
    /// `iters` were posted, timing from the first receive to the last. Every receive must
    /// hold `size` bytes.
    pub fn run_send_server(
        &self,
        size: u64,
        iters: u64,
        initial: u64,
        tick: &mut Ticker,
        label: &str,
    ) -> Result<BwRun, CliError> {
        let n = self.qps.len();
        let mut rcnt = vec![0u64; n];
        let mut posted = vec![initial; n];
        let total = iters * n as u64;
        let mut done = 0u64;
        let mut first: Option<Instant> = None;
        // The receives to post again, per QP, posted together after each batch of
        // completions (one engine lock per QP and batch, not one per receive).
        let mut repost: Vec<Vec<RecvWr>> = vec![Vec::new(); n];
        while done < total {
            for c in self.wait_some(64, label)? {
                Self::check_wc(&c, WcOpcode::Recv, label)?;
                first.get_or_insert_with(Instant::now);
                if u64::from(c.byte_len) != size {
                    return Err(fail(format!(
                        "{label}: received {} bytes, expected {size}",
                        c.byte_len
                    )));
                }
                let q = (c.wr_id >> QP_SHIFT) as usize;
                if q >= n {
                    return Err(fail(format!("{label}: unknown wr_id {:#x}", c.wr_id)));
                }
                rcnt[q] += 1;
                done += 1;
                if posted[q] < iters {
                    repost[q].push(self.recv_wr(q as u64, posted[q], size, true));
                    posted[q] += 1;
                }
            }
            for (q, wrs) in repost.iter_mut().enumerate() {
                if !wrs.is_empty() {
                    self.qps[q]
                        .post_recv_batch(wrs.drain(..))
                        .map_err(|e| fail(format!("Couldn't post recv Qp={q}: {e}")))?;
                }
            }
            tick.tick(label, done, Some(total), done * size);
        }
        Ok(BwRun {
            msgs: done,
            per_qp: rcnt,
            secs: first.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        })
    }

    /// `run_iter_lat` (ib_read_lat, ib_atomic_lat): one READ or atomic at a time at the
    /// peer's advertised address, each waited for. Returns the times the posts returned.
    pub fn run_lat_req(
        &self,
        op: Op,
        size: u64,
        iters: u64,
        rem: &Dest,
        tick: &mut Ticker,
    ) -> Result<Vec<Instant>, CliError> {
        let label = format!("{op:?} lat {size} B");
        let mut tposted = Vec::with_capacity(iters as usize);
        for k in 0..iters {
            // Slot 0 every time: latency tests do not step addresses.
            let mut wr = self.send_wr(op, 0, 0, size, rem, true);
            wr.wr_id = k;
            self.qps[0]
                .post_send(wr)
                .map_err(|e| fail(format!("Couldn't post send: scnt={k}: {e}")))?;
            // After the post, as in the ping-pongs below (see `run_lat_write`).
            tposted.push(Instant::now());
            for c in self.wait_some(1, &label)? {
                Self::check_wc(&c, op.wc(), &label)?;
            }
            tick.tick(&label, k + 1, Some(iters), (k + 1) * size);
        }
        Ok(tposted)
    }

    /// `run_iter_lat_send` (ib_send_lat): a ping-pong of SENDs; the client sends first, each
    /// side answers every message it receives, every send is signaled and waited for (CQ
    /// moderation is the TX depth, 1). Receives were posted before the handshake; they are
    /// reposted while fewer than `iters` were. Returns the times the posts returned.
    pub fn run_lat_send(
        &self,
        size: u64,
        iters: u64,
        initial: u64,
        client: bool,
        tick: &mut Ticker,
    ) -> Result<Vec<Instant>, CliError> {
        let label = format!("send lat {size} B");
        let n = self.qps.len();
        let mut posted = vec![initial; n];
        let mut tposted = Vec::with_capacity(iters as usize);
        let (mut scnt, mut ccnt, mut rcnt, mut ready) = (0u64, 0u64, 0u64, 0u64);
        let mut handle = |this: &Ctx, ready: &mut u64, ccnt: &mut u64| -> Result<(), CliError> {
            for c in this.wait_some(4, &label)? {
                if c.opcode == WcOpcode::Recv {
                    Self::check_wc(&c, WcOpcode::Recv, &label)?;
                    if u64::from(c.byte_len) != size {
                        return Err(fail(format!(
                            "{label}: received {} bytes, expected {size}",
                            c.byte_len
                        )));
                    }
                    let q = (c.wr_id >> QP_SHIFT) as usize;
                    if q < n && posted[q] < iters {
                        this.post_recv(q as u64, posted[q], size, false)?;
                        posted[q] += 1;
                    }
                    *ready += 1;
                } else {
                    Self::check_wc(&c, WcOpcode::Send, &label)?;
                    *ccnt += 1;
                }
            }
            Ok(())
        };
        while scnt < iters || rcnt < iters {
            if rcnt < iters && !(scnt < 1 && client) {
                while ready == 0 {
                    handle(self, &mut ready, &mut ccnt)?;
                }
                ready -= 1;
                rcnt += 1;
            }
            if scnt < iters {
                let wr = self.send_wr(Op::Send, 0, 0, size, &Dest::default(), true);
                scnt += 1;
                self.qps[0]
                    .post_send(SendWr { wr_id: scnt, ..wr })
                    .map_err(|e| fail(format!("Couldn't post send: scnt={scnt}: {e}")))?;
                // When the post returned (see `run_lat_write`).
                tposted.push(Instant::now());
                while ccnt < scnt {
                    handle(self, &mut ready, &mut ccnt)?;
                }
            }
            tick.tick(&label, scnt, Some(iters), scnt * size);
        }
        Ok(tposted)
    }

    /// Spins until the byte at `off` is `want` (the WRITE ping-pong's poll byte).
    fn wait_byte(&self, off: u64, want: u8) -> Result<(), CliError> {
        let mut b = [0u8; 1];
        self.mr.read(off as usize, &mut b);
        if b[0] == want {
            // Usually so in polled mode (the completion came in the same receive): no clock
            // read between a completion and the next post.
            return Ok(());
        }
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            self.mr.read(off as usize, &mut b);
            if b[0] == want {
                return Ok(());
            }
            self.pump();
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 {
                if !self.polled {
                    std::thread::yield_now();
                }
                if spins % 4096 == 0 && self.timed_out(start) {
                    return Err(self.timeout_error("write_lat"));
                }
            }
        }
    }

    /// `run_iter_lat_write`: the RDMA WRITE ping-pong. Each side writes `size` bytes whose
    /// last byte is its message count into the peer's advertised area and waits for the
    /// peer's count in the last byte of its own; the server sends first. Returns the times
    /// the posts returned, whose differences are round trips.
    pub fn run_lat_write(
        &self,
        size: u64,
        iters: u64,
        server: bool,
        rem: &Dest,
        tick: &mut Ticker,
    ) -> Result<Vec<Instant>, CliError> {
        let post_off = self.geo.local(0);
        let poll_off = self.geo.remote(0) + size - 1;
        let mut tposted = Vec::with_capacity(iters as usize);
        let (mut scnt, mut ccnt, mut rcnt) = (0u64, 0u64, 0u64);
        let label = format!("write_lat {size} B");
        let mut wcs = Vec::with_capacity(1);
        while scnt < iters || ccnt < iters || rcnt < iters {
            if rcnt < iters && !(scnt < 1 && server) {
                rcnt += 1;
                self.wait_byte(poll_off, rcnt as u8)?;
            }
            if scnt < iters {
                scnt += 1;
                self.mr.write((post_off + size - 1) as usize, &[scnt as u8]);
                let wr = SendWr::new(
                    scnt,
                    SendOp::RdmaWrite {
                        remote_addr: rem.vaddr,
                        rkey: rem.rkey,
                    },
                    Payload::Sge(self.mr.sge(post_off, size as u32)),
                );
                self.qps[0]
                    .post_send(wr)
                    .map_err(|e| fail(format!("Couldn't post send: scnt={scnt}: {e}")))?;
                // Stamped when the post returned (perftest stamps just before it): one
                // stamp per iteration at the same point either way, so the differences are
                // the round trips, and the clock read waits with the reply instead of
                // lying between the peer's message and this side's answer.
                tposted.push(Instant::now());
            }
            if ccnt < iters {
                self.wait_some_into(1, &label, &mut wcs)?;
                for c in &wcs {
                    Self::check_wc(c, WcOpcode::RdmaWrite, &label)?;
                    ccnt += 1;
                }
            }
            // The progress line reads the clock: not on every round trip's critical path
            // (between this side's completion and its next post).
            if scnt % TICK_EVERY == 0 || scnt == iters {
                tick.tick(&label, scnt, Some(iters), scnt * size);
            }
        }
        self.linger();
        Ok(tposted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_as_perftest() {
        // 1 QP, 64 KiB messages, 4 KiB pages, 64-byte lines: BUFF_SIZE 64 KiB, no cycling.
        let g = Geometry::new(1, 65536, 4096, 64);
        assert_eq!(
            (g.bsize, g.total(), g.local(0), g.remote(0)),
            (65536, 131072, 0, 65536)
        );
        assert_eq!((g.slots(65536), g.slot(65536, 7)), (1, 0));
        // 2 QPs, 100-byte messages: BUFF_SIZE is the page, INC(100) = 128, 32 slots.
        let g = Geometry::new(2, 100, 4096, 64);
        assert_eq!((g.bsize, g.total(), g.remote(1)), (4096, 16384, 12288));
        assert_eq!((g.inc(100), g.slots(100), g.slot(100, 33)), (128, 32, 128));
        // Atomics: INC(8) is a cache line, 64 slots.
        assert_eq!(
            (g.inc(8), g.slots(8), g.slot(8, 63), g.slot(8, 64)),
            (64, 64, 4032, 0)
        );
        // Half the page still cycles, more does not.
        assert_eq!((g.slots(2048), g.slots(2049)), (2, 1));
        assert_eq!(g.coverage(2048, 5), vec![(0, 2048), (2048, 4096)]);
        // An odd size: INC rounds up to the line, BUFF_SIZE stays the size.
        let g = Geometry::new(1, 5000, 4096, 64);
        assert_eq!((g.bsize, g.inc(g.bsize), g.total()), (5000, 5056, 10112));
    }

    #[test]
    fn pattern_differs_by_qp_and_offset() {
        let (a, b) = (pattern(0, 4096), pattern(1, 4096));
        assert_ne!(a, b);
        assert_ne!(a[..8], a[8..16]);
        assert_eq!(a[100], pattern_byte(0, 100));
    }
}

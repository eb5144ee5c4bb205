//! The requester: turns send WQEs into request packets (rxe's `rxe_req.c`).
//!
//! Rules: every packet takes the next PSN, a READ takes one PSN per response packet it asks for
//! (IBTA §9.7.1); messages are cut at the path MTU with FIRST/MIDDLE/LAST/ONLY opcodes; AckReq
//! is set on the last packet of a message and at least every `ack_req_interval` packets; at
//! most `max_unacked_psns` PSNs are outstanding; at most `max_rd_atomic` READs/atomics are
//! outstanding (IBTA §9.7.4.1.3); a fenced WQE waits for earlier READs/atomics. Go-back-N
//! retry rewinds to a PSN and re-segments from there ([`Qp::rewind`]).

use std::net::SocketAddr;

use uroce_wire::opcode::Header;
use uroce_wire::{AtomicEthRepr, BthRepr, DethRepr, Opcode, PacketRepr, Psn, RethRepr};

use super::{Qp, QpState, QpType, SendWqe};
use crate::cq::{Completion, WcStatus};
use crate::device::Ctx;
use crate::mr::{Access, Span, Spans, VecMemory};
use crate::wr::{Payload, SendOp};
use crate::Instant;

/// Requester and completer state (they share the view of the send queue).
#[derive(Debug, Default)]
pub(crate) struct Requester {
    /// Queued on the device's ready list.
    pub in_ready: bool,
    /// PSN of the next new packet.
    pub next_psn: Psn,
    /// Oldest PSN not yet acknowledged.
    pub comp_psn: Psn,
    /// Index in the send queue of the next WQE to segment.
    pub cursor: usize,
    /// Packets since the last AckReq.
    pub since_ack_req: u32,
    /// One past the highest PSN ever sent: lower PSNs going out are retransmissions.
    pub high_psn: Psn,
    /// Retries left before RETRY_EXC_ERR.
    pub retries_left: u8,
    /// RNR retries left before RNR_RETRY_EXC_ERR (7 = infinite).
    pub rnr_retries_left: u8,
    /// When the local ACK timer fires.
    pub ack_deadline: Option<Instant>,
    /// Sending paused until then after an RNR NAK.
    pub rnr_until: Option<Instant>,
    /// Adaptive send window.
    pub window: super::window::Window,
    /// `comp_psn` when the window last counted acknowledged PSNs.
    pub window_psn: Psn,
    /// The PSN the last rewind went back to, until progress: stops repeated rewinds for the
    /// same gap.
    pub rewound_to: Option<Psn>,
    /// This QP's share of the device's unacknowledged-PSN budget (0: all of it), set by the
    /// device before each call (`WindowShare::enter`, share.rs).
    pub share: u32,
    /// The local ACK timeout's probe, until an acknowledgement decides it (probe.rs).
    pub probe: Option<super::probe::Probe>,
    /// The packet just built was a probe: the device ends its GSO batch there.
    pub probe_emitted: bool,
}

impl Requester {
    pub fn reset(&mut self, sq_psn: Psn, retry_cnt: u8, rnr_retry: u8) {
        self.next_psn = sq_psn;
        self.comp_psn = sq_psn;
        self.high_psn = sq_psn;
        self.window_psn = sq_psn;
        self.retries_left = retry_cnt;
        self.rnr_retries_left = rnr_retry;
    }

    pub fn on_flush(&mut self) {
        self.cursor = 0;
        self.ack_deadline = None;
        self.rnr_until = None;
        self.rewound_to = None;
        self.probe = None;
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.ack_deadline, self.rnr_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The runs of `len` bytes starting `offset` bytes into the buffer `spans` describe, in order:
/// for each span touched, the span, the offset within it, the bytes before this run, and the
/// run's length. Every walk over an SGL (gather, scatter, zero-copy receive plans) uses it.
pub(crate) fn runs(
    spans: &[Span],
    mut offset: usize,
    len: usize,
) -> impl Iterator<Item = (&Span, usize, usize, usize)> {
    let mut done = 0;
    spans.iter().filter_map(move |s| {
        if done == len {
            return None;
        }
        if offset >= s.len() {
            offset -= s.len();
            return None;
        }
        let n = (s.len() - offset).min(len - done);
        let run = (s, offset, done, n);
        done += n;
        offset = 0;
        Some(run)
    })
}

/// Gathers `dst.len()` bytes starting `offset` bytes into the message described by `spans`.
pub(crate) fn gather(spans: &[Span], offset: usize, dst: &mut [u8]) {
    for (s, at, done, n) in runs(spans, offset, dst.len()) {
        s.read(at, &mut dst[done..done + n]);
    }
}

/// Scatters `src` starting `offset` bytes into the buffer described by `spans`. The caller has
/// checked that it fits.
pub(crate) fn scatter(spans: &[Span], offset: usize, src: &[u8]) {
    for (s, at, done, n) in runs(spans, offset, src.len()) {
        s.write(at, &src[done..done + n]);
    }
}

/// Most packets of a READ that `Config::split_reads` asks for one request per packet. Split,
/// at most `max_rd_atomic` packets are in flight, so split READs top out where that many
/// packets per round trip do, and longer READs move more as one request (measured with 128
/// slots, path MTU 4096, alternated: 16 KiB 11 → 24–26 Gbit/s split, 32 KiB 14–18 → 22, 64
/// KiB 21–25 → 19–22, 128 KiB 29 → 22; docs/perf/JOURNAL.md "READs of a few packets").
pub const SPLIT_READ_MAX_PACKETS: u32 = 8;

fn opcode_for(qp_type: QpType, op: &SendOp, first: bool, last: bool) -> Opcode {
    use Opcode::*;
    let rc = qp_type == QpType::Rc;
    let pick = |f, m, l, o| match (first, last) {
        (true, true) => o,
        (true, false) => f,
        (false, false) => m,
        (false, true) => l,
    };
    match (qp_type, op) {
        (QpType::Ud, SendOp::SendWithImm(_)) => UdSendOnlyImm,
        (QpType::Ud, _) => UdSendOnly,
        (_, SendOp::Send) if rc => pick(RcSendFirst, RcSendMiddle, RcSendLast, RcSendOnly),
        (_, SendOp::Send) => pick(UcSendFirst, UcSendMiddle, UcSendLast, UcSendOnly),
        (_, SendOp::SendWithImm(_)) if rc => {
            pick(RcSendFirst, RcSendMiddle, RcSendLastImm, RcSendOnlyImm)
        }
        (_, SendOp::SendWithImm(_)) => {
            pick(UcSendFirst, UcSendMiddle, UcSendLastImm, UcSendOnlyImm)
        }
        (_, SendOp::SendWithInv(_)) => {
            pick(RcSendFirst, RcSendMiddle, RcSendLastInv, RcSendOnlyInv)
        }
        (_, SendOp::RdmaWrite { .. }) if rc => {
            pick(RcWriteFirst, RcWriteMiddle, RcWriteLast, RcWriteOnly)
        }
        (_, SendOp::RdmaWrite { .. }) => {
            pick(UcWriteFirst, UcWriteMiddle, UcWriteLast, UcWriteOnly)
        }
        (_, SendOp::RdmaWriteWithImm { .. }) if rc => {
            pick(RcWriteFirst, RcWriteMiddle, RcWriteLastImm, RcWriteOnlyImm)
        }
        (_, SendOp::RdmaWriteWithImm { .. }) => {
            pick(UcWriteFirst, UcWriteMiddle, UcWriteLastImm, UcWriteOnlyImm)
        }
        (_, SendOp::RdmaRead { .. }) => RcReadRequest,
        (_, SendOp::CompareSwap { .. }) => RcCompareSwap,
        (_, SendOp::FetchAdd { .. }) => RcFetchAdd,
    }
}

/// Why the requester cannot send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocked {
    /// Nothing to send, or state/timer forbids it.
    Idle,
    /// Could send.
    No,
}

impl Qp {
    /// Most PSNs this QP may leave unacknowledged now: its share of the device's budget.
    pub(crate) fn max_unacked(&self, config: &crate::Config) -> u32 {
        match self.req.share {
            0 => config.max_unacked_psns,
            s => s.min(config.max_unacked_psns),
        }
    }

    /// PSNs sent and not yet acknowledged (0 unless an RC QP that can still be acknowledged).
    pub fn unacked_psns(&self) -> u32 {
        if self.qp_type == QpType::Rc
            && matches!(self.state, QpState::Rts | QpState::Sqd | QpState::Sqe)
        {
            self.req.next_psn.diff(self.req.comp_psn).max(0) as u32
        } else {
            0
        }
    }

    fn requester_blocked(&self, config: &crate::Config) -> Blocked {
        if !matches!(self.state, QpState::Rts | QpState::Sqd) || self.req.rnr_until.is_some() {
            return Blocked::Idle;
        }
        if self.probe_pending() {
            return Blocked::No;
        }
        let Some(w) = self.sq.get(self.req.cursor) else {
            return Blocked::Idle;
        };
        if w.failed.is_some() {
            return Blocked::Idle;
        }
        let starting = !w.started;
        if starting && self.state == QpState::Sqd {
            return Blocked::Idle;
        }
        if self.qp_type == QpType::Rc {
            let window = self.req.window.limit(self.max_unacked(config));
            if self.req.next_psn.diff(self.req.comp_psn) >= window as i32 {
                return Blocked::Idle;
            }
            // Each request of a split READ takes a slot, not only its first.
            let requesting = starting || w.split_read;
            if requesting && (w.wr.flags.fence || w.wr.op.is_read_or_atomic()) {
                let out = self.rd_atomic_outstanding();
                if w.wr.flags.fence && out > 0 {
                    return Blocked::Idle;
                }
                if w.wr.op.is_read_or_atomic()
                    && out >= usize::from(self.attrs.max_rd_atomic.max(1))
                {
                    return Blocked::Idle;
                }
            }
        }
        Blocked::No
    }

    /// READ and atomic requests sent and not yet answered (IBTA §9.7.4.1.3 counts these
    /// against `max_rd_atomic`): one per started READ or atomic, or for a split READ one per
    /// packet asked for whose response has not arrived.
    fn rd_atomic_outstanding(&self) -> usize {
        let mtu = self.attrs.mtu.bytes();
        // Only WQEs up to the cursor have started (a rewind resets those after it).
        self.sq
            .iter()
            .take(self.req.cursor + 1)
            .filter(|w| w.started && !w.done && w.wr.op.is_read_or_atomic())
            .map(|w| match w.split_read {
                // Saturating: after a rewind, responses to the first requests can still arrive
                // past the resend point.
                true => w
                    .sent
                    .div_ceil(mtu)
                    .saturating_sub(w.read_done.div_ceil(mtu)) as usize,
                false => 1,
            })
            .sum()
    }

    /// Whether a READ of `len` bytes starting now is asked for one packet per request
    /// (`Config::split_reads`): RC, two packets or more, at most [`SPLIT_READ_MAX_PACKETS`]
    /// and a quarter of `max_rd_atomic`.
    fn splits_read(&self, len: u32, config: &crate::Config) -> bool {
        let packets = len.div_ceil(self.attrs.mtu.bytes());
        config.split_reads
            && self.qp_type == QpType::Rc
            && (2..=SPLIT_READ_MAX_PACKETS).contains(&packets)
            && packets <= u32::from(self.attrs.max_rd_atomic) / 4
    }

    /// Whether the requester has a packet to send now.
    pub(crate) fn requester_ready(&self, config: &crate::Config) -> bool {
        self.requester_blocked(config) == Blocked::No
    }

    /// Resolves the WQE's local data once: checks lkeys, rights and bounds (IBTA C10-? local
    /// protection), or wraps inline data.
    fn resolve(&mut self, i: usize, ctx: &mut Ctx<'_>) -> Result<(), WcStatus> {
        let pd = self.pd;
        if self.gathers_directly(i) {
            return Ok(());
        }
        let w = &mut self.sq[i];
        if w.data.is_some() {
            return Ok(());
        }
        let need = if w.wr.op.is_read_or_atomic() {
            Access::LOCAL_WRITE
        } else {
            Access::NONE
        };
        let check = |s: &crate::wr::Sge| {
            ctx.mrs
                .check(pd, s.lkey, s.addr, s.length as usize, need)
                .map_err(|_| WcStatus::LocProtErr)
        };
        let spans = match &w.wr.payload {
            // Inline bytes were copied at post time: they need no key check.
            Payload::Inline(v) => Spans::One(Span::whole(VecMemory::from_vec(v.clone()))),
            p => match p.sges() {
                [one] => Spans::One(check(one)?),
                sgl => Spans::Many(sgl.iter().map(check).collect::<Result<_, _>>()?),
            },
        };
        w.data = Some(spans);
        Ok(())
    }

    /// Whether the WQE at `i` is checked and gathered in the one call that sends it, borrowing
    /// its region ([`crate::mr::MrTable::check_ref`]) instead of holding checked spans: a
    /// one-packet SEND or WRITE from one SGE on a connected QP (nothing of it is needed after
    /// its packet is built; a retransmission checks again, as `resolve` would).
    fn gathers_directly(&self, i: usize) -> bool {
        self.qp_type != QpType::Ud
            && self.sq.get(i).is_some_and(|w| {
                w.data.is_none()
                    && !w.wr.op.is_read_or_atomic()
                    && w.len <= self.attrs.mtu.bytes()
                    && w.wr.payload.sges().len() == 1
            })
    }

    /// A local error (keys, rights, address handle) found while building the packets of the
    /// WQE at `i`. The WQEs before it are already on the wire and keep their own outcome: the
    /// requester stops at `i`, and `i` completes with `status` (and the QP goes to ERR) once
    /// they have completed, as rxe marks the WQE `wqe_state_error` and its completer reaches
    /// it in order. Completing the head with the error instead would blame a WR that did
    /// nothing wrong.
    pub(crate) fn fail_local(&mut self, i: usize, status: WcStatus, ctx: &mut Ctx<'_>) {
        match self.sq.iter().position(|w| !w.done) {
            Some(head) if head < i => {
                if let Some(w) = self.sq.get_mut(i) {
                    w.failed = Some(status);
                }
            }
            _ => self.fail_head(status, ctx),
        }
    }

    /// Completes the first WQE not yet done if it failed locally ([`Qp::fail_local`]).
    pub(crate) fn fail_if_head_failed(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(status) = self.sq.iter().find(|w| !w.done).and_then(|w| w.failed) {
            self.fail_head(status, ctx);
        }
    }

    /// Completes the WQE at the head with `status` (always generated for errors) and moves the QP
    /// to ERR, flushing everything else.
    pub(crate) fn fail_head(&mut self, status: WcStatus, ctx: &mut Ctx<'_>) {
        if let Some(w) = self.sq.iter_mut().find(|w| !w.done) {
            w.done = true;
            let mut c = Completion::new(w.wr.wr_id, status, w.wr.op.wc_opcode(), self.qpn);
            c.byte_len = 0;
            ctx.complete(self.send_cq, c);
        }
        self.enter_error(ctx);
    }

    /// Completes `w` successfully (if signaled).
    pub(crate) fn complete_send(
        qpn: u32,
        sig_all: bool,
        cq: crate::CqHandle,
        w: &SendWqe,
        ctx: &mut Ctx<'_>,
    ) {
        if w.signaled(sig_all) {
            let mut c = Completion::new(w.wr.wr_id, WcStatus::Success, w.wr.op.wc_opcode(), qpn);
            c.byte_len = w.len;
            ctx.complete(cq, c);
        }
    }

    /// Completes the UD WQE at the cursor with `LOC_LEN_ERR` if it is longer than the path MTU
    /// (a UD message is one packet); returns whether it did. The QP stays usable.
    fn skip_oversized_ud(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let i = self.req.cursor;
        let mtu = self.attrs.mtu.bytes();
        let oversized = matches!(self.sq.get(i), Some(w) if w.len > mtu);
        if self.qp_type != QpType::Ud || !oversized {
            return false;
        }
        let w = &mut self.sq[i];
        w.done = true;
        let c = Completion::new(
            w.wr.wr_id,
            WcStatus::LocLenErr,
            w.wr.op.wc_opcode(),
            self.qpn,
        );
        ctx.complete(self.send_cq, c);
        self.req.cursor += 1;
        self.pop_done_front();
        true
    }

    /// Builds the next request packet into `buf`; returns its length and destination.
    pub(crate) fn emit_request(
        &mut self,
        buf: &mut [u8],
        ctx: &mut Ctx<'_>,
    ) -> Option<(usize, SocketAddr)> {
        if self.probe_pending() {
            return self.emit_probe(buf, ctx);
        }
        self.emit_at_cursor(buf, ctx)
    }

    /// Builds the packet at the send position (`cursor`, `next_psn`) into `buf`.
    pub(crate) fn emit_at_cursor(
        &mut self,
        buf: &mut [u8],
        ctx: &mut Ctx<'_>,
    ) -> Option<(usize, SocketAddr)> {
        // Oversized UD WQEs complete here without a packet. They used to end this call with
        // `None`, which stalled the WQEs behind them: the device re-polls only a QP that
        // emitted something, so nothing woke the QP again until the next post_send.
        if self.qp_type == QpType::Ud {
            while self.requester_blocked(ctx.config) == Blocked::No && self.skip_oversized_ud(ctx) {
            }
        }
        if self.requester_blocked(ctx.config) != Blocked::No {
            return None;
        }
        let i = self.req.cursor;
        let mtu = self.attrs.mtu.bytes();
        if let Err(status) = self.resolve(i, ctx) {
            self.fail_local(i, status, ctx);
            return None;
        }
        // Destination and UD checks.
        let (dst, dest_qpn, deth) = match (self.qp_type, self.sq[i].wr.ud) {
            (QpType::Ud, Some(ud)) => {
                let Some(ah) = ctx.ahs.get(&ud.ah.0) else {
                    self.fail_local(i, WcStatus::LocQpOpErr, ctx);
                    return None;
                };
                // IBTA §10.2.4: a WR Q_Key with the high bit set means "use the QP's Q_Key".
                let qkey = if ud.remote_qkey & 0x8000_0000 != 0 {
                    self.attrs.qkey
                } else {
                    ud.remote_qkey
                };
                (
                    ah.dst,
                    ud.remote_qpn,
                    Some(DethRepr {
                        qkey,
                        src_qp: self.qpn,
                    }),
                )
            }
            (QpType::Ud, None) => {
                self.fail_local(i, WcStatus::LocQpOpErr, ctx);
                return None;
            }
            _ => match self.attrs.dest {
                Some(d) => (d, self.attrs.dest_qpn, None),
                None => return None,
            },
        };
        let w = &self.sq[i];
        let first_psn = if w.started {
            w.first_psn
        } else {
            self.req.next_psn
        };
        let psn = self.req.next_psn;
        let off = w.sent;
        // Everything is computed first and committed only once the packet fits `buf`. The
        // headers are filled in place: built per arm and moved into `repr`, this large struct
        // was copied twice more per packet (~20 % of this function in a 64-byte WRITE stream).
        let mut repr = PacketRepr::new(BthRepr::new(Opcode::RcSendOnly, dest_qpn, psn.get()), 0);
        let split_read = if w.started {
            w.split_read
        } else {
            matches!(w.wr.op, SendOp::RdmaRead { .. }) && self.splits_read(w.len, ctx.config)
        };
        let (plen, last, next_psn, sent);
        match w.wr.op {
            SendOp::RdmaRead { remote_addr, rkey } => {
                // The rest of the READ, or with `split_read` its next packet's worth.
                let n = if split_read {
                    (w.len - off).min(mtu)
                } else {
                    w.len - off
                };
                repr.bth.opcode = Opcode::RcReadRequest;
                repr.bth.ack_req = true;
                repr.reth = Some(RethRepr {
                    va: remote_addr.wrapping_add(u64::from(off)),
                    rkey,
                    dma_len: n,
                });
                plen = 0;
                sent = off + n;
                last = sent == w.len;
                // The request consumes one PSN per response packet it asks for.
                next_psn = psn.add(n.div_ceil(mtu).max(1));
            }
            SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. } => {
                repr.bth.opcode = opcode_for(self.qp_type, &w.wr.op, true, true);
                repr.bth.ack_req = true;
                repr.atomic_eth = Some(atomic_eth(&w.wr.op));
                plen = 0;
                sent = w.len;
                last = true;
                next_psn = psn.add(1);
            }
            op => {
                let n = (w.len - off).min(mtu);
                let first = off == 0;
                last = off + n == w.len;
                // `Config::split_writes`: each packet its own WRITE ONLY (IBTA §9.4.3: its
                // RETH names its own part), so all are one size and batch into GSO sends.
                let split = ctx.config.split_writes
                    && self.qp_type == QpType::Rc
                    && matches!(op, SendOp::RdmaWrite { .. });
                let bth = &mut repr.bth;
                bth.opcode = opcode_for(self.qp_type, &op, first || split, last || split);
                // Ask for an ACK at least twice per window, so a small window never waits for
                // an ACK that nothing requested.
                let window = self.req.window.limit(self.max_unacked(ctx.config));
                let interval = ctx.config.ack_req_interval.min((window / 2).max(1));
                bth.ack_req =
                    self.qp_type == QpType::Rc && (last || self.req.since_ack_req + 1 >= interval);
                bth.solicited = last && w.wr.flags.solicited;
                let info = bth.opcode.info();
                let r = &mut repr;
                r.payload_len = n as usize;
                if info.headers.has(Header::Reth) {
                    let (va, rkey) = match op {
                        SendOp::RdmaWrite { remote_addr, rkey }
                        | SendOp::RdmaWriteWithImm {
                            remote_addr, rkey, ..
                        } => (remote_addr, rkey),
                        _ => (0, 0),
                    };
                    // A split packet's RETH names its own part, a FIRST's the whole message.
                    let (va, dma_len) = if split {
                        (va.wrapping_add(u64::from(off)), n)
                    } else {
                        (va, w.len)
                    };
                    r.reth = Some(RethRepr { va, rkey, dma_len });
                }
                if info.immediate {
                    if let SendOp::SendWithImm(v) | SendOp::RdmaWriteWithImm { imm: v, .. } = op {
                        r.imm = Some(v);
                    }
                }
                if info.invalidate {
                    if let SendOp::SendWithInv(k) = op {
                        r.ieth = Some(k);
                    }
                }
                r.deth = deth;
                plen = n as usize;
                sent = off + n;
                next_psn = psn.add(1);
            }
        }
        let len = repr.buffer_len();
        if buf.len() < len {
            return None;
        }
        let Ok(mut pkt) = repr.emit(buf) else {
            // The table and the builder above agree on headers, so this is not expected; drop
            // the WQE with an error rather than send a malformed packet.
            self.fail_local(i, WcStatus::LocQpOpErr, ctx);
            return None;
        };
        if plen > 0 {
            match (&w.data, w.wr.payload.sges()) {
                (Some(spans), _) => gather(spans.as_slice(), off as usize, pkt.payload_mut()),
                // `gathers_directly`: one SGE, checked now.
                (None, [s]) => {
                    match ctx.mrs.check_ref(
                        self.pd,
                        s.lkey,
                        s.addr,
                        s.length as usize,
                        Access::NONE,
                    ) {
                        Ok(span) => span.read(off as usize, pkt.payload_mut()),
                        Err(_) => {
                            self.fail_local(i, WcStatus::LocProtErr, ctx);
                            return None;
                        }
                    }
                }
                _ => {}
            }
        }
        // Commit.
        let w = &mut self.sq[i];
        w.started = true;
        w.first_psn = first_psn;
        w.npsn = if w.wr.op.is_atomic() {
            1
        } else {
            w.len.div_ceil(mtu).max(1)
        };
        w.sent = sent;
        w.split_read = split_read;
        self.req.since_ack_req = if repr.bth.ack_req {
            0
        } else {
            self.req.since_ack_req + 1
        };
        self.req.next_psn = next_psn;
        self.counters.tx_packets += 1;
        if psn.diff(self.req.high_psn) < 0 {
            self.counters.retransmits += 1;
        } else {
            self.req.high_psn = next_psn;
        }
        if last {
            w.all_sent = true;
            if !w.wr.op.is_read_or_atomic() {
                // The data is sent: release the checked spans here, on the posting thread that
                // resolved them, rather than on whichever thread completes the WQE (a free and
                // a reference count moving between cores per message). A retransmission
                // resolves the SGL again, as rxe looks its keys up again on a retry.
                w.data = None;
            }
            self.req.cursor += 1;
            if self.qp_type != QpType::Rc {
                // UC and UD complete at send time: there is no acknowledgement to wait for.
                w.done = true;
                Self::complete_send(self.qpn, self.sq_sig_all, self.send_cq, w, ctx);
                self.pop_done_front();
            }
        }
        if self.qp_type == QpType::Rc && self.req.ack_deadline.is_none() {
            self.req.ack_deadline =
                crate::time::ack_timeout(self.attrs.timeout).map(|d| ctx.now + d);
        }
        Some((len, dst))
    }

    /// Drops completed WQEs from the head of the send queue.
    pub(crate) fn pop_done_front(&mut self) {
        while self.sq.front().is_some_and(|w| w.done) {
            self.sq.pop_front();
            self.req.cursor = self.req.cursor.saturating_sub(1);
        }
    }

    /// After an ACK acknowledged PSNs a rewind had queued for resending, moves the resend point
    /// up to the oldest unacknowledged PSN: the responder has the rest, and a WQE started
    /// after its predecessor completed must take the PSN after it, never one the responder
    /// has already seen (it would take the new message for a duplicate and drop it).
    pub(crate) fn skip_acknowledged(&mut self) {
        let comp = self.req.comp_psn;
        if self.req.next_psn.diff(comp) >= 0 {
            return;
        }
        match self.sq.iter().position(|w| !w.done) {
            Some(i) if self.sq[i].started => {
                // Re-segment from `comp`, as a rewind would, keeping the record of the last
                // rewind (it stops repeated rewinds for one NAKed gap).
                let rewound_to = self.req.rewound_to;
                self.rewind(comp);
                self.req.rewound_to = rewound_to;
            }
            i => {
                self.req.cursor = i.unwrap_or(self.sq.len());
                self.req.next_psn = comp;
                self.req.since_ack_req = 0;
            }
        }
    }

    /// Go-back-N: resend everything from `psn` (IBTA §9.7.5.1.3). The WQE holding `psn` is
    /// re-segmented from that packet (a READ asks again for the part not yet received, an
    /// atomic is re-sent whole); later WQEs start over and get the same PSNs again.
    pub(crate) fn rewind(&mut self, psn: Psn) {
        // A go-back-N makes a timeout's probe pointless.
        self.req.probe = None;
        let Some(first) = self.wqe_holding(psn) else {
            return;
        };
        let (sent, at) = self.resend_point(first, psn);
        for w in self.sq.iter_mut().skip(first) {
            if w.done || !w.started {
                continue;
            }
            w.sent = 0;
            w.all_sent = false;
            w.started = false;
        }
        let w = &mut self.sq[first];
        w.started = true;
        w.sent = sent;
        self.req.cursor = first;
        self.req.next_psn = at;
        self.req.rewound_to = Some(at);
        self.req.since_ack_req = 0;
    }

    /// The index of the outstanding (started, not done) WQE that holds `psn`, or the first one
    /// after it; none if every outstanding WQE ends before `psn`.
    pub(crate) fn wqe_holding(&self, psn: Psn) -> Option<usize> {
        self.sq
            .iter()
            .position(|w| !w.done && w.started && psn.diff(w.last_psn()) <= 0)
    }

    /// Where resending `psn` starts in the (started) WQE at `i`: the bytes counted as sent
    /// before it, and the PSN of the packet to build. A SEND/WRITE resumes at `psn`'s packet, a
    /// READ asks again for the part not yet received, an atomic is re-sent whole.
    pub(crate) fn resend_point(&self, i: usize, psn: Psn) -> (u32, Psn) {
        let mtu = self.attrs.mtu.bytes();
        let w = &self.sq[i];
        if w.wr.op.is_atomic() {
            (0, w.first_psn)
        } else if w.wr.op.is_read_or_atomic() {
            (w.read_done, w.first_psn.add(w.read_done / mtu))
        } else {
            let k = psn.diff(w.first_psn).max(0) as u32;
            ((k * mtu).min(w.len), w.first_psn.add(k))
        }
    }
}

fn atomic_eth(op: &SendOp) -> AtomicEthRepr {
    match *op {
        SendOp::CompareSwap {
            remote_addr,
            rkey,
            compare,
            swap,
        } => AtomicEthRepr {
            va: remote_addr,
            rkey,
            swap_add: swap,
            compare,
        },
        SendOp::FetchAdd {
            remote_addr,
            rkey,
            add,
        } => AtomicEthRepr {
            va: remote_addr,
            rkey,
            swap_add: add,
            compare: 0,
        },
        _ => AtomicEthRepr {
            va: 0,
            rkey: 0,
            swap_add: 0,
            compare: 0,
        },
    }
}

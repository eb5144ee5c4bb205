//! Queue pairs: the IBTA state machine, attributes, the send and receive queues, and the split
//! into requester, completer and responder (as rxe divides them):
//!
//! - [`requester`] turns send WQEs into request packets (segmentation, PSNs, AckReq);
//! - [`completer`] consumes ACKs, NAKs and responses, completes send WQEs and drives retry;
//! - [`probe`] is the local ACK timeout's retransmission (one packet, go-back-N on evidence);
//! - [`responder`] executes incoming requests and queues ACKs, NAKs and responses.
//!
//! Each is a set of methods on [`Qp`] over its own state struct, so a rule lives in one place.

pub(crate) mod completer;
pub(crate) mod probe;
pub(crate) mod requester;
pub(crate) mod responder;
pub(crate) mod window;

pub use requester::SPLIT_READ_MAX_PACKETS;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use uroce_wire::Psn;

use crate::cq::{Completion, WcStatus};
use crate::device::Ctx;
use crate::mr::{Access, Spans};
use crate::wr::{RecvWr, SendWr};
use crate::{CqHandle, Error, PdHandle, SrqHandle};

/// The service type of a QP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QpType {
    /// Reliable Connected.
    Rc,
    /// Unreliable Connected.
    Uc,
    /// Unreliable Datagram.
    Ud,
}

/// QP states (IBTA §10.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QpState {
    /// Just created or reset: no traffic.
    Reset,
    /// Initialised: receives may be posted, nothing is processed.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Send queue drained: new send WQEs wait.
    Sqd,
    /// Send queue error (UC/UD): the send queue is flushed, receives go on.
    Sqe,
    /// Error: everything outstanding is flushed.
    Err,
}

/// A path MTU, 256 to 4096 bytes (IBTA §9.7.2 `ibv_mtu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Mtu {
    /// 256 bytes.
    M256,
    /// 512 bytes.
    M512,
    /// 1024 bytes.
    M1024,
    /// 2048 bytes.
    M2048,
    /// 4096 bytes.
    M4096,
}

impl Mtu {
    /// Bytes.
    pub const fn bytes(self) -> u32 {
        match self {
            Mtu::M256 => 256,
            Mtu::M512 => 512,
            Mtu::M1024 => 1024,
            Mtu::M2048 => 2048,
            Mtu::M4096 => 4096,
        }
    }
    /// From a byte count that is one of the five sizes.
    pub fn from_bytes(b: u32) -> Option<Mtu> {
        [Mtu::M256, Mtu::M512, Mtu::M1024, Mtu::M2048, Mtu::M4096]
            .into_iter()
            .find(|m| m.bytes() == b)
    }
}

/// Capacities fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCap {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth (ignored with an SRQ).
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Largest inline payload.
    pub max_inline_data: u32,
}

impl Default for QpCap {
    fn default() -> Self {
        QpCap {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 256,
        }
    }
}

/// What `create_qp` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpInit {
    /// Service type.
    pub qp_type: QpType,
    /// Protection domain.
    pub pd: PdHandle,
    /// CQ for send completions.
    pub send_cq: CqHandle,
    /// CQ for receive completions.
    pub recv_cq: CqHandle,
    /// Shared receive queue instead of the QP's own.
    pub srq: Option<SrqHandle>,
    /// Capacities.
    pub cap: QpCap,
    /// Every send WR generates a completion, whatever its flag.
    pub sq_sig_all: bool,
}

/// Attributes for `modify_qp`: `None` leaves a field unchanged. Which fields each transition
/// requires follows IBTA §11.2.5.3 Table 91 (and `ibv_modify_qp`'s man page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QpAttr {
    /// The state to move to.
    pub state: Option<QpState>,
    /// Partition key index (only index 0, P_Key 0xFFFF, exists).
    pub pkey_index: Option<u16>,
    /// Port (only 1).
    pub port: Option<u8>,
    /// Q_Key (UD).
    pub qkey: Option<u32>,
    /// Rights granted to remote requests (RC/UC).
    pub access: Option<Access>,
    /// Path MTU (RC/UC).
    pub path_mtu: Option<Mtu>,
    /// The peer's IP address (RC/UC address vector).
    pub dest_ip: Option<IpAddr>,
    /// The peer's QP number (RC/UC).
    pub dest_qpn: Option<u32>,
    /// First expected receive PSN.
    pub rq_psn: Option<u32>,
    /// First send PSN.
    pub sq_psn: Option<u32>,
    /// Incoming READ/atomic requests outstanding at once (RC).
    pub max_dest_rd_atomic: Option<u8>,
    /// Outgoing READ/atomic requests outstanding at once (RC).
    pub max_rd_atomic: Option<u8>,
    /// RNR NAK timer code sent to peers (RC).
    pub min_rnr_timer: Option<u8>,
    /// Local ACK timeout exponent (RC; 0 = infinite).
    pub timeout: Option<u8>,
    /// Transport retries (RC, 0–7).
    pub retry_cnt: Option<u8>,
    /// RNR retries (RC, 0–7, 7 = infinite).
    pub rnr_retry: Option<u8>,
}

/// Current attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attrs {
    pub qkey: u32,
    pub access: Access,
    pub mtu: Mtu,
    pub dest: Option<SocketAddr>,
    pub dest_qpn: u32,
    pub max_dest_rd_atomic: u8,
    pub max_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
}

/// A send WQE and its progress.
#[derive(Debug)]
pub(crate) struct SendWqe {
    pub wr: SendWr,
    /// Resolved local data (SGL spans, or the inline bytes as one span).
    pub data: Option<Spans>,
    pub len: u32,
    /// Segmentation reached this WQE and gave it `first_psn`.
    pub started: bool,
    /// PSN of the first packet, once started.
    pub first_psn: Psn,
    /// PSNs the WQE occupies (packets, or response packets for READ).
    pub npsn: u32,
    /// Bytes segmented so far (for READ: bytes the outstanding request covers).
    pub sent: u32,
    /// All request packets went out.
    pub all_sent: bool,
    /// READ: bytes of response placed so far.
    pub read_done: u32,
    /// Completion already generated (or WQE finished without one).
    pub done: bool,
    /// A local error found while building this WQE's packets, reported when the WQEs before it
    /// have completed ([`Qp::fail_local`]).
    pub failed: Option<WcStatus>,
    /// READ: asked for with one request per packet (`Config::split_reads`), decided when the
    /// WQE starts.
    pub split_read: bool,
}

impl SendWqe {
    pub fn last_psn(&self) -> Psn {
        self.first_psn.add(self.npsn.saturating_sub(1))
    }
    pub fn signaled(&self, sig_all: bool) -> bool {
        sig_all || self.wr.flags.signaled
    }
}

/// A receive WQE taken from the RQ or an SRQ.
#[derive(Debug, Clone)]
pub(crate) struct RecvWqe {
    pub wr: RecvWr,
}

/// Per-QP counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QpCounters {
    /// Packets sent (all kinds).
    pub tx_packets: u64,
    /// Packets received and accepted for processing.
    pub rx_packets: u64,
    /// Request packets retransmitted.
    pub retransmits: u64,
    /// Retries started by the local ACK timer.
    pub timeouts: u64,
    /// Timeout probes whose ACK acknowledged past them: the originals were only late.
    pub spurious_timeouts: u64,
    /// Timeout probes whose ACK acknowledged exactly them: go-back-N followed.
    pub probe_losses: u64,
    /// NAKs sent, by code (0 PSN seq, 1 invalid request, 2 remote access, 3 remote op).
    pub naks_sent: [u64; 4],
    /// NAKs received, by code.
    pub naks_received: [u64; 4],
    /// RNR NAKs sent.
    pub rnr_naks_sent: u64,
    /// RNR NAKs received.
    pub rnr_naks_received: u64,
    /// Duplicate requests seen by the responder.
    pub duplicates: u64,
    /// Requests ahead of the expected PSN.
    pub out_of_sequence: u64,
    /// Packets dropped for any reason (bad Q_Key, stale ACK, UC message broken, ...).
    pub dropped: u64,
    /// ACKs sent.
    pub acks_sent: u64,
}

/// A queue pair.
#[derive(Debug)]
pub struct Qp {
    pub(crate) qpn: u32,
    pub(crate) qp_type: QpType,
    pub(crate) state: QpState,
    pub(crate) pd: PdHandle,
    pub(crate) send_cq: CqHandle,
    pub(crate) recv_cq: CqHandle,
    pub(crate) srq: Option<SrqHandle>,
    pub(crate) cap: QpCap,
    pub(crate) sq_sig_all: bool,
    pub(crate) attrs: Attrs,
    pub(crate) sq: VecDeque<SendWqe>,
    pub(crate) rq: VecDeque<RecvWqe>,
    pub(crate) req: requester::Requester,
    pub(crate) resp: responder::Responder,
    pub(crate) counters: QpCounters,
    /// Counted in the device's number of QPs with PSNs outstanding (kept outside `req`,
    /// which a reset replaces).
    pub(crate) counted_busy: bool,
}

impl Qp {
    pub(crate) fn new(qpn: u32, init: QpInit) -> Self {
        Qp {
            qpn,
            qp_type: init.qp_type,
            state: QpState::Reset,
            pd: init.pd,
            send_cq: init.send_cq,
            recv_cq: init.recv_cq,
            srq: init.srq,
            cap: init.cap,
            sq_sig_all: init.sq_sig_all,
            attrs: Attrs {
                qkey: 0,
                access: Access::NONE,
                mtu: Mtu::M1024,
                dest: None,
                dest_qpn: 0,
                max_dest_rd_atomic: 0,
                max_rd_atomic: 0,
                min_rnr_timer: 0,
                timeout: 0,
                retry_cnt: 0,
                rnr_retry: 0,
            },
            sq: VecDeque::new(),
            rq: VecDeque::new(),
            req: requester::Requester::default(),
            resp: responder::Responder::default(),
            counters: QpCounters::default(),
            counted_busy: false,
        }
    }

    /// QP number.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// Current state.
    pub fn state(&self) -> QpState {
        self.state
    }

    /// Service type.
    pub fn qp_type(&self) -> QpType {
        self.qp_type
    }

    /// Counters.
    pub fn counters(&self) -> QpCounters {
        self.counters
    }

    /// Applies `attr`, validating the transition and its attributes first; nothing changes on
    /// error.
    pub(crate) fn modify(
        &mut self,
        attr: &QpAttr,
        port: u16,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Error> {
        use QpState as S;
        let from = self.state;
        let to = attr.state.unwrap_or(from);
        let ok = matches!(
            (from, to),
            (_, S::Reset)
                | (_, S::Err)
                | (S::Reset, S::Init)
                | (S::Init, S::Init)
                | (S::Init, S::Rtr)
                | (S::Rtr, S::Rts)
                | (S::Rts, S::Rts)
                | (S::Rts, S::Sqd)
                | (S::Sqd, S::Sqd)
                | (S::Sqd, S::Rts)
                | (S::Sqe, S::Rts)
        );
        if !ok {
            return Err(Error::BadState(from));
        }
        let rc = self.qp_type == QpType::Rc;
        let connected = self.qp_type != QpType::Ud;
        let need = |present: bool, name: &'static str| {
            if present {
                Ok(())
            } else {
                Err(Error::InvalidAttr(name))
            }
        };
        match (from, to) {
            (S::Reset, S::Init) => {
                need(attr.pkey_index.is_some(), "pkey_index")?;
                need(attr.port.is_some(), "port")?;
                if connected {
                    need(attr.access.is_some(), "access")?;
                } else {
                    need(attr.qkey.is_some(), "qkey")?;
                }
            }
            (S::Init, S::Rtr) if connected => {
                need(attr.path_mtu.is_some(), "path_mtu")?;
                need(attr.dest_ip.is_some(), "dest_ip")?;
                need(attr.dest_qpn.is_some(), "dest_qpn")?;
                need(attr.rq_psn.is_some(), "rq_psn")?;
                if rc {
                    need(attr.max_dest_rd_atomic.is_some(), "max_dest_rd_atomic")?;
                    need(attr.min_rnr_timer.is_some(), "min_rnr_timer")?;
                }
            }
            (S::Rtr, S::Rts) => {
                need(attr.sq_psn.is_some(), "sq_psn")?;
                if rc {
                    need(attr.timeout.is_some(), "timeout")?;
                    need(attr.retry_cnt.is_some(), "retry_cnt")?;
                    need(attr.rnr_retry.is_some(), "rnr_retry")?;
                    need(attr.max_rd_atomic.is_some(), "max_rd_atomic")?;
                }
            }
            _ => {}
        }
        if attr.pkey_index.is_some_and(|i| i != 0) {
            return Err(Error::InvalidAttr("pkey_index"));
        }
        if attr.port.is_some_and(|p| p != 1) {
            return Err(Error::InvalidAttr("port"));
        }
        if attr.dest_qpn.is_some_and(|q| q > 0xFF_FFFF) {
            return Err(Error::InvalidAttr("dest_qpn"));
        }
        if attr.retry_cnt.is_some_and(|r| r > 7) || attr.rnr_retry.is_some_and(|r| r > 7) {
            return Err(Error::InvalidAttr("retry count above 7"));
        }
        if attr.min_rnr_timer.is_some_and(|t| t > 31) || attr.timeout.is_some_and(|t| t > 31) {
            return Err(Error::InvalidAttr("timer code above 31"));
        }
        let max_rd = ctx.config.max_rd_atomic;
        if attr.max_rd_atomic.is_some_and(|r| r > max_rd)
            || attr.max_dest_rd_atomic.is_some_and(|r| r > max_rd)
        {
            return Err(Error::Limit {
                resource: crate::Resource::RdAtomic,
                max: u64::from(max_rd),
            });
        }
        if let (Some(d), Some(local)) = (attr.dest_ip, Some(ctx.config.local_ip)) {
            if d.is_ipv4() != local.is_ipv4() {
                return Err(Error::InvalidAttr(
                    "dest_ip family differs from the device's",
                ));
            }
        }

        // Validated: apply.
        let a = &mut self.attrs;
        if let Some(v) = attr.qkey {
            a.qkey = v;
        }
        if let Some(v) = attr.access {
            a.access = v;
        }
        if let Some(v) = attr.path_mtu {
            a.mtu = v;
        }
        if let Some(v) = attr.dest_ip {
            a.dest = Some(SocketAddr::new(v, port));
        }
        if let Some(v) = attr.dest_qpn {
            a.dest_qpn = v;
        }
        if let Some(v) = attr.max_dest_rd_atomic {
            a.max_dest_rd_atomic = v;
        }
        if let Some(v) = attr.max_rd_atomic {
            a.max_rd_atomic = v;
        }
        if let Some(v) = attr.min_rnr_timer {
            a.min_rnr_timer = v;
        }
        if let Some(v) = attr.timeout {
            a.timeout = v;
        }
        if let Some(v) = attr.retry_cnt {
            a.retry_cnt = v;
        }
        if let Some(v) = attr.rnr_retry {
            a.rnr_retry = v;
        }
        if let Some(v) = attr.rq_psn {
            self.resp.reset(Psn::new(v));
        }
        if let Some(v) = attr.sq_psn {
            self.req.reset(Psn::new(v), a.retry_cnt, a.rnr_retry);
        } else if attr.retry_cnt.is_some() || attr.rnr_retry.is_some() {
            self.req.retries_left = a.retry_cnt;
            self.req.rnr_retries_left = a.rnr_retry;
        }
        if from != to {
            tracing::debug!(qpn = self.qpn, ?from, ?to, "QP state change");
        }
        match to {
            S::Reset => {
                self.sq.clear();
                self.rq.clear();
                self.req = requester::Requester::default();
                self.resp = responder::Responder::default();
                self.state = S::Reset;
            }
            // Asked for: no QP_FATAL event.
            S::Err => {
                self.state = S::Err;
                self.flush(ctx);
            }
            _ => self.state = to,
        }
        Ok(())
    }

    /// Moves to ERR and flushes every outstanding WQE with `WR_FLUSH_ERR` (IBTA §10.3.1.2).
    /// The engine found the error itself, so it raises `QpFatal` (once).
    pub(crate) fn enter_error(&mut self, ctx: &mut Ctx<'_>) {
        if self.state != QpState::Err {
            tracing::debug!(qpn = self.qpn, from = ?self.state, "QP to error");
            ctx.raise(crate::device::AsyncEvent::QpFatal(self.qpn));
        }
        self.state = QpState::Err;
        self.flush(ctx);
    }

    /// Completes every pending WQE with `WR_FLUSH_ERR`.
    pub(crate) fn flush(&mut self, ctx: &mut Ctx<'_>) {
        while let Some(w) = self.sq.pop_front() {
            if !w.done {
                let c = Completion::new(
                    w.wr.wr_id,
                    WcStatus::WrFlushErr,
                    w.wr.op.wc_opcode(),
                    self.qpn,
                );
                ctx.complete(self.send_cq, c);
            }
        }
        self.req.on_flush();
        while let Some(w) = self.rq.pop_front() {
            let c = Completion::new(
                w.wr.wr_id,
                WcStatus::WrFlushErr,
                crate::WcOpcode::Recv,
                self.qpn,
            );
            ctx.complete(self.recv_cq, c);
        }
        if let Some(w) = self.resp.take_current_recv() {
            let c = Completion::new(
                w.wr.wr_id,
                WcStatus::WrFlushErr,
                crate::WcOpcode::Recv,
                self.qpn,
            );
            ctx.complete(self.recv_cq, c);
        }
        self.resp.on_flush();
    }

    /// Queues a send WR (`ibv_post_send`).
    pub(crate) fn post_send(&mut self, wr: SendWr, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        match self.state {
            QpState::Rts | QpState::Sqd => {}
            // Verbs allow posting in ERR: the WR completes at once with a flush error.
            QpState::Err => {
                let c =
                    Completion::new(wr.wr_id, WcStatus::WrFlushErr, wr.op.wc_opcode(), self.qpn);
                ctx.complete(self.send_cq, c);
                return Ok(());
            }
            s => return Err(Error::BadState(s)),
        }
        if self.sq.len() >= self.cap.max_send_wr as usize {
            return Err(Error::QueueFull("send"));
        }
        match &wr.payload {
            crate::Payload::Inline(v) if v.len() > self.cap.max_inline_data as usize => {
                return Err(Error::InvalidArgument("inline data too long"))
            }
            p if p.sges().len() > self.cap.max_send_sge as usize => {
                return Err(Error::InvalidArgument("too many SGEs"))
            }
            _ => {}
        }
        let len = u32::try_from(wr.payload.len())
            .map_err(|_| Error::InvalidArgument("message longer than 2^31"))?;
        if len > 1 << 31 {
            return Err(Error::InvalidArgument("message longer than 2^31"));
        }
        match (self.qp_type, &wr.op) {
            (QpType::Ud, crate::SendOp::Send | crate::SendOp::SendWithImm(_))
                if wr.ud.is_none() =>
            {
                return Err(Error::InvalidArgument("UD send without destination"));
            }
            (QpType::Ud, crate::SendOp::Send | crate::SendOp::SendWithImm(_)) => {}
            (QpType::Ud, _) => return Err(Error::InvalidArgument("UD supports only SEND")),
            (QpType::Uc, op) if op.is_read_or_atomic() => {
                return Err(Error::InvalidArgument("UC supports no READ or atomics"))
            }
            // The IBTA opcode table (§9.2.3) has SEND with Invalidate (0x16/0x17) for RC
            // only; without this a UC QP sent it as RC packets, which the peer drops while we
            // report success.
            (QpType::Uc, crate::SendOp::SendWithInv(_)) => {
                return Err(Error::InvalidArgument(
                    "UC supports no SEND with Invalidate",
                ))
            }
            (_, op) if op.is_atomic() && len != 8 => {
                return Err(Error::InvalidArgument("atomic needs one 8-byte SGE"));
            }
            _ => {}
        }
        self.sq.push_back(SendWqe {
            wr,
            data: None,
            len,
            started: false,
            first_psn: Psn::new(0),
            npsn: 0,
            sent: 0,
            all_sent: false,
            read_done: 0,
            split_read: false,
            done: false,
            failed: None,
        });
        Ok(())
    }

    /// Queues a receive WR on the QP's own receive queue (`ibv_post_recv`).
    pub(crate) fn post_recv(&mut self, wr: RecvWr, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        if self.srq.is_some() {
            return Err(Error::InvalidArgument("QP uses an SRQ"));
        }
        if self.state == QpState::Reset {
            return Err(Error::BadState(self.state));
        }
        if self.state == QpState::Err {
            let c = Completion::new(
                wr.wr_id,
                WcStatus::WrFlushErr,
                crate::WcOpcode::Recv,
                self.qpn,
            );
            ctx.complete(self.recv_cq, c);
            return Ok(());
        }
        if self.rq.len() >= self.cap.max_recv_wr as usize {
            return Err(Error::QueueFull("receive"));
        }
        if wr.sgl.len() > self.cap.max_recv_sge as usize {
            return Err(Error::InvalidArgument("too many SGEs"));
        }
        self.rq.push_back(RecvWqe { wr });
        Ok(())
    }

    /// Whether the QP processes incoming packets in its state.
    pub(crate) fn can_receive(&self) -> bool {
        matches!(
            self.state,
            QpState::Rtr | QpState::Rts | QpState::Sqd | QpState::Sqe
        )
    }

    /// Earliest timer of requester or completer.
    pub(crate) fn next_timeout(&self) -> Option<crate::Instant> {
        match (self.req.next_timeout(), self.resp.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

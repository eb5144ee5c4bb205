//! The responder: checks and executes incoming requests and queues what goes back (rxe's
//! `rxe_resp.c`; IBTA §9.7.3–§9.7.5.2).
//!
//! RC order of checks for a request with PSN `p` against the expected PSN `e`:
//! 1. `p > e`: NAK PSN sequence error carrying `e`, once until `e` arrives (§9.7.5.2.1).
//! 2. `p < e`: duplicate. SEND/WRITE are re-ACKed; a READ is replayed from `p` out of the saved
//!    responder resource; an atomic is answered with its saved original value, never executed
//!    twice (§9.7.5.2.3).
//! 3. Opcode sequence (FIRST/MIDDLE/LAST against the message in progress) and the QP's remote
//!    access rights: otherwise NAK invalid request.
//! 4. SEND needs a receive WQE: otherwise RNR NAK with `min_rnr_timer`.
//! 5. R_Key, rights, bounds and lengths: NAK remote access error or invalid request.
//! 6. Execute; AckReq asks for an ACK (coalesced: one ACK covers all requests seen so far).
//!    With `Config::ack_delay` a positive ACK to SEND/WRITE is held until the QP's next
//!    request packets have gone out (it then follows them in the same transmit) or the delay
//!    has passed, whichever comes first.
//!
//! NAK invalid request / remote access / remote operational move the QP to ERR (rxe does the
//! same). UC drops a broken message silently and resynchronises on the next FIRST/ONLY. UD
//! checks the Q_Key.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use uroce_wire::{
    AckSyndrome, AethRepr, AtomicAckEthRepr, BthRepr, NakCode, Opcode, Operation, Packet,
    PacketRepr, Position, Psn,
};

use super::requester::{gather, scatter};
use super::{Qp, QpType, RecvWqe};
use crate::cq::{Completion, WcOpcode, WcStatus};
use crate::device::Ctx;
use crate::mr::{Access, KeyError, Span};
use crate::Instant;

/// Credit field rxe puts in every ACK: "unlimited" (IBTA §9.7.7.2.5 invalid credit count).
const ACK_UNLIMITED: u8 = 0x1F;

/// The Q_Key of the general services interface, QP1 (IBTA §13.4.6.1).
pub const GSI_QKEY: u32 = 0x8001_0000;

/// Bytes of GRH in front of UD receive data (IBTA §11.4.1.2).
pub const GRH_LEN: usize = 40;

/// A receive WQE being filled by a multi-packet SEND.
#[derive(Debug)]
pub(crate) struct CurRecv {
    pub wqe: RecvWqe,
    pub spans: Vec<Span>,
    pub capacity: u64,
    pub offset: u64,
}

/// An RDMA WRITE in progress.
#[derive(Debug)]
pub(crate) struct CurWrite {
    pub span: Span,
    pub offset: u32,
    pub dma_len: u32,
}

/// Saved READ/atomic request, for duplicates (IBTA §9.7.5.2.3 "responder resources").
#[derive(Clone)]
pub(crate) struct Resource {
    pub first_psn: Psn,
    pub last_psn: Psn,
    pub kind: ResKind,
}

#[derive(Clone)]
pub(crate) enum ResKind {
    Read { span: Span, len: u32 },
    Atomic { orig: u64 },
}

impl core::fmt::Debug for Resource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Resource({}..={})", self.first_psn, self.last_psn)
    }
}

/// A response waiting to be sent, in PSN order.
#[derive(Debug)]
pub(crate) enum Out {
    Ack {
        psn: Psn,
        syndrome: AckSyndrome,
    },
    Atomic {
        psn: Psn,
        orig: u64,
    },
    /// READ response stream: `len` bytes of `span` from `offset`, PSNs from `psn`.
    Read {
        first_psn: Psn,
        psn: Psn,
        span: Span,
        offset: u32,
        end: u32,
        started: bool,
    },
}

/// Responder state.
#[derive(Debug, Default)]
pub(crate) struct Responder {
    pub epsn: Psn,
    pub msn: u32,
    pub nak_sent: bool,
    pub in_msg: Option<Operation>,
    pub recv: Option<CurRecv>,
    pub write: Option<CurWrite>,
    pub uc_drop: bool,
    pub resources: VecDeque<Resource>,
    pub out: VecDeque<Out>,
    /// Deadline of a held ACK (`Config::ack_delay`): set while `out` holds only that positive
    /// ACK, which waits for the QP's next request packets or this instant.
    pub ack_hold: Option<Instant>,
    /// Request packets went out while the ACK was held: it follows once they are done.
    pub ack_follows: bool,
}

impl Responder {
    pub fn reset(&mut self, rq_psn: Psn) {
        self.epsn = rq_psn;
    }

    pub fn take_current_recv(&mut self) -> Option<RecvWqe> {
        self.recv.take().map(|r| r.wqe)
    }

    pub fn on_flush(&mut self) {
        self.out.clear();
        self.ack_hold = None;
        self.ack_follows = false;
        self.in_msg = None;
        self.write = None;
    }

    /// Queues an ACK; `hold` is the deadline to hold a positive one until (`None`: send it
    /// with the next transmit).
    fn push_ack(&mut self, psn: Psn, syndrome: AckSyndrome, hold: Option<Instant>) {
        // Coalesce: a newer ACK replaces one not yet sent (NAKs are never replaced).
        let coalesced = matches!(
            (self.out.back(), syndrome),
            (
                Some(Out::Ack {
                    syndrome: AckSyndrome::Ack { .. },
                    ..
                }),
                AckSyndrome::Ack { .. },
            )
        );
        match self.out.back_mut() {
            // Replaced where it stands (one ACK per packet of a small-WRITE stream).
            Some(back) if coalesced => *back = Out::Ack { psn, syndrome },
            _ => self.out.push_back(Out::Ack { psn, syndrome }),
        }
        self.ack_hold = match hold {
            // An ACK that must go now takes a held one with it.
            None => None,
            // Coalesced into a held ACK: the first request's deadline stands (the bound is per
            // request); into one already released: still released.
            Some(_) if coalesced => self.ack_hold,
            // Only an ACK alone in the queue is held: behind other responses it goes anyway.
            Some(t) if self.out.len() == 1 => Some(t),
            Some(_) => None,
        };
    }

    /// Whether the only queued response is a positive ACK held until after `now`.
    fn ack_held(&self, now: Instant) -> bool {
        self.ack_hold.is_some_and(|t| now < t)
            && self.out.len() == 1
            && matches!(
                self.out.front(),
                Some(Out::Ack {
                    syndrome: AckSyndrome::Ack { .. },
                    ..
                })
            )
    }

    /// The instant a held ACK must go out by.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.ack_hold.filter(|_| !self.out.is_empty())
    }

    /// Releases a held ACK whose deadline passed (from the QP's timer).
    pub fn on_timeout(&mut self, now: Instant) {
        if self.ack_hold.is_some_and(|t| t <= now) {
            self.ack_hold = None;
        }
    }
}

/// Why a request failed: the NAK to send (RC) and the status for a receive WQE in use.
struct Fail(NakCode, WcStatus);

fn key_fail(e: KeyError) -> Fail {
    match e {
        // IBTA §9.7.5.2.4: misaligned atomics are invalid requests.
        KeyError::Misaligned => Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr),
        _ => Fail(NakCode::RemoteAccessError, WcStatus::RemAccessErr),
    }
}

impl Qp {
    /// Handles an incoming request packet (or, for responses, hands over to the completer).
    pub(crate) fn handle_packet(
        &mut self,
        repr: &PacketRepr,
        pkt: &Packet<&[u8]>,
        from: SocketAddr,
        ctx: &mut Ctx<'_>,
    ) {
        match pkt.info().operation {
            Operation::Acknowledge | Operation::AtomicAcknowledge | Operation::RdmaReadResponse => {
                self.handle_response(repr, pkt, ctx)
            }
            _ => match self.qp_type {
                QpType::Rc => self.rc_request(repr, pkt, ctx),
                QpType::Uc => self.uc_request(repr, pkt, ctx),
                QpType::Ud => self.ud_request(repr, pkt, from, ctx),
            },
        }
    }

    fn nak(&mut self, code: NakCode, psn: Psn) {
        self.counters.naks_sent[usize::from(code.code().min(3))] += 1;
        self.resp.out.push_back(Out::Ack {
            psn,
            syndrome: AckSyndrome::Nak(code),
        });
    }

    /// Fails the request with a NAK and moves the QP to ERR (the receive WQE in use, if any,
    /// completes with the error).
    fn rc_fail(&mut self, f: Fail, psn: Psn, ctx: &mut Ctx<'_>) {
        self.nak(f.0, psn);
        if let Some(r) = self.resp.recv.take() {
            let c = Completion::new(r.wqe.wr.wr_id, f.1, WcOpcode::Recv, self.qpn);
            ctx.complete(self.recv_cq, c);
        }
        // Keep the NAK: entering ERR clears the output queue, so re-queue it after.
        let nak = self.resp.out.pop_back();
        self.enter_error(ctx);
        if let Some(n) = nak {
            self.resp.out.push_back(n);
        }
    }

    fn take_recv_wqe(&mut self, ctx: &mut Ctx<'_>) -> Option<RecvWqe> {
        // With an SRQ the QP's own queue is empty but for a WQE a broken UC message handed
        // back (see `abandon_uc_message`): that one serves the next message first.
        if self.srq.is_some() {
            if let Some(w) = self.rq.pop_front() {
                return Some(w);
            }
        }
        match self.srq {
            Some(s) => ctx.srqs.get_mut(&s.0).and_then(|q| q.queue.pop_front()),
            None => self.rq.pop_front(),
        }
    }

    fn resolve_recv(&self, wqe: RecvWqe, ctx: &Ctx<'_>) -> Result<CurRecv, (RecvWqe, WcStatus)> {
        let mut spans = Vec::with_capacity(wqe.wr.sgl.len());
        let mut capacity = 0u64;
        for s in &wqe.wr.sgl {
            match ctx.mrs.check(
                self.pd,
                s.lkey,
                s.addr,
                s.length as usize,
                Access::LOCAL_WRITE,
            ) {
                Ok(sp) => spans.push(sp),
                Err(_) => return Err((wqe, WcStatus::LocProtErr)),
            }
            capacity += u64::from(s.length);
        }
        Ok(CurRecv {
            wqe,
            spans,
            capacity,
            offset: 0,
        })
    }

    fn rc_request(&mut self, repr: &PacketRepr, pkt: &Packet<&[u8]>, ctx: &mut Ctx<'_>) {
        let psn = Psn::new(repr.bth.psn);
        let d = psn.diff(self.resp.epsn);
        let info = pkt.info();
        if d > 0 {
            self.counters.out_of_sequence += 1;
            if !self.resp.nak_sent {
                self.resp.nak_sent = true;
                let e = self.resp.epsn;
                self.nak(NakCode::PsnSequenceError, e);
            }
            return;
        }
        if d < 0 {
            self.counters.duplicates += 1;
            self.duplicate(repr, psn);
            return;
        }
        self.resp.nak_sent = false;
        if let Err(f) = self.check_sequence_and_rights(info) {
            self.rc_fail(f, psn, ctx);
            return;
        }
        let mtu = self.attrs.mtu.bytes() as usize;
        match info.operation {
            Operation::Send | Operation::RdmaWrite => {
                // Payload size rules (IBTA C9-87..89): FIRST/MIDDLE carry exactly one MTU,
                // LAST 1..=MTU, ONLY 0..=MTU.
                let n = pkt.payload().len();
                let size_ok = match info.position {
                    Position::First | Position::Middle => n == mtu,
                    Position::Last => (1..=mtu).contains(&n),
                    _ => n <= mtu,
                };
                if !size_ok {
                    self.rc_fail(Fail(NakCode::InvalidRequest, WcStatus::LocLenErr), psn, ctx);
                    return;
                }
                let r = if info.operation == Operation::Send {
                    self.place_send(repr, pkt, ctx)
                } else {
                    self.place_write(repr, pkt, ctx)
                };
                match r {
                    Ok(true) => {}
                    Ok(false) => {
                        // RNR: no receive WQE. The packet is dropped and `e` stays.
                        self.counters.rnr_naks_sent += 1;
                        let t = self.attrs.min_rnr_timer;
                        self.resp.out.push_back(Out::Ack {
                            psn,
                            syndrome: AckSyndrome::RnrNak { timer: t },
                        });
                        return;
                    }
                    Err(f) => {
                        self.rc_fail(f, psn, ctx);
                        return;
                    }
                }
                self.resp.epsn = psn.add(1);
                if info.position.ends() {
                    self.resp.msn = (self.resp.msn + 1) & 0xFF_FFFF;
                }
                if repr.bth.ack_req {
                    self.counters.acks_sent += 1;
                    let delay = ctx.config.ack_delay;
                    let hold = (!delay.is_zero()).then(|| ctx.now + delay);
                    self.resp.push_ack(
                        psn,
                        AckSyndrome::Ack {
                            credits: ACK_UNLIMITED,
                        },
                        hold,
                    );
                }
            }
            Operation::RdmaReadRequest => {
                let Some(reth) = repr.reth else { return };
                // IBTA §9.4.4: a message is at most 2^31 bytes.
                if reth.dma_len > 1 << 31 {
                    return self.rc_fail(
                        Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr),
                        psn,
                        ctx,
                    );
                }
                let npsn = reth.dma_len.div_ceil(mtu as u32).max(1);
                let span = match ctx.mrs.check(
                    self.pd,
                    reth.rkey,
                    reth.va,
                    reth.dma_len as usize,
                    Access::REMOTE_READ,
                ) {
                    Ok(s) => s,
                    Err(e) => return self.rc_fail(key_fail(e), psn, ctx),
                };
                let last_psn = psn.add(npsn - 1);
                if !self.add_resource(Resource {
                    first_psn: psn,
                    last_psn,
                    kind: ResKind::Read {
                        span: span.clone(),
                        len: reth.dma_len,
                    },
                }) {
                    return self.rc_fail(
                        Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr),
                        psn,
                        ctx,
                    );
                }
                self.resp.out.push_back(Out::Read {
                    first_psn: psn,
                    psn,
                    span,
                    offset: 0,
                    end: reth.dma_len,
                    started: false,
                });
                self.resp.msn = (self.resp.msn + 1) & 0xFF_FFFF;
                self.resp.epsn = last_psn.add(1);
            }
            Operation::CompareSwap | Operation::FetchAdd => {
                let Some(a) = repr.atomic_eth else { return };
                let span = match ctx.mrs.check_atomic(self.pd, a.rkey, a.va) {
                    Ok(s) => s,
                    Err(e) => return self.rc_fail(key_fail(e), psn, ctx),
                };
                // Reserve the resource before executing, so an atomic is never executed
                // without a saved result to answer its duplicates with.
                if !self.can_add_resource() {
                    return self.rc_fail(
                        Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr),
                        psn,
                        ctx,
                    );
                }
                let orig = if info.operation == Operation::CompareSwap {
                    span.compare_swap(a.compare, a.swap_add)
                } else {
                    span.fetch_add(a.swap_add)
                };
                self.add_resource(Resource {
                    first_psn: psn,
                    last_psn: psn,
                    kind: ResKind::Atomic { orig },
                });
                self.resp.out.push_back(Out::Atomic { psn, orig });
                self.resp.msn = (self.resp.msn + 1) & 0xFF_FFFF;
                self.resp.epsn = psn.add(1);
            }
            _ => {}
        }
    }

    /// Opcode sequence and QP access rights (IBTA C9-? / rxe `check_op_seq`, `check_op_valid`).
    fn check_sequence_and_rights(&self, info: &uroce_wire::OpcodeInfo) -> Result<(), Fail> {
        let inv = Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr);
        match (self.resp.in_msg, info.position) {
            (Some(op), Position::Middle | Position::Last) if op == info.operation => {}
            (None, Position::First | Position::Only) => {}
            _ => return Err(inv),
        }
        let need = match info.operation {
            Operation::RdmaWrite => Some(Access::REMOTE_WRITE),
            Operation::RdmaReadRequest => Some(Access::REMOTE_READ),
            Operation::CompareSwap | Operation::FetchAdd => Some(Access::REMOTE_ATOMIC),
            _ => None,
        };
        if need.is_some_and(|n| !self.attrs.access.contains(n)) {
            return Err(inv);
        }
        Ok(())
    }

    fn can_add_resource(&self) -> bool {
        let max = usize::from(self.attrs.max_dest_rd_atomic);
        if max == 0 {
            return false;
        }
        self.resp.resources.len() < max || self.oldest_resource_idle()
    }

    fn oldest_resource_idle(&self) -> bool {
        let Some(r) = self.resp.resources.front() else {
            return true;
        };
        !self
            .resp
            .out
            .iter()
            .any(|o| matches!(o, Out::Read { first_psn, .. } if *first_psn == r.first_psn))
    }

    /// Saves a resource, evicting the oldest one whose response has gone out.
    fn add_resource(&mut self, r: Resource) -> bool {
        if !self.can_add_resource() {
            return false;
        }
        if self.resp.resources.len() >= usize::from(self.attrs.max_dest_rd_atomic) {
            self.resp.resources.pop_front();
        }
        self.resp.resources.push_back(r);
        true
    }

    fn duplicate(&mut self, repr: &PacketRepr, psn: Psn) {
        match repr.bth.opcode.info().operation {
            Operation::Send | Operation::RdmaWrite => {
                // Re-ACK with the last PSN received (rxe `duplicate_request`), at once: the
                // requester is retrying.
                let last = self.resp.epsn.sub(1);
                self.counters.acks_sent += 1;
                self.resp.push_ack(
                    last,
                    AckSyndrome::Ack {
                        credits: ACK_UNLIMITED,
                    },
                    None,
                );
            }
            Operation::RdmaReadRequest => {
                let mtu = self.attrs.mtu.bytes();
                let found = self.resp.resources.iter().find(|r| {
                    matches!(r.kind, ResKind::Read { .. })
                        && psn.diff(r.first_psn) >= 0
                        && psn.diff(r.last_psn) <= 0
                });
                let Some(Resource {
                    first_psn,
                    kind: ResKind::Read { span, len },
                    ..
                }) = found.cloned()
                else {
                    self.counters.dropped += 1;
                    return;
                };
                let offset = (psn.diff(first_psn) as u32).saturating_mul(mtu).min(len);
                // Replace a stream of the same READ still queued, then replay from `psn`.
                self.resp
                    .out
                    .retain(|o| !matches!(o, Out::Read { first_psn: f, .. } if *f == first_psn));
                self.resp.out.push_back(Out::Read {
                    first_psn,
                    psn,
                    span,
                    offset,
                    end: len,
                    started: false,
                });
            }
            Operation::CompareSwap | Operation::FetchAdd => {
                let found = self.resp.resources.iter().find_map(|r| match r.kind {
                    ResKind::Atomic { orig } if r.first_psn == psn => Some(orig),
                    _ => None,
                });
                match found {
                    Some(orig) => self.resp.out.push_back(Out::Atomic { psn, orig }),
                    None => self.counters.dropped += 1,
                }
            }
            _ => self.counters.dropped += 1,
        }
    }

    /// Places SEND payload into the current receive WQE. `Ok(false)` means RNR.
    fn place_send(
        &mut self,
        repr: &PacketRepr,
        pkt: &Packet<&[u8]>,
        ctx: &mut Ctx<'_>,
    ) -> Result<bool, Fail> {
        let info = pkt.info();
        if info.position.starts() {
            let Some(wqe) = self.take_recv_wqe(ctx) else {
                return Ok(false);
            };
            match self.resolve_recv(wqe, ctx) {
                Ok(r) => self.resp.recv = Some(r),
                Err((wqe, status)) => {
                    let c = Completion::new(wqe.wr.wr_id, status, WcOpcode::Recv, self.qpn);
                    ctx.complete(self.recv_cq, c);
                    return Err(Fail(NakCode::RemoteOperationalError, status));
                }
            }
            self.resp.in_msg = Some(Operation::Send);
        }
        let Some(cur) = self.resp.recv.as_mut() else {
            return Err(Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr));
        };
        let data = pkt.payload();
        if cur.offset + data.len() as u64 > cur.capacity {
            return Err(Fail(NakCode::InvalidRequest, WcStatus::LocLenErr));
        }
        ctx.put(&cur.spans, cur.offset as usize, data);
        cur.offset += data.len() as u64;
        if info.position.ends() {
            self.resp.in_msg = None;
            let Some(cur) = self.resp.recv.take() else {
                return Ok(true);
            };
            let mut c = Completion::new(
                cur.wqe.wr.wr_id,
                WcStatus::Success,
                WcOpcode::Recv,
                self.qpn,
            );
            c.byte_len = cur.offset as u32;
            c.imm = repr.imm;
            c.solicited = repr.bth.solicited;
            if let Some(rkey) = repr.ieth {
                if ctx.mrs.invalidate(self.pd, rkey).is_err() {
                    // IBTA §10.6.7.2.1: an invalid R_Key to invalidate is an invalid request;
                    // the receive completes with the error.
                    let c = Completion::new(
                        cur.wqe.wr.wr_id,
                        WcStatus::RemInvReqErr,
                        WcOpcode::Recv,
                        self.qpn,
                    );
                    ctx.complete(self.recv_cq, c);
                    return Err(Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr));
                }
                c.invalidated_rkey = Some(rkey);
            }
            ctx.complete(self.recv_cq, c);
        }
        Ok(true)
    }

    /// Places RDMA WRITE payload. `Ok(false)` means RNR (WRITE with immediate needs a receive
    /// WQE for its completion).
    fn place_write(
        &mut self,
        repr: &PacketRepr,
        pkt: &Packet<&[u8]>,
        ctx: &mut Ctx<'_>,
    ) -> Result<bool, Fail> {
        let info = pkt.info();
        // Check for the receive WQE first: an RNR NAK must not leave data half placed.
        let needs_recv = info.immediate;
        if needs_recv
            && self.rq.is_empty()
            && self
                .srq
                .is_none_or(|s| ctx.srqs.get(&s.0).is_none_or(|q| q.queue.is_empty()))
        {
            return Ok(false);
        }
        if info.position.starts() {
            let Some(reth) = repr.reth else {
                return Err(Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr));
            };
            let (key, va, len) = (reth.rkey, reth.va, reth.dma_len as usize);
            if info.position.ends() {
                // ONLY: checked and placed in this call, so the region is borrowed rather
                // than held (no reference count moved per message of a small-WRITE stream).
                // The same checks in the same order as FIRST + LAST below.
                let span = ctx
                    .mrs
                    .check_ref(self.pd, key, va, len, Access::REMOTE_WRITE)
                    .map_err(key_fail)?;
                self.resp.write = None;
                let data = pkt.payload();
                // IBTA C9-91: the payload is the whole RETH length.
                if data.len() != len {
                    self.resp.in_msg = Some(Operation::RdmaWrite);
                    return Err(Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr));
                }
                span.write(0, data);
                self.resp.in_msg = None;
                if needs_recv {
                    self.complete_write_imm(reth.dma_len, repr, ctx);
                }
                return Ok(true);
            }
            let span = ctx
                .mrs
                .check(self.pd, key, va, len, Access::REMOTE_WRITE)
                .map_err(key_fail)?;
            self.resp.write = Some(CurWrite {
                span,
                offset: 0,
                dma_len: reth.dma_len,
            });
            self.resp.in_msg = Some(Operation::RdmaWrite);
        }
        let Some(w) = self.resp.write.as_mut() else {
            return Err(Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr));
        };
        let data = pkt.payload();
        let end = w.offset as u64 + data.len() as u64;
        // The payload may not overrun the RETH length, and the last packet must end it
        // exactly (IBTA C9-91).
        if end > u64::from(w.dma_len) || (info.position.ends() && end != u64::from(w.dma_len)) {
            return Err(Fail(NakCode::InvalidRequest, WcStatus::RemInvReqErr));
        }
        ctx.put(std::slice::from_ref(&w.span), w.offset as usize, data);
        w.offset = end as u32;
        if info.position.ends() {
            self.resp.in_msg = None;
            let dma_len = w.dma_len;
            self.resp.write = None;
            if needs_recv {
                self.complete_write_imm(dma_len, repr, ctx);
            }
        }
        Ok(true)
    }

    /// Completes a WRITE with immediate that ended: it consumes a receive WQE.
    fn complete_write_imm(&mut self, dma_len: u32, repr: &PacketRepr, ctx: &mut Ctx<'_>) {
        if let Some(wqe) = self.take_recv_wqe(ctx) {
            let mut c = Completion::new(
                wqe.wr.wr_id,
                WcStatus::Success,
                WcOpcode::RecvRdmaWithImm,
                self.qpn,
            );
            c.byte_len = dma_len;
            c.imm = repr.imm;
            c.solicited = repr.bth.solicited;
            ctx.complete(self.recv_cq, c);
        }
    }

    fn uc_request(&mut self, repr: &PacketRepr, pkt: &Packet<&[u8]>, ctx: &mut Ctx<'_>) {
        let psn = Psn::new(repr.bth.psn);
        let info = pkt.info();
        if psn != self.resp.epsn || self.resp.uc_drop {
            // A gap breaks the message in progress; resynchronise on the next FIRST/ONLY
            // (IBTA §9.8.2.1; rxe sets `drop_msg`).
            if self.resp.in_msg.is_some() {
                self.abandon_uc_message();
            }
            if !info.position.starts() {
                self.counters.dropped += 1;
                self.resp.uc_drop = true;
                self.resp.epsn = psn.add(1);
                return;
            }
            self.resp.uc_drop = false;
        }
        self.resp.epsn = psn.add(1);
        if self.check_sequence_and_rights(info).is_err() {
            self.counters.dropped += 1;
            self.abandon_uc_message();
            self.resp.uc_drop = !info.position.ends();
            return;
        }
        let mtu = self.attrs.mtu.bytes() as usize;
        let n = pkt.payload().len();
        let size_ok = match info.position {
            Position::First | Position::Middle => n == mtu,
            Position::Last => (1..=mtu).contains(&n),
            _ => n <= mtu,
        };
        let r = if !size_ok {
            Err(Fail(NakCode::InvalidRequest, WcStatus::LocLenErr))
        } else if info.operation == Operation::Send {
            self.place_send(repr, pkt, ctx)
        } else {
            self.place_write(repr, pkt, ctx)
        };
        match r {
            Ok(true) => {}
            // No receive WQE: UC drops the message silently.
            Ok(false) | Err(_) => {
                self.counters.dropped += 1;
                self.abandon_uc_message();
                self.resp.uc_drop = !info.position.ends();
            }
        }
    }

    /// Gives up a broken UC message: a partly filled receive WQE goes back to be reused.
    fn abandon_uc_message(&mut self) {
        self.resp.in_msg = None;
        self.resp.write = None;
        if let Some(r) = self.resp.recv.take() {
            // The WQE serves the next message. With an SRQ it used to be dropped without a
            // completion (lost to the application); it is now held in the QP's own (otherwise
            // unused) queue, taken first by `take_recv_wqe` and flushed on error like any
            // posted WQE: a receive WQE must not vanish without a completion.
            self.rq.push_front(r.wqe);
        }
    }

    fn ud_request(
        &mut self,
        repr: &PacketRepr,
        pkt: &Packet<&[u8]>,
        from: SocketAddr,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(deth) = repr.deth else { return };
        // IBTA §10.2.4 / C10-16: a Q_Key mismatch drops the packet silently (counted). The
        // GSI (QP1) always expects the well-known Q_Key 0x80010000, whatever its attribute,
        // as rxe's `check_keys` does; uroce never allocates QP1, so today this only documents
        // the rule where a future GSI would need it.
        let expected = if self.qpn == 1 {
            GSI_QKEY
        } else {
            self.attrs.qkey
        };
        if deth.qkey != expected {
            self.counters.dropped += 1;
            return;
        }
        let Some(wqe) = self.take_recv_wqe(ctx) else {
            self.counters.dropped += 1;
            return;
        };
        let cur = match self.resolve_recv(wqe, ctx) {
            Ok(c) => c,
            Err((wqe, status)) => {
                let c = Completion::new(wqe.wr.wr_id, status, WcOpcode::Recv, self.qpn);
                ctx.complete(self.recv_cq, c);
                return;
            }
        };
        let data = pkt.payload();
        let total = (GRH_LEN + data.len()) as u64;
        let mut c = Completion::new(
            cur.wqe.wr.wr_id,
            WcStatus::Success,
            WcOpcode::Recv,
            self.qpn,
        );
        if total > cur.capacity {
            c.status = WcStatus::LocLenErr;
            ctx.complete(self.recv_cq, c);
            return;
        }
        let grh = grh(from.ip(), ctx.config.local_ip, data.len());
        scatter(&cur.spans, 0, &grh);
        scatter(&cur.spans, GRH_LEN, data);
        c.byte_len = total as u32;
        c.src_qp = deth.src_qp;
        c.imm = repr.imm;
        c.grh = true;
        c.solicited = repr.bth.solicited;
        ctx.complete(self.recv_cq, c);
    }

    /// Whether anything waits to be sent.
    pub(crate) fn has_output(&self, config: &crate::Config) -> bool {
        !self.resp.out.is_empty() || self.requester_ready(config)
    }

    /// Whether all the QP could send is an ACK held for its reply: [`Self::emit`] gives
    /// nothing until a request is posted or the hold's deadline passes (both wake the QP).
    pub(crate) fn only_holds_ack(&self, config: &crate::Config, now: crate::Instant) -> bool {
        self.resp.ack_held(now) && !self.resp.ack_follows && !self.requester_ready(config)
    }

    /// Builds the next packet: responses first (they unblock the peer), then requests; but a
    /// held ACK goes after the requests ready now (the application's reply, so both leave in
    /// one transmit), or alone once its deadline passed.
    pub(crate) fn emit(
        &mut self,
        buf: &mut [u8],
        ctx: &mut Ctx<'_>,
    ) -> Option<(usize, SocketAddr)> {
        if self.resp.ack_held(ctx.now) {
            if let Some(r) = self.emit_request(buf, ctx) {
                self.resp.ack_follows = true;
                return Some(r);
            }
            if !self.resp.ack_follows {
                return None;
            }
        }
        if let Some(r) = self.emit_response(buf) {
            return Some(r);
        }
        self.emit_request(buf, ctx)
    }

    fn emit_response(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let dst = self.attrs.dest?;
        let mtu = self.attrs.mtu.bytes();
        let msn = self.resp.msn;
        let dest_qpn = self.attrs.dest_qpn;
        let front = self.resp.out.front_mut()?;
        let ack = |syndrome| Some(AethRepr { syndrome, msn });
        let (repr, data): (PacketRepr, Option<(Span, u32)>) = match front {
            Out::Ack { psn, syndrome } => {
                let mut r =
                    PacketRepr::new(BthRepr::new(Opcode::RcAcknowledge, dest_qpn, psn.get()), 0);
                r.aeth = ack(*syndrome);
                (r, None)
            }
            Out::Atomic { psn, orig } => {
                let mut r = PacketRepr::new(
                    BthRepr::new(Opcode::RcAtomicAcknowledge, dest_qpn, psn.get()),
                    0,
                );
                r.aeth = ack(AckSyndrome::Ack {
                    credits: ACK_UNLIMITED,
                });
                r.atomic_ack_eth = Some(AtomicAckEthRepr { orig: *orig });
                (r, None)
            }
            Out::Read {
                psn,
                span,
                offset,
                end,
                started,
                ..
            } => {
                let n = (*end - *offset).min(mtu);
                let last = *offset + n == *end;
                let op = match (!*started, last) {
                    (true, true) => Opcode::RcReadResponseOnly,
                    (true, false) => Opcode::RcReadResponseFirst,
                    (false, false) => Opcode::RcReadResponseMiddle,
                    (false, true) => Opcode::RcReadResponseLast,
                };
                let mut r = PacketRepr::new(BthRepr::new(op, dest_qpn, psn.get()), n as usize);
                if op != Opcode::RcReadResponseMiddle {
                    r.aeth = ack(AckSyndrome::Ack {
                        credits: ACK_UNLIMITED,
                    });
                }
                (r, Some((span.clone(), *offset)))
            }
        };
        let len = repr.buffer_len();
        if buf.len() < len {
            return None;
        }
        let mut pkt = repr.emit(buf).ok()?;
        if let Some((span, offset)) = &data {
            gather(
                std::slice::from_ref(span),
                *offset as usize,
                pkt.payload_mut(),
            );
        }
        // Advance.
        let done = match self.resp.out.front_mut() {
            Some(Out::Read {
                psn,
                offset,
                end,
                started,
                ..
            }) => {
                *offset += repr.payload_len as u32;
                *psn = psn.add(1);
                *started = true;
                *offset == *end
            }
            _ => true,
        };
        if done {
            if let Some(Out::Ack { .. }) = self.resp.out.pop_front() {
                self.resp.ack_hold = None;
                self.resp.ack_follows = false;
            }
        }
        self.counters.tx_packets += 1;
        Some((len, dst))
    }
}

/// The 40 bytes placed before UD receive data: for RoCEv2 over IPv4 the IPv4 header fills the
/// last 20 bytes (as rxe and `ibv_wc_read_*` expect); over IPv6 the IPv6 header fills all 40.
fn grh(src: IpAddr, dst: IpAddr, payload: usize) -> [u8; GRH_LEN] {
    let mut g = [0u8; GRH_LEN];
    let udp_len = (8 + 12 + 8 + payload + 4) as u16;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let h = &mut g[20..];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&(udp_len + 20).to_be_bytes());
            h[6] = 0x40;
            h[8] = 64;
            h[9] = 17;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let mut sum = 0u32;
            for c in h.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
            }
            while sum > 0xFFFF {
                sum = (sum & 0xFFFF) + (sum >> 16);
            }
            h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            g[0] = 0x60;
            g[4..6].copy_from_slice(&udp_len.to_be_bytes());
            g[6] = 17;
            g[7] = 64;
            g[8..24].copy_from_slice(&s.octets());
            g[24..40].copy_from_slice(&d.octets());
        }
        _ => {}
    }
    g
}

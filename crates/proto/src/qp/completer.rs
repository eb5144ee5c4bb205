//! The completer: consumes ACKs, NAKs, READ responses and atomic ACKs, completes send WQEs in
//! order and decides on retry (rxe's `rxe_comp.c`; IBTA §9.7.5.1).
//!
//! - An ACK for PSN `a` completes every SEND/WRITE WQE whose last PSN is at or before `a`.
//! - A READ response or atomic ACK for PSN `p` first acknowledges everything before `p`.
//! - An ACK that covers a READ/atomic whose response never came is an implicit NAK: retry.
//! - NAK PSN sequence error: retry from its PSN. RNR NAK: wait the RNR time, then retry.
//!   Other NAKs fail the WQE with the matching status and move the QP to ERR.
//! - The local ACK timer retries from the oldest unacknowledged PSN, `retry_cnt` times: one
//!   probe packet, then go-back-N if the probe's ACK shows the rest was lost (probe.rs).
//! - Progress refills both retry budgets.

use uroce_wire::{AckSyndrome, NakCode, Operation, Packet, PacketRepr, Psn};

use super::requester::scatter;
use super::{Qp, QpState};
use crate::cq::WcStatus;
use crate::device::Ctx;

impl Qp {
    /// Handles an ACK, atomic ACK or READ response.
    pub(crate) fn handle_response(
        &mut self,
        repr: &PacketRepr,
        pkt: &Packet<&[u8]>,
        ctx: &mut Ctx<'_>,
    ) {
        if !matches!(self.state, QpState::Rts | QpState::Sqd | QpState::Sqe) {
            self.counters.dropped += 1;
            return;
        }
        let psn = Psn::new(repr.bth.psn);
        // Only PSNs from one before the oldest outstanding up to the newest sent can be
        // answered; anything else is stale or forged (an ACK for a PSN never sent): drop it.
        if psn.diff(self.req.comp_psn) < -1 || psn.diff(self.req.high_psn) >= 0 {
            self.counters.dropped += 1;
            return;
        }
        let op = pkt.info().operation;
        match op {
            Operation::Acknowledge => {
                let Some(aeth) = repr.aeth else { return };
                match aeth.syndrome {
                    AckSyndrome::Ack { .. } => self.ack_through(psn, ctx),
                    AckSyndrome::RnrNak { timer } => {
                        self.counters.rnr_naks_received += 1;
                        self.ack_through(psn.sub(1), ctx);
                        if self.state == QpState::Err {
                            return;
                        }
                        if self.req.rnr_retries_left == 0 {
                            self.fail_head(WcStatus::RnrRetryExcErr, ctx);
                            return;
                        }
                        if self.attrs.rnr_retry != 7 {
                            self.req.rnr_retries_left -= 1;
                        }
                        self.rewind(psn);
                        self.req.ack_deadline = None;
                        self.req.rnr_until = Some(ctx.now + crate::time::rnr_delay(timer));
                    }
                    AckSyndrome::Nak(code) => {
                        let idx = usize::from(code.code().min(3));
                        self.counters.naks_received[idx] += 1;
                        self.ack_through(psn.sub(1), ctx);
                        if self.state == QpState::Err {
                            return;
                        }
                        let status = match code {
                            NakCode::PsnSequenceError => {
                                if self.req.rewound_to != Some(psn) {
                                    self.req.window.on_loss(self.max_unacked(ctx.config));
                                    self.rewind(psn);
                                    self.arm_ack_timer(ctx);
                                }
                                return;
                            }
                            NakCode::InvalidRequest => WcStatus::RemInvReqErr,
                            NakCode::RemoteAccessError => WcStatus::RemAccessErr,
                            NakCode::RemoteOperationalError => WcStatus::RemOpErr,
                            _ => WcStatus::BadRespErr,
                        };
                        self.fail_head(status, ctx);
                    }
                    _ => self.counters.dropped += 1,
                }
            }
            Operation::AtomicAcknowledge => {
                self.ack_before(psn.sub(1), Some(psn), ctx);
                let Some(orig) = repr.atomic_ack_eth.map(|a| a.orig) else {
                    return;
                };
                let Some(w) = self.sq.iter_mut().find(|w| !w.done) else {
                    // A duplicate atomic ACK for the last PSN, with nothing outstanding: it is
                    // dropped, so count it like every other stale response.
                    self.counters.dropped += 1;
                    return;
                };
                if !w.wr.op.is_atomic() || w.first_psn != psn || !w.all_sent {
                    self.counters.dropped += 1;
                    return;
                }
                if let Some(spans) = &w.data {
                    // Atomics return the original value in host order, as verbs do.
                    scatter(spans.as_slice(), 0, &orig.to_ne_bytes());
                }
                w.read_done = 8;
                self.complete_head(ctx);
            }
            Operation::RdmaReadResponse => self.read_response(psn, pkt, ctx),
            _ => self.counters.dropped += 1,
        }
    }

    fn read_response(&mut self, psn: Psn, pkt: &Packet<&[u8]>, ctx: &mut Ctx<'_>) {
        self.ack_before(psn.sub(1), Some(psn), ctx);
        if self.state == QpState::Err {
            return;
        }
        let mtu = self.attrs.mtu.bytes();
        let Some(w) = self.sq.iter_mut().find(|w| !w.done) else {
            // A duplicate READ response (e.g. for the last PSN) after the READ completed: it is
            // dropped, so count it like every other stale response.
            self.counters.dropped += 1;
            return;
        };
        if !matches!(w.wr.op, crate::SendOp::RdmaRead { .. }) || !w.started {
            self.counters.dropped += 1;
            return;
        }
        let expected = w.first_psn.add(w.read_done / mtu);
        let d = psn.diff(expected);
        if d < 0 || psn.diff(w.last_psn()) > 0 {
            self.counters.dropped += 1; // duplicate of data already placed
            return;
        }
        if d > 0 {
            // Responses were lost: go back to the first missing one (once per gap).
            self.counters.out_of_sequence += 1;
            if self.req.rewound_to != Some(expected) {
                self.req.window.on_loss(self.max_unacked(ctx.config));
                self.rewind(expected);
                self.arm_ack_timer(ctx);
            }
            return;
        }
        let want = (w.len - w.read_done).min(mtu) as usize;
        let data = pkt.payload();
        let ends = pkt.info().position.ends();
        // A split READ's requests are each answered by a READ RESPONSE ONLY.
        let request_ends = w.split_read || w.read_done as usize + want == w.len as usize;
        if data.len() != want || ends != request_ends {
            // A response that does not fit the request: IBTA §9.9.3 bad response.
            self.fail_head(WcStatus::BadRespErr, ctx);
            return;
        }
        if let Some(spans) = &w.data {
            ctx.put(spans.as_slice(), w.read_done as usize, data);
        }
        w.read_done += want as u32;
        let complete = w.read_done == w.len;
        self.req.comp_psn = psn.add(1);
        self.progress(ctx);
        if complete {
            self.complete_head(ctx);
        }
        // The READ may be one a rewind had queued for resending (a response ahead of a lost
        // one, then the lost one after all): the next WQE must start past it, not reuse its
        // PSNs, or the responder takes it for a duplicate READ and replays this READ's data
        // into it (`tests/read_rewind.rs`); and of a split READ only what is still missing is
        // asked for again. ACKs do this in `ack_before`.
        self.skip_acknowledged();
    }

    /// Completes WQEs acknowledged by an ACK for `a`.
    pub(crate) fn ack_through(&mut self, a: Psn, ctx: &mut Ctx<'_>) {
        self.ack_before(a, None, ctx)
    }

    /// Completes WQEs acknowledged up to `a`. A READ/atomic covered by `a` whose response is
    /// missing is an implicit NAK, unless `target` (the PSN of a response being handled) falls
    /// in it: then the response itself is the one expected.
    fn ack_before(&mut self, a: Psn, target: Option<Psn>, ctx: &mut Ctx<'_>) {
        let mut advanced = false;
        let mut completed = false;
        while let Some(w) = self.sq.iter().find(|w| !w.done) {
            if !w.started || a.diff(w.first_psn) < 0 {
                break;
            }
            if w.wr.op.is_read_or_atomic() {
                if target.is_some_and(|t| t.diff(w.first_psn) >= 0 && t.diff(w.last_psn()) <= 0) {
                    break;
                }
                // Acknowledged past a READ/atomic whose response is missing: implicit NAK
                // (IBTA §9.7.5.1.2), retry from the missing response.
                if a.diff(w.first_psn) >= 0 && self.req.rewound_to != Some(self.req.comp_psn) {
                    self.counters.out_of_sequence += 1;
                    let at = self.req.comp_psn;
                    self.req.window.on_loss(self.max_unacked(ctx.config));
                    self.rewind(at);
                    self.arm_ack_timer(ctx);
                }
                break;
            }
            // An ACK covers every earlier PSN (IBTA §9.7.5.1.1), so one at or past the last
            // packet means the responder has the whole message, even when a go-back-N rewind
            // (e.g. for a stale NAK in the same batch) was about to send part of it again.
            // (An ACK past `high_psn` was dropped above, so the last packet was sent.) Waiting
            // for that resend left `comp_psn` past the WQE, where a timeout rewind found
            // nothing to send and only used up retries.
            if a.diff(w.last_psn()) >= 0 {
                self.req.comp_psn = w.last_psn().add(1);
                self.complete_acked_head(ctx);
                advanced = true;
                completed = true;
            } else {
                if a.diff(self.req.comp_psn) >= 0 {
                    self.req.comp_psn = a.add(1);
                    advanced = true;
                }
                break;
            }
        }
        // What `complete_head` does after each WQE, once per ACK: one coalesced ACK covers
        // tens of small WQEs, and the window, retry counts and ACK timer end the same after
        // one pass over all the PSNs it acknowledged.
        if completed {
            self.after_completion(ctx);
        }
        if advanced {
            self.skip_acknowledged();
            self.progress(ctx);
        }
    }

    /// Completes the oldest WQE, which an ACK covered whole, without the bookkeeping that
    /// [`Self::ack_before`] does once for all the WQEs it completes.
    fn complete_acked_head(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(w) = self.sq.iter_mut().find(|w| !w.done) {
            w.done = true;
            Self::complete_send(self.qpn, self.sq_sig_all, self.send_cq, w, ctx);
        }
        self.pop_done_front();
    }

    /// Completes the oldest WQE successfully.
    fn complete_head(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(w) = self.sq.iter_mut().find(|w| !w.done) {
            w.done = true;
            let last = w.last_psn().add(1);
            if self.req.comp_psn.diff(last) < 0 {
                self.req.comp_psn = last;
            }
            Self::complete_send(self.qpn, self.sq_sig_all, self.send_cq, w, ctx);
        }
        self.pop_done_front();
        self.progress(ctx);
        self.after_completion(ctx);
    }

    /// After completing WQEs: a failed WQE now at the head completes with its error, and a
    /// draining send queue that emptied says so.
    fn after_completion(&mut self, ctx: &mut Ctx<'_>) {
        self.fail_if_head_failed(ctx);
        if self.state == QpState::Sqd && self.sq.iter().all(|w| !w.started) {
            tracing::debug!(qpn = self.qpn, "send queue drained");
        }
    }

    /// Forward progress: refill retry budgets and restart the ACK timer.
    fn progress(&mut self, ctx: &mut Ctx<'_>) {
        let acked = self.req.comp_psn.diff(self.req.window_psn);
        if acked > 0 {
            self.req
                .window
                .on_acked(acked as u32, self.max_unacked(ctx.config));
            self.req.window_psn = self.req.comp_psn;
        }
        self.req.retries_left = self.attrs.retry_cnt;
        self.req.rnr_retries_left = self.attrs.rnr_retry;
        self.req.rewound_to = None;
        self.req.ack_deadline = None;
        self.arm_ack_timer(ctx);
        self.settle_probe(ctx);
    }

    fn arm_ack_timer(&mut self, ctx: &Ctx<'_>) {
        let outstanding = self.sq.iter().any(|w| w.started && !w.done);
        self.req.ack_deadline = if outstanding {
            crate::time::ack_timeout(self.attrs.timeout).map(|d| ctx.now + d)
        } else {
            None
        };
    }

    /// Timers: the RNR wait ends, or the local ACK timer fires.
    pub(crate) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        self.resp.on_timeout(ctx.now);
        if self.req.rnr_until.is_some_and(|t| t <= ctx.now) {
            self.req.rnr_until = None;
            self.arm_ack_timer(ctx);
        }
        if self.req.ack_deadline.is_some_and(|t| t <= ctx.now) {
            self.req.ack_deadline = None;
            if !self.sq.iter().any(|w| w.started && !w.done) {
                return;
            }
            self.counters.timeouts += 1;
            if self.req.retries_left == 0 {
                self.fail_head(WcStatus::RetryExcErr, ctx);
                return;
            }
            self.req.retries_left -= 1;
            self.retry_after_timeout(ctx);
            self.arm_ack_timer(ctx);
        }
    }
}

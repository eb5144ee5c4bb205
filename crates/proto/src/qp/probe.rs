//! The local ACK timeout's retransmission: one probe packet first, go-back-N only on evidence.
//!
//! IBTA §9.7.5.1.3 asks the requester to retry from the oldest unacknowledged PSN when the
//! ACK timer fires and leaves how much to resend to the implementation; rxe resends the whole
//! window. A timeout is often spurious: on a path slower than the timeout assumes (a TCG guest,
//! a 20 Mbit/s link, a receiver descheduled for longer than 67 ms), the window's packets are
//! still queued, and resending all of them puts a second copy behind the first
//! (`crates/sim/tests/rc_slow_path.rs`: 2 637 packets resent for 1 024).
//!
//! So, as TCP's F-RTO (RFC 5682) decides after a retransmission timeout: the timeout resends
//! only the packet at the oldest unacknowledged PSN `p`, with AckReq and twice (a lost probe
//! or a lost answer would cost another whole timeout), and leaves the send position where it
//! was. The first acknowledgement that moves past `p` decides:
//!
//! - it covers every PSN sent when the timer fired: the originals arrived, the timeout was
//!   spurious, nothing more is resent;
//! - it acknowledges exactly `p` while later PSNs are outstanding: the responder had nothing
//!   after `p` (it drops what follows a gap), so the packets after it were lost too: go back
//!   N from `p + 1`, from the smallest window (`Window::on_timeout_loss`, TCP's loss window:
//!   no NAK got through, so the loss is heavy);
//! - it acknowledges past `p` but not everything: either a late ACK for originals still in
//!   flight, or the probe's answer with the packet after it lost. The packet at the new
//!   oldest PSN is probed the same way: a duplicate if the originals are arriving, the lost
//!   packet otherwise, whose ACK then acknowledges exactly it.
//!
//! A wrong guess costs time or a duplicate, never data: the responder takes only in-order
//! PSNs and NAKs the first packet after a gap. A timeout with one PSN outstanding, or a READ
//! or atomic at `p` (their answers carry their own PSNs, see `probe_tells`), is the plain
//! go-back-N.

use std::net::SocketAddr;

use uroce_wire::Psn;

use super::{Qp, QpState};
use crate::device::Ctx;

/// Copies of each probe packet: one lost probe (or its lost ACK) would cost a whole ACK
/// timeout more.
const PROBE_COPIES: u8 = 2;

/// A timeout's probe: the PSN it resends, and how many copies are still to go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probe {
    /// The oldest unacknowledged PSN when the timer fired.
    pub psn: Psn,
    /// Copies of the probe packet still to build.
    pub to_send: u8,
    /// One past the newest PSN sent when the timer fired: the probes end when an
    /// acknowledgement reaches it.
    pub until: Psn,
}

impl Probe {
    /// A probe of `psn`, none of its copies built yet.
    fn new(psn: Psn, until: Psn) -> Self {
        Probe {
            psn,
            to_send: PROBE_COPIES,
            until,
        }
    }

    /// A copy was built: the next acknowledgement past `psn` decides.
    fn sent(&self) -> bool {
        self.to_send < PROBE_COPIES
    }
}

impl Qp {
    /// The local ACK timer fired with PSNs outstanding (retries already counted): probe, or
    /// go back N where a probe cannot tell anything.
    pub(crate) fn retry_after_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let at = self.req.comp_psn;
        self.req.rewound_to = None;
        if self.probe_tells() {
            self.req.probe = Some(Probe::new(at, self.req.next_psn));
        } else {
            self.req.window.on_loss(self.max_unacked(ctx.config));
            self.rewind(at);
        }
    }

    /// Whether a probe of the oldest unacknowledged PSN can tell a loss from lateness: more
    /// than one PSN is outstanding and the oldest is a SEND's or WRITE's packet, which the
    /// responder answers, if it already had it, with the newest PSN it has (a duplicate's
    /// re-ACK, rxe's `duplicate_request`). A READ's responses and an atomic's replayed ACK
    /// carry their own PSNs instead.
    fn probe_tells(&self) -> bool {
        self.req.next_psn.diff(self.req.comp_psn) > 1
            && self
                .sq
                .iter()
                .find(|w| !w.done)
                .is_some_and(|w| w.started && !w.wr.op.is_read_or_atomic())
    }

    /// Whether a probe waits to be built.
    pub(crate) fn probe_pending(&self) -> bool {
        self.req.probe.is_some_and(|p| p.to_send > 0)
    }

    /// Builds the probe packet into `buf`: the packet at the probe's PSN, as a rewind would
    /// build it, with AckReq; the send position is left as it was.
    pub(crate) fn emit_probe(
        &mut self,
        buf: &mut [u8],
        ctx: &mut Ctx<'_>,
    ) -> Option<(usize, SocketAddr)> {
        let mut probe = self.req.probe?;
        let Some(i) = self.wqe_holding(probe.psn) else {
            // Nothing holds the PSN any more (acknowledged meanwhile): no probe.
            self.req.probe = None;
            return None;
        };
        let (sent, at) = self.resend_point(i, probe.psn);
        let w = &self.sq[i];
        let saved = (
            self.req.cursor,
            self.req.next_psn,
            self.req.since_ack_req,
            w.sent,
            w.all_sent,
        );
        let w = &mut self.sq[i];
        w.sent = sent;
        w.all_sent = false;
        self.req.cursor = i;
        self.req.next_psn = at;
        // Ask for the ACK that decides (READs and atomics always ask).
        self.req.since_ack_req = u32::MAX / 2;
        probe.to_send -= 1;
        self.req.probe = Some(probe);
        let r = self.emit_at_cursor(buf, ctx);
        if !matches!(self.state, QpState::Rts | QpState::Sqd) {
            // A local error while building it failed the QP: nothing to restore.
            return r;
        }
        let (cursor, next_psn, since_ack_req, sent, all_sent) = saved;
        self.req.cursor = cursor;
        self.req.next_psn = next_psn;
        self.req.since_ack_req = since_ack_req;
        if let Some(w) = self.sq.get_mut(i) {
            w.sent = sent;
            w.all_sent = all_sent;
        }
        self.req.probe_emitted = r.is_some();
        if r.is_none() {
            // Did not fit `buf`: build it next time.
            self.req.probe = Some(Probe {
                to_send: probe.to_send + 1,
                ..probe
            });
        }
        r
    }

    /// After an acknowledgement moved `comp_psn`: decides a sent probe once `comp_psn` is past
    /// it (module docs); an unsent probe the acknowledgement made pointless is dropped.
    pub(crate) fn settle_probe(&mut self, ctx: &mut Ctx<'_>) {
        let Some(p) = self.req.probe else { return };
        let comp = self.req.comp_psn;
        if comp.diff(p.psn) <= 0 {
            return;
        }
        self.req.probe = None;
        if !p.sent() {
            return;
        }
        if comp.diff(p.until) >= 0 {
            // Everything outstanding when the timer fired has arrived.
            self.counters.spurious_timeouts += 1;
        } else if comp == p.psn.add(1) {
            self.counters.probe_losses += 1;
            self.req
                .window
                .on_timeout_loss(self.max_unacked(ctx.config));
            self.rewind(comp);
        } else if self.probe_tells() {
            // Past the probe but short of what was outstanding: a late ACK for the originals,
            // or the probe's answer with the packet at `comp` lost. Probe that packet.
            self.req.probe = Some(Probe::new(comp, p.until));
        }
        // Otherwise a READ or atomic is the oldest: its response, or the next timeout's
        // go-back-N, settles it.
    }
}

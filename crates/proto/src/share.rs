//! The device-wide budget of unacknowledged PSNs, shared by its busy RC QPs.
//!
//! The budget is per device, not per QP, because every QP's packets wait in the one receive
//! queue of the peer's socket: with N QPs each allowed the whole window, a peer that falls
//! behind queues N windows (32 MiB for 4 QPs at path MTU 4096 here), and the ACKs at their end
//! came later than the 67 ms local ACK timeout of a busy machine: spurious timeouts and windows
//! resent, all duplicates.
//!
//! Every call into a QP that may send or acknowledge goes through [`WindowShare::enter`]
//! before and [`WindowShare::leave`] after; [`crate::Device`] does that at each entry point.

use crate::device::Config;
use crate::qp::Qp;

/// The least share of `max_unacked_psns` an RC QP gets however many share it: rxe's whole
/// window (`RXE_MAX_UNACKED_PSNS`, rxe_req.c).
const MIN_SHARE: u32 = 128;

/// How many RC QPs have PSNs outstanding, and so split `Config::max_unacked_psns`.
#[derive(Debug, Default)]
pub(crate) struct WindowShare {
    busy_rc: u32,
}

impl WindowShare {
    /// Before a call into `qp`: its share of the device's unacknowledged PSNs,
    /// `max_unacked_psns` split evenly between the busy RC QPs (counting `qp`), at least
    /// [`MIN_SHARE`].
    pub(crate) fn enter(&self, config: &Config, qp: &mut Qp) {
        let n = self.busy_rc + u32::from(!qp.counted_busy);
        let m = config.max_unacked_psns;
        // One busy QP (a ping-pong) has the whole budget: no division on every call.
        qp.req.share = if n <= 1 {
            m
        } else {
            (m / n).max(MIN_SHARE.min(m))
        };
    }

    /// After a call into `qp`: counts it busy while it has PSNs outstanding.
    pub(crate) fn leave(&mut self, qp: &mut Qp) {
        let busy = qp.unacked_psns() > 0;
        if busy != qp.counted_busy {
            qp.counted_busy = busy;
            if busy {
                self.busy_rc += 1;
            } else {
                self.busy_rc -= 1;
            }
        }
    }

    /// `qp` is destroyed.
    pub(crate) fn remove(&mut self, qp: &Qp) {
        self.busy_rc -= u32::from(qp.counted_busy);
    }
}

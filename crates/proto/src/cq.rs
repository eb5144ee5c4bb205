//! Completion queues and the completions (work completions, `ibv_wc`) they hold.

use std::collections::VecDeque;

/// Status of a completion (the values of `ibv_wc_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u32)]
pub enum WcStatus {
    /// Success.
    Success = 0,
    /// A local length error: the data did not fit the receive buffers, or exceeded the MTU (UD).
    LocLenErr = 1,
    /// Local QP operation error.
    LocQpOpErr = 2,
    /// Local protection error: an SGE's lkey, rights or bounds were wrong.
    LocProtErr = 4,
    /// The WR was flushed because the QP entered the error state.
    WrFlushErr = 5,
    /// The remote side reported an invalid request (NAK 0x61).
    RemInvReqErr = 9,
    /// The remote side reported an access error (NAK 0x62).
    RemAccessErr = 10,
    /// The remote side reported an operational error (NAK 0x63).
    RemOpErr = 11,
    /// The local ACK timeout expired `retry_cnt` times.
    RetryExcErr = 12,
    /// The peer answered RNR NAK more than `rnr_retry` times.
    RnrRetryExcErr = 13,
    /// A response of the wrong kind arrived (e.g. an ACK where read data was due).
    BadRespErr = 7,
    /// Generic fatal error.
    GeneralErr = 21,
}

/// The operation a completion reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WcOpcode {
    /// SEND (any variant), on the sender.
    Send,
    /// RDMA WRITE (any variant), on the requester.
    RdmaWrite,
    /// RDMA READ, on the requester.
    RdmaRead,
    /// Compare and swap.
    CompSwap,
    /// Fetch and add.
    FetchAdd,
    /// A received SEND.
    Recv,
    /// A received RDMA WRITE with immediate.
    RecvRdmaWithImm,
}

/// One work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The work request's id.
    pub wr_id: u64,
    /// Outcome.
    pub status: WcStatus,
    /// Operation.
    pub opcode: WcOpcode,
    /// Bytes received (receive completions, including the 40-byte GRH on UD) or transferred.
    pub byte_len: u32,
    /// Local QP number.
    pub qp_num: u32,
    /// Source QP (UD receive).
    pub src_qp: u32,
    /// Immediate data, when the packet carried it.
    pub imm: Option<u32>,
    /// The R_Key invalidated by a SEND with Invalidate.
    pub invalidated_rkey: Option<u32>,
    /// Whether a GRH fills the first 40 bytes of the receive buffer (UD).
    pub grh: bool,
    /// Whether the message had the solicited-event bit.
    pub solicited: bool,
}

impl Completion {
    /// A completion with zero/none for everything but the given fields.
    pub fn new(wr_id: u64, status: WcStatus, opcode: WcOpcode, qp_num: u32) -> Self {
        Completion {
            wr_id,
            status,
            opcode,
            byte_len: 0,
            qp_num,
            src_qp: 0,
            imm: None,
            invalidated_rkey: None,
            grh: false,
            solicited: false,
        }
    }
}

/// A bounded completion queue. Overflow puts it in error (IBTA §11.4.2.1, rxe posts
/// `IB_EVENT_CQ_ERR`): [`CompletionQueue::poll`] then returns [`crate::Error::CqOverrun`].
#[derive(Debug)]
pub struct CompletionQueue {
    entries: VecDeque<Completion>,
    depth: usize,
    overrun: bool,
    armed: Option<bool>,
    event_pending: bool,
}

impl CompletionQueue {
    /// A queue holding at most `depth` completions.
    pub fn new(depth: usize) -> Self {
        CompletionQueue {
            entries: VecDeque::with_capacity(depth.min(4096)),
            depth,
            overrun: false,
            armed: None,
            event_pending: false,
        }
    }

    /// Capacity.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Completions waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether it overflowed (and is in error).
    pub fn is_overrun(&self) -> bool {
        self.overrun
    }

    /// Adds a completion. Returns false (and enters the overrun state) when full.
    pub(crate) fn push(&mut self, c: Completion) -> bool {
        if self.overrun || self.entries.len() >= self.depth {
            self.overrun = true;
            return false;
        }
        // Armed for solicited only: only solicited receives or errors raise the event
        // (IBTA §11.4.2.2).
        if let Some(solicited_only) = self.armed {
            if !solicited_only || c.solicited || c.status != WcStatus::Success {
                self.armed = None;
                self.event_pending = true;
            }
        }
        self.entries.push_back(c);
        true
    }

    /// Takes the oldest completion.
    pub fn poll(&mut self) -> Result<Option<Completion>, crate::Error> {
        if self.overrun {
            return Err(crate::Error::CqOverrun);
        }
        Ok(self.entries.pop_front())
    }

    /// Requests one event at the next completion (any, or solicited only).
    pub fn req_notify(&mut self, solicited_only: bool) {
        self.armed = Some(solicited_only);
    }

    /// Whether a completion event is pending (its armed condition was met).
    pub(crate) fn event_pending(&self) -> bool {
        self.event_pending
    }

    /// Takes a pending completion event, if the armed condition was met.
    pub(crate) fn take_event(&mut self) -> bool {
        core::mem::take(&mut self.event_pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_is_an_error_and_events_follow_arming() {
        let mut cq = CompletionQueue::new(2);
        let c = Completion::new(1, WcStatus::Success, WcOpcode::Send, 1);
        cq.req_notify(true);
        assert!(cq.push(c));
        assert!(
            !cq.take_event(),
            "unsolicited success does not fire a solicited-only arm"
        );
        cq.req_notify(false);
        assert!(cq.push(c));
        assert!(cq.take_event());
        assert!(!cq.push(c));
        assert_eq!(cq.poll(), Err(crate::Error::CqOverrun));
    }
}

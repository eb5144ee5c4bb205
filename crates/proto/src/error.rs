//! Errors returned to the caller of a verb. Errors of the remote side or the network are never
//! returned here: they become completions with a [`crate::WcStatus`] or counted drops.

/// Why a verb was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument is invalid (the text says which).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The object does not exist.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// A device limit (see [`crate::Device::query_device`]) was reached or a request exceeds it.
    #[error("limit reached: at most {max} {resource}")]
    Limit {
        /// Which limit.
        resource: Resource,
        /// Its value on this device.
        max: u64,
    },
    /// The queue is full.
    #[error("{0} queue full")]
    QueueFull(&'static str),
    /// The QP state does not allow this verb.
    #[error("QP in state {0:?} does not allow this")]
    BadState(crate::QpState),
    /// A QP attribute required or forbidden for this transition is wrong.
    #[error("invalid QP attribute: {0}")]
    InvalidAttr(&'static str),
    /// The object is still in use (e.g. a CQ attached to a QP).
    #[error("{0} still in use")]
    Busy(&'static str),
    /// The completion queue overflowed; completions were lost and the CQ is in error.
    #[error("completion queue overrun")]
    CqOverrun,
}

/// A resource the device limits, named as `ibv_query_device` names the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Resource {
    /// Queue pairs (`max_qp`).
    QueuePairs,
    /// Memory regions (`max_mr`).
    MemoryRegions,
    /// Completion queues (`max_cq`).
    CompletionQueues,
    /// Entries of one completion queue (`max_cqe`).
    CqEntries,
    /// Outstanding work requests of one send or receive queue (`max_qp_wr`).
    QpWorkRequests,
    /// Scatter/gather entries of one work request (`max_sge`).
    ScatterGatherEntries,
    /// Shared receive queues (`max_srq`).
    SharedReceiveQueues,
    /// Receive buffers (work requests) of one shared receive queue (`max_srq_wr`).
    SrqWorkRequests,
    /// Address handles (`max_ah`).
    AddressHandles,
    /// Outstanding READ/atomic requests of one QP (`max_qp_rd_atom`, `max_qp_init_rd_atom`).
    RdAtomic,
}

impl core::fmt::Display for Resource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Resource::QueuePairs => "queue pairs (max_qp)",
            Resource::MemoryRegions => "memory regions (max_mr)",
            Resource::CompletionQueues => "completion queues (max_cq)",
            Resource::CqEntries => "entries per completion queue (max_cqe)",
            Resource::QpWorkRequests => "work requests per queue (max_qp_wr)",
            Resource::ScatterGatherEntries => "SGEs per work request (max_sge)",
            Resource::SharedReceiveQueues => "shared receive queues (max_srq)",
            Resource::SrqWorkRequests => "work requests per shared receive queue (max_srq_wr)",
            Resource::AddressHandles => "address handles (max_ah)",
            Resource::RdAtomic => "outstanding READ/atomic requests per QP (max_qp_rd_atom)",
        })
    }
}

//! Work requests: what the application posts to send and receive queues.

/// A scatter/gather entry: `length` bytes at `addr` in the region with `lkey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    /// Address (the region's iova space).
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// Local key of the region.
    pub lkey: u32,
}

/// Where a UD send goes (the address handle plus the WR's remote QPN and Q_Key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdDest {
    /// The address handle.
    pub ah: crate::AhHandle,
    /// Remote QP number.
    pub remote_qpn: u32,
    /// Remote Q_Key; if its high bit is set the QP's own Q_Key is sent instead (IBTA §10.2.4).
    pub remote_qkey: u32,
}

/// The operation of a send work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendOp {
    /// SEND.
    Send,
    /// SEND with immediate data.
    SendWithImm(u32),
    /// SEND that invalidates the named R_Key at the responder.
    SendWithInv(u32),
    /// RDMA WRITE to `remote_addr` with `rkey`.
    RdmaWrite {
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// RDMA WRITE with immediate data.
    RdmaWriteWithImm {
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Immediate data.
        imm: u32,
    },
    /// RDMA READ from `remote_addr` into the SGEs.
    RdmaRead {
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// 64-bit compare and swap at an 8-byte aligned `remote_addr`; the old value lands in the SGE.
    CompareSwap {
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Value to compare.
        compare: u64,
        /// Value to store on equality.
        swap: u64,
    },
    /// 64-bit fetch and add; the old value lands in the SGE.
    FetchAdd {
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Addend.
        add: u64,
    },
}

impl SendOp {
    /// Whether this is an RDMA READ or atomic (a request that consumes responder resources).
    pub fn is_read_or_atomic(&self) -> bool {
        matches!(
            self,
            SendOp::RdmaRead { .. } | SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }
        )
    }
    /// Whether this is an atomic.
    pub fn is_atomic(&self) -> bool {
        matches!(self, SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. })
    }
    /// The completion opcode it reports.
    pub fn wc_opcode(&self) -> crate::WcOpcode {
        use crate::WcOpcode as W;
        match self {
            SendOp::Send | SendOp::SendWithImm(_) | SendOp::SendWithInv(_) => W::Send,
            SendOp::RdmaWrite { .. } | SendOp::RdmaWriteWithImm { .. } => W::RdmaWrite,
            SendOp::RdmaRead { .. } => W::RdmaRead,
            SendOp::CompareSwap { .. } => W::CompSwap,
            SendOp::FetchAdd { .. } => W::FetchAdd,
        }
    }
}

/// Send flags (`ibv_send_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendFlags {
    /// Generate a completion on success (errors always complete).
    pub signaled: bool,
    /// Set the solicited-event bit on the last packet.
    pub solicited: bool,
    /// Wait for outstanding READs/atomics before starting (IBTA §10.8.3.3).
    pub fence: bool,
}

/// The data of a send work request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// Gather from registered memory.
    Sgl(Vec<Sge>),
    /// Data copied at post time (`IBV_SEND_INLINE`); needs no lkey.
    Inline(Vec<u8>),
    /// One gather entry: the same as `Sgl(vec![sge])` without the allocation, for the common
    /// one-SGE WR (a 64-byte WRITE stream posts millions of them a second).
    Sge(Sge),
}

impl Payload {
    /// Total length in bytes (saturating at `u64::MAX`).
    pub fn len(&self) -> u64 {
        match self {
            Payload::Inline(v) => v.len() as u64,
            _ => self.sges().iter().map(|e| u64::from(e.length)).sum(),
        }
    }
    /// The gather entries in order (none for inline data).
    pub fn sges(&self) -> &[Sge] {
        match self {
            Payload::Sgl(s) => s,
            Payload::Sge(s) => std::slice::from_ref(s),
            Payload::Inline(_) => &[],
        }
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A send work request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Operation.
    pub op: SendOp,
    /// Local data: the source of SEND/WRITE, the destination of READ/atomic results.
    pub payload: Payload,
    /// Flags.
    pub flags: SendFlags,
    /// Destination, UD only.
    pub ud: Option<UdDest>,
}

impl SendWr {
    /// A signaled work request.
    pub fn new(wr_id: u64, op: SendOp, payload: Payload) -> Self {
        SendWr {
            wr_id,
            op,
            payload,
            flags: SendFlags {
                signaled: true,
                ..SendFlags::default()
            },
            ud: None,
        }
    }
}

/// A receive work request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Where received data goes, in order.
    pub sgl: Vec<Sge>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sge_reads_like_a_one_entry_list() {
        let e = Sge {
            addr: 0x1000,
            length: 64,
            lkey: 7,
        };
        let one = Payload::Sge(e);
        let list = Payload::Sgl(vec![e]);
        assert_eq!(one.sges(), list.sges());
        assert_eq!(one.len(), 64);
        assert_eq!(list.len(), 64);
        let two = Payload::Sgl(vec![e, Sge { length: 8, ..e }]);
        assert_eq!(two.len(), 72);
        assert_eq!(two.sges().len(), 2);
        let inline = Payload::Inline(vec![1, 2, 3]);
        assert!(inline.sges().is_empty());
        assert_eq!(inline.len(), 3);
        assert!(Payload::Sge(Sge { length: 0, ..e }).is_empty());
    }
}

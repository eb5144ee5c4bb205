//! The sans-IO RoCEv2 transport engine of uroce.
//!
//! This crate holds the whole protocol — protection domains, memory regions, completion queues,
//! shared receive queues, address handles and RC/UC/UD queue pairs with their requester,
//! completer and responder — and nothing else: it opens no socket, reads no clock and starts no
//! thread. A driver (io_uring, plain syscalls, or the deterministic simulator in the tests) moves
//! datagrams and time in and out of a [`Device`], in the shape of quinn-proto:
//!
//! # Call contract
//!
//! - Verbs (`alloc_pd`, `reg_mr`, `create_cq`, `create_qp`, `modify_qp`, `post_send`,
//!   `post_recv`, `poll_cq`, …) may be called at any time; they take effect at once.
//! - [`Device::handle_datagram`]`(now, from, to, payload)` feeds one received UDP payload
//!   (a RoCEv2 transport packet with its ICRC). Bad input is counted and dropped, or answered
//!   with a NAK; it never returns an error to the driver and never panics.
//! - [`Device::poll_transmit`]`(now, buf)` writes the next outgoing datagram into `buf` and says
//!   where it goes. When several packets of equal size for one destination are ready it writes
//!   them back to back and sets `segment_size`, to be sent as one UDP GSO batch; segment `i` of a
//!   batch carries an ICRC computed for IPv4 Identification `i` (the kernel numbers GSO segments
//!   that way when the socket's first ID is 0). Call it until it returns `None` after any other
//!   call.
//! - [`Device::poll_timeout`] gives the earliest instant at which [`Device::handle_timeout`]
//!   must be called; call it again after every other call.
//! - `now` never goes backwards.
//!
//! Memory regions are reached only through [`RegionMemory`]: the engine never holds a pointer.
#![forbid(unsafe_code)]

pub mod cq;
pub mod device;
pub mod error;
pub mod idmap;
pub mod memory;
pub mod mr;
pub mod place;
pub mod qp;
mod share;
pub mod srq;
pub mod time;
pub mod wr;

pub use cq::{Completion, CompletionQueue, WcOpcode, WcStatus};
pub use device::{AsyncEvent, Config, Device, DeviceAttr, DeviceCounters, Transmit, Usage};
pub use error::{Error, Resource};
pub use memory::AtomicMemory;
pub use mr::{Access, MrKeys, RawParts, RegionMemory, VecMemory};
pub use place::{Piece, Placement, Scatter};
pub use qp::{Mtu, QpAttr, QpCap, QpCounters, QpInit, QpState, QpType, SPLIT_READ_MAX_PACKETS};
pub use time::Instant;
pub use wr::{Payload, RecvWr, SendFlags, SendOp, SendWr, Sge, UdDest};

/// A protection domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PdHandle(pub u32);

/// A completion queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CqHandle(pub u32);

/// A shared receive queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrqHandle(pub u32);

/// An address handle (UD destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AhHandle(pub u32);

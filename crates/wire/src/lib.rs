//! RoCEv2 wire format: the InfiniBand transport headers carried in UDP to port 4791, the opcode
//! table that says which headers each opcode carries, and the invariant CRC (ICRC).
//!
//! The crate does no I/O and never panics on input. Headers follow smoltcp's shape: a zero-copy
//! view over a byte buffer (`Bth<T>`, `Reth<T>`, …, and [`Packet<T>`] for a whole transport packet)
//! and a validated, owned representation (`BthRepr`, …, [`PacketRepr`]) that parses from and emits
//! into such a view. [`opcode`] is the single table (as in rxe's `rxe_opcode.c`) that drives both.
//!
//! Layout of the UDP payload of a RoCEv2 packet (IBTA Vol 1 §9.2, Annex A17):
//!
//! ```text
//! BTH(12) [DETH(8)] [RETH(16)] [AtomicETH(28)] [AETH(4)] [AtomicAckETH(8)] [ImmDt(4)] [IETH(4)]
//! payload  pad(0-3)  ICRC(4)
//! ```
#![forbid(unsafe_code)]

pub mod error;
pub mod headers;
pub mod icrc;
pub mod opcode;
pub mod packet;
pub mod psn;

pub use error::{Error, Result};
pub use headers::{
    AckSyndrome, Aeth, AethRepr, AtomicAckEth, AtomicAckEthRepr, AtomicEth, AtomicEthRepr, Bth,
    BthRepr, Deth, DethRepr, Ieth, ImmDt, NakCode, Reth, RethRepr,
};
pub use icrc::{
    IcrcCache, IcrcCheck, IcrcContext, IcrcHasher, IcrcMismatch, IpFields, Ipv4IdMode, Ipv4IdSolver,
};
pub use opcode::{HeaderSet, Opcode, OpcodeInfo, Operation, Position, Transport};
pub use packet::{stated_len, Packet, PacketRepr};
pub use psn::Psn;

/// The UDP destination port assigned to RoCEv2 (IBTA Annex A17.2.1).
pub const ROCE_UDP_PORT: u16 = 4791;

/// The default partition key, the only one rxe uses.
pub const DEFAULT_PKEY: u16 = 0xFFFF;

/// Length of the invariant CRC trailer.
pub const ICRC_LEN: usize = 4;

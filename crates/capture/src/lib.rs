//! Capture files and framing for RoCEv2: reading and writing pcap files ([`pcap`]), finding the
//! RoCEv2 packet in a captured frame and building IP/UDP datagrams around one ([`frame`]),
//! cutting unsegmented GSO datagrams into their packets ([`gso`]), and printing one
//! wireshark-like line per packet ([`mod@decode`]).
//!
//! Nothing here panics on input from a file or the network: malformed input yields a typed
//! error or, in [`mod@decode`], a line that says what is wrong.
#![forbid(unsafe_code)]

pub mod decode;
pub mod frame;
pub mod gso;
pub mod pcap;

pub use decode::{decode, decode_frame, Decoded, Outcome, RocePacket, Segment, Summary};
pub use frame::{
    build_datagram, decapsulate, emit_datagram, encapsulate, BuildError, FrameError, LinkType,
    NotRoce, RoceFrame,
};
pub use pcap::{Frame, PcapError, PcapReader, PcapWriter};

//! Drivers: move datagrams between a UDP socket and the engine. Each back end implements
//! [`Backend`]; the device's progress loop is the same for all of them.

pub(crate) mod syscall;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

/// Which back end drives the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackendKind {
    /// One `sendmsg`/`recvmsg` per packet, no batching: the rxe-like baseline.
    #[default]
    Syscall,
}

impl BackendKind {
    /// Name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Syscall => "syscall",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "syscall" => Ok(BackendKind::Syscall),
            other => Err(format!("unknown back end '{other}' (syscall)")),
        }
    }
}

/// A received datagram's addresses and bytes, handed to the engine.
pub(crate) type Sink<'a> = &'a mut dyn FnMut(SocketAddr, IpAddr, &[u8]);

/// What the progress loop needs from a back end.
pub(crate) trait Backend: Send {
    /// Sends one datagram, or a GSO batch of `segment`-byte packets (the last may be shorter).
    fn send(&mut self, dst: SocketAddr, data: &[u8], segment: Option<usize>) -> io::Result<()>;
    /// Pushes out sends queued by [`Backend::send`].
    fn flush(&mut self) -> io::Result<()>;
    /// Hands every datagram already received (up to a bound) to `sink` without blocking;
    /// returns how many.
    fn recv_ready(&mut self, sink: Sink<'_>) -> io::Result<usize>;
    /// A descriptor that polls readable when [`Backend::recv_ready`] has work.
    fn wait_fd(&self) -> io::Result<OwnedFd>;
    /// Most packets the engine should put in one transmit batch.
    fn max_segments(&self) -> usize;
}

//! Raw datagrams through a uroce back end, without the engine: a socket opened exactly as
//! [`crate::Device::open`] opens its own (same options, same [`Backend`]), whose datagrams come
//! from and go to the caller instead of the RDMA engine.
//!
//! It exists to measure the driver's share of a transfer on its own: the benchmark suite's
//! io_uring UDP ceiling (`uroce-perf uring-send`/`uring-recv`) is this type sending GSO batches
//! through the io_uring back end's `SENDMSG` path into its multishot `RECVMSG` over the buffer
//! ring with UDP GRO. What it sends is what a device would send, built in the back end's own
//! send buffer ([`RawDriver::send_batch`]), so it costs no copy the engine would not pay.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::syscall::SyscallBackend;
use super::uring::UringBackend;
use super::{Backend, BackendKind, DriverFeatures, DriverStats, TX_MAX};

/// A RoCE UDP socket driven by a uroce back end, for raw datagrams (see the module docs).
pub struct RawDriver {
    backend: Box<dyn Backend>,
    /// Polls readable when [`RawDriver::recv`] has work (the io_uring's descriptor when the
    /// multishot receive is in use, else the socket).
    wait: OwnedFd,
    local: SocketAddr,
}

impl std::fmt::Debug for RawDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDriver")
            .field("local", &self.local)
            .field("features", &self.backend.features())
            .finish()
    }
}

impl RawDriver {
    /// Binds `local` (port 0 picks one) and opens back end `kind` on it, with UDP GRO for the
    /// io_uring one as a device does. Unlike a device, an io_uring back end that cannot start
    /// is an error, not a fallback to the syscall one: a measurement must not change what it
    /// measures unnoticed.
    pub fn open(local: SocketAddr, kind: BackendKind) -> io::Result<RawDriver> {
        let gro = kind == BackendKind::Uring;
        let (sock, f) = crate::sys::roce_socket_in(local, gro, false)?;
        // The port the kernel chose when asked for port 0.
        let local = sock.local_addr()?;
        let backend: Box<dyn Backend> = match kind {
            BackendKind::Syscall => Box::new(SyscallBackend::new(sock, f.gro)),
            BackendKind::Uring => Box::new(UringBackend::new(sock, f.gro).map_err(|(_, e)| e)?),
        };
        let wait = backend.wait_fd()?;
        Ok(RawDriver {
            backend,
            wait,
            local,
        })
    }

    /// [`RawDriver::open`] of the io_uring back end sending with `SENDMSG_ZC` (zero copy)
    /// instead of `SENDMSG`; [`DriverStats::tx_zc_copied`] counts the sends whose data the
    /// kernel copied anyway (it does on veth and loopback, delivering to a local socket).
    /// Devices never use it: measured here so that it is kept only where it wins.
    pub fn open_send_zc(local: SocketAddr) -> io::Result<RawDriver> {
        let (sock, f) = crate::sys::roce_socket_in(local, true, false)?;
        let local = sock.local_addr()?;
        let opts = super::uring::Options {
            send_zc: true,
            ..Default::default()
        };
        let backend = UringBackend::with_options(sock, f.gro, opts).map_err(|(_, e)| e)?;
        let wait = backend.wait_fd()?;
        Ok(RawDriver {
            backend: Box::new(backend),
            wait,
            local,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Most datagrams of `segment` bytes one [`RawDriver::send_batch`] may carry: what the
    /// engine may put in one GSO batch (1 on the syscall back end, which sends them one by one
    /// anyway), and no more than one UDP datagram of 65507 bytes holds.
    pub fn max_batch(&self, segment: usize) -> usize {
        if segment == 0 {
            return 1;
        }
        (TX_MAX / segment).min(self.backend.max_segments()).max(1)
    }

    /// Queues `count` datagrams of `segment` bytes to `dst` as one send (a UDP GSO batch on
    /// the io_uring back end), built by `fill` straight in the back end's send buffer (the
    /// bytes are those of an earlier send until `fill` writes them). Sent at the next
    /// [`RawDriver::flush`] (or earlier, when every send buffer is in flight).
    pub fn send_batch(
        &mut self,
        dst: SocketAddr,
        segment: usize,
        count: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> io::Result<()> {
        let len = segment.saturating_mul(count);
        if segment == 0 || count == 0 || len > TX_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{count} × {segment} B is not a datagram or GSO batch"),
            ));
        }
        let buf = self.backend.tx_buffer()?;
        fill(&mut buf[..len]);
        self.backend
            .send_written(dst, len, (count > 1).then_some(segment))
    }

    /// Queues one send of `len` bytes to `dst` built by `fill` in the back end's send buffer:
    /// one datagram, or with `segment` a UDP GSO batch of `segment`-byte datagrams whose last
    /// may be shorter (as the engine's batch of a WRITE and the ACK it carries: 40 + 20 bytes
    /// for 8 bytes of payload). Sent as [`RawDriver::send_batch`] sends.
    pub fn send_gso(
        &mut self,
        dst: SocketAddr,
        len: usize,
        segment: Option<usize>,
        fill: impl FnOnce(&mut [u8]),
    ) -> io::Result<()> {
        if len > TX_MAX || segment == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} B in {segment:?}-byte segments is not a datagram or GSO batch"),
            ));
        }
        let buf = self.backend.tx_buffer()?;
        fill(&mut buf[..len]);
        self.backend
            .send_written(dst, len, segment.filter(|&s| s < len))
    }

    /// Submits the queued sends.
    pub fn flush(&mut self) -> io::Result<()> {
        self.backend.flush()
    }

    /// Flushes, then waits up to `timeout` until every send has completed, so that
    /// [`RawDriver::stats`] counts them all; false if some were still in flight.
    pub fn drain_sends(&mut self, timeout: Duration) -> io::Result<bool> {
        self.backend.drain_sends(timeout)
    }

    /// Hands every datagram already received (up to a bound; GRO super-buffers split into
    /// their datagrams) to `sink` as (source, bytes), without blocking. Returns how many.
    pub fn recv(&mut self, mut sink: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        self.backend
            .recv_ready(&mut |from, _, data| sink(from, data))
    }

    /// Waits up to `timeout` until [`RawDriver::recv`] may have work; false on timeout.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        if self.backend.rx_pending() {
            return Ok(true);
        }
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.wait.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Receive and send as a busy-polled device does ([`crate::Progress::Polled`]): one
    /// non-blocking `recvmsg` per [`RawDriver::recv`] (on io_uring instead of the multishot
    /// receive), each send a syscall at once (on io_uring `sendto` when the socket's own GSO
    /// size fits, else `sendmsg`). Call before the first receive.
    pub fn set_busy_poll(&mut self, on: bool) {
        self.backend.set_busy_poll(on);
    }

    /// What the back end does.
    pub fn features(&self) -> DriverFeatures {
        self.backend.features()
    }

    /// The back end's counters: among them the bytes the kernel accepted
    /// ([`DriverStats::tx_bytes`]) and the datagrams received.
    pub fn stats(&self) -> DriverStats {
        self.backend.stats()
    }
}

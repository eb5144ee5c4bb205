//! The syscall back end: one `sendmsg` and one `recvmsg` per packet, no GSO, no GRO, no
//! batching — the per-packet cost rxe also pays, kept as the measured baseline.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};

use super::{Backend, BackendKind, DriverFeatures, DriverStats, Sink};

/// Most datagrams taken per `recv_ready` call, so transmission interleaves with reception.
pub(crate) const RECV_BUDGET: usize = 64;

/// Datagrams in one receive (a GRO buffer) from which a busy-polled receive takes the next one
/// at once ([`SyscallRx::one_per_call`]); a ping-pong's receive carries one or two.
pub(crate) const STREAM_DATAGRAMS: usize = 8;

pub(crate) struct SyscallBackend {
    sock: UdpSocket,
    rx: SyscallRx,
    gro: bool,
    stats: DriverStats,
    /// Where the engine builds the next transmit.
    txbuf: Vec<u8>,
}

impl SyscallBackend {
    /// A back end on `sock`; `gro` says whether the socket has UDP_GRO on (the baseline opens
    /// it without; a uring device that fell back keeps it).
    pub(crate) fn new(sock: UdpSocket, gro: bool) -> Self {
        SyscallBackend {
            sock,
            rx: SyscallRx::new(),
            gro,
            stats: DriverStats::default(),
            txbuf: vec![0; super::TX_MAX],
        }
    }
}

pub(crate) fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

/// Hands the datagrams of one receive to `sink`: one, or (with a UDP_GRO segment size) the
/// `seg`-byte pieces a GRO super-buffer is made of. Returns how many.
pub(crate) fn deliver(
    from: SocketAddr,
    to: IpAddr,
    payload: &[u8],
    gro_segment: Option<usize>,
    sink: Sink<'_>,
    stats: &mut DriverStats,
) -> usize {
    stats.rx_receives += 1;
    let seg = match gro_segment {
        Some(s) if s > 0 && s < payload.len() => s,
        _ => payload.len().max(1),
    };
    let mut n = 0;
    if payload.is_empty() {
        sink(from, to, payload);
        n = 1;
    }
    for pkt in payload.chunks(seg) {
        sink(from, to, pkt);
        n += 1;
    }
    if n > 1 {
        stats.rx_gro_receives += 1;
    }
    stats.rx_datagrams += n as u64;
    n
}

/// Sends one datagram with `sendmsg`; a full buffer or an unreachable peer loses it, as a
/// network would (RC recovers by retransmission).
pub(crate) fn send_one(
    sock: &UdpSocket,
    to: &SockaddrStorage,
    pkt: &[u8],
    stats: &mut DriverStats,
) -> io::Result<()> {
    stats.tx_sends += 1;
    loop {
        match sendmsg(
            sock.as_fd().as_raw_fd_compat(),
            &[IoSlice::new(pkt)],
            &[],
            MsgFlags::empty(),
            Some(to),
        ) {
            Ok(n) => {
                stats.tx_bytes += n as u64;
                return Ok(());
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(
                nix::errno::Errno::EAGAIN
                | nix::errno::Errno::ENOBUFS
                | nix::errno::Errno::ECONNREFUSED,
            ) => {
                stats.tx_dropped += 1;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receiving with `recvmsg` syscalls: the baseline's path, and the io_uring back end's when
/// the kernel lacks multishot `recvmsg` or buffer rings. Splits UDP GRO super-buffers.
pub(crate) struct SyscallRx {
    buf: Vec<u8>,
    cmsg: Vec<u8>,
    /// The socket's bound address, asked once (a `getsockname` per poll showed in profiles of
    /// busy polling).
    local: Option<IpAddr>,
    /// Busy-polled: stop after a receive that returned fewer than [`STREAM_DATAGRAMS`]
    /// datagrams. Finding out that nothing more waits costs a `recvmsg` returning `EAGAIN`
    /// (≈ 0.5-0.9 µs on these VMs), which would sit between a ping-pong's datagram and the
    /// reply the caller is about to send; the caller polls again right away anyway. A GRO
    /// buffer of many datagrams says the peer streams: then the receives go on, as stopping
    /// after each cost ≈ 5 % of a polled 64-byte WRITE message rate.
    one_per_call: bool,
}

impl SyscallRx {
    pub(crate) fn new() -> Self {
        SyscallRx {
            buf: vec![0; 65536],
            cmsg: nix::cmsg_space!(libc::in6_pktinfo, libc::c_int),
            local: None,
            one_per_call: false,
        }
    }

    /// See [`SyscallRx::one_per_call`]: set for a busy-polled device.
    pub(crate) fn set_busy_poll(&mut self, on: bool) {
        self.one_per_call = on;
    }

    /// Receives what is waiting on `sock` (at most [`RECV_BUDGET`] receives) without blocking.
    pub(crate) fn recv_ready(
        &mut self,
        sock: &UdpSocket,
        sink: Sink<'_>,
        stats: &mut DriverStats,
    ) -> io::Result<usize> {
        let local_default = match self.local {
            Some(ip) => ip,
            None => *self.local.insert(sock.local_addr()?.ip()),
        };
        let mut n = 0;
        let mut receives = 0;
        while receives < RECV_BUDGET {
            let fd = sock.as_fd().as_raw_fd_compat();
            let r = recv_one::<SockaddrStorage>(fd, &mut self.buf, &mut self.cmsg, local_default);
            let (len, from, to, gro, truncated) = match r {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => break,
                // ICMP errors surface as ECONNREFUSED on the next receive: not ours to act on.
                Err(nix::errno::Errno::ECONNREFUSED) => continue,
                Err(e) => return Err(e.into()),
            };
            receives += 1;
            if truncated {
                stats.rx_truncated += 1;
                continue;
            }
            let mut got = 0;
            if let Some(from) = from.as_ref().and_then(to_socket_addr) {
                got = deliver(from, to, &self.buf[..len], gro, sink, stats);
                n += got;
            }
            if self.stop_after(got) {
                break;
            }
        }
        Ok(n)
    }

    /// Whether a busy-polled receive loop stops after a receive that handed on `got`
    /// datagrams (see [`SyscallRx::one_per_call`]).
    pub(crate) fn stop_after(&self, got: usize) -> bool {
        self.one_per_call && got < STREAM_DATAGRAMS
    }

    /// One non-blocking receive from a connected socket (every datagram comes from its peer,
    /// so no source address is asked for): a `recvmsg` that reads the GRO segment size when
    /// `segment` is set, else a plain `recv`, which copies no `msghdr` or control message
    /// (see `connected.rs`). Returns the bytes, the segment size if read, and whether the
    /// datagram was cut short.
    pub(crate) fn recv_connected(
        &mut self,
        sock: &UdpSocket,
        segment: bool,
    ) -> nix::Result<(&[u8], Option<usize>, bool)> {
        let fd = sock.as_fd().as_raw_fd_compat();
        if segment {
            let unused = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            let (len, _, _, gro, cut) = recv_one::<()>(fd, &mut self.buf, &mut self.cmsg, unused)?;
            return Ok((&self.buf[..len], gro, cut));
        }
        // MSG_TRUNC: the datagram's whole length, so a cut one is seen as such.
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
        let len = nix::sys::socket::recv(fd, &mut self.buf, flags)?;
        let cut = len > self.buf.len();
        Ok((&self.buf[..len.min(self.buf.len())], None, cut))
    }
}

/// One non-blocking `recvmsg` into `buf`: its length, source (of type `S`; `()` asks for
/// none), the local address it came to (`local_default` without a packet-info message), the
/// GRO segment size, and whether it was cut short.
// `cmsg` is a `Vec` because nix's `recvmsg` takes one.
#[allow(clippy::type_complexity, clippy::ptr_arg)]
fn recv_one<S: nix::sys::socket::SockaddrLike>(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
    local_default: IpAddr,
) -> nix::Result<(usize, Option<S>, IpAddr, Option<usize>, bool)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<S>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT)?;
    let mut to = local_default;
    let mut gro = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(pi) => {
                    to = IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr)));
                }
                ControlMessageOwned::Ipv6PacketInfo(pi) => {
                    to = IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr));
                }
                ControlMessageOwned::UdpGroSegments(s) => {
                    gro = usize::try_from(s).ok();
                }
                _ => {}
            }
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    Ok((msg.bytes, msg.address, to, gro, truncated))
}

impl Backend for SyscallBackend {
    fn send(&mut self, dst: SocketAddr, data: &[u8], segment: Option<usize>) -> io::Result<()> {
        let to = SockaddrStorage::from(dst);
        // No GSO here: a batch (the engine is told to form none) goes out packet by packet.
        let seg = segment.unwrap_or(data.len()).max(1);
        for pkt in data.chunks(seg) {
            send_one(&self.sock, &to, pkt, &mut self.stats)?;
        }
        Ok(())
    }

    fn tx_buffer(&mut self) -> io::Result<&mut [u8]> {
        Ok(&mut self.txbuf)
    }

    fn send_written(
        &mut self,
        dst: SocketAddr,
        len: usize,
        segment: Option<usize>,
    ) -> io::Result<()> {
        let to = SockaddrStorage::from(dst);
        let data = self.txbuf.get(..len).ok_or(io::ErrorKind::InvalidInput)?;
        if data.is_empty() {
            // An empty datagram, as the io_uring back end sends it (`chunks` yields none).
            return send_one(&self.sock, &to, data, &mut self.stats);
        }
        let seg = segment.unwrap_or(len).max(1);
        for pkt in data.chunks(seg) {
            send_one(&self.sock, &to, pkt, &mut self.stats)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn recv_ready(&mut self, sink: Sink<'_>) -> io::Result<usize> {
        self.rx.recv_ready(&self.sock, sink, &mut self.stats)
    }

    fn wait_fd(&self) -> io::Result<OwnedFd> {
        self.sock.as_fd().try_clone_to_owned()
    }

    fn max_segments(&self) -> usize {
        1
    }

    fn set_busy_poll(&mut self, on: bool) {
        self.rx.set_busy_poll(on);
    }

    fn features(&self) -> DriverFeatures {
        DriverFeatures {
            backend: BackendKind::Syscall,
            multishot_recv: false,
            gro: self.gro,
            gso: false,
            sq_poll: false,
            tx_thread: false,
            coop_taskrun: false,
        }
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }
}

/// nix 0.30 takes a raw fd for `sendmsg`/`recvmsg`.
pub(crate) trait RawFdCompat {
    fn as_raw_fd_compat(&self) -> std::os::fd::RawFd;
}

impl RawFdCompat for std::os::fd::BorrowedFd<'_> {
    fn as_raw_fd_compat(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

//! The syscall back end: one `sendmsg` and one `recvmsg` per packet, no GSO, no GRO, no
//! batching — the per-packet cost rxe also pays, kept as the measured baseline.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};

use super::{Backend, Sink};

/// Most datagrams taken per `recv_ready` call, so transmission interleaves with reception.
const RECV_BUDGET: usize = 64;

pub(crate) struct SyscallBackend {
    sock: UdpSocket,
    buf: Vec<u8>,
    cmsg: Vec<u8>,
}

impl SyscallBackend {
    pub(crate) fn new(sock: UdpSocket) -> Self {
        SyscallBackend {
            sock,
            buf: vec![0; 65536],
            cmsg: nix::cmsg_space!(libc::in6_pktinfo, libc::c_int),
        }
    }
}

pub(crate) fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((Ipv4Addr::from(v4.ip()), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((Ipv6Addr::from(v6.ip()), v6.port())))
}

impl Backend for SyscallBackend {
    fn send(&mut self, dst: SocketAddr, data: &[u8], segment: Option<usize>) -> io::Result<()> {
        let to = SockaddrStorage::from(dst);
        // No GSO here: a batch (the engine is told to form none) goes out packet by packet.
        let seg = segment.unwrap_or(data.len()).max(1);
        for pkt in data.chunks(seg) {
            loop {
                match sendmsg(
                    self.sock.as_fd().as_raw_fd_compat(),
                    &[IoSlice::new(pkt)],
                    &[],
                    MsgFlags::empty(),
                    Some(&to),
                ) {
                    Ok(_) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    // A full socket buffer or an unreachable peer loses the packet, as a
                    // network would; RC recovers by retransmission.
                    Err(
                        nix::errno::Errno::EAGAIN
                        | nix::errno::Errno::ENOBUFS
                        | nix::errno::Errno::ECONNREFUSED,
                    ) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn recv_ready(&mut self, sink: Sink<'_>) -> io::Result<usize> {
        let local_default = self.sock.local_addr()?.ip();
        let mut n = 0;
        while n < RECV_BUDGET {
            let (len, from, to) = {
                let mut iov = [IoSliceMut::new(&mut self.buf)];
                let msg = match recvmsg::<SockaddrStorage>(
                    self.sock.as_fd().as_raw_fd_compat(),
                    &mut iov,
                    Some(&mut self.cmsg),
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(m) => m,
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => break,
                    // ICMP errors surface as ECONNREFUSED on the next receive: not ours to act on.
                    Err(nix::errno::Errno::ECONNREFUSED) => continue,
                    Err(e) => return Err(e.into()),
                };
                let mut to = local_default;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        match c {
                            ControlMessageOwned::Ipv4PacketInfo(pi) => {
                                to = IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr)));
                            }
                            ControlMessageOwned::Ipv6PacketInfo(pi) => {
                                to = IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr));
                            }
                            _ => {}
                        }
                    }
                }
                let from = msg.address.as_ref().and_then(to_socket_addr);
                (msg.bytes, from, to)
            };
            n += 1;
            if let Some(from) = from {
                sink(from, to, &self.buf[..len]);
            }
        }
        Ok(n)
    }

    fn wait_fd(&self) -> io::Result<OwnedFd> {
        self.sock.as_fd().try_clone_to_owned()
    }

    fn max_segments(&self) -> usize {
        1
    }
}

/// nix 0.30 takes a raw fd for `sendmsg`/`recvmsg`.
trait RawFdCompat {
    fn as_raw_fd_compat(&self) -> std::os::fd::RawFd;
}

impl RawFdCompat for std::os::fd::BorrowedFd<'_> {
    fn as_raw_fd_compat(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

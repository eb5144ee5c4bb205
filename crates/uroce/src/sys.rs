//! Socket set-up: the one place with `unsafe`, for socket options `nix` does not wrap.

#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{setsockopt, sockopt};

fn set_int(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `sock` owns a valid open fd for the whole call; the option value points to a live
    // c_int on our stack and its exact size is passed, so the kernel reads only that int.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `UDP_NO_CHECK6_RX` from `linux/udp.h` (libc lacks it): accept IPv6 UDP with checksum 0.
const UDP_NO_CHECK6_RX: libc::c_int = 102;

/// Which receive features the socket got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketFeatures {
    /// UDP_GRO is on: one receive may carry several packets of one size.
    pub gro: bool,
}

/// A UDP socket for RoCEv2 on `local`: unconnected, DF with `IP_PMTUDISC_DO` (so IPv4 packets
/// leave with ID 0, or ID `i` for GSO segment `i`, which the ICRC is computed for), packet-info
/// on receive (the local address a datagram came to) when bound to the unspecified address,
/// and for IPv6 `UDP_NO_CHECK6_RX` so rxe's zero UDP checksum is accepted. `gro` asks for
/// UDP_GRO. A socket bound to one address receives only datagrams sent to it, so the receive
/// paths take the bound address then (the control message cost ≈ 0.1 µs per receive).
#[cfg(test)]
pub fn roce_socket(local: SocketAddr, gro: bool) -> io::Result<(UdpSocket, SocketFeatures)> {
    roce_socket_in(local, gro, false)
}

/// [`roce_socket`]; with `reuseport` the socket joins the address's `SO_REUSEPORT` group
/// (steering, see `steer.rs`) instead of owning the address.
pub fn roce_socket_in(
    local: SocketAddr,
    gro: bool,
    reuseport: bool,
) -> io::Result<(UdpSocket, SocketFeatures)> {
    let sock = if reuseport {
        reuseport_bind(local)?
    } else {
        UdpSocket::bind(local)?
    };
    let features = roce_options(&sock, local, gro)?;
    Ok((sock, features))
}

/// The options of [`roce_socket`] on `sock`, already bound to `local` (also for the sockets
/// `driver/connected.rs` binds beside a device's).
pub fn roce_options(sock: &UdpSocket, local: SocketAddr, gro: bool) -> io::Result<SocketFeatures> {
    if local.is_ipv4() {
        set_int(
            sock,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
        if local.ip().is_unspecified() {
            setsockopt(sock, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
        }
    } else {
        set_int(
            sock,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
        if local.ip().is_unspecified() {
            setsockopt(sock, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
        }
        set_int(sock, libc::IPPROTO_UDP, UDP_NO_CHECK6_RX, 1)?;
    }
    // Big buffers: bursts of a whole GSO batch per QP must not be dropped by the kernel. A
    // whole window of unacked packets (2048 PSNs of 4 KiB, more in skb truesize) must fit, or
    // a receiver that falls behind for a moment drops one and go-back-N resends the window:
    // with the privilege, past `net.core.rmem_max` (4 MiB here, doubled by the kernel).
    if setsockopt(sock, sockopt::RcvBufForce, &(32 << 20)).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &(8 << 20));
    }
    let _ = setsockopt(sock, sockopt::SndBuf, &(8 << 20));
    let gro = gro && setsockopt(sock, sockopt::UdpGroSegment, &true).is_ok();
    Ok(SocketFeatures { gro })
}

/// A UDP socket with `SO_REUSEPORT` set before it is bound to `local`, so it becomes the last
/// member of the address's reuseport group.
fn reuseport_bind(local: SocketAddr) -> io::Result<UdpSocket> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if local.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(local))?;
    Ok(UdpSocket::from(fd))
}

/// Attaches `prog` (classic BPF) as the program that picks a socket of `fd`'s reuseport
/// group (`SO_ATTACH_REUSEPORT_CBPF`, no privilege needed); it replaces the group's program.
pub fn attach_reuseport_cbpf(fd: &impl AsRawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fd` is an open socket for the call; `fprog` points to `len` live instructions
    // of `prog`, which the kernel copies during the call and never writes (the `*mut` is the
    // C type's, not a licence to write); its size is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

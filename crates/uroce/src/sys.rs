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
/// on receive (the local address a datagram came to), and for IPv6 `UDP_NO_CHECK6_RX` so rxe's
/// zero UDP checksum is accepted. `gro` asks for UDP_GRO.
pub fn roce_socket(local: SocketAddr, gro: bool) -> io::Result<(UdpSocket, SocketFeatures)> {
    let sock = UdpSocket::bind(local)?;
    if local.is_ipv4() {
        set_int(
            &sock,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
        setsockopt(&sock, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
    } else {
        set_int(
            &sock,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
        setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
        set_int(&sock, libc::IPPROTO_UDP, UDP_NO_CHECK6_RX, 1)?;
    }
    // Big buffers: bursts of a whole GSO batch per QP must not be dropped by the kernel. A
    // whole window of unacked packets (2048 PSNs of 4 KiB, more in skb truesize) must fit, or
    // a receiver that falls behind for a moment drops one and go-back-N resends the window:
    // with the privilege, past `net.core.rmem_max` (4 MiB here, doubled by the kernel).
    if setsockopt(&sock, sockopt::RcvBufForce, &(32 << 20)).is_err() {
        let _ = setsockopt(&sock, sockopt::RcvBuf, &(8 << 20));
    }
    let _ = setsockopt(&sock, sockopt::SndBuf, &(8 << 20));
    let gro = gro && setsockopt(&sock, sockopt::UdpGroSegment, &true).is_ok();
    Ok((sock, SocketFeatures { gro }))
}

//! Zero-copy receive: the kernel copies a datagram's payload straight into memory regions.
//!
//! For each datagram: a `recvmsg(MSG_PEEK | MSG_TRUNC)` into a small buffer gives the first
//! packet's headers, the whole length and the `UDP_GRO` segment size; the engine plans where
//! the payload of each full-size segment goes ([`uroce_proto::Device::plan_placement`]); one
//! `recvmsg` with an iovec per segment (header and ICRC into [`PlacingRx`]'s buffer, payload
//! into the regions) takes the datagram; the engine checks it
//! ([`uroce_proto::Device::handle_placed`]). Without a plan the datagram is received into the
//! buffer whole and handed over as usual. The socket must have no other reader meanwhile
//! (the io_uring back end cancels its multishot receive first), so the datagram received is
//! the one peeked; a length or source that differs anyway drops it (RC resends).

#![allow(unsafe_code)]

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage};
use uroce_proto::{Instant, Placement};

use super::syscall::to_socket_addr;
use super::DriverStats;

/// Bytes peeked: a BTH is 12; more costs nothing measurable and leaves room.
const HEAD_LEN: usize = 64;
/// The largest UDP payload.
const BUF_LEN: usize = 65536;

/// The buffers of the placing receive, reused for every datagram.
pub(crate) struct PlacingRx {
    head: [u8; HEAD_LEN],
    cmsg: Vec<u8>,
    buf: Vec<u8>,
    plan: Placement,
    iov: Vec<libc::iovec>,
}

/// What one [`PlacingRx::recv_one`] did.
pub(crate) enum Received {
    /// Nothing waits on the socket.
    Empty,
    /// A datagram of `packets` packets was handed to the engine (0: dropped); `placed`:
    /// some of its payload was placed.
    Datagram {
        /// Packets in it.
        packets: usize,
        /// Whether it was received with a plan.
        placed: bool,
    },
}

impl PlacingRx {
    pub(crate) fn new() -> Self {
        PlacingRx {
            head: [0; HEAD_LEN],
            cmsg: nix::cmsg_space!(libc::in6_pktinfo, libc::c_int),
            buf: vec![0; BUF_LEN],
            plan: Placement::default(),
            iov: Vec::with_capacity(64 * 4),
        }
    }

    /// Receives the next datagram on `sock`, placing what the engine plans.
    pub(crate) fn recv_one(
        &mut self,
        sock: &UdpSocket,
        local_default: IpAddr,
        eng: &mut uroce_proto::Device,
        now: Instant,
        stats: &mut DriverStats,
    ) -> io::Result<Received> {
        let fd = sock.as_raw_fd();
        let (len, from, to, gro) = loop {
            let mut iov = [IoSliceMut::new(&mut self.head)];
            let msg = match recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut self.cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return Ok(Received::Empty),
                Err(nix::errno::Errno::EINTR) => continue,
                // An ICMP error, reported once: the next receive goes on.
                Err(nix::errno::Errno::ECONNREFUSED) => continue,
                Err(e) => return Err(e.into()),
            };
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
                        ControlMessageOwned::UdpGroSegments(s) => gro = usize::try_from(s).ok(),
                        _ => {}
                    }
                }
            }
            let from = msg.address.as_ref().and_then(to_socket_addr);
            break (msg.bytes, from, to, gro);
        };
        stats.rx_place_peeks += 1;
        let seg = gro.filter(|&s| s > 0 && s < len).unwrap_or(len).max(1);
        let planned = match from {
            Some(from) if len <= BUF_LEN => {
                let head = &self.head[..len.min(HEAD_LEN)];
                eng.plan_placement(from, head, seg, len, &mut self.plan)
            }
            _ => false,
        };
        self.iov.clear();
        let buf = self.buf.as_mut_ptr();
        let mut ok = true;
        if planned {
            let p = &self.plan;
            let (h, pl) = (p.header_len, p.payload_len);
            // Header of segment 0, then per segment its payload pieces and one iovec from
            // its ICRC through the next segment's header (adjacent in the buffer, which
            // mirrors the datagram), the last one through the end of the datagram.
            self.iov.push(iovec(buf, h));
            for i in 0..p.segments {
                for piece in p.segment_pieces(i) {
                    match piece.memory.raw_parts() {
                        Some(raw)
                            if piece
                                .offset
                                .checked_add(piece.len)
                                .is_some_and(|e| e <= raw.len) =>
                        {
                            let at = raw.addr + piece.offset;
                            self.iov.push(iovec(at as *mut u8, piece.len));
                        }
                        _ => ok = false,
                    }
                }
                // Segment `i < segments <= len / seg` is a full one: `from + seg - h - pl`
                // lies within `len`.
                let from = i * seg + h + pl;
                let to = if i + 1 < p.segments {
                    from + seg - pl
                } else {
                    len
                };
                self.iov.push(iovec(buf.wrapping_add(from), to - from));
            }
        }
        if !planned || !ok {
            self.plan.clear();
            self.iov.clear();
            self.iov.push(iovec(buf, len.min(BUF_LEN)));
        }
        // SAFETY: a zeroed `sockaddr_storage` and `msghdr` are valid values.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = self.iov.as_mut_ptr();
        msg.msg_iovlen = self.iov.len() as _;
        let r = loop {
            // SAFETY: every iovec points at writable memory that outlives the call: this
            // receiver's buffer (each range within its BUF_LEN bytes, above), or a planned
            // range of a region, within the region's `raw_parts` (checked above) and kept
            // alive by the `Arc` the plan holds until after the call. A region is memory
            // that may be written at any time by a peer (the engine only reads it through
            // `RegionMemory`, which allows that, as a NIC's DMA would), and the engine
            // planned only bytes of an in-progress message's checked destination that no
            // accepted packet has written (`uroce_proto::place`). `msg`, `name` and the
            // iovec array are locals or owned by `self` and live across the call.
            let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {
                    self.plan.clear();
                    return Ok(Received::Empty);
                }
                _ => {
                    self.plan.clear();
                    return Err(e);
                }
            }
        };
        // SAFETY: the kernel filled `name` with `msg_namelen` bytes of a socket address.
        let got_from = unsafe {
            SockaddrStorage::from_raw(
                (&name as *const libc::sockaddr_storage).cast(),
                Some(msg.msg_namelen),
            )
        }
        .as_ref()
        .and_then(to_socket_addr);
        stats.rx_receives += 1;
        let Some(from) = from
            .filter(|&f| r == len && got_from == Some(f) && msg.msg_flags & libc::MSG_TRUNC == 0)
        else {
            // Not the datagram peeked (another reader took it) or cut short: dropped.
            stats.rx_truncated += 1;
            self.plan.clear();
            return Ok(Received::Datagram {
                packets: 0,
                placed: false,
            });
        };
        let data = &mut self.buf[..len];
        let n = len.div_ceil(seg).max(1);
        if n > 1 {
            stats.rx_gro_receives += 1;
        }
        stats.rx_datagrams += n as u64;
        let placed = self.plan.segments > 0;
        if placed {
            stats.rx_place_receives += 1;
            stats.rx_placed_bytes += (self.plan.segments * self.plan.payload_len) as u64;
            eng.handle_placed(now, from, to, data, &self.plan);
            self.plan.clear();
        } else if data.is_empty() {
            eng.handle_datagram(now, from, to, data);
        } else {
            for pkt in data.chunks(seg) {
                eng.handle_datagram(now, from, to, pkt);
            }
        }
        Ok(Received::Datagram { packets: n, placed })
    }
}

fn iovec(base: *mut u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: base.cast(),
        iov_len: len,
    }
}

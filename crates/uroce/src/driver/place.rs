//! Zero-copy receive: the kernel copies a datagram's payload straight into memory regions.
//!
//! For each datagram the engine plans where the payload of each full-size GRO segment goes,
//! and one `recvmsg` with a scatter list (header and ICRC into [`PlacingRx`]'s buffer, payload
//! into the regions) takes the datagram; the engine then checks it
//! ([`uroce_proto::Device::handle_placed`]). The plan comes from a `recvmsg(MSG_PEEK |
//! MSG_TRUNC)` of the first bytes ([`uroce_proto::Device::plan_placement`]: first header,
//! whole length, `UDP_GRO` segment size), or, when the previous datagram was exactly what
//! its plan predicted, without a peek from the QP's next expected PSN
//! ([`uroce_proto::Device::plan_next`]): one syscall per datagram instead of two. A datagram
//! that is not what was planned is put back together by the engine (the planned bytes it
//! wrote lie only in the unwritten part of the in-progress message's checked destination).
//! Without a plan the datagram is received into the buffer whole and handed over as usual.
//! The socket must have no other reader meanwhile (the io_uring back end cancels its
//! multishot receive first), so the datagram received is the one peeked; a length or
//! source that differs anyway drops it (RC resends).

#![allow(unsafe_code)]

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{recvmsg, MsgFlags, SockaddrStorage};
use uroce_proto::{Instant, Placement, Scatter};

use super::syscall::to_socket_addr;
use super::uring::{parse_cmsgs, parse_name};
use super::DriverStats;

/// Bytes peeked: a BTH is 12; more costs nothing measurable and leaves room.
const HEAD_LEN: usize = 64;
/// The largest UDP payload, rounded up.
const BUF_LEN: usize = 65536;
/// Control data: `IPV6_PKTINFO` (40 bytes with its header) or `IP_PKTINFO` (32), and
/// `UDP_GRO` (24), with room to spare.
const CMSG_LEN: usize = 128;

/// The buffers of the placing receive, reused for every datagram.
pub(crate) struct PlacingRx {
    head: [u8; HEAD_LEN],
    /// 8-byte aligned, as `cmsghdr`s are read from it.
    cmsg: Vec<u64>,
    buf: Vec<u8>,
    plan: Placement,
    iov: Vec<libc::iovec>,
    /// The QP whose next datagram is planned without a peek: the previous datagram was
    /// placed exactly as predicted.
    predict: Option<u32>,
}

/// What one [`PlacingRx::recv_one`] did.
pub(crate) enum Received {
    /// Nothing waits on the socket.
    Empty,
    /// A datagram of `packets` packets was handed to the engine (0: dropped).
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
            cmsg: vec![0; CMSG_LEN / 8],
            buf: vec![0; BUF_LEN],
            plan: Placement::default(),
            iov: Vec::with_capacity(64 * 4),
            predict: None,
        }
    }

    /// Peeks at the next datagram: its length, source, and a plan for it in `self.plan`.
    /// `None` when nothing waits.
    fn peek(
        &mut self,
        sock: &UdpSocket,
        eng: &uroce_proto::Device,
        stats: &mut DriverStats,
    ) -> io::Result<Option<(usize, Option<SocketAddr>)>> {
        let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo, libc::c_int);
        let (len, from, gro) = loop {
            let mut iov = [IoSliceMut::new(&mut self.head)];
            let msg = match recvmsg::<SockaddrStorage>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                // An ICMP error, reported once: the next receive goes on.
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNREFUSED) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut gro = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let nix::sys::socket::ControlMessageOwned::UdpGroSegments(s) = c {
                        gro = usize::try_from(s).ok();
                    }
                }
            }
            let from = msg.address.as_ref().and_then(to_socket_addr);
            break (msg.bytes, from, gro);
        };
        stats.rx_place_peeks += 1;
        let seg = gro.filter(|&s| s > 0 && s < len).unwrap_or(len).max(1);
        if let Some(f) = from.filter(|_| len <= BUF_LEN) {
            let head = &self.head[..len.min(HEAD_LEN)];
            eng.plan_placement(f, head, seg, len, &mut self.plan);
        }
        Ok(Some((len, from)))
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
        self.plan.clear();
        let predicted = self
            .predict
            .take()
            .is_some_and(|q| eng.plan_next(q, BUF_LEN, &mut self.plan));
        // The bytes the scatter list must hold, and what the peek saw.
        let (cap, peeked) = if predicted {
            (BUF_LEN, None)
        } else {
            match self.peek(sock, eng, stats)? {
                Some((len, from)) => (len.min(BUF_LEN), Some((len, from))),
                None => return Ok(Received::Empty),
            }
        };
        self.iov.clear();
        let buf = self.buf.as_mut_ptr();
        let p = &self.plan;
        if p.segments > 0 {
            // The plan's scatter list (`Placement::scatter_list`): buffer ranges mirror the
            // datagram and lie within `cap` (at most BUF_LEN), pieces lie in their regions.
            let mut ok = true;
            for entry in p.scatter_list(cap) {
                match entry {
                    Scatter::Buffer { offset, len } => {
                        self.iov.push(iovec(buf.wrapping_add(offset), len));
                    }
                    Scatter::Piece(piece) => match piece.memory.raw_parts() {
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
                    },
                    _ => ok = false,
                }
            }
            if !ok {
                self.plan.clear();
            }
        }
        if self.plan.segments == 0 {
            self.iov.clear();
            self.iov.push(iovec(buf, cap));
        }
        // SAFETY: a zeroed `sockaddr_storage` and `msghdr` are valid values.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = self.iov.as_mut_ptr();
        msg.msg_iovlen = self.iov.len() as _;
        msg.msg_control = self.cmsg.as_mut_ptr().cast();
        msg.msg_controllen = (self.cmsg.len() * 8) as _;
        let fd = sock.as_raw_fd();
        let r = loop {
            // SAFETY: every iovec points at writable memory that outlives the call: this
            // receiver's buffer (each range within its BUF_LEN bytes, above), or a planned
            // range of a region, within the region's `raw_parts` (checked above) and kept
            // alive by the `Arc` the plan holds until after the call. A region is memory
            // that may be written at any time by a peer (the engine only reads it through
            // `RegionMemory`, which allows that, as a NIC's DMA would), and the engine
            // planned only bytes of an in-progress message's checked destination that no
            // accepted packet has written (`uroce_proto::place`). `msg`, `name`, the
            // control buffer and the iovec array are locals or owned by `self` and live
            // across the call.
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
        stats.rx_receives += 1;
        let namelen = (msg.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `name` is a plain struct of `size_of` bytes, all initialised (zeroed).
        let name = unsafe {
            std::slice::from_raw_parts(
                (&name as *const libc::sockaddr_storage).cast::<u8>(),
                namelen,
            )
        };
        let from = parse_name(name);
        let ctrl_len = (msg.msg_controllen as usize).min(CMSG_LEN);
        // SAFETY: the control buffer is `CMSG_LEN` initialised bytes owned by `self`.
        let ctrl = unsafe { std::slice::from_raw_parts(self.cmsg.as_ptr().cast::<u8>(), ctrl_len) };
        let (to, gro) = parse_cmsgs(ctrl);
        let to = to.unwrap_or(local_default);
        let same = peeked.is_none_or(|(len, f)| r == len && f == from);
        let Some(from) = from.filter(|_| same && msg.msg_flags & libc::MSG_TRUNC == 0) else {
            // Not the datagram peeked (another reader took it) or cut short: dropped.
            stats.rx_truncated += 1;
            self.plan.clear();
            return Ok(Received::Datagram {
                packets: 0,
                placed: false,
            });
        };
        let len = r;
        let seg = gro.filter(|&s| s > 0 && s < len).unwrap_or(len).max(1);
        let data = &mut self.buf[..len];
        let n = len.div_ceil(seg).max(1);
        if n > 1 {
            stats.rx_gro_receives += 1;
        }
        stats.rx_datagrams += n as u64;
        let placed = self.plan.segments > 0;
        if placed {
            stats.rx_place_receives += 1;
            stats.rx_place_unpeeked += u64::from(predicted);
            let planned_bytes = self.plan.segments * self.plan.payload_len;
            stats.rx_placed_bytes += planned_bytes.min(len) as u64;
            let misses = eng.counters().rx_place_misses;
            eng.handle_placed(now, from, to, data, seg, &self.plan);
            if eng.counters().rx_place_misses == misses {
                self.predict = Some(self.plan.qpn());
            }
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

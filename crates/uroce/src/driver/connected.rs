//! A busy-polled device's traffic with each peer through a socket connected to it
//! (`DeviceConfig::connected_tx`), for a device on a specific IPv4 or IPv6 address (not an
//! unspecified one, whose source the route picks, nor an IPv6 link-local one, whose scope a
//! peer address does not carry).
//!
//! An unconnected socket costs a route lookup per datagram both ways: `sendto` looks up the
//! route out, and a datagram arriving for an unconnected socket takes the slow input route
//! lookup (`ip_route_input_slow`, with reverse-path validation), where one for a connected
//! socket is matched by early demultiplexing and takes the socket's cached route. On the
//! 8-byte WRITE ping-pong the send side measured 0.38 µs of a 5.1 µs half round trip, and a C
//! ping-pong of the WRITE + ACK shape 0.33 µs for the receive side (docs/perf/JOURNAL.md,
//! "Latency: a connected send path", "Receiving on the connected socket").
//!
//! So each peer gets a socket bound to the device's own address and port, beside the device's
//! socket, and connected to the peer's port 4791. Binding two sockets to one address needs
//! `SO_REUSEADDR` on both; the device's socket has it only for the moment of that bind, so
//! nobody else can bind the address at any other time (a bind needs the flag on every socket
//! already there). Datagrams from the peer's address and port then reach the connected
//! socket (the kernel prefers the exact match); everything else reaches the device's socket
//! as before. Busy polling reads a socket that received lately on every poll and an idle one
//! every [`IDLE_EVERY`] polls, since each empty `recvmsg` sits in the loop (the device's
//! socket polled on every loop beside the connected one gave the whole gain back).
//!
//! **Receiving.** A `recvmsg` that reads the GRO segment size (a control message) costs more
//! than a plain `recv`: a C ping-pong of the WRITE + held-ACK shape measured 4.67 against
//! 4.44 µs per half round trip, and uroce's 8-byte WRITE ping-pong went from 4.34–4.53 to
//! 4.09–4.12 µs (docs/perf/JOURNAL.md, "Receiving without the segment size"). So a socket
//! whose last [`STATED_IN_A_ROW`] receives each began with a packet that stated its length
//! (`uroce_wire::stated_len`: ACKs, READ requests, atomics, WRITE Only), the length the
//! kernel reported, reads with `recv` and cuts each receive by the length its first packet
//! states. A receive whose first packet states none (a SEND, a READ response) is cut where
//! every packet's ICRC verifies ([`split::find_segment`]), or handed on whole, and the
//! receives after it read the segment size again. A wrong cut cannot pass silently: its
//! pieces fail their ICRC and are dropped and counted, as damage is.
//!
//! IPv6 has no Identification, and the ICRC masks the header fields a socket may set per
//! datagram (traffic class, flow label, hop limit; IBTA A17.8.2): what the engine sealed goes
//! out as it is. The rest of this paragraph is about IPv4.
//! A connected socket takes the IPv4 Identification of each datagram from a per-socket
//! counter that `connect` starts at a random value (`ip_select_ident_segs`), where the engine
//! seals every packet for ID 0 (`i` for GSO segment `i`). The ICRC covers the field, so each
//! packet is resealed for it ([`Ipv4IdSolver::reseal_v4`], XORs of per-length effects). The
//! counter is read once per socket: a zero-length datagram to the peer's discard port (9,
//! never RoCE's) is sent with a software transmit timestamp, and the kernel loops it back on
//! the error queue with its IP header (no privilege needed while `net.core.tstamp_allow_data`
//! is 1, the default). Every later `sendmsg` takes the next value; segment `i` of a GSO send
//! gets that value plus `i`. A send that fails is resealed back and left to the device's own
//! socket (its errors, drops and fallbacks); the counter may have moved, so the socket learns
//! it again before its next send, and keeps receiving meanwhile.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    getsockopt, recvmsg, setsockopt, sockopt, MsgFlags, SockaddrStorage, TimestampingFlag,
};
use uroce_wire::{IcrcContext, Ipv4IdMode, Ipv4IdSolver};

use super::split;
use super::syscall::{deliver, SyscallRx, RECV_BUDGET};
use super::{DriverStats, Sink};

/// Peers with a connected socket at once; a device talking to more sends to the others as
/// before.
const MAX_PEERS: usize = 8;

/// How long the looped-back probe may take to appear on the error queue.
const LEARN_WAIT: Duration = Duration::from_millis(50);

/// An idle socket (nothing received in its last [`ACTIVE_POLLS`] polls) is read every this
/// many polls (≈ 0.1 ms of busy polling: the first datagram after a quiet spell may wait that
/// long). A C ping-pong of the WRITE + ACK shape lost 0.15 of the 0.33 µs it gained when the
/// device's socket was read every 8th poll, all of it when read on every poll; the bench's
/// ping-pong was ≈ 0.05 µs slower with every 32nd than with every 1024th.
const IDLE_EVERY: u64 = 256;

/// Receives in a row whose first packet stated its length (read with the segment size)
/// before a connected socket reads by plain `recv`: traffic that mixes packets that state
/// their length with ones that do not (a SEND or READ stream beside its ACKs) stays with
/// the segment size instead of searching for cuts ([`split::find_segment`]) again and again.
const STATED_IN_A_ROW: u32 = 64;

/// Polls after its last datagram during which a socket counts as active (≈ 1–2 ms of busy
/// polling).
const ACTIVE_POLLS: u64 = 4096;

/// A connected socket, the IPv4 ID its next datagram takes, and when it last received.
struct Peer {
    dst: SocketAddr,
    sock: UdpSocket,
    /// The ID of the next datagram; `None` after a failed send, until learned again (IPv6:
    /// unused).
    next: Option<u16>,
    /// Whether the counter was learned before.
    learned: bool,
    /// Learning failed: sends to this peer go from the device's socket (receives go on).
    sends_refused: bool,
    /// The socket's `UDP_SEGMENT` (0: not set).
    gso: u16,
    /// The poll at which it last received.
    heard: u64,
    /// The socket has `UDP_GRO` on (as the device's socket): a receive may hold several
    /// packets.
    gro: bool,
    /// Receives in a row, read with the segment size, whose first packet stated the length
    /// the kernel reported; from [`STATED_IN_A_ROW`] on, receives are plain `recv`s cut by
    /// the length their first packet states (see "Receiving" in the module documentation).
    stated: u32,
}

/// The connected sockets of one device (see the module documentation).
pub(crate) struct ConnectedPeers {
    local: SocketAddr,
    peers: Vec<Peer>,
    solver: Ipv4IdSolver,
    /// Sockets opened, counters learned again after a failed send, and sends that failed.
    pub opened: u64,
    pub relearned: u64,
    pub failed: u64,
    /// Peers for which no connected socket could be opened: they are sent to as before,
    /// without trying again on every send (learning may wait [`LEARN_WAIT`]).
    refused: Vec<SocketAddr>,
    /// Busy polls so far, and the one at which the device's own socket last received.
    polls: u64,
    main_heard: u64,
}

impl ConnectedPeers {
    /// For a device bound to `local`: `None` unless it is a specific address (the engine
    /// seals for it; an unspecified one leaves the source to the route) that is not IPv6
    /// link-local.
    pub(crate) fn new(local: SocketAddr) -> Option<ConnectedPeers> {
        let usable = match local.ip() {
            IpAddr::V4(a) => !a.is_unspecified(),
            IpAddr::V6(a) => !a.is_unspecified() && !a.is_unicast_link_local(),
        };
        usable.then(|| ConnectedPeers {
            local,
            peers: Vec::new(),
            solver: Ipv4IdSolver::default(),
            opened: 0,
            relearned: 0,
            failed: 0,
            refused: Vec::new(),
            polls: 0,
            main_heard: 0,
        })
    }

    /// Sends `buf` to `dst` from the socket connected to it (opened beside `main`, the
    /// device's socket, on first use): one datagram, or `segment`-byte packets with UDP GSO,
    /// each sealed by the engine for ID `i` (segment `i`) and resealed here for the socket's
    /// counter. `None` when `dst` has no connected socket and none could be opened now, or the
    /// send failed: the caller sends as before, `buf` as the engine built it.
    pub(crate) fn send(
        &mut self,
        main: &UdpSocket,
        dst: SocketAddr,
        buf: &mut [u8],
        segment: Option<usize>,
    ) -> Option<()> {
        if dst.is_ipv4() != self.local.is_ipv4() {
            return None;
        }
        let i = match self.peers.iter().position(|p| p.dst == dst) {
            Some(i) => i,
            None if self.peers.len() < MAX_PEERS && !self.refused.contains(&dst) => {
                match open(main, self.local, dst) {
                    Ok(sock) => {
                        self.opened += 1;
                        let gro = getsockopt(&sock, sockopt::UdpGroSegment).unwrap_or(false);
                        self.peers.push(Peer {
                            dst,
                            sock,
                            next: None,
                            learned: false,
                            sends_refused: false,
                            gso: 0,
                            heard: self.polls,
                            gro,
                            stated: 0,
                        });
                        self.peers.len() - 1
                    }
                    Err(e) => {
                        tracing::debug!("no connected socket for {dst}: {e}");
                        if self.refused.len() < 4 * MAX_PEERS {
                            self.refused.push(dst);
                        }
                        return None;
                    }
                }
            }
            None => return None,
        };
        let p = &mut self.peers[i];
        if p.sends_refused {
            return None;
        }
        let next = match (p.next, dst) {
            (Some(n), _) => n,
            // IPv6 has no ID: nothing to learn, and the value goes unused.
            (None, SocketAddr::V6(_)) => 0,
            (None, SocketAddr::V4(dst)) => match learn_id(&p.sock, dst) {
                Ok(id) => {
                    if p.learned {
                        self.relearned += 1;
                    }
                    p.learned = true;
                    *p.next.insert(id.wrapping_add(1))
                }
                Err(e) => {
                    tracing::debug!("no IPv4 ID counter for {dst}: {e}; sending unconnected");
                    p.sends_refused = true;
                    return None;
                }
            },
        };
        let seg = segment
            .filter(|&s| s > 0 && s < buf.len())
            .unwrap_or(buf.len());
        // Segment k: from ID k to the counter's ID + k (`back`: the other way). The socket
        // sends from the device's port, which the engine sealed for.
        let port = (self.local.port(), self.local.port());
        let v4 = dst.is_ipv4();
        let reseal = |solver: &mut Ipv4IdSolver, buf: &mut [u8], back: bool| {
            if !v4 {
                return;
            }
            for (k, pkt) in buf.chunks_mut(seg.max(1)).enumerate() {
                let k = k as u16;
                let id = (k, next.wrapping_add(k));
                if back {
                    solver.reseal_v4(pkt, (id.1, id.0), port);
                } else {
                    solver.reseal_v4(pkt, id, port);
                }
            }
        };
        reseal(&mut self.solver, buf, false);
        // The segment size goes in the socket's `UDP_SEGMENT` option, so that every send is a
        // plain `send` (no `msghdr`, no control message): set when a GSO send's size differs,
        // cleared when a lone datagram is longer than it (it would be cut up).
        let want = match segment.filter(|&s| s > 0 && s < buf.len()) {
            Some(s) => u16::try_from(s).unwrap_or(u16::MAX),
            None if p.gso == 0 || buf.len() <= usize::from(p.gso) => p.gso,
            None => 0,
        };
        let r = if want == p.gso {
            Ok(())
        } else {
            setsockopt(&p.sock, sockopt::UdpGsoSegment, &i32::from(want)).map(|()| p.gso = want)
        };
        let r = r.map_err(io::Error::from).and_then(|()| loop {
            match p.sock.send(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        });
        match r {
            Ok(_) => {
                p.next = Some(next.wrapping_add(1));
                Some(())
            }
            Err(e) => {
                // The packets go back to what the engine sealed, for the device's own socket
                // and its handling of errors (drops, the unsegmented fallback). Whether the
                // datagram took an ID is not known: the counter is learned again before the
                // next send. The socket stays, receiving.
                tracing::debug!("connected send to {dst} failed ({e}); sending unconnected");
                reseal(&mut self.solver, buf, true);
                self.failed += 1;
                p.next = None;
                None
            }
        }
    }

    /// Hands what the connected sockets and `main` (the device's socket) have received to
    /// `sink`, as [`SyscallRx::recv_ready`] does for one socket; a socket that received
    /// nothing in its last [`ACTIVE_POLLS`] polls is read only every [`IDLE_EVERY`] polls.
    /// Datagrams taken from connected sockets are counted in `stats.rx_connected`.
    pub(crate) fn recv_ready(
        &mut self,
        main: &UdpSocket,
        rx: &mut SyscallRx,
        sink: Sink<'_>,
        stats: &mut DriverStats,
    ) -> io::Result<usize> {
        self.polls += 1;
        let polls = self.polls;
        let due = |heard: u64| polls - heard < ACTIVE_POLLS || polls % IDLE_EVERY == 0;
        let mut n = 0;
        for p in &mut self.peers {
            if due(p.heard) {
                let before = stats.rx_datagrams;
                let got = p.recv_ready(self.local, &mut self.solver, rx, sink, stats)?;
                if got > 0 {
                    p.heard = polls;
                    stats.rx_connected += stats.rx_datagrams - before;
                    n += got;
                }
            }
        }
        if self.peers.is_empty() || due(self.main_heard) {
            let got = rx.recv_ready(main, sink, stats)?;
            if got > 0 {
                self.main_heard = polls;
                n += got;
            }
        }
        Ok(n)
    }
}

impl Peer {
    /// Hands what this socket has received to `sink` (at most [`RECV_BUDGET`] receives),
    /// each receive cut into its packets: by the GRO segment size the kernel reports, or,
    /// after [`STATED_IN_A_ROW`] receives that allowed it, by the length the first packet
    /// states, or where neither is known by [`split::find_segment`], checking ICRCs for
    /// `local` (see "Receiving").
    fn recv_ready(
        &mut self,
        local: SocketAddr,
        solver: &mut Ipv4IdSolver,
        rx: &mut SyscallRx,
        sink: Sink<'_>,
        stats: &mut DriverStats,
    ) -> io::Result<usize> {
        let mut n = 0;
        for _ in 0..RECV_BUDGET {
            let by_headers = self.stated >= STATED_IN_A_ROW;
            let plain = by_headers || !self.gro;
            let (data, gro, cut) = match rx.recv_connected(&self.sock, !plain) {
                Ok(r) => r,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => break,
                // ICMP errors surface as ECONNREFUSED on the next receive: not ours to act on.
                Err(nix::errno::Errno::ECONNREFUSED) => continue,
                Err(e) => return Err(e.into()),
            };
            if cut {
                stats.rx_truncated += 1;
                continue;
            }
            let stated = uroce_wire::stated_len(data);
            let segment = if !self.gro {
                None
            } else if by_headers {
                stats.rx_by_headers += 1;
                match stated {
                    Some(s) if s <= data.len() => Some(s),
                    _ => {
                        // A packet that states no length: this receive's cut is searched
                        // for, and the next ones ask the kernel again.
                        self.stated = 0;
                        stats.rx_segment_searches += 1;
                        // IPv4 ID 0: the peer's socket sends others, which the check solves.
                        IcrcContext::between(self.dst, local, 0).and_then(|ctx| {
                            split::find_segment(data, |p| {
                                ctx.verify_with(p, Ipv4IdMode::Solve, solver).is_ok()
                            })
                        })
                    }
                }
            } else {
                let whole = gro.unwrap_or(data.len());
                self.stated = if stated == Some(whole) {
                    self.stated + 1
                } else {
                    0
                };
                gro
            };
            let got = deliver(self.dst, local.ip(), data, segment, sink, stats);
            n += got;
            if rx.stop_after(got) {
                break;
            }
        }
        Ok(n)
    }
}

/// A socket bound to `local` beside `main` (the device's socket, bound there too) and
/// connected to `dst`.
fn open(main: &UdpSocket, local: SocketAddr, dst: SocketAddr) -> io::Result<UdpSocket> {
    let sock = bind_beside(main, local)?;
    // The device socket's options; the receive path splits GRO batches by their segment
    // size, so the socket must have GRO exactly when `main` has it.
    let gro = getsockopt(main, sockopt::UdpGroSegment).unwrap_or(false);
    if crate::sys::roce_options(&sock, local, gro)?.gro != gro {
        return Err(io::Error::other("UDP_GRO could not be set"));
    }
    sock.connect(dst)?;
    Ok(sock)
}

/// A UDP socket bound to `local`, where `main` is bound already: both need `SO_REUSEADDR`
/// for the bind; `main` has it only for the moment of the bind (unless it had it before), so
/// no other socket can bind the address later.
fn bind_beside(main: &UdpSocket, local: SocketAddr) -> io::Result<UdpSocket> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType};
    let had = getsockopt(main, sockopt::ReuseAddr)?;
    if !had {
        setsockopt(main, sockopt::ReuseAddr, &true)?;
    }
    let family = if local.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let r = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).and_then(|fd| {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        bind(fd.as_raw_fd(), &SockaddrStorage::from(local))?;
        Ok(UdpSocket::from(fd))
    });
    if !had {
        setsockopt(main, sockopt::ReuseAddr, &false)?;
    }
    Ok(r?)
}

/// The IPv4 ID of a zero-length datagram sent from `sock` (connected to `dst`) to `dst`'s
/// discard port, read from its looped-back copy on the error queue.
fn learn_id(sock: &UdpSocket, dst: SocketAddrV4) -> io::Result<u16> {
    let on = TimestampingFlag::SOF_TIMESTAMPING_TX_SOFTWARE
        | TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE;
    setsockopt(sock, sockopt::Timestamping, &on)?;
    let r = probe(sock, dst);
    setsockopt(sock, sockopt::Timestamping, &TimestampingFlag::empty())?;
    r
}

fn probe(sock: &UdpSocket, dst: SocketAddrV4) -> io::Result<u16> {
    sock.send_to(&[], SocketAddrV4::new(*dst.ip(), 9))?;
    let end = Instant::now() + LEARN_WAIT;
    let mut data = [0u8; 256];
    let mut cmsg = nix::cmsg_space!(
        [libc::timespec; 3],
        libc::sock_extended_err,
        libc::sockaddr_in
    );
    loop {
        let mut iov = [IoSliceMut::new(&mut data)];
        match recvmsg::<SockaddrStorage>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => {
                let n = m.bytes;
                if let Some(id) = looped_id(&data[..n.min(data.len())], *dst.ip()) {
                    return Ok(id);
                }
            }
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < end => {
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no transmit timestamp looped back",
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The Identification of the IPv4 packet to `dst` port 9 in `frame` (a looped-back copy of a
/// sent packet: an IP header, or an Ethernet header and then one).
fn looped_id(frame: &[u8], dst: Ipv4Addr) -> Option<u16> {
    [0, 14].into_iter().find_map(|at| {
        let ip = frame.get(at..at + 28)?;
        let ihl = usize::from(ip[0] & 0x0F) * 4;
        let udp = frame.get(at + ihl..at + ihl + 8)?;
        (ip[0] >> 4 == 4
            && ip[9] == 17
            && ip[16..20] == dst.octets()
            && u16::from_be_bytes([udp[2], udp[3]]) == 9)
            .then(|| u16::from_be_bytes([ip[4], ip[5]]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_looped_id_is_found_behind_an_ethernet_header_or_without_one() {
        let dst = Ipv4Addr::new(10, 66, 80, 1);
        let mut ip = vec![
            0x45, 0, 0, 28, 0xA8, 0xE5, 0x40, 0, 64, 17, 0, 0, 10, 66, 80, 2,
        ];
        ip.extend(dst.octets());
        ip.extend([0xC0, 0x00, 0, 9, 0, 8, 0, 0]);
        assert_eq!(looped_id(&ip, dst), Some(0xA8E5));
        let mut eth = vec![0u8; 12];
        eth.extend([0x08, 0x00]);
        eth.extend(&ip);
        assert_eq!(looped_id(&eth, dst), Some(0xA8E5));
        assert_eq!(
            looped_id(&eth, Ipv4Addr::new(10, 66, 80, 3)),
            None,
            "another peer"
        );
        ip[23] = 10;
        assert_eq!(looped_id(&ip, dst), None, "another port");
        assert_eq!(looped_id(&ip[..20], dst), None, "cut short");
    }

    /// A device socket on a loopback address, as the back end has it.
    fn device_socket() -> (UdpSocket, ConnectedPeers) {
        let main = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = ConnectedPeers::new(main.local_addr().unwrap()).unwrap();
        (main, tx)
    }

    fn v4(a: SocketAddr) -> SocketAddrV4 {
        match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        }
    }

    /// A real connected socket's counter, learned, predicts the ID of what it sends next.
    #[test]
    fn the_learned_counter_is_the_sockets() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = v4(rx.local_addr().unwrap());
        let (main, mut tx) = device_socket();
        // Learn, then send; a second learn on the same socket sees the counter moved by the
        // probe and the send.
        let sock = open(&main, main.local_addr().unwrap(), to.into()).unwrap();
        let first = learn_id(&sock, to).unwrap().wrapping_add(1);
        sock.send(b"x").unwrap();
        let again = learn_id(&sock, to).unwrap();
        assert_eq!(again, first.wrapping_add(1));
        assert!(tx.send(&main, to.into(), &mut [0u8; 40], None).is_some());
        assert_eq!(tx.opened, 1);
    }

    /// The connected socket shares the device's address and port, and while it exists
    /// nobody else can bind them, with `SO_REUSEADDR` or without.
    #[test]
    fn the_connected_socket_sits_beside_the_device_socket_and_nobody_else_can() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (main, mut tx) = device_socket();
        assert!(tx
            .send(&main, peer.local_addr().unwrap(), &mut [0u8; 40], None)
            .is_some());
        let (got, from) = peer.recv_from(&mut [0u8; 64]).unwrap();
        assert_eq!((got, from), (40, main.local_addr().unwrap()));
        assert!(!getsockopt(&main, sockopt::ReuseAddr).unwrap());
        let local = v4(main.local_addr().unwrap());
        assert!(UdpSocket::bind(local).is_err());
        let other = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .unwrap();
        setsockopt(&other, sockopt::ReuseAddr, &true).unwrap();
        let e = nix::sys::socket::bind(other.as_raw_fd(), &SockaddrStorage::from(local));
        assert_eq!(e, Err(nix::errno::Errno::EADDRINUSE));
    }

    /// What the peer sends arrives on its connected socket, everything else on the device's
    /// socket; each datagram is handed over once, and an idle device socket is read only
    /// every [`IDLE_EVERY`] polls.
    #[test]
    fn datagrams_arrive_once_each_on_the_socket_that_matches() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (main, mut tx) = device_socket();
        let at = main.local_addr().unwrap();
        assert!(tx
            .send(&main, peer.local_addr().unwrap(), &mut [0u8; 40], None)
            .is_some());
        let mut rx = SyscallRx::new();
        rx.set_busy_poll(true);
        let mut stats = DriverStats::default();
        let mut got: Vec<(SocketAddr, Vec<u8>, u64)> = Vec::new();
        let mut poll = |tx: &mut ConnectedPeers, stats: &mut DriverStats, got: &mut Vec<_>| {
            let n = tx.polls + 1;
            tx.recv_ready(
                &main,
                &mut rx,
                &mut |from, _to, b: &[u8]| got.push((from, b.to_vec(), n)),
                stats,
            )
            .unwrap()
        };
        peer.send_to(b"from the peer", at).unwrap();
        stranger.send_to(b"from a stranger", at).unwrap();
        while got.len() < 2 && tx.polls < 10 {
            poll(&mut tx, &mut stats, &mut got);
        }
        got.sort();
        let mut want = vec![
            (peer.local_addr().unwrap(), b"from the peer".to_vec()),
            (stranger.local_addr().unwrap(), b"from a stranger".to_vec()),
        ];
        want.sort();
        assert_eq!(
            got.iter().map(|g| (g.0, g.1.clone())).collect::<Vec<_>>(),
            want
        );
        assert_eq!((stats.rx_connected, stats.rx_datagrams), (1, 2));
        // Idle for longer than ACTIVE_POLLS: the device's socket is read every IDLE_EVERY.
        got.clear();
        for _ in 0..ACTIVE_POLLS + 5 {
            poll(&mut tx, &mut stats, &mut got);
        }
        assert!(got.is_empty());
        stranger.send_to(b"later", at).unwrap();
        let start = tx.polls;
        while got.is_empty() && tx.polls < start + 4 * IDLE_EVERY {
            poll(&mut tx, &mut stats, &mut got);
        }
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].2 % IDLE_EVERY, 0, "read at poll {}", got[0].2);
        // The peer's socket, idle as long, is read on the same schedule.
        peer.send_to(b"later too", at).unwrap();
        got.clear();
        let start = tx.polls;
        while got.is_empty() && tx.polls < start + 4 * IDLE_EVERY {
            poll(&mut tx, &mut stats, &mut got);
        }
        assert_eq!((got.len(), stats.rx_connected), (1, 2));
    }

    /// A RoCE packet from `from` to `to`, sealed for IPv4 ID 0.
    fn roce(op: uroce_wire::Opcode, payload: &[u8], from: SocketAddr, to: SocketAddr) -> Vec<u8> {
        split::sealed_packet(op, payload, 7, &IcrcContext::between(from, to, 0).unwrap())
    }

    /// Coalesced packets on a connected socket with GRO: the first receive reads the segment
    /// size from the kernel; once a first packet stated that length, receives are plain
    /// `recv`s cut by the stated length; a SEND, which states none, is then cut where every
    /// ICRC verifies, and the receive after it asks the kernel again.
    #[test]
    fn coalesced_packets_are_cut_by_their_headers_or_else_by_their_icrcs() {
        use nix::sys::socket::{sendmsg, ControlMessage};
        use uroce_wire::Opcode;
        let main = UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = main.local_addr().unwrap();
        crate::sys::roce_options(&main, at, true).unwrap();
        let mut tx = ConnectedPeers::new(at).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = peer.local_addr().unwrap();
        crate::sys::roce_options(&peer, from, false).unwrap();
        assert!(tx.send(&main, from, &mut [0u8; 40], None).is_some());
        let write = roce(Opcode::RcWriteOnly, &[1; 8], from, at);
        let ack = roce(Opcode::RcAcknowledge, &[], from, at);
        let send = roce(Opcode::RcSendOnly, &[2; 24], from, at);
        assert_eq!((write.len(), ack.len(), send.len()), (40, 20, 40));
        let mut rx = SyscallRx::new();
        rx.set_busy_poll(true);
        let mut stats = DriverStats::default();
        let mut batch = |pkts: &[&Vec<u8>], stats: &mut DriverStats| -> Vec<Vec<u8>> {
            let seg = pkts[0].len() as u16;
            let data: Vec<u8> = pkts.iter().flat_map(|p| p.iter().copied()).collect();
            sendmsg(
                peer.as_raw_fd(),
                &[io::IoSlice::new(&data)],
                &[ControlMessage::UdpGsoSegments(&seg)],
                MsgFlags::empty(),
                Some(&SockaddrStorage::from(at)),
            )
            .unwrap();
            let mut got = Vec::new();
            for _ in 0..1000 {
                let mut sink = |_: SocketAddr, _: IpAddr, b: &[u8]| got.push(b.to_vec());
                if tx.recv_ready(&main, &mut rx, &mut sink, stats).unwrap() > 0 {
                    break;
                }
            }
            got
        };
        let owned = |p: &[&Vec<u8>]| p.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
        let cut = |s: &DriverStats| (s.rx_receives, s.rx_by_headers, s.rx_segment_searches);
        // The kernel says 40 and the WRITE states 40, STATED_IN_A_ROW times: from then on
        // plain `recv`s.
        let n = u64::from(STATED_IN_A_ROW);
        for _ in 0..n {
            assert_eq!(batch(&[&write, &ack], &mut stats), owned(&[&write, &ack]));
        }
        assert_eq!(cut(&stats), (n, 0, 0));
        assert_eq!(batch(&[&write, &ack], &mut stats), owned(&[&write, &ack]));
        assert_eq!(cut(&stats), (n + 1, 1, 0));
        // A SEND and its held ACK: no stated length, cut where both ICRCs verify.
        assert_eq!(batch(&[&send, &ack], &mut stats), owned(&[&send, &ack]));
        assert_eq!(cut(&stats), (n + 2, 2, 1));
        // Asking the kernel again: the SEND states nothing, a WRITE starts a new count.
        assert_eq!(batch(&[&send, &ack], &mut stats), owned(&[&send, &ack]));
        let three = batch(&[&send, &send, &ack], &mut stats);
        assert_eq!(three, owned(&[&send, &send, &ack]));
        assert_eq!(batch(&[&write, &ack], &mut stats), owned(&[&write, &ack]));
        assert_eq!(cut(&stats), (n + 5, 2, 1));
        assert_eq!(tx.peers[0].stated, 1);
        let datagrams = 2 * (n + 1) + 2 + 2 + 3 + 2;
        assert_eq!(
            (stats.rx_datagrams, stats.rx_connected),
            (datagrams, datagrams)
        );
    }

    /// A peer whose socket cannot be opened (a loopback source cannot reach a remote address)
    /// is sent to as before, and not tried again on the next send.
    #[test]
    fn a_peer_that_cannot_be_connected_is_not_tried_again() {
        let (main, mut tx) = device_socket();
        let far: SocketAddr = "192.0.2.1:4791".parse().unwrap();
        let mut buf = [1u8; 40];
        assert!(tx.send(&main, far, &mut buf, None).is_none());
        assert_eq!((tx.opened, tx.refused.len()), (0, 1));
        assert!(tx.send(&main, far, &mut buf, None).is_none());
        assert_eq!(tx.refused.len(), 1, "tried again");
        assert_eq!(buf, [1u8; 40]);
    }

    /// A send the kernel refuses (longer than an IPv4 datagram can be) hands the buffer back
    /// as the engine built it; the socket stays and learns its counter again before the next
    /// send.
    #[test]
    fn a_failed_send_gives_the_packets_back_unchanged() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let (main, mut tx) = device_socket();
        assert!(tx.send(&main, to, &mut [1u8; 40], None).is_some());
        let built: Vec<u8> = (0..65_520u32).map(|i| (i % 251) as u8).collect();
        let mut buf = built.clone();
        assert!(tx.send(&main, to, &mut buf, None).is_none());
        assert!(buf == built, "the packets changed");
        assert_eq!((tx.opened, tx.failed, tx.peers.len()), (1, 1, 1));
        assert!(tx.send(&main, to, &mut [1u8; 40], None).is_some());
        assert_eq!((tx.opened, tx.relearned), (1, 1));
    }

    /// On IPv6 there is no ID to learn or reseal: the packets leave the connected socket as
    /// the engine sealed them, a GSO send as its segments, from the device's address and
    /// port; the peer's answer arrives on the same socket; an IPv4 peer of an IPv6 device is
    /// left to the device's socket.
    #[test]
    fn ipv6_packets_leave_as_sealed_and_the_answer_comes_back_on_the_same_socket() {
        let main = UdpSocket::bind("[::1]:0").unwrap();
        let at = main.local_addr().unwrap();
        let mut tx = ConnectedPeers::new(at).unwrap();
        let peer = UdpSocket::bind("[::1]:0").unwrap();
        let to = peer.local_addr().unwrap();
        let built: Vec<u8> = (0..60u8).collect();
        let mut buf = built.clone();
        assert!(tx.send(&main, to, &mut buf, Some(20)).is_some());
        assert_eq!(buf, built, "resealed");
        let mut got = [0u8; 64];
        for k in 0..3 {
            let (n, from) = peer.recv_from(&mut got).unwrap();
            assert_eq!((n, from), (20, at));
            assert_eq!(got[..n], built[20 * k..20 * (k + 1)], "segment {k}");
        }
        assert_eq!((tx.opened, tx.relearned, tx.failed), (1, 0, 0));
        peer.send_to(b"answer", at).unwrap();
        let mut rx = SyscallRx::new();
        rx.set_busy_poll(true);
        let mut stats = DriverStats::default();
        let mut got = Vec::new();
        while got.is_empty() && tx.polls < 100 {
            tx.recv_ready(
                &main,
                &mut rx,
                &mut |from, _to, b: &[u8]| got.push((from, b.to_vec())),
                &mut stats,
            )
            .unwrap();
        }
        assert_eq!(got, vec![(to, b"answer".to_vec())]);
        assert_eq!(stats.rx_connected, 1);
        assert!(tx
            .send(
                &main,
                "127.0.0.1:4791".parse().unwrap(),
                &mut [0u8; 40],
                None
            )
            .is_none());
        assert_eq!(tx.peers.len(), 1);
    }

    /// A device on an IPv6 link-local or unspecified address keeps its own socket.
    #[test]
    fn no_connected_sockets_for_a_link_local_or_unspecified_address() {
        for a in ["[fe80::1]:4791", "[::]:4791", "0.0.0.0:4791"] {
            assert!(ConnectedPeers::new(a.parse().unwrap()).is_none(), "{a}");
        }
    }
}

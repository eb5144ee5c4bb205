//! Sending a busy-polled IPv4 device's datagrams from a socket connected to their peer
//! (`DeviceConfig::connected_tx`).
//!
//! An unconnected `sendto` makes the kernel look the route up for every datagram; a connected
//! socket keeps it. On the 8-byte WRITE ping-pong that measured 0.38 µs of a 5.1 µs half
//! round trip (docs/PERFORMANCE.md, "Latency: a connected send path"). But a connected socket
//! takes the IPv4 Identification of each datagram from a per-socket counter that `connect`
//! starts at a random value (`ip_select_ident_segs`), and sends from its own port, where the
//! engine seals every packet for ID 0 (`i` for GSO segment `i`) and the device's port 4791.
//! The ICRC covers both fields, so each packet is resealed for them ([`Ipv4IdSolver::reseal_v4`],
//! two XORs). The counter is read once per socket: a zero-length datagram to the peer's discard
//! port (9, never RoCE's) is sent with a software transmit timestamp, and the kernel loops it
//! back on the error queue with its IP header (no privilege needed while
//! `net.core.tstamp_allow_data` is 1, the default). Every later `sendmsg` takes the next value;
//! segment `i` of a GSO send gets that value plus `i`. A send that fails is resealed
//! back and left to the device's own socket (its errors, drops and fallbacks); the connected
//! socket is forgotten (the counter may have moved) and the next send learns a new one.
//!
//! Receiving stays on the device's socket: RoCEv2 responders answer to port 4791, and a uroce
//! peer checks only the source address.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, MsgFlags, SockaddrStorage, TimestampingFlag};
use uroce_wire::Ipv4IdSolver;

/// Peers with a connected socket at once; a device talking to more sends to the others as
/// before.
const MAX_PEERS: usize = 8;

/// How long the looped-back probe may take to appear on the error queue.
const LEARN_WAIT: Duration = Duration::from_millis(50);

/// A connected socket and the IPv4 ID its next datagram takes.
struct Peer {
    dst: SocketAddrV4,
    sock: UdpSocket,
    port: u16,
    next: u16,
    /// The socket's `UDP_SEGMENT` (0: not set).
    gso: u16,
}

/// The connected sockets of one device (see the module documentation).
pub(crate) struct ConnectedTx {
    local: Ipv4Addr,
    /// The source port the engine seals for (the device's).
    port: u16,
    peers: Vec<Peer>,
    solver: Ipv4IdSolver,
    /// Sockets opened and counters learned, and sends that failed and dropped a socket.
    pub opened: u64,
    pub failed: u64,
    /// Peers for which no connected socket could be opened (its counter not learned): they
    /// are sent to as before, without trying again on every send (learning may wait
    /// [`LEARN_WAIT`]).
    refused: Vec<SocketAddrV4>,
}

impl ConnectedTx {
    /// For a device bound to `local`: `None` unless it is a specific IPv4 address (the
    /// engine seals for it; an unspecified one leaves the source to the route).
    pub(crate) fn new(local: SocketAddr) -> Option<ConnectedTx> {
        match local {
            SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(ConnectedTx {
                local: *a.ip(),
                port: a.port(),
                peers: Vec::new(),
                solver: Ipv4IdSolver::default(),
                opened: 0,
                failed: 0,
                refused: Vec::new(),
            }),
            _ => None,
        }
    }

    /// Sends `buf` to `dst` from the socket connected to it: one datagram, or `segment`-byte
    /// packets with UDP GSO, each sealed by the engine for ID `i` (segment `i`) and the device's
    /// port, and resealed here for the socket's. `None` when `dst` has no connected socket and
    /// none could be opened now, or the send failed: the caller sends as before, `buf` as the
    /// engine built it.
    pub(crate) fn send(
        &mut self,
        dst: SocketAddr,
        buf: &mut [u8],
        segment: Option<usize>,
    ) -> Option<()> {
        let SocketAddr::V4(dst) = dst else {
            return None;
        };
        let i = match self.peers.iter().position(|p| p.dst == dst) {
            Some(i) => i,
            None if self.peers.len() < MAX_PEERS && !self.refused.contains(&dst) => {
                match open(self.local, dst) {
                    Ok(p) => {
                        self.opened += 1;
                        self.peers.push(p);
                        self.peers.len() - 1
                    }
                    Err(e) => {
                        tracing::debug!("no connected send socket for {dst}: {e}");
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
        let seg = segment
            .filter(|&s| s > 0 && s < buf.len())
            .unwrap_or(buf.len());
        let (next, ports) = (p.next, (self.port, p.port));
        // Segment k: from ID k and the device's port to the counter's ID + k and the socket's
        // port (`back`: the other way).
        let reseal = |solver: &mut Ipv4IdSolver, buf: &mut [u8], back: bool| {
            for (k, pkt) in buf.chunks_mut(seg.max(1)).enumerate() {
                let k = k as u16;
                let (id, port) = ((k, next.wrapping_add(k)), ports);
                if back {
                    solver.reseal_v4(pkt, (id.1, id.0), (port.1, port.0));
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
                p.next = p.next.wrapping_add(1);
                Some(())
            }
            Err(e) => {
                // The packets go back to what the engine sealed, for the device's own socket
                // and its handling of errors (drops, the unsegmented fallback). Whether the
                // datagram took an ID is not known: the socket goes, and the next send to
                // this peer learns a new counter.
                tracing::debug!("connected send to {dst} failed ({e}); sending unconnected");
                reseal(&mut self.solver, buf, true);
                self.failed += 1;
                self.peers.swap_remove(i);
                None
            }
        }
    }
}

/// A socket on `local` connected to `dst`, with its counter learned.
fn open(local: Ipv4Addr, dst: SocketAddrV4) -> io::Result<Peer> {
    let sock = UdpSocket::bind((local, 0))?;
    crate::sys::set_int(
        &sock,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    )?;
    let _ = setsockopt(&sock, sockopt::SndBuf, &(8 << 20));
    sock.connect(dst)?;
    let port = sock.local_addr()?.port();
    let id = learn_id(&sock, dst)?;
    Ok(Peer {
        dst,
        sock,
        port,
        next: id.wrapping_add(1),
        gso: 0,
    })
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

    /// A real connected socket's counter, learned, predicts the ID of what it sends next.
    #[test]
    fn the_learned_counter_is_the_sockets() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(to) = rx.local_addr().unwrap() else {
            unreachable!()
        };
        let mut tx = ConnectedTx::new("127.0.0.1:4791".parse().unwrap()).unwrap();
        // Learn, then send; a second learn on the same socket sees the counter moved by the
        // probe and the send.
        let p = open(Ipv4Addr::LOCALHOST, to).unwrap();
        let first = p.next;
        p.sock.send(b"x").unwrap();
        let again = learn_id(&p.sock, to).unwrap();
        assert_eq!(again, first.wrapping_add(1));
        assert!(tx.send(to.into(), &mut [0u8; 40], None).is_some());
        assert_eq!(tx.opened, 1);
    }

    /// A peer whose socket cannot be opened (a loopback source cannot reach a remote address)
    /// is sent to as before, and not tried again on the next send.
    #[test]
    fn a_peer_that_cannot_be_connected_is_not_tried_again() {
        let mut tx = ConnectedTx::new("127.0.0.1:4791".parse().unwrap()).unwrap();
        let far: SocketAddr = "192.0.2.1:4791".parse().unwrap();
        let mut buf = [1u8; 40];
        assert!(tx.send(far, &mut buf, None).is_none());
        assert_eq!((tx.opened, tx.refused.len()), (0, 1));
        assert!(tx.send(far, &mut buf, None).is_none());
        assert_eq!(tx.refused.len(), 1, "tried again");
        assert_eq!(buf, [1u8; 40]);
    }

    /// A send the kernel refuses (longer than an IPv4 datagram can be) hands the buffer back
    /// as the engine built it and drops the socket; the next send opens and learns a new one.
    #[test]
    fn a_failed_send_gives_the_packets_back_unchanged() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut tx = ConnectedTx::new("127.0.0.1:4791".parse().unwrap()).unwrap();
        assert!(tx.send(to, &mut [1u8; 40], None).is_some());
        let built: Vec<u8> = (0..65_520u32).map(|i| (i % 251) as u8).collect();
        let mut buf = built.clone();
        assert!(tx.send(to, &mut buf, None).is_none());
        assert!(buf == built, "the packets changed");
        assert_eq!((tx.opened, tx.failed, tx.peers.len()), (1, 1, 0));
        assert!(tx.send(to, &mut [1u8; 40], None).is_some());
        assert_eq!(tx.opened, 2);
    }
}

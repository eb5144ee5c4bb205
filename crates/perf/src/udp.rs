//! The raw UDP ceiling probes: what the kernel's UDP path between the two namespaces can carry
//! without any RDMA on top, measured the way `uroce bench` measures itself.
//!
//! - Bandwidth, per packet: one datagram per `send`, one per `recv` (plain syscalls), the
//!   cost floor of a back end that sends each RoCE packet on its own.
//! - Bandwidth, GSO/GRO: plain `send` of `gso` datagrams at once with `UDP_SEGMENT` set on the
//!   socket, `recvmsg` with `UDP_GRO` (one coalesced super-datagram per call): the ceiling.
//!   Plain syscalls: the secondary ceiling; the issue's, io_uring `SENDMSG`+GSO → multishot
//!   `RECVMSG`+GRO (80–85 Gbit/s there), is [`crate::uring_udp`].
//! - Round trip: an 8-byte ping-pong, both sides spinning on non-blocking `recv` (busy poll)
//!   and sending from sockets connected to each other, the floor of `uroce bench write lat
//!   --progress polled`.
//!
//! The receiver measures goodput from its first datagram to its last, CPU time from
//! `getrusage` over the same span; the sender measures its own CPU time. Each side prints one
//! JSON object; the suite adds the two CPU times.

use std::io::{ErrorKind, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};
use serde_json::{json, Value};

/// Errors of the probes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// A socket call failed.
    #[error("{what}: {source}")]
    Io {
        /// The call.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The peer never answered.
    #[error("{0}")]
    Timeout(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}

/// User + system CPU seconds of this process so far.
pub fn cpu_seconds() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// Large socket buffers, so that the probe measures the path and not a 200 KB default queue
/// (root may exceed `net.core.rmem_max` with the FORCE options; others get what they get).
fn big_buffers(s: &UdpSocket) {
    const BYTES: usize = 8 << 20;
    if socket::setsockopt(s, sockopt::RcvBufForce, &BYTES).is_err() {
        let _ = socket::setsockopt(s, sockopt::RcvBuf, &BYTES);
    }
    if socket::setsockopt(s, sockopt::SndBufForce, &BYTES).is_err() {
        let _ = socket::setsockopt(s, sockopt::SndBuf, &BYTES);
    }
}

/// Receives until `idle` passes without data (after the first datagram) or `max` passes in
/// all; `gro` enables `UDP_GRO`. Returns the receiver's JSON result.
pub fn bw_recv(
    bind: SocketAddr,
    gro: bool,
    idle: Duration,
    max: Duration,
) -> Result<Value, ProbeError> {
    let s = UdpSocket::bind(bind).map_err(io("bind"))?;
    big_buffers(&s);
    if gro {
        socket::setsockopt(&s, sockopt::UdpGroSegment, &true)
            .map_err(|e| io("setsockopt(UDP_GRO)")(e.into()))?;
    }
    // Ready: the suite starts the sender after this line.
    eprintln!("udp-recv: listening on {bind}");
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(io("set_read_timeout"))?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut bytes, mut datagrams, mut calls) = (0u64, 0u64, 0u64);
    let (mut total_bytes, mut total_datagrams) = (0u64, 0u64);
    let begin = Instant::now();
    let mut first: Option<(Instant, f64)> = None;
    let mut last = (begin, 0.0);
    let fd = s.as_raw_fd();
    loop {
        let now = Instant::now();
        let quiet = first.is_some() && now.duration_since(last.0) > idle;
        if quiet || now.duration_since(begin) > max {
            break;
        }
        let got = if gro {
            recvmsg_gro::<()>(fd, &mut buf, MsgFlags::empty())
                .map(|(n, seg, _)| (n, n.div_ceil(seg.unwrap_or(n).max(1))))
        } else {
            s.recv(&mut buf).map(|n| (n, 1))
        };
        match got {
            Ok((n, d)) => {
                let t = Instant::now();
                total_bytes += n as u64;
                total_datagrams += d as u64;
                if first.is_none() {
                    first = Some((t, cpu_seconds()));
                } else {
                    // The first datagram only starts the clock.
                    bytes += n as u64;
                    datagrams += d as u64;
                }
                calls += 1;
                last = (t, cpu_seconds());
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io("recv")(e)),
        }
    }
    let (t0, c0) = first.unwrap_or((begin, 0.0));
    let secs = last.0.duration_since(t0).as_secs_f64();
    let cpu = if first.is_some() { last.1 - c0 } else { 0.0 };
    Ok(json!({
        "role": "udp-recv",
        "gro": gro,
        "bytes": bytes,
        "datagrams": datagrams,
        "bytes_total": total_bytes,
        "datagrams_total": total_datagrams,
        "calls": calls,
        "seconds": secs,
        "gbit_s": if secs > 0.0 { bytes as f64 * 8.0 / secs / 1e9 } else { 0.0 },
        "cpu_s": cpu,
    }))
}

/// Sends `size`-byte datagrams to `to` for `secs` seconds, `gso` at a time with `UDP_SEGMENT`
/// when `gso > 1`. Returns the sender's JSON result.
pub fn bw_send(to: SocketAddr, size: usize, gso: usize, secs: f64) -> Result<Value, ProbeError> {
    let local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(to)
    } else {
        "[::]:0".parse().unwrap_or(to)
    };
    let s = UdpSocket::bind(local).map_err(io("bind"))?;
    big_buffers(&s);
    s.connect(to).map_err(io("connect"))?;
    let gso = gso.max(1);
    if gso > 1 {
        let seg = u16::try_from(size).unwrap_or(u16::MAX);
        socket::setsockopt(&s, sockopt::UdpGsoSegment, &i32::from(seg))
            .map_err(|e| io("setsockopt(UDP_SEGMENT)")(e.into()))?;
    }
    let buf: Vec<u8> = (0..size * gso).map(|i| i as u8).collect();
    let (mut bytes, mut calls, mut errors) = (0u64, 0u64, 0u64);
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    let end = Duration::from_secs_f64(secs);
    while t0.elapsed() < end {
        // The clock is read once per 64 calls: Instant::now per datagram would be a
        // measurable part of a per-packet probe.
        for _ in 0..64 {
            match s.send(&buf) {
                Ok(n) => bytes += n as u64,
                // ENOBUFS/ECONNREFUSED (no receiver yet): counted, not fatal.
                Err(_) => errors += 1,
            }
            calls += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(json!({
        "role": "udp-send",
        "size": size,
        "gso": gso,
        "bytes": bytes,
        "datagrams": bytes / size.max(1) as u64,
        "calls": calls,
        "errors": errors,
        "seconds": secs,
        "gbit_s": bytes as f64 * 8.0 / secs / 1e9,
        "cpu_s": cpu_seconds() - c0,
    }))
}

fn spin_socket(s: &UdpSocket) -> Result<(), ProbeError> {
    s.set_nonblocking(true).map_err(io("set_nonblocking"))
}

/// How the ping-pong's datagrams travel. `ack` 0: one datagram each way, plain `send` and
/// `recv`: the baseline. `ack` > 0: uroce's shape under the kernel, with nothing above it:
/// each message is one UDP GSO send of two segments (the first as long as the ping's
/// datagram, then `ack` bytes: an RC responder's ACK leaving with its reply, as
/// `Config::ack_delay` sends it), received whole on a socket with `UDP_GRO` by a plain `recv`,
/// as uroce's connected sockets receive once a first packet states its length (the segment
/// size is known: the ping's own; the echo reads it from its first receive's control
/// message, and the ping reads it on every warm-up receive to check the shape). So the `ack`
/// probe is the kernel's share of the connected WRITE ping-pong.
fn shape(s: &UdpSocket, ack: usize) -> Result<(), ProbeError> {
    if ack > 0 {
        socket::setsockopt(s, sockopt::UdpGroSegment, &true)
            .map_err(|e| io("UDP_GRO")(e.into()))?;
    }
    Ok(())
}

/// Sends `msg` whose first `seg` bytes are the first GSO segment (`seg` 0: one datagram),
/// setting `UDP_SEGMENT` when it differs from `gso`, the value set last.
fn send_shaped(s: &UdpSocket, msg: &[u8], seg: usize, gso: &mut usize) -> std::io::Result<usize> {
    if seg > 0 && seg < msg.len() && seg != *gso {
        let v = i32::try_from(seg).unwrap_or(i32::MAX);
        socket::setsockopt(s, sockopt::UdpGsoSegment, &v)?;
        *gso = seg;
    }
    s.send(msg)
}

/// One `recvmsg` on `fd` into `buf` with `flags`: its length, the `UDP_GRO` segment size the
/// kernel gave (when positive), and the source address as `S` (`()` asks for none).
fn recvmsg_gro<S: socket::SockaddrLike>(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
    flags: MsgFlags,
) -> std::io::Result<(usize, Option<usize>, Option<S>)> {
    let mut cmsg = nix::cmsg_space!(i32);
    let mut iov = [IoSliceMut::new(buf)];
    let m = socket::recvmsg::<S>(fd, &mut iov, Some(&mut cmsg), flags)?;
    let seg = m.cmsgs().ok().and_then(|mut c| {
        c.find_map(|c| match c {
            ControlMessageOwned::UdpGroSegments(n) => usize::try_from(n).ok(),
            _ => None,
        })
    });
    Ok((m.bytes, seg.filter(|&n| n > 0), m.address))
}

/// One non-blocking receive: its length, the GRO segment size when the kernel coalesced
/// segments and `cmsg` asked for it, and the source when `from` is asked for. `cmsg`:
/// `recvmsg` with control messages; otherwise plain `recv`/`recv_from`.
fn recv_shaped(
    s: &UdpSocket,
    buf: &mut [u8],
    cmsg: bool,
    from: bool,
) -> std::io::Result<(usize, Option<usize>, Option<SocketAddr>)> {
    if !cmsg {
        return if from {
            s.recv_from(buf).map(|(n, a)| (n, None, Some(a)))
        } else {
            s.recv(buf).map(|n| (n, None, None))
        };
    }
    let fd = s.as_raw_fd();
    let (n, seg, src) = if from {
        let (n, seg, a) = recvmsg_gro::<socket::SockaddrStorage>(fd, buf, MsgFlags::MSG_DONTWAIT)?;
        let src = a.and_then(|a| {
            a.as_sockaddr_in()
                .map(|v| SocketAddr::from((v.ip(), v.port())))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v| SocketAddr::from((v.ip(), v.port())))
                })
        });
        (n, seg, src)
    } else {
        let (n, seg, _) = recvmsg_gro::<()>(fd, buf, MsgFlags::MSG_DONTWAIT)?;
        (n, seg, None)
    };
    Ok((n, seg.filter(|&s| s < n), src))
}

/// Echoes every datagram back to its sender, spinning on non-blocking receives, until an
/// empty datagram arrives or `max` passes. The socket connects to the first sender, so both
/// ends of the ping-pong send as connected sockets do (no route lookup per send), the
/// fastest shape plain UDP has: the baseline is the ceiling, not a handicapped probe. With
/// `ack` > 0 it receives as [`shape`] says and answers each message in the shape it came.
pub fn rtt_echo(bind: SocketAddr, ack: usize, max: Duration) -> Result<Value, ProbeError> {
    let s = UdpSocket::bind(bind).map_err(io("bind"))?;
    spin_socket(&s)?;
    shape(&s, ack)?;
    eprintln!("udp-echo: listening on {bind}");
    let mut buf = [0u8; 2048];
    let begin = Instant::now();
    let (mut echoed, mut coalesced, mut gso) = (0u64, 0u64, 0usize);
    let mut peer = None;
    // The first message's segment size, read from its control message; later messages,
    // received by plain `recv`, are answered in the same shape.
    let mut first_seg = None;
    while begin.elapsed() < max {
        let first = peer.is_none();
        match recv_shaped(&s, &mut buf, ack > 0 && first, first) {
            Ok((0, ..)) => break,
            Ok((n, seg, from)) => {
                if let Some(from) = from {
                    s.connect(from).map_err(io("connect"))?;
                    peer = Some(from);
                    first_seg = seg;
                }
                let seg = seg.or(first_seg).filter(|&s| s < n);
                coalesced += u64::from(seg.is_some());
                send_shaped(&s, &buf[..n], seg.unwrap_or(0), &mut gso).map_err(io("send"))?;
                echoed += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(io("recv")(e)),
        }
    }
    Ok(json!({
        "role": "udp-echo",
        "echoed": echoed,
        "coalesced": coalesced,
        "connected_to": peer.map(|p| p.to_string()),
    }))
}

/// Quantiles at which latency distributions are written (the CDF plot's points).
pub const CDF_QUANTILES: [f64; 24] = [
    0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
    0.8, 0.85, 0.9, 0.95, 0.99, 0.999, 1.0,
];

/// A ping-pong's result: the object `fields` plus the round-trip statistics of `hist`
/// (nanoseconds per round trip), in microseconds, with `half_*` as half round trips.
pub fn rtt_result(mut fields: Value, hist: &Histogram<u64>) -> Value {
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let cdf: Vec<Value> = CDF_QUANTILES
        .iter()
        .map(|q| json!([q, us(*q) / 2.0]))
        .collect();
    for (k, v) in [
        ("rtt_min_us", json!(hist.min() as f64 / 1000.0)),
        ("rtt_median_us", json!(us(0.5))),
        ("rtt_p99_us", json!(us(0.99))),
        ("half_median_us", json!(us(0.5) / 2.0)),
        ("half_p99_us", json!(us(0.99) / 2.0)),
        ("half_cdf_us", Value::Array(cdf)),
    ] {
        fields[k] = v;
    }
    fields
}

/// `count` round trips of `size`-byte datagrams to the echo at `to` (after `warmup` more),
/// spinning on non-blocking `recv`. Times in microseconds; `half_*` are half round trips, the
/// unit `uroce bench write lat` reports. With `ack` > 0 each message is `size` + `ack` bytes
/// in two GSO segments, received as [`shape`] says; `shaped_replies` counts the replies that
/// came back coalesced in that shape (all of them, or the probe did not measure the shape).
pub fn rtt_ping(
    to: SocketAddr,
    size: usize,
    ack: usize,
    count: u64,
    warmup: u64,
) -> Result<Value, ProbeError> {
    let local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(to)
    } else {
        "[::]:0".parse().unwrap_or(to)
    };
    let s = UdpSocket::bind(local).map_err(io("bind"))?;
    s.connect(to).map_err(io("connect"))?;
    spin_socket(&s)?;
    shape(&s, ack)?;
    let msg = vec![0x5au8; size.max(1) + ack];
    let seg = if ack > 0 { size.max(1) } else { 0 };
    let mut gso = 0;
    let mut buf = [0u8; 2048];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| ProbeError::Timeout(format!("histogram: {e}")))?;
    let (mut lost, mut shaped) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = 0u64;
    while done < count + warmup {
        if Instant::now() > deadline {
            return Err(ProbeError::Timeout(format!(
                "udp-ping: {done} of {} round trips in 60 s",
                count + warmup
            )));
        }
        let t0 = Instant::now();
        // ECONNREFUSED before the echo binds: try again.
        if send_shaped(&s, &msg, seg, &mut gso).is_err() {
            lost += 1;
            continue;
        }
        // Warm-up replies are read with the control message, which must give the shape; the
        // measured ones by plain `recv`, whole (both segments in one receive).
        let check = done < warmup;
        let answered = loop {
            match recv_shaped(&s, &mut buf, ack > 0 && check, false) {
                Ok((n, got, _)) => {
                    let whole = ack > 0 && n == msg.len();
                    shaped += u64::from(whole && (!check || got == Some(seg)));
                    break true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if t0.elapsed() > Duration::from_millis(200) {
                        break false;
                    }
                    std::hint::spin_loop();
                }
                Err(_) => break false,
            }
        };
        if !answered {
            lost += 1;
            continue;
        }
        let ns = t0.elapsed().as_nanos() as u64;
        if done >= warmup {
            let _ = hist.record(ns.max(1));
        }
        done += 1;
    }
    let _ = s.send(&[]);
    let fields = json!({
        "role": "udp-ping",
        "size": size,
        "ack": ack,
        "round_trips": count,
        "warmup": warmup,
        "lost": lost,
        "shaped_replies": shaped,
    });
    Ok(rtt_result(fields, &hist))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_answers_every_ping_from_a_socket_connected_to_the_pinger() {
        // A port the kernel just handed out, free again for the echo to bind.
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap();
        let at: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let echo = std::thread::spawn(move || rtt_echo(at, 0, Duration::from_secs(60)));
        let ping = rtt_ping(at, 8, 0, 200, 10).unwrap();
        let echo = echo.join().unwrap().unwrap();
        assert_eq!(ping["round_trips"], 200);
        assert!(ping["half_median_us"].as_f64().unwrap() > 0.0, "{ping}");
        // Every timed round trip answered; a ping the pinger gave up on (sent before the echo
        // bound, or answered after 200 ms) is counted as lost and may or may not be echoed.
        let (echoed, lost) = (
            echo["echoed"].as_u64().unwrap(),
            ping["lost"].as_u64().unwrap(),
        );
        assert!((210..=210 + lost).contains(&echoed), "{echo} {ping}");
        let peer: SocketAddr = echo["connected_to"].as_str().unwrap().parse().unwrap();
        assert_eq!(peer.ip(), at.ip());
        assert_ne!(peer.port(), port);
    }

    /// The shaped probe is what it claims: every message travels as one two-segment GSO send
    /// and arrives coalesced with its segment size, both ways (loopback has GSO and GRO for
    /// UDP as veth does).
    #[test]
    fn the_shaped_ping_pong_carries_a_write_and_its_ack_as_one_coalesced_datagram() {
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap();
        let at: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let echo = std::thread::spawn(move || rtt_echo(at, 20, Duration::from_secs(60)));
        let ping = rtt_ping(at, 40, 20, 200, 10).unwrap();
        let echo = echo.join().unwrap().unwrap();
        let lost = ping["lost"].as_u64().unwrap();
        assert_eq!(ping["ack"], 20);
        // Every answered ping came back as 40 + 20 bytes with segment size 40 ...
        assert_eq!(ping["warmup"], 10);
        assert_eq!(ping["shaped_replies"].as_u64().unwrap(), 210, "{ping}");
        // ... and the echo saw each one coalesced (a lost ping may or may not have arrived).
        let coalesced = echo["coalesced"].as_u64().unwrap();
        assert!((210..=210 + lost).contains(&coalesced), "{echo} {ping}");
        assert_eq!(echo["coalesced"], echo["echoed"], "{echo}");
    }
}

//! The busy-poll round trip through uroce's own driver without the engine: the middle layer
//! between the plain UDP ping-pong ([`crate::udp::rtt_ping`]) and `uroce bench write lat
//! --progress polled`.
//!
//! Both ends are [`uroce::driver::raw::RawDriver`]s in busy-poll mode, i.e. the socket a
//! device opens (unconnected, `IP_PMTUDISC_DO`, `IP_PKTINFO`, `UDP_GRO` on io_uring) and the
//! path a polled device takes: a `sendmsg` with the destination address per send (a UDP GSO
//! batch with `--ack`), non-blocking `recvmsg` with the source address and control messages
//! per poll. The pinger sends `size` bytes (40 by default: an 8-byte RDMA WRITE with its BTH,
//! RETH and ICRC) and, with `--ack N`, an N-byte second segment in the same send (20: the ACK
//! a responder's ACK delay holds back to leave with its reply); the echo answers each receive
//! with the same shape (one datagram, or the same GSO batch). So the probe measures what the
//! driver and the kernel cost a polled device's ping-pong when the engine costs nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use uroce::driver::raw::RawDriver;
use uroce::BackendKind;

use crate::udp::{rtt_result, ProbeError};

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}

fn open(bind: SocketAddr, kind: BackendKind) -> Result<RawDriver, ProbeError> {
    let mut d = RawDriver::open(bind, kind).map_err(io("open"))?;
    d.set_busy_poll(true);
    Ok(d)
}

/// Echoes every receive back to its sender in the shape it came (one datagram, or one GSO
/// batch of what one poll received), spinning, until an empty datagram arrives or `max`
/// passes. `ready` is called once the socket is bound.
pub fn echo(
    bind: SocketAddr,
    kind: BackendKind,
    max: Duration,
    ready: impl FnOnce(SocketAddr),
) -> Result<Value, ProbeError> {
    let mut d = open(bind, kind)?;
    ready(d.local_addr());
    let begin = Instant::now();
    let mut echoed = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut spins = 0u32;
    loop {
        buf.clear();
        let (mut from, mut first, mut count, mut stop) = (None, 0usize, 0usize, false);
        d.recv(|src, data| {
            if data.is_empty() {
                stop = true;
                return;
            }
            // One poll is one ping: its datagrams share a source.
            from = Some(src);
            if count == 0 {
                first = data.len();
            }
            count += 1;
            buf.extend_from_slice(data);
        })
        .map_err(io("receive"))?;
        if stop {
            break;
        }
        if let Some(to) = from {
            let len = buf.len();
            let seg = (count > 1).then_some(first);
            d.send_gso(to, len, seg, |b| b.copy_from_slice(&buf))
                .map_err(io("send"))?;
            d.flush().map_err(io("send"))?;
            echoed += 1;
            continue;
        }
        spins = spins.wrapping_add(1);
        if spins % 4096 == 0 && begin.elapsed() > max {
            break;
        }
    }
    let s = d.stats();
    Ok(json!({
        "role": "raw-echo", "backend": d.features().backend.name(), "echoed": echoed,
        "tx_sends": s.tx_sends, "tx_gso_sends": s.tx_gso_sends, "rx_receives": s.rx_receives,
    }))
}

/// What [`ping`] sends.
#[derive(Debug, Clone, Copy)]
pub struct PingOptions {
    /// The echo's address.
    pub to: SocketAddr,
    /// Local address (port 0 picks one); `None`: the unspecified address of `to`'s family.
    pub bind: Option<SocketAddr>,
    /// This end's back end.
    pub backend: BackendKind,
    /// Bytes of the first datagram.
    pub size: usize,
    /// Bytes of a second datagram sent in the same GSO batch (0: none).
    pub ack: usize,
    /// Round trips measured.
    pub count: u64,
    /// Round trips before (not measured).
    pub warmup: u64,
}

/// `count` round trips to the echo at `o.to` (after `o.warmup` more), spinning on the
/// driver's receive. Times in microseconds; `half_*` are half round trips, the unit of
/// `uroce-perf udp-ping` and `uroce bench write lat`.
pub fn ping(o: PingOptions) -> Result<Value, ProbeError> {
    let bind = o.bind.unwrap_or_else(|| {
        let ip = if o.to.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        SocketAddr::new(ip, 0)
    });
    let mut d = open(bind, o.backend)?;
    let size = o.size.max(1);
    let len = size + o.ack;
    let seg = (o.ack > 0).then_some(size);
    let want = 1 + usize::from(o.ack > 0);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| ProbeError::Timeout(format!("histogram: {e}")))?;
    let mut lost = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = 0u64;
    while done < o.count + o.warmup {
        if Instant::now() > deadline {
            return Err(ProbeError::Timeout(format!(
                "raw-ping: {done} of {} round trips in 60 s",
                o.count + o.warmup
            )));
        }
        let t0 = Instant::now();
        d.send_gso(o.to, len, seg, |b| b.fill(0x5a))
            .map_err(io("send"))?;
        d.flush().map_err(io("send"))?;
        let mut got = 0usize;
        let mut spins = 0u32;
        let answered = loop {
            d.recv(|_, _| got += 1).map_err(io("receive"))?;
            if got >= want {
                break true;
            }
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0 && t0.elapsed() > Duration::from_millis(200) {
                break false;
            }
        };
        if !answered {
            lost += 1;
            continue;
        }
        let ns = t0.elapsed().as_nanos() as u64;
        if done >= o.warmup {
            let _ = hist.record(ns.max(1));
        }
        done += 1;
    }
    // The echo stops on an empty datagram.
    d.send_gso(o.to, 0, None, |_| {}).map_err(io("send"))?;
    d.flush().map_err(io("send"))?;
    let s = d.stats();
    let fields = json!({
        "role": "raw-ping",
        "backend": d.features().backend.name(),
        "size": size,
        "ack": o.ack,
        "round_trips": o.count,
        "lost": lost,
        "tx_sends": s.tx_sends,
        "tx_gso_sends": s.tx_gso_sends,
        "rx_receives": s.rx_receives,
    });
    Ok(rtt_result(fields, &hist))
}

//! The io_uring raw UDP ceiling probe, the shape issue 6 measured its ceiling with: `SENDMSG`
//! of 15 × 4154-byte datagrams with UDP GSO into a multishot `RECVMSG` with UDP GRO over a
//! provided buffer ring. Both ends are uroce's own io_uring back end driven through
//! [`uroce::driver::raw::RawDriver`], without the engine (this crate has no `unsafe`, and a
//! second hand-written io_uring would measure something uroce does not run). So the number
//! is also "uroce's driver without the engine": what a transfer would cost if the engine were
//! free. With `--backend syscall` the same probe runs the syscall back end (one `sendmsg` and
//! one `recvmsg` per datagram).
//!
//! What the driver fixes, and so the probe: 32 send buffers of 64 KiB (at most that many
//! batches in flight), 16 provided receive buffers of 64 KiB, `SUBMIT_ALL`, no
//! `SQPOLL`/`DEFER_TASKRUN`, no registered buffers or files, and `SENDMSG`, not `SENDMSG_ZC`
//! (`--zc` measures that one: on veth the kernel copies the pages anyway); the sender
//! submits `depth` batches per `io_uring_enter`, the receiver sleeps in `poll` on the ring's
//! descriptor when no completion waits (as a device's progress thread does).
//!
//! As in [`crate::udp`], the receiver's goodput runs from its first receive to its last, CPU
//! from `getrusage`; both sides also print their totals (`bytes_total`, `datagrams_total`),
//! which the suite compares: UDP has no flow control, so what the receiver could not take is
//! lost and reported as such.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uroce::driver::raw::RawDriver;
use uroce::BackendKind;

use crate::udp::{cpu_seconds, ProbeError};

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}

fn features(d: &RawDriver) -> Value {
    let f = d.features();
    json!({
        "backend": f.backend.name(), "multishot_recv": f.multishot_recv,
        "gro": f.gro, "gso": f.gso,
    })
}

/// Receives on `bind` with back end `kind` until `idle` passes without data (after the first
/// receive) or `max` passes in all; `ready` is called once it receives. Returns the
/// receiver's JSON result.
pub fn recv(
    bind: SocketAddr,
    kind: BackendKind,
    idle: Duration,
    max: Duration,
    ready: impl FnOnce(),
) -> Result<Value, ProbeError> {
    let mut d = RawDriver::open(bind, kind).map_err(io("open"))?;
    // Arms the multishot receive before the sender starts.
    d.recv(|_, _| {}).map_err(io("receive"))?;
    ready();
    let (mut bytes, mut datagrams) = (0u64, 0u64);
    let (mut total_bytes, mut total_datagrams) = (0u64, 0u64);
    let begin = Instant::now();
    let mut first: Option<(Instant, f64)> = None;
    let mut last = (begin, 0.0);
    loop {
        let now = Instant::now();
        let quiet = first.is_some() && now.duration_since(last.0) > idle;
        if quiet || now.duration_since(begin) > max {
            break;
        }
        let (mut b, mut n) = (0u64, 0u64);
        d.recv(|_, data| {
            b += data.len() as u64;
            n += 1;
        })
        .map_err(io("receive"))?;
        if n == 0 {
            d.wait(Duration::from_millis(50)).map_err(io("poll"))?;
            continue;
        }
        total_bytes += b;
        total_datagrams += n;
        let t = Instant::now();
        if first.is_none() {
            // The first receive only starts the clock.
            first = Some((t, cpu_seconds()));
        } else {
            bytes += b;
            datagrams += n;
        }
        last = (t, cpu_seconds());
    }
    let (t0, c0) = first.unwrap_or((begin, 0.0));
    let secs = last.0.duration_since(t0).as_secs_f64();
    let s = d.stats();
    Ok(json!({
        "role": "uring-recv",
        "driver": features(&d),
        "bytes": bytes,
        "datagrams": datagrams,
        "bytes_total": total_bytes,
        "datagrams_total": total_datagrams,
        "receives": s.rx_receives,
        "gro_receives": s.rx_gro_receives,
        "no_buffers": s.rx_no_buffers,
        "truncated": s.rx_truncated,
        "arms": s.rx_arms,
        "seconds": secs,
        "gbit_s": if secs > 0.0 { bytes as f64 * 8.0 / secs / 1e9 } else { 0.0 },
        "cpu_s": if first.is_some() { last.1 - c0 } else { 0.0 },
    }))
}

/// How the sender runs.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions {
    /// Datagram size.
    pub size: usize,
    /// Datagrams per send (a GSO batch when > 1; at most what one datagram holds).
    pub gso: usize,
    /// Sends queued per submission.
    pub depth: usize,
    /// Seconds to send.
    pub secs: f64,
    /// Stop after this many batches, if sooner (0: no limit).
    pub batches: u64,
    /// Send with `SENDMSG_ZC` (io_uring only; see [`RawDriver::open_send_zc`]).
    pub zero_copy: bool,
    /// Write every batch before sending it, as the engine builds its packets in the send
    /// buffer (else the buffers keep whatever they held).
    pub write: bool,
}

/// Sends `o.gso`-datagram batches to `to` for `o.secs` seconds with back end `kind`, `o.depth`
/// batches per submission. Returns the sender's JSON result.
pub fn send(to: SocketAddr, kind: BackendKind, o: SendOptions) -> Result<Value, ProbeError> {
    let any: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let mut d = if o.zero_copy {
        RawDriver::open_send_zc(any)
    } else {
        RawDriver::open(any, kind)
    }
    .map_err(io("open"))?;
    let gso = o.gso.clamp(1, d.max_batch(o.size));
    let depth = o.depth.max(1);
    // The send buffers' bytes are whatever they held: the kernel copies them the same.
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    let end = Duration::from_secs_f64(o.secs);
    let limit = if o.batches == 0 { u64::MAX } else { o.batches };
    let mut batches = 0u64;
    while batches < limit && t0.elapsed() < end {
        for _ in 0..depth.min((limit - batches) as usize) {
            let fill = batches as u8;
            d.send_batch(to, o.size, gso, |b| {
                if o.write {
                    b.fill(fill);
                }
            })
            .map_err(io("send"))?;
            batches += 1;
        }
        d.flush().map_err(io("submit"))?;
    }
    let drained = d
        .drain_sends(Duration::from_secs(5))
        .map_err(io("submit"))?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - c0;
    let s = d.stats();
    Ok(json!({
        "role": "uring-send",
        "driver": features(&d),
        "size": o.size,
        "gso": gso,
        "depth": depth,
        "batches": batches,
        "bytes": s.tx_bytes,
        "bytes_total": s.tx_bytes,
        "datagrams_total": s.tx_bytes / o.size.max(1) as u64,
        "sends": s.tx_sends,
        "gso_sends": s.tx_gso_sends,
        "dropped": s.tx_dropped,
        "errors": s.tx_errors,
        "ring_enters": s.ring_enters,
        "zero_copy": o.zero_copy,
        "write": o.write,
        "zc_notifs": s.tx_zc_notifs,
        "zc_copied": s.tx_zc_copied,
        "drained": drained,
        "seconds": secs,
        "gbit_s": s.tx_bytes as f64 * 8.0 / secs / 1e9,
        "cpu_s": cpu,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe moves the bytes it claims: with fewer bytes than the receiver's socket buffer
    /// holds (nothing can be lost), both ends count every datagram, and the goodput span
    /// excludes exactly the first receive.
    #[test]
    fn receiver_counts_what_the_sender_counts() {
        for (ip, kind) in [
            ("127.0.42.1", BackendKind::Uring),
            ("127.0.42.2", BackendKind::Syscall),
        ] {
            let bind: SocketAddr = format!("{ip}:47931").parse().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let r = std::thread::spawn(move || {
                let ready = move || tx.send(()).unwrap();
                recv(
                    bind,
                    kind,
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                    ready,
                )
            });
            rx.recv_timeout(Duration::from_secs(10))
                .expect("receiver ready");
            let o = SendOptions {
                size: 4154,
                gso: 15,
                depth: 8,
                secs: 30.0,
                batches: 100,
                zero_copy: false,
                write: true,
            };
            let s = send(bind, kind, o).unwrap();
            assert_eq!(s["dropped"], 0, "{s}");
            assert_eq!(s["drained"], true, "{s}");
            let r = r.join().unwrap().unwrap();
            let per = if kind == BackendKind::Uring { 15 } else { 1 };
            assert_eq!(s["gso"], per, "{s}");
            assert_eq!(s["datagrams_total"], 100 * per, "{s}");
            assert_eq!(s["bytes_total"], 100 * per * 4154, "{s}");
            assert_eq!(r["datagrams_total"], s["datagrams_total"], "{r} vs {s}");
            assert_eq!(r["bytes_total"], s["bytes_total"], "{r} vs {s}");
            let (b, bt) = (
                r["bytes"].as_u64().unwrap(),
                r["bytes_total"].as_u64().unwrap(),
            );
            assert!(b < bt && b > 0, "{r}");
            assert_eq!(r["driver"]["backend"], kind.name(), "{r}");
        }
    }
}

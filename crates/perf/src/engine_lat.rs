//! The engine's own cost on the latency path (`uroce-perf engine-lat`): two engines in one
//! thread, driven through the 8-byte RDMA WRITE ping-pong as `uroce bench write lat
//! --progress polled` drives one device per process, without sockets, a lock or a clock.
//!
//! One half round trip is what one side does between seeing the peer's message and the peer
//! seeing its own, in the order of crates/uroce's polled calls (`Shared::with` for the post,
//! `CompletionQueue::poll` for the wait):
//! - **post**: the message count into the last byte of the 8-byte source (the bench's
//!   `mr.write`), then `post_send` of a signalled RDMA WRITE;
//! - **build+seal**: `poll_transmit` until it has nothing (the WRITE and the ACK held for
//!   the peer's previous WRITE: one GSO batch of 40 + 20 bytes, both sealed), the CQ and
//!   async event queues, then the pump after it (timers, `poll_transmit` again);
//! - **receive+poll** on the other side: `poll_cq` (empty), each packet of the batch to
//!   `handle_datagram` (cut at its segment size, as GRO hands them over), timers, the pump's
//!   `poll_transmit` (the ACK is held, so nothing), `poll_cq` (the completion of that side's
//!   own previous WRITE, acknowledged by the held ACK), and the read of the byte the peer
//!   wrote (the bench's `wait_byte`).
//!
//! The engine's clock steps [`STEP`] per half round trip, about what one takes on the
//! network, so the held ACK always leaves with the reply and no timer fires. Two passes of
//! `n` round trips each: one with no clock read inside a batch of [`BATCH`] round trips (the
//! total: its mean, and the median and fastest batch, which a busy machine disturbs less),
//! one that reads the clock between the phases (the split; the three reads are in it).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant as WallClock};

use serde_json::{json, Value};
use uroce_proto::{
    Access, AtomicMemory, Config, CqHandle, Device, Instant, MrKeys, Mtu, Payload, QpAttr, QpCap,
    QpInit, QpState, QpType, RegionMemory, SendOp, SendWr, Sge, WcOpcode, WcStatus,
};

/// Engine time per half round trip (the committed polled latency is about 5 µs).
const STEP: u64 = 5_000;
/// The bench's held-ACK delay in polled latency mode (crates/cli, `LAT_ACK_DELAY`).
const ACK_DELAY: Duration = Duration::from_micros(20);
/// Message size.
const SIZE: usize = 8;
/// Where a side's message comes from, and where the peer's lands (perftest's two halves).
const POST_OFF: usize = 0;
const POLL_OFF: usize = 64;
/// Round trips per timed batch of the untimed pass (two clock reads per batch).
const BATCH: u64 = 1000;
/// A back end send buffer (the io_uring back end's slots are 64 KiB). Datagram `i` of a
/// transmit goes into slot `i`, so a ping-pong reuses the same slots, as the back end's
/// stack of free slots does once each send has completed.
const TX_BUF: usize = 64 << 10;

/// What a run measured, in nanoseconds per half round trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineLat {
    /// Round trips per pass.
    pub round_trips: u64,
    /// Wall time of the pass without clock reads inside.
    pub half_rtt_ns: f64,
    /// This thread's CPU time in that pass (`/proc/thread-self/schedstat`; 0 without it).
    pub half_rtt_cpu_ns: f64,
    /// That pass cut into batches of [`BATCH`] round trips: the median batch. On a shared
    /// machine a batch the thread was preempted in, or another process flushed the caches
    /// in, is an outlier here, not a share of the mean.
    pub batch_median_ns: f64,
    /// The fastest batch.
    pub batch_min_ns: f64,
    /// The timed pass: posting.
    pub post_ns: f64,
    /// The timed pass: building and sealing the transmit.
    pub build_seal_ns: f64,
    /// The timed pass: the peer receiving it and polling its CQ.
    pub receive_poll_ns: f64,
    /// Completions taken, on both sides, over warm-up and both passes.
    pub completions: u64,
    /// Packets handed from one engine to the other.
    pub packets: u64,
}

impl EngineLat {
    /// The timed pass's total (the three phases).
    pub fn timed_half_rtt_ns(&self) -> f64 {
        self.post_ns + self.build_seal_ns + self.receive_poll_ns
    }

    /// As JSON.
    pub fn to_json(self) -> Value {
        json!({
            "round_trips": self.round_trips,
            "half_rtt_ns": self.half_rtt_ns,
            "half_rtt_cpu_ns": self.half_rtt_cpu_ns,
            "batch_median_ns": self.batch_median_ns,
            "batch_min_ns": self.batch_min_ns,
            "timed_half_rtt_ns": self.timed_half_rtt_ns(),
            "post_ns": self.post_ns,
            "build_seal_ns": self.build_seal_ns,
            "receive_poll_ns": self.receive_poll_ns,
            "completions": self.completions,
            "packets": self.packets,
        })
    }
}

/// Nanoseconds this thread has run on a CPU (0 where the file is missing).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One datagram in a side's send buffer.
#[derive(Debug, Clone, Copy)]
struct Sent {
    off: usize,
    len: usize,
    seg: usize,
}

/// One side: an engine with one RC QP, its region, and what it sent that the peer has not
/// taken yet.
struct Side {
    dev: Device,
    qpn: u32,
    cq: CqHandle,
    mem: Arc<AtomicMemory>,
    base: u64,
    keys: MrKeys,
    addr: SocketAddr,
    tx: Vec<u8>,
    out: Vec<Sent>,
    /// Messages posted; the next post carries `sent + 1`.
    sent: u64,
    /// Completions taken.
    done: u64,
    /// The peer's messages seen in the region.
    seen: u64,
}

impl Side {
    fn new(ip: Ipv4Addr) -> Result<Side, String> {
        let mut cfg = Config::new(IpAddr::V4(ip));
        // As the bench's device: the peer may be rxe (`accept_any_ipv4_id`), the ACK held
        // for the reply.
        cfg.ipv4_id_mode = uroce_wire::Ipv4IdMode::Solve;
        cfg.ack_delay = ACK_DELAY;
        let mut dev = Device::new(cfg);
        let e = |what: &'static str| move |err: uroce_proto::Error| format!("{what}: {err}");
        let pd = dev.alloc_pd();
        let cq = dev.create_cq(256).map_err(e("create_cq"))?;
        let mem = AtomicMemory::zeroed(4096);
        let base = 0x10_0000 * u64::from(ip.octets()[3]);
        let keys = dev
            .reg_mr(
                pd,
                base,
                mem.clone(),
                Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            )
            .map_err(e("reg_mr"))?;
        let qpn = dev
            .create_qp(QpInit {
                qp_type: QpType::Rc,
                pd,
                send_cq: cq,
                recv_cq: cq,
                srq: None,
                cap: QpCap {
                    max_send_wr: 128,
                    max_recv_wr: 512,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    ..QpCap::default()
                },
                sq_sig_all: false,
            })
            .map_err(e("create_qp"))?;
        dev.modify_qp(
            qpn,
            &QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                port: Some(1),
                access: Some(Access::REMOTE_WRITE),
                ..QpAttr::default()
            },
        )
        .map_err(e("INIT"))?;
        Ok(Side {
            dev,
            qpn,
            cq,
            mem,
            base,
            keys,
            addr: SocketAddr::new(IpAddr::V4(ip), uroce_wire::ROCE_UDP_PORT),
            tx: vec![0; 2 * TX_BUF],
            out: Vec::with_capacity(8),
            sent: 0,
            done: 0,
            seen: 0,
        })
    }

    /// RTR and RTS towards `peer` (the bench's `connect`).
    fn connect(&mut self, peer: &Side) -> Result<(), String> {
        let e = |what: &'static str| move |err: uroce_proto::Error| format!("{what}: {err}");
        self.dev
            .modify_qp(
                self.qpn,
                &QpAttr {
                    state: Some(QpState::Rtr),
                    path_mtu: Some(Mtu::M1024),
                    dest_ip: Some(peer.addr.ip()),
                    dest_qpn: Some(peer.qpn),
                    rq_psn: Some(0x12_3400 ^ peer.qpn),
                    max_dest_rd_atomic: Some(1),
                    min_rnr_timer: Some(12),
                    ..QpAttr::default()
                },
            )
            .map_err(e("RTR"))?;
        self.dev
            .modify_qp(
                self.qpn,
                &QpAttr {
                    state: Some(QpState::Rts),
                    sq_psn: Some(0x12_3400 ^ self.qpn),
                    timeout: Some(14),
                    retry_cnt: Some(7),
                    rnr_retry: Some(7),
                    max_rd_atomic: Some(1),
                    ..QpAttr::default()
                },
            )
            .map_err(e("RTS"))
    }

    /// `Inner::transmit`: everything ready into the send buffer, then the event queues.
    fn transmit(&mut self, now: Instant) {
        loop {
            // The next free slot (the peer has taken the datagrams of earlier calls).
            let off = self.out.len() * TX_BUF;
            if off + TX_BUF > self.tx.len() {
                self.tx.resize(off + TX_BUF, 0);
            }
            let Some(t) = self.dev.poll_transmit(now, &mut self.tx[off..off + TX_BUF]) else {
                break;
            };
            self.out.push(Sent {
                off,
                len: t.len,
                seg: t.segment_size.unwrap_or(t.len).max(1),
            });
        }
        while let Some(cq) = self.dev.poll_cq_event() {
            black_box(cq);
        }
        while let Some(e) = self.dev.poll_async_event() {
            black_box(e);
        }
    }

    /// `Inner::pump` after the receive: due timers, then transmit.
    fn timers_and_transmit(&mut self, now: Instant) {
        if self.dev.poll_timeout().is_some_and(|t| t <= now) {
            self.dev.handle_timeout(now);
        }
        self.transmit(now);
    }

    /// Takes one completion, if any, and checks it.
    fn take(&mut self) -> Result<(), String> {
        match self.dev.poll_cq(self.cq) {
            Ok(None) => Ok(()),
            Ok(Some(c)) => {
                self.done += 1;
                if c.status != WcStatus::Success
                    || c.opcode != WcOpcode::RdmaWrite
                    || c.wr_id != self.done
                    || c.byte_len != SIZE as u32
                    || c.imm.is_some()
                    || c.qp_num != self.qpn
                {
                    return Err(format!(
                        "completion {} of QP {}: {c:?}",
                        self.done, self.qpn
                    ));
                }
                Ok(())
            }
            Err(e) => Err(format!("poll_cq: {e}")),
        }
    }

    /// The post (`QueuePair::post_send` up to the engine call).
    fn post(&mut self, now: Instant, peer_base: u64, peer_rkey: u32) -> Result<(), String> {
        self.sent += 1;
        self.mem.write(POST_OFF + SIZE - 1, &[self.sent as u8]);
        let wr = SendWr::new(
            self.sent,
            SendOp::RdmaWrite {
                remote_addr: peer_base + POLL_OFF as u64,
                rkey: peer_rkey,
            },
            Payload::Sge(Sge {
                addr: self.base + POST_OFF as u64,
                length: SIZE as u32,
                lkey: self.keys.lkey,
            }),
        );
        self.dev
            .post_send(now, self.qpn, wr)
            .map_err(|e| format!("post_send: {e}"))
    }

    /// What the polled post does after the engine call: transmit, then one pump (nothing
    /// to receive yet: the peer has not run).
    fn build(&mut self, now: Instant) {
        self.transmit(now);
        self.timers_and_transmit(now);
    }

    /// `CompletionQueue::poll(1)` in polled mode, receiving what `from` sent, then the
    /// bench's check of the byte the peer wrote.
    fn receive(&mut self, now: Instant, from: &mut Side) -> Result<u64, String> {
        self.take()?;
        if self.dev.has_transmit() {
            self.transmit(now);
        }
        let mut packets = 0;
        let to = self.addr.ip();
        for s in from.out.drain(..) {
            for p in from.tx[s.off..s.off + s.len].chunks(s.seg) {
                self.dev.handle_datagram(now, from.addr, to, p);
                packets += 1;
            }
        }
        self.timers_and_transmit(now);
        self.take()?;
        // The whole message (the bench reads its last byte: one word load either way); the
        // peer writes its count into the last byte and zeros before it.
        let mut b = [0u8; SIZE];
        self.mem.read(POLL_OFF, &mut b);
        self.seen += 1;
        if b[SIZE - 1] != self.seen as u8 || b[..SIZE - 1] != [0; SIZE - 1] {
            return Err(format!(
                "QP {}: message {} not in the region ({b:02x?})",
                self.qpn, self.seen
            ));
        }
        Ok(packets)
    }
}

/// Phase times of the timed pass, nanoseconds summed.
#[derive(Debug, Default)]
struct Split {
    post: u64,
    build: u64,
    receive: u64,
}

/// The two sides and the engine clock.
struct Pair {
    s: [Side; 2],
    now: u64,
    packets: u64,
}

impl Pair {
    /// Side `a` posts and transmits; the other receives. With `split`, each phase is timed.
    fn half(&mut self, a: usize, split: Option<&mut Split>) -> Result<(), String> {
        self.now += STEP;
        let now = Instant::from_nanos(self.now);
        let [s0, s1] = &mut self.s;
        let (x, y) = if a == 0 { (s0, s1) } else { (s1, s0) };
        let (peer_base, peer_rkey) = (y.base, y.keys.rkey);
        match split {
            None => {
                x.post(now, peer_base, peer_rkey)?;
                x.build(now);
                self.packets += y.receive(now, x)?;
            }
            Some(t) => {
                let t0 = WallClock::now();
                x.post(now, peer_base, peer_rkey)?;
                let t1 = WallClock::now();
                x.build(now);
                let t2 = WallClock::now();
                self.packets += y.receive(now, x)?;
                let t3 = WallClock::now();
                t.post += (t1 - t0).as_nanos() as u64;
                t.build += (t2 - t1).as_nanos() as u64;
                t.receive += (t3 - t2).as_nanos() as u64;
            }
        }
        Ok(())
    }

    fn round_trips(&mut self, n: u64, mut split: Option<&mut Split>) -> Result<(), String> {
        for _ in 0..n {
            self.half(0, split.as_deref_mut())?;
            self.half(1, split.as_deref_mut())?;
        }
        Ok(())
    }

    /// After the last message: its ACK, held for a reply that never comes, leaves at its
    /// deadline; the sender then has every completion.
    fn finish(&mut self) -> Result<(), String> {
        self.now += ACK_DELAY.as_nanos() as u64 + STEP;
        let now = Instant::from_nanos(self.now);
        let [s0, s1] = &mut self.s;
        s0.timers_and_transmit(now);
        self.packets += s1.receive_acks(now, s0)?;
        for s in &self.s {
            if s.done != s.sent || s.seen != s.sent {
                return Err(format!(
                    "QP {}: {} posted, {} completed, {} of the peer's seen",
                    s.qpn, s.sent, s.done, s.seen
                ));
            }
        }
        Ok(())
    }
}

impl Side {
    /// The last ACK from `from`: handed over, then every completion taken.
    fn receive_acks(&mut self, now: Instant, from: &mut Side) -> Result<u64, String> {
        let mut packets = 0;
        for s in from.out.drain(..) {
            for p in from.tx[s.off..s.off + s.len].chunks(s.seg) {
                self.dev.handle_datagram(now, from.addr, self.addr.ip(), p);
                packets += 1;
            }
        }
        self.timers_and_transmit(now);
        while self.done < self.sent {
            let before = self.done;
            self.take()?;
            if self.done == before {
                break;
            }
        }
        Ok(packets)
    }
}

/// Runs `warmup` round trips, then `n` without and `n` with the phases timed.
pub fn run(n: u64, warmup: u64) -> Result<EngineLat, String> {
    let n = n.max(1);
    let mut a = Side::new(Ipv4Addr::new(10, 66, 0, 1))?;
    let mut b = Side::new(Ipv4Addr::new(10, 66, 0, 2))?;
    a.connect(&b)?;
    b.connect(&a)?;
    let mut p = Pair {
        s: [a, b],
        now: 0,
        packets: 0,
    };
    p.round_trips(warmup, None)?;

    let (cpu0, wall0) = (cpu_ns(), WallClock::now());
    let mut batches = Vec::with_capacity(n.div_ceil(BATCH) as usize);
    let mut left = n;
    while left > 0 {
        let k = left.min(BATCH);
        let t = WallClock::now();
        p.round_trips(k, None)?;
        batches.push(t.elapsed().as_nanos() as f64 / (2 * k) as f64);
        left -= k;
    }
    let wall = wall0.elapsed().as_nanos() as f64;
    let cpu = cpu_ns().saturating_sub(cpu0) as f64;
    batches.sort_by(f64::total_cmp);

    let mut split = Split::default();
    p.round_trips(n, Some(&mut split))?;
    p.finish()?;

    let halves = (2 * n) as f64;
    Ok(EngineLat {
        round_trips: n,
        half_rtt_ns: wall / halves,
        half_rtt_cpu_ns: cpu / halves,
        batch_median_ns: batches[batches.len() / 2],
        batch_min_ns: batches[0],
        post_ns: split.post as f64 / halves,
        build_seal_ns: split.build as f64 / halves,
        receive_poll_ns: split.receive as f64 / halves,
        completions: p.s[0].done + p.s[1].done,
        packets: p.packets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_trip_completes_with_the_peers_bytes_and_finite_times() {
        let r = run(200, 10).expect("ping-pong");
        // Both sides sent warm-up plus two passes of messages, all completed.
        assert_eq!(r.completions, 2 * (10 + 2 * 200));
        // Each message is one WRITE packet and is acknowledged by one ACK packet: held and
        // sent with the peer's reply, the last one alone at its deadline.
        assert_eq!(r.packets, 2 * (2 * (10 + 2 * 200)));
        assert!(r.batch_min_ns <= r.batch_median_ns);
        for v in [
            r.half_rtt_ns,
            r.batch_median_ns,
            r.batch_min_ns,
            r.post_ns,
            r.build_seal_ns,
            r.receive_poll_ns,
            r.timed_half_rtt_ns(),
        ] {
            assert!(v.is_finite() && v > 0.0, "{r:?}");
        }
        assert!(r.half_rtt_cpu_ns.is_finite() && r.half_rtt_cpu_ns >= 0.0);
        assert_eq!(r.to_json()["round_trips"], 200);
    }
}

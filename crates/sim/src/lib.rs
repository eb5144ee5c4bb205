//! A deterministic network simulator for the uroce engine.
//!
//! N [`uroce_proto::Device`]s on a virtual clock exchange datagrams over links with latency,
//! bandwidth, MTU, and seeded loss, reordering, duplication and bit corruption (which the ICRC
//! must catch). Same seed, same run: a failing seed replays exactly. GSO batches handed out by a
//! device are split into their packets here, as the kernel would.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use uroce_proto::{Config, Device, Instant};

/// A small, portable, seeded PRNG (SplitMix64): the simulator needs reproducibility across
/// platforms and versions more than statistical strength, and this is ten lines.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Link properties, the same for every pair of hosts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way latency.
    pub latency: Duration,
    /// Bits per second on each sender's link; `None` = infinite.
    pub bandwidth_bps: Option<u64>,
    /// Largest IP datagram carried (larger ones are dropped, as a real link would).
    pub mtu: usize,
    /// Probability a packet is lost.
    pub loss: f64,
    /// Probability a packet is delayed by up to `reorder_delay` extra, overtaking others.
    pub reorder: f64,
    /// Extra delay of a reordered packet (uniform up to this).
    pub reorder_delay: Duration,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// Probability one random bit of a packet is flipped.
    pub corrupt: f64,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            latency: Duration::from_micros(5),
            bandwidth_bps: Some(25_000_000_000),
            mtu: 9000,
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_micros(20),
            duplicate: 0.0,
            corrupt: 0.0,
        }
    }
}

/// What the links did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Packets handed to the network.
    pub sent: u64,
    /// Packets delivered (duplicates count twice).
    pub delivered: u64,
    /// Packets lost on purpose.
    pub lost: u64,
    /// Packets delayed to reorder.
    pub reordered: u64,
    /// Packets duplicated.
    pub duplicated: u64,
    /// Packets with a flipped bit.
    pub corrupted: u64,
    /// Packets larger than the link MTU.
    pub too_big: u64,
    /// Packets to an address no host has.
    pub unroutable: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    to: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

/// One simulated host.
#[derive(Debug)]
pub struct Host {
    /// Its engine.
    pub dev: Device,
    /// Its address.
    pub ip: IpAddr,
    link_free: Instant,
}

/// A hook that sees every packet put on the wire: (time, source, destination, UDP payload).
pub type Tap = Box<dyn FnMut(Instant, SocketAddr, SocketAddr, &[u8])>;

/// The simulator.
pub struct Sim {
    /// Current virtual time.
    pub now: Instant,
    /// The hosts, by index.
    pub hosts: Vec<Host>,
    /// Link properties.
    pub link: Link,
    /// Link counters.
    pub stats: LinkStats,
    rng: Rng,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    buf: Vec<u8>,
    tap: Option<Tap>,
}

impl core::fmt::Debug for Sim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("stats", &self.stats)
            .finish()
    }
}

/// IPv4 + UDP header bytes around a RoCE packet.
const IP_UDP_OVERHEAD: usize = 28;

impl Sim {
    /// An empty network.
    pub fn new(seed: u64, link: Link) -> Self {
        Sim {
            now: Instant::ZERO,
            hosts: Vec::new(),
            link,
            stats: LinkStats::default(),
            rng: Rng::new(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            buf: vec![0; 65536],
            tap: None,
        }
    }

    /// Adds a host with a default device config; returns its index.
    pub fn add_host(&mut self, ip: IpAddr) -> usize {
        self.add_host_with(Config::new(ip))
    }

    /// Adds a host with `config`.
    pub fn add_host_with(&mut self, config: Config) -> usize {
        let ip = config.local_ip;
        self.hosts.push(Host {
            dev: Device::new(config),
            ip,
            link_free: Instant::ZERO,
        });
        self.hosts.len() - 1
    }

    /// The device of host `i`.
    pub fn dev(&mut self, i: usize) -> &mut Device {
        &mut self.hosts[i].dev
    }

    /// Posts a send WR on host `h` at the current virtual time.
    pub fn post_send(
        &mut self,
        h: usize,
        qpn: u32,
        wr: uroce_proto::SendWr,
    ) -> Result<(), uroce_proto::Error> {
        let now = self.now;
        self.hosts[h].dev.post_send(now, qpn, wr)
    }

    /// Sees every packet put on the wire (e.g. to write a pcap).
    pub fn set_tap(&mut self, tap: Tap) {
        self.tap = Some(tap);
    }

    fn transmit_all(&mut self) {
        for h in 0..self.hosts.len() {
            let src = SocketAddr::new(self.hosts[h].ip, self.hosts[h].dev.config().udp_port);
            while let Some(t) = self.hosts[h].dev.poll_transmit(self.now, &mut self.buf) {
                let seg = t.segment_size.unwrap_or(t.len).max(1);
                let mut off = 0;
                while off < t.len {
                    let end = (off + seg).min(t.len);
                    let pkt = self.buf[off..end].to_vec();
                    self.send(h, src, t.dst, pkt);
                    off = end;
                }
            }
        }
    }

    fn send(&mut self, h: usize, src: SocketAddr, dst: SocketAddr, mut bytes: Vec<u8>) {
        self.stats.sent += 1;
        if let Some(tap) = self.tap.as_mut() {
            tap(self.now, src, dst, &bytes);
        }
        let wire = bytes.len() + IP_UDP_OVERHEAD + if dst.is_ipv6() { 20 } else { 0 };
        // Serialisation on the sender's link.
        let start = self.now.max(self.hosts[h].link_free);
        let ser = self.link.bandwidth_bps.map_or(Duration::ZERO, |bps| {
            Duration::from_nanos((wire as u64 * 8 * 1_000_000_000) / bps.max(1))
        });
        self.hosts[h].link_free = start + ser;
        if wire > self.link.mtu {
            self.stats.too_big += 1;
            return;
        }
        if self.rng.chance(self.link.loss) {
            self.stats.lost += 1;
            return;
        }
        let Some(to) = self.hosts.iter().position(|x| x.ip == dst.ip()) else {
            self.stats.unroutable += 1;
            return;
        };
        if self.rng.chance(self.link.corrupt) && !bytes.is_empty() {
            self.stats.corrupted += 1;
            let bit = self.rng.below(bytes.len() as u64 * 8);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        let mut at = start + ser + self.link.latency;
        if self.rng.chance(self.link.reorder) {
            self.stats.reordered += 1;
            let extra = self
                .rng
                .below(self.link.reorder_delay.as_nanos() as u64 + 1);
            at = at + Duration::from_nanos(extra);
        }
        if self.rng.chance(self.link.duplicate) {
            self.stats.duplicated += 1;
            self.seq += 1;
            let later = at + Duration::from_nanos(self.rng.below(1000));
            self.queue.push(Reverse(InFlight {
                at: later,
                seq: self.seq,
                to,
                from: src,
                bytes: bytes.clone(),
            }));
        }
        self.seq += 1;
        self.queue.push(Reverse(InFlight {
            at,
            seq: self.seq,
            to,
            from: src,
            bytes,
        }));
    }

    /// Sends what is ready, then advances to the next event (a delivery or a device timer)
    /// and handles it. Returns false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.transmit_all();
        let next_delivery = self.queue.peek().map(|Reverse(p)| p.at);
        let next_timer = self.hosts.iter().filter_map(|h| h.dev.poll_timeout()).min();
        let next = match (next_delivery, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        self.now = self.now.max(next);
        while self.queue.peek().is_some_and(|Reverse(p)| p.at <= self.now) {
            let Some(Reverse(p)) = self.queue.pop() else {
                break;
            };
            self.stats.delivered += 1;
            let h = &mut self.hosts[p.to];
            h.dev.handle_datagram(self.now, p.from, h.ip, &p.bytes);
        }
        for h in &mut self.hosts {
            if h.dev.poll_timeout().is_some_and(|t| t <= self.now) {
                h.dev.handle_timeout(self.now);
            }
        }
        self.transmit_all();
        true
    }

    /// Steps until `done` holds or virtual time passes `limit`; returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now > end || !self.step() {
                return done(self);
            }
        }
    }
}

pub mod scenario;

//! The engine's own cost per message, without sockets or a clock in the loop: a stream of
//! small RDMA WRITEs from one RC QP to another, each side's transmits handed straight to the
//! other's `handle_datagram` (GSO batches cut into their packets, as the receiving kernel
//! would). Prints the CPU time per message of this thread (from `/proc/thread-self/schedstat`,
//! so time the scheduler gave to others is not counted) and the share of it on each side.
//!
//!     cargo run --release -p uroce-sim --example engine_rate -- [SIZE] [MESSAGES] [DEPTH] [MTU]
//!
//! A tool for A/B comparisons of engine changes on a busy machine, where the end-to-end
//! `uroce bench` numbers move with whatever else runs; it is not a test.

use std::net::SocketAddr;
use std::time::Instant as WallClock;

use uroce_proto::{Instant, Payload, SendOp, SendWr, WcStatus};
use uroce_sim::scenario::{pair, PairOpts};
use uroce_sim::{Link, Sim};

/// Nanoseconds this thread has run on a CPU.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Hands every packet of `dev_from`'s transmits to `dev_to`; returns the packets moved.
fn pump(sim: &mut Sim, from: usize, to: usize, buf: &mut [u8], now: Instant) -> u64 {
    let src = SocketAddr::new(sim.hosts[from].ip, sim.hosts[from].dev.config().udp_port);
    let dst_ip = sim.hosts[to].ip;
    let mut n = 0;
    while let Some(t) = sim.hosts[from].dev.poll_transmit(now, buf) {
        let seg = t.segment_size.unwrap_or(t.len);
        for p in buf[..t.len].chunks(seg) {
            sim.hosts[to].dev.handle_datagram(now, src, dst_ip, p);
            n += 1;
        }
    }
    n
}

fn main() {
    let size = arg(1, 64);
    let total = arg(2, 2_000_000) as u64;
    let depth = arg(3, 512) as u64;
    let Some(mtu) = uroce_proto::Mtu::from_bytes(arg(4, 1024) as u32) else {
        eprintln!("engine_rate: MTU must be 256, 512, 1024, 2048 or 4096");
        std::process::exit(2);
    };
    let mut sim = Sim::new(1, Link::default());
    let opts = PairOpts {
        mem_len: 1 << 20,
        cap: uroce_proto::QpCap {
            max_send_wr: depth as u32,
            ..PairOpts::default().cap
        },
        mtu,
        ..PairOpts::default()
    };
    let (a, b) = pair(&mut sim, &opts);
    let slots = (opts.mem_len / size.max(1)) as u64;
    let mut buf = vec![0u8; 64 * (size + 128)];
    let now = Instant::ZERO;
    let (mut posted, mut done) = (0u64, 0u64);
    let (mut ns_a, mut ns_b) = (0u64, 0u64);
    let (cpu0, wall0) = (cpu_ns(), WallClock::now());
    while done < total {
        let t0 = cpu_ns();
        while posted < total && posted - done < depth {
            let k = posted % slots;
            let mut wr = SendWr::new(
                posted,
                SendOp::RdmaWrite {
                    remote_addr: b.base + k * size as u64,
                    rkey: b.keys.rkey,
                },
                Payload::Sge(a.sge(k * size as u64, size as u32)),
            );
            // perftest's default: one completion per 100 WRs (and the last).
            wr.flags.signaled = (posted + 1) % 100 == 0 || posted + 1 == total;
            sim.hosts[a.host]
                .dev
                .post_send(now, a.qpn, wr)
                .expect("post");
            posted += 1;
        }
        pump(&mut sim, a.host, b.host, &mut buf, now);
        let t1 = cpu_ns();
        pump(&mut sim, b.host, a.host, &mut buf, now);
        while let Ok(Some(c)) = sim.hosts[a.host].dev.poll_cq(a.cq) {
            assert_eq!(c.status, WcStatus::Success, "{c:?}");
            done = done.max(c.wr_id + 1);
        }
        let t2 = cpu_ns();
        ns_a += t1 - t0;
        ns_b += t2 - t1;
    }
    let cpu = cpu_ns() - cpu0;
    let acks = sim.hosts[b.host].dev.counters().tx_packets;
    let wall = wall0.elapsed().as_secs_f64();
    println!(
        "{total} x {size} B WRITE, depth {depth}: {:.1} ns CPU per message ({:.2} M msg/s of one \
         core), wall {:.2} M msg/s; posting+requester+responder {:.0} %, ACKs+completer {:.0} %; \
         {:.3} ACKs per message",
        cpu as f64 / total as f64,
        total as f64 / (cpu as f64 / 1e9) / 1e6,
        total as f64 / wall / 1e6,
        100.0 * ns_a as f64 / (ns_a + ns_b).max(1) as f64,
        100.0 * ns_b as f64 / (ns_a + ns_b).max(1) as f64,
        acks as f64 / total as f64,
    );
}

//! Per-byte costs of the passes every RDMA byte takes through a software RoCE sender and
//! receiver, measured on this CPU, so that the suite can state the CPU floor of the design
//! next to what uroce measured (`uroce-perf micro`, and the "floor" rows of the report).
//!
//! Besides the kernel's work (which the raw UDP probes measure), a byte costs:
//! - the ICRC, once on the sender (`IcrcContext::compute`, what sealing does) and once on the
//!   receiver (verification computes the same CRC);
//! - one read from the sender's memory region into a send buffer and one write from a receive
//!   buffer into the receiver's region, through `AtomicMemory` (the engine's region memory);
//!   a plain `memcpy` over the same pattern is measured too, as what a memory model without
//!   atomics could at best save.
//!
//! The copy pattern mirrors the engine: 4 KiB packets from a region larger than the caches
//! (8 MiB, cycled) into a 2 MiB set of packet buffers (32 × 64 KiB send slots).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uroce_proto::{AtomicMemory, RegionMemory};
use uroce_wire::{IcrcContext, IpFields, ROCE_UDP_PORT};

/// Payload bytes per packet (path MTU 4096).
const PACKET: usize = 4096;
/// Region size: larger than the last-level cache share a core sees on these VMs.
const REGION: usize = 8 << 20;
/// Packet buffers: the io_uring back end's 32 send slots of 64 KiB.
const BUFFERS: usize = 2 << 20;

/// Rates in GB/s (1e9 bytes per second of one core).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Micro {
    /// ICRC of a 4 KiB-payload packet (pseudo header included).
    pub icrc_gb_s: f64,
    /// `AtomicMemory::read`: region → packet buffer.
    pub mr_read_gb_s: f64,
    /// `AtomicMemory::write`: packet buffer → region.
    pub mr_write_gb_s: f64,
    /// `memcpy` region → packet buffer, same pattern.
    pub memcpy_read_gb_s: f64,
    /// `memcpy` packet buffer → region, same pattern.
    pub memcpy_write_gb_s: f64,
}

impl Micro {
    /// CPU seconds per GB both sides spend in user space beyond the kernel's work, at the
    /// least: two ICRC passes and the sender's region read (its copy into the packet), plus
    /// on the receiver one region write (a copying receive) or, when the kernel `placed` the
    /// payload in the region (zero-copy receive), one region read: the ICRC must read the
    /// payload, and region memory is atomic words that crc32fast cannot hash in place.
    pub fn user_floor_cpu_s_per_gb(self, placed: bool) -> f64 {
        let receive = if placed {
            self.mr_read_gb_s
        } else {
            self.mr_write_gb_s
        };
        2.0 / self.icrc_gb_s + 1.0 / self.mr_read_gb_s + 1.0 / receive
    }

    /// As JSON (the suite's results.json).
    pub fn to_json(self) -> Value {
        json!({
            "icrc_gb_s": self.icrc_gb_s,
            "mr_read_gb_s": self.mr_read_gb_s,
            "mr_write_gb_s": self.mr_write_gb_s,
            "memcpy_read_gb_s": self.memcpy_read_gb_s,
            "memcpy_write_gb_s": self.memcpy_write_gb_s,
            "user_floor_cpu_s_per_gb": self.user_floor_cpu_s_per_gb(false),
            "user_floor_placed_cpu_s_per_gb": self.user_floor_cpu_s_per_gb(true),
        })
    }

    /// From [`Micro::to_json`]'s output; `None` when absent (results of older suites).
    pub fn from_json(v: &Value) -> Option<Micro> {
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        Some(Micro {
            icrc_gb_s: f("icrc_gb_s")?,
            mr_read_gb_s: f("mr_read_gb_s")?,
            mr_write_gb_s: f("mr_write_gb_s")?,
            memcpy_read_gb_s: f("memcpy_read_gb_s")?,
            memcpy_write_gb_s: f("memcpy_write_gb_s")?,
        })
    }
}

/// Runs `step` (which moves `bytes_per_step` bytes) for about `time`; GB/s.
fn rate(time: Duration, bytes_per_step: usize, mut step: impl FnMut(usize)) -> f64 {
    // Warm up (page faults, caches), then measure in rounds of 64 steps.
    for i in 0..64 {
        step(i);
    }
    let start = Instant::now();
    let mut steps = 0usize;
    while start.elapsed() < time {
        for _ in 0..64 {
            step(steps);
            steps += 1;
        }
    }
    (steps * bytes_per_step) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// `memcpy` of 4 KiB packets from `src` (cycled) into `buffers` (cycled) for about `time`;
/// GB/s: [`Micro::memcpy_read_gb_s`] and [`CopyPhase`]'s rates.
fn memcpy_rate(time: Duration, src: &[u8], buffers: &mut [u8]) -> f64 {
    rate(time, PACKET, |i| {
        let (r, b) = ((i * PACKET) % src.len(), (i * PACKET) % buffers.len());
        buffers[b..b + PACKET].copy_from_slice(&src[r..r + PACKET]);
        black_box(&buffers);
    })
}

/// Measures every rate for about `each` per rate.
pub fn measure(each: Duration) -> Micro {
    let region = AtomicMemory::zeroed(REGION);
    let fill: Vec<u8> = (0..REGION).map(|i| (i * 7 + i / 4096) as u8).collect();
    region.write(0, &fill);
    let mut plain = fill;
    let mut buffers = vec![0u8; BUFFERS];
    let offsets = |i: usize| ((i * PACKET) % REGION, (i * PACKET) % BUFFERS);

    let mr_read_gb_s = rate(each, PACKET, |i| {
        let (r, b) = offsets(i);
        region.read(r, &mut buffers[b..b + PACKET]);
    });
    let mr_write_gb_s = rate(each, PACKET, |i| {
        let (r, b) = offsets(i);
        region.write(r, &buffers[b..b + PACKET]);
    });
    let memcpy_read_gb_s = memcpy_rate(each, &plain, &mut buffers);
    let memcpy_write_gb_s = rate(each, PACKET, |i| {
        let (r, b) = offsets(i);
        plain[r..r + PACKET].copy_from_slice(&buffers[b..b + PACKET]);
        black_box(&plain);
    });

    // A WRITE MIDDLE packet: BTH (12) + payload + ICRC (4); the headers' contents do not
    // change the cost.
    let ctx = IcrcContext {
        ip: IpFields::V4 {
            src: Ipv4Addr::new(10, 66, 0, 2),
            dst: Ipv4Addr::new(10, 66, 0, 1),
            identification: 0,
            flags_fragment: 0x4000,
        },
        src_port: 49152,
        dst_port: ROCE_UDP_PORT,
    };
    let mut packet = vec![0u8; 12 + PACKET + 4];
    packet[0] = 0x07;
    let icrc_gb_s = rate(each, PACKET, |i| {
        packet[4] = i as u8;
        black_box(ctx.compute(black_box(&packet)));
    });

    Micro {
        icrc_gb_s,
        mr_read_gb_s,
        mr_write_gb_s,
        memcpy_read_gb_s,
        memcpy_write_gb_s,
    }
}

/// Where a run of the suite stood in the VM's memory phases: one core's `memcpy` rate of
/// 4 KiB packets into the packet buffers, from an 8 MiB region (as [`Micro::memcpy_read_gb_s`])
/// and from a 256 MiB one (memory, past every cache), GB/s. On these VMs copy-bound runs
/// sometimes take 2.5 × the CPU per byte for a minute while compute-bound passes do not
/// (docs/perf/JOURNAL.md, "Reading the committed run (19:09)"); sampled through the suite,
/// these say when.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CopyPhase {
    /// When in the suite: `start`, `round N`, `end`.
    pub when: String,
    /// From the 8 MiB region.
    pub region_gb_s: f64,
    /// From the 256 MiB region.
    pub memory_gb_s: f64,
    /// The machine's CPU time stolen by the hypervisor, and all CPU time, in ticks since
    /// boot when the sample was taken (`/proc/stat`), if readable: the share stolen between
    /// two samples is the other suspect for a slow phase.
    pub steal_ticks: Option<(u64, u64)>,
}

/// The cold region of [`CopyPhase::memory_gb_s`].
const COLD: usize = 256 << 20;

impl CopyPhase {
    /// Samples both rates for about `each` each.
    pub fn sample(when: &str, each: Duration) -> CopyPhase {
        let steal_ticks = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| steal_of(&s));
        let mut buffers = vec![0u8; BUFFERS];
        // What the bytes are does not change a copy's cost.
        let mut copy = |len: usize| memcpy_rate(each, &vec![0x5au8; len], &mut buffers);
        let region_gb_s = copy(REGION);
        let memory_gb_s = copy(COLD);
        CopyPhase {
            when: when.into(),
            region_gb_s,
            memory_gb_s,
            steal_ticks,
        }
    }

    /// The share of all CPU time stolen between `earlier` and this sample, in percent.
    pub fn steal_since(&self, earlier: &CopyPhase) -> Option<f64> {
        let ((s1, a1), (s0, a0)) = (self.steal_ticks?, earlier.steal_ticks?);
        let all = a1.checked_sub(a0).filter(|&d| d > 0)?;
        Some(s1.saturating_sub(s0) as f64 * 100.0 / all as f64)
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "when": self.when, "region_gb_s": self.region_gb_s, "memory_gb_s": self.memory_gb_s,
            "steal_ticks": self.steal_ticks.map(|(s, a)| [s, a]),
        })
    }

    /// From [`CopyPhase::to_json`]'s output.
    pub fn from_json(v: &Value) -> CopyPhase {
        let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        CopyPhase {
            when: v["when"].as_str().unwrap_or_default().into(),
            region_gb_s: f("region_gb_s"),
            memory_gb_s: f("memory_gb_s"),
            steal_ticks: v["steal_ticks"]
                .as_array()
                .and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?))),
        }
    }
}

/// (steal, all) ticks from the `cpu` line of `/proc/stat` (user, nice, system, idle, iowait,
/// irq, softirq, steal; guest time is inside user already).
fn steal_of(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (v.len() == 8).then(|| (v[7], v.iter().sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_positive_and_the_floor_adds_the_passes() {
        let m = measure(Duration::from_millis(20));
        for r in [
            m.icrc_gb_s,
            m.mr_read_gb_s,
            m.mr_write_gb_s,
            m.memcpy_read_gb_s,
            m.memcpy_write_gb_s,
        ] {
            assert!(r > 0.01 && r.is_finite(), "{m:?}");
        }
        let fixed = Micro {
            icrc_gb_s: 10.0,
            mr_read_gb_s: 5.0,
            mr_write_gb_s: 4.0,
            memcpy_read_gb_s: 1.0,
            memcpy_write_gb_s: 1.0,
        };
        assert!((fixed.user_floor_cpu_s_per_gb(false) - (0.2 + 0.2 + 0.25)).abs() < 1e-12);
        assert!((fixed.user_floor_cpu_s_per_gb(true) - (0.2 + 0.2 + 0.2)).abs() < 1e-12);
        assert_eq!(fixed.to_json()["user_floor_cpu_s_per_gb"], 0.65);
        assert_eq!(Micro::from_json(&fixed.to_json()), Some(fixed));
        assert_eq!(Micro::from_json(&Value::Null), None);
    }

    #[test]
    fn a_copy_phase_has_both_rates_and_survives_json() {
        let p = CopyPhase::sample("start", Duration::from_millis(10));
        assert!(p.region_gb_s > 0.01 && p.memory_gb_s > 0.01, "{p:?}");
        assert!(p.steal_ticks.is_some(), "Linux has /proc/stat");
        assert_eq!(CopyPhase::from_json(&p.to_json()), p);
    }

    #[test]
    fn steal_is_read_from_the_cpu_line_and_taken_as_a_share_between_samples() {
        let stat = "cpu  100 5 50 800 10 0 5 30 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(steal_of(stat), Some((30, 1000)));
        assert_eq!(steal_of("cpu0 1 2 3\n"), None);
        assert_eq!(steal_of("cpu  1 2 x 4 5 6 7 8\n"), None);
        let at = |s, a| CopyPhase {
            steal_ticks: Some((s, a)),
            ..CopyPhase::default()
        };
        assert_eq!(at(80, 1200).steal_since(&at(30, 1000)), Some(25.0));
        assert_eq!(
            at(30, 1000).steal_since(&at(30, 1000)),
            None,
            "no time passed"
        );
        assert_eq!(CopyPhase::default().steal_since(&at(30, 1000)), None);
    }
}

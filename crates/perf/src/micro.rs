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
    let memcpy_read_gb_s = rate(each, PACKET, |i| {
        let (r, b) = offsets(i);
        buffers[b..b + PACKET].copy_from_slice(&plain[r..r + PACKET]);
        black_box(&buffers);
    });
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
}

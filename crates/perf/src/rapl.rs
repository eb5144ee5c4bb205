//! Energy from RAPL (`/sys/class/powercap/intel-rapl*`): the package domains' `energy_uj`
//! counters, sampled often enough that a wrap-around (at `max_energy_range_uj`, every few
//! minutes at full power on some parts) is seen at most once between two samples.
//!
//! Only top-level zones (`intel-rapl:N`) are summed: their sub-zones (`intel-rapl:N:M`, core
//! and uncore) are parts of them. Virtual machines usually have no powercap tree at all; then
//! [`Rapl::open`] says why and the suite reports CPU-seconds per GB instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The default root of the powercap tree.
pub const SYSFS: &str = "/sys/class/powercap";

/// One RAPL zone.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Its directory.
    pub dir: PathBuf,
    /// Its `name` (e.g. `package-0`).
    pub name: String,
    /// `max_energy_range_uj`: the counter wraps to 0 after this value.
    pub max_uj: u64,
}

/// The top-level RAPL zones of a powercap tree.
#[derive(Debug, Clone)]
pub struct Rapl {
    /// The zones, sorted by directory.
    pub domains: Vec<Domain>,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Whether a directory name is a top-level zone: `intel-rapl:N` (not the control type
/// `intel-rapl` itself, not a sub-zone `intel-rapl:N:M`).
fn top_level(name: &str) -> bool {
    name.strip_prefix("intel-rapl:")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Rapl {
    /// The zones under `root`, or why there are none usable.
    pub fn open(root: &Path) -> Result<Rapl, String> {
        let entries =
            std::fs::read_dir(root).map_err(|e| format!("no RAPL: {}: {e}", root.display()))?;
        let mut domains = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !top_level(&name) {
                continue;
            }
            let dir = e.path();
            let Some(max_uj) = read_u64(&dir.join("max_energy_range_uj")) else {
                continue;
            };
            if read_u64(&dir.join("energy_uj")).is_none() {
                // Unreadable (e.g. restricted to root since CVE-2020-8694).
                continue;
            }
            let name = std::fs::read_to_string(dir.join("name"))
                .map(|s| s.trim().to_string())
                .unwrap_or(name);
            domains.push(Domain { dir, name, max_uj });
        }
        domains.sort_by(|a, b| a.dir.cmp(&b.dir));
        if domains.is_empty() {
            return Err(format!(
                "no RAPL: no readable intel-rapl:N zone under {}",
                root.display()
            ));
        }
        Ok(Rapl { domains })
    }

    /// The counters now, one per domain (None where a read failed).
    pub fn read(&self) -> Vec<Option<u64>> {
        self.domains
            .iter()
            .map(|d| read_u64(&d.dir.join("energy_uj")))
            .collect()
    }
}

/// Microjoules from `prev` to `now` of a counter that wraps after `max`.
pub fn delta_uj(prev: u64, now: u64, max: u64) -> u64 {
    if now >= prev {
        now - prev
    } else {
        // Wrapped once: up to the range, then from 0 (the counter's range is 0..=max).
        max.saturating_sub(prev) + now
    }
}

/// Energy accumulated by a [`Sampler`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Energy {
    /// Joules per domain, in the order of [`Rapl::domains`].
    pub joules: Vec<f64>,
    /// Samples taken.
    pub samples: u64,
    /// Wrap-arounds seen.
    pub wraps: u64,
    /// Seconds sampled.
    pub seconds: f64,
}

impl Energy {
    /// All domains together.
    pub fn total(&self) -> f64 {
        self.joules.iter().sum()
    }
}

/// Accumulates energy from successive counter readings.
#[derive(Debug, Clone)]
pub struct Accumulator {
    max: Vec<u64>,
    prev: Vec<Option<u64>>,
    energy: Energy,
}

impl Accumulator {
    /// Starts from a first reading.
    pub fn new(rapl: &Rapl, first: Vec<Option<u64>>) -> Self {
        Accumulator {
            max: rapl.domains.iter().map(|d| d.max_uj).collect(),
            energy: Energy {
                joules: vec![0.0; first.len()],
                samples: 1,
                ..Energy::default()
            },
            prev: first,
        }
    }

    /// Adds a reading.
    pub fn add(&mut self, now: Vec<Option<u64>>) {
        for (i, n) in now.iter().enumerate() {
            if let (Some(p), Some(n)) = (self.prev.get(i).copied().flatten(), *n) {
                if n < p {
                    self.energy.wraps += 1;
                }
                let max = self.max.get(i).copied().unwrap_or(u64::MAX);
                if let Some(j) = self.energy.joules.get_mut(i) {
                    *j += delta_uj(p, n, max) as f64 / 1e6;
                }
            }
        }
        // A failed read keeps the last good value, so the next good one covers the gap.
        for (p, n) in self.prev.iter_mut().zip(now) {
            if n.is_some() {
                *p = n;
            }
        }
        self.energy.samples += 1;
    }

    /// What has been accumulated.
    pub fn energy(&self) -> &Energy {
        &self.energy
    }
}

/// A thread reading the counters every `period` until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Energy>,
}

impl Sampler {
    /// Starts sampling `rapl` (10 ms is ample: a 262 J range wraps after ~2 s only at 130 W).
    pub fn start(rapl: Rapl, period: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        // The first reading is taken here, not in the thread: the energy counts from now.
        let t0 = Instant::now();
        let mut acc = Accumulator::new(&rapl, rapl.read());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(period);
                acc.add(rapl.read());
            }
            acc.add(rapl.read());
            let mut e = acc.energy().clone();
            e.seconds = t0.elapsed().as_secs_f64();
            e
        });
        Sampler { stop, thread }
    }

    /// Stops and returns the energy.
    pub fn stop(self) -> Energy {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, dir: &str, name: &str, uj: u64, max: u64) {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(d.join("energy_uj"), format!("{uj}\n")).unwrap();
        std::fs::write(d.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
    }

    fn set(root: &Path, dir: &str, uj: u64) {
        std::fs::write(root.join(dir).join("energy_uj"), format!("{uj}\n")).unwrap();
    }

    #[test]
    fn absent_tree_says_so() {
        let t = tempfile::tempdir().unwrap();
        let e = Rapl::open(&t.path().join("powercap")).unwrap_err();
        assert!(e.starts_with("no RAPL"), "{e}");
        // A tree with only the control type and a sub-zone has no package zone either.
        std::fs::create_dir_all(t.path().join("intel-rapl")).unwrap();
        zone(t.path(), "intel-rapl:0:0", "core", 5, 100);
        let e = Rapl::open(t.path()).unwrap_err();
        assert!(e.contains("no readable intel-rapl:N zone"), "{e}");
    }

    #[test]
    fn reads_top_level_zones_only() {
        let t = tempfile::tempdir().unwrap();
        zone(t.path(), "intel-rapl:1", "package-1", 10, 1000);
        zone(t.path(), "intel-rapl:0", "package-0", 20, 2000);
        zone(t.path(), "intel-rapl:0:0", "core", 5, 100);
        std::fs::create_dir_all(t.path().join("intel-rapl")).unwrap();
        let r = Rapl::open(t.path()).unwrap();
        let names: Vec<&str> = r.domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["package-0", "package-1"]);
        assert_eq!(r.domains[0].max_uj, 2000);
        assert_eq!(r.read(), vec![Some(20), Some(10)]);
    }

    #[test]
    fn accumulates_across_a_wrap_around() {
        let t = tempfile::tempdir().unwrap();
        zone(t.path(), "intel-rapl:0", "package-0", 900_000, 1_000_000);
        zone(t.path(), "intel-rapl:1", "package-1", 0, 1_000_000);
        let r = Rapl::open(t.path()).unwrap();
        let mut acc = Accumulator::new(&r, r.read());
        set(t.path(), "intel-rapl:0", 990_000);
        set(t.path(), "intel-rapl:1", 250_000);
        acc.add(r.read());
        // Package 0 wraps: 10_000 µJ to the top of the range, then 40_000 from 0.
        set(t.path(), "intel-rapl:0", 40_000);
        set(t.path(), "intel-rapl:1", 500_000);
        acc.add(r.read());
        let e = acc.energy();
        assert_eq!(e.wraps, 1);
        assert_eq!(e.samples, 3);
        assert!((e.joules[0] - 0.14).abs() < 1e-9, "{e:?}");
        assert!((e.joules[1] - 0.5).abs() < 1e-9, "{e:?}");
        assert!((e.total() - 0.64).abs() < 1e-9);
    }

    #[test]
    fn a_failed_read_is_bridged_by_the_next() {
        let t = tempfile::tempdir().unwrap();
        zone(t.path(), "intel-rapl:0", "package-0", 100, 1_000_000);
        let r = Rapl::open(t.path()).unwrap();
        let mut acc = Accumulator::new(&r, r.read());
        std::fs::write(t.path().join("intel-rapl:0/energy_uj"), "garbage").unwrap();
        acc.add(r.read());
        set(t.path(), "intel-rapl:0", 1_100);
        acc.add(r.read());
        assert!((acc.energy().joules[0] - 0.001).abs() < 1e-12);
    }

    #[test]
    fn sampler_runs_on_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        zone(t.path(), "intel-rapl:0", "package-0", 0, 1_000_000);
        let r = Rapl::open(t.path()).unwrap();
        let s = Sampler::start(r, Duration::from_millis(1));
        set(t.path(), "intel-rapl:0", 3_000);
        let e = s.stop();
        // The stop sample reads the new value whatever the timing.
        assert!((e.total() - 0.003).abs() < 1e-12, "{e:?}");
        assert!(e.samples >= 2);
    }

    #[test]
    fn delta_handles_wrap() {
        assert_eq!(delta_uj(5, 7, 10), 2);
        assert_eq!(delta_uj(8, 3, 10), 5);
    }
}

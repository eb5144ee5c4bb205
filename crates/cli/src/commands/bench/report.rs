//! Result lines: a perftest-like table, or one JSON object per line with `--json`, plus the
//! link's health (retransmissions, ICRC drops, ...) so that a run that lost packets is never
//! shown as clean, and the CPU time of this process.

use std::io::Write;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::resource::{getrusage, UsageWho};
use serde_json::{json, Value};

/// CPU seconds of this process so far, in user space and in the kernel (all its threads: the
/// progress thread's receive work counts too).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// User-space seconds.
    pub user: f64,
    /// Kernel seconds (syscalls, and the softirq work that runs in them: on veth a send
    /// delivers to the peer's socket on the sender's CPU).
    pub sys: f64,
}

impl CpuTimes {
    /// User plus kernel seconds.
    pub fn total(&self) -> f64 {
        self.user + self.sys
    }

    /// The times spent since `before`.
    pub fn since(&self, before: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - before.user,
            sys: self.sys - before.sys,
        }
    }
}

/// [`CpuTimes`] of this process so far (`getrusage`).
pub fn cpu_times() -> CpuTimes {
    getrusage(UsageWho::RUSAGE_SELF).map_or(CpuTimes::default(), |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        CpuTimes {
            user: t(u.user_time()),
            sys: t(u.system_time()),
        }
    })
}

/// Counters that say whether the link lost or damaged anything, summed over the QPs and the
/// device. Differences of two snapshots describe one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// Request packets sent again.
    pub retransmits: u64,
    /// Retries started by the ACK timer.
    pub timeouts: u64,
    /// NAKs received (any code).
    pub naks: u64,
    /// RNR NAKs received (the receiver had no receive posted: not a loss).
    pub rnr_naks: u64,
    /// RNR NAKs sent: this side's receive queue ran dry.
    pub rnr_naks_sent: u64,
    /// Duplicate requests the responder saw.
    pub duplicates: u64,
    /// Requests that arrived ahead of the expected PSN (a packet before them was lost).
    pub out_of_sequence: u64,
    /// Packets dropped because their ICRC did not verify.
    pub icrc_drops: u64,
    /// Completions lost to a full CQ.
    pub cq_overruns: u64,
    /// Socket errors.
    pub io_errors: u64,
    /// Datagrams the driver lost at the socket: sends refused with a full buffer (a dropped
    /// ACK shows only as the peer's ACK timeout otherwise) and receives truncated.
    pub socket_drops: u64,
    /// Datagrams the receiver dropped before any QP saw them: malformed, an unknown or wrong
    /// QP, a wrong source, a bad P_Key (`DeviceCounters`), or another engine's slot on a
    /// steered device (`SteerCounters::foreign_drops`). Reported, not part of `clean`: a
    /// lost request shows as a retransmission, and a stray packet (a late ACK of an earlier
    /// run's QP) costs nothing.
    pub rx_drops: u64,
    /// Packets whose payload the kernel placed straight into the region (zero-copy receive,
    /// `DeviceCounters::rx_placed`): not a health problem, reported alongside.
    pub placed: u64,
    /// Placed packets that were not the predicted ones and were copied after all.
    pub place_misses: u64,
    /// The application's calls that waited for the engine lock (`Device::lock_waits`), and
    /// their total wait in µs: reported alongside, not part of `clean`.
    pub app_lock_waits: u64,
    /// See `app_lock_waits`.
    pub app_lock_wait_us: u64,
    /// The longest of those waits in µs, over the device's life so far (not a difference).
    pub app_lock_longest_us: u64,
    /// Times a send waited for a free send buffer (`DriverStats::tx_slot_waits`): the
    /// kernel's sends were the bottleneck. Reported alongside, not part of `clean`.
    pub send_buffer_waits: u64,
    /// Posts and polls whose packets this side's application thread left for its busy
    /// progress thread to send (`Device::sends_left_to_progress`). Reported, not judged.
    pub sends_left_to_progress: u64,
    /// Sends made from a socket connected to the peer (`DriverStats::tx_connected`,
    /// `UROCE_CONNECTED_TX`). Reported alongside, not part of `clean`.
    pub connected_sends: u64,
    /// Datagrams received on those sockets (`DriverStats::rx_connected`). Reported
    /// alongside, not part of `clean`.
    pub connected_receives: u64,
    /// Among the receives on those sockets, those read without the GRO segment size and cut
    /// by the length the first packet's headers state (`DriverStats::rx_by_headers`).
    /// Reported alongside, not part of `clean`.
    pub connected_header_cuts: u64,
}

impl Health {
    /// Snapshot of `dev` and its `qps`.
    pub fn of(dev: &uroce::Device, qps: &[uroce::QueuePair]) -> Health {
        let mut h = Health::default();
        for q in qps {
            if let Some(c) = q.counters() {
                h.retransmits += c.retransmits;
                h.timeouts += c.timeouts;
                h.naks += c.naks_received.iter().sum::<u64>();
                h.rnr_naks += c.rnr_naks_received;
                h.rnr_naks_sent += c.rnr_naks_sent;
                h.duplicates += c.duplicates;
                h.out_of_sequence += c.out_of_sequence;
            }
        }
        let d = dev.counters();
        h.icrc_drops = d.icrc_drops;
        h.cq_overruns = d.cq_overruns;
        h.io_errors = dev.io_errors();
        let s = dev.driver_stats();
        h.socket_drops = s.tx_dropped + s.rx_truncated;
        h.send_buffer_waits = s.tx_slot_waits;
        h.sends_left_to_progress = dev.sends_left_to_progress();
        h.connected_sends = s.tx_connected;
        h.connected_receives = s.rx_connected;
        h.connected_header_cuts = s.rx_by_headers;
        h.rx_drops = d.malformed
            + d.unknown_qp
            + d.wrong_qp
            + d.wrong_source
            + d.bad_pkey
            + dev.steer_info().map_or(0, |i| i.counters.foreign_drops);
        h.placed = d.rx_placed;
        h.place_misses = d.rx_place_misses;
        let w = dev.lock_waits();
        h.app_lock_waits = w.waits;
        h.app_lock_wait_us = w.total_ns / 1000;
        h.app_lock_longest_us = w.longest_ns / 1000;
        h
    }

    /// `self - before`.
    pub fn since(&self, before: &Health) -> Health {
        Health {
            retransmits: self.retransmits.saturating_sub(before.retransmits),
            timeouts: self.timeouts.saturating_sub(before.timeouts),
            naks: self.naks.saturating_sub(before.naks),
            rnr_naks: self.rnr_naks.saturating_sub(before.rnr_naks),
            rnr_naks_sent: self.rnr_naks_sent.saturating_sub(before.rnr_naks_sent),
            duplicates: self.duplicates.saturating_sub(before.duplicates),
            out_of_sequence: self.out_of_sequence.saturating_sub(before.out_of_sequence),
            icrc_drops: self.icrc_drops.saturating_sub(before.icrc_drops),
            cq_overruns: self.cq_overruns.saturating_sub(before.cq_overruns),
            io_errors: self.io_errors.saturating_sub(before.io_errors),
            socket_drops: self.socket_drops.saturating_sub(before.socket_drops),
            rx_drops: self.rx_drops.saturating_sub(before.rx_drops),
            placed: self.placed.saturating_sub(before.placed),
            place_misses: self.place_misses.saturating_sub(before.place_misses),
            app_lock_waits: self.app_lock_waits.saturating_sub(before.app_lock_waits),
            app_lock_wait_us: self
                .app_lock_wait_us
                .saturating_sub(before.app_lock_wait_us),
            app_lock_longest_us: self.app_lock_longest_us,
            send_buffer_waits: self
                .send_buffer_waits
                .saturating_sub(before.send_buffer_waits),
            sends_left_to_progress: self
                .sends_left_to_progress
                .saturating_sub(before.sends_left_to_progress),
            connected_sends: self.connected_sends.saturating_sub(before.connected_sends),
            connected_receives: self
                .connected_receives
                .saturating_sub(before.connected_receives),
            connected_header_cuts: self
                .connected_header_cuts
                .saturating_sub(before.connected_header_cuts),
        }
    }

    /// Nothing was lost, resent, damaged or dropped. An RNR NAK is flow control, not a loss,
    /// but the requester resends from the packet it refused and the responder drops what
    /// followed (IBTA 9.7.5.2.8), so a run with one is not clean either: it measured a
    /// receive queue that ran dry. Socket drops alone do not count: a lost request shows as a
    /// retransmission, and a lost ACK that a later one covered cost nothing.
    pub fn clean(&self) -> bool {
        self.retransmits == 0
            && self.timeouts == 0
            && self.naks == 0
            && self.duplicates == 0
            && self.out_of_sequence == 0
            && self.icrc_drops == 0
            && self.cq_overruns == 0
            && self.io_errors == 0
    }

    /// Why a run of `size`-byte messages is not clean, for the operator (`None` if it is).
    /// RNR NAKs are named first: the resends and out-of-sequence drops that follow them are
    /// the queue running dry, not the link losing anything.
    pub fn verdict(&self, size: u64) -> Option<String> {
        if self.clean() {
            return None;
        }
        let counts = format!(
            "retransmits {}, timeouts {}, ICRC drops {}, out of sequence {}, socket drops {}, \
             receive drops {}",
            self.retransmits,
            self.timeouts,
            self.icrc_drops,
            self.out_of_sequence,
            self.socket_drops,
            self.rx_drops
        );
        Some(if self.rnr_naks + self.rnr_naks_sent > 0 {
            format!(
                "{size} B: the receiver ran out of posted receives (RNR NAKs received {}, sent \
                 {}; the SEND server's queue depth is -r) and packets were resent ({counts}): \
                 not a clean run",
                self.rnr_naks, self.rnr_naks_sent
            )
        } else {
            format!("{size} B: the link lost or damaged packets ({counts}): not a clean run")
        })
    }

    fn json(&self) -> Value {
        json!({
            "retransmits": self.retransmits,
            "timeouts": self.timeouts,
            "naks": self.naks,
            "rnr_naks": self.rnr_naks,
            "rnr_naks_sent": self.rnr_naks_sent,
            "duplicates": self.duplicates,
            "out_of_sequence": self.out_of_sequence,
            "icrc_drops": self.icrc_drops,
            "cq_overruns": self.cq_overruns,
            "io_errors": self.io_errors,
            "socket_drops": self.socket_drops,
            "rx_drops": self.rx_drops,
            "placed": self.placed,
            "place_misses": self.place_misses,
            "app_lock_waits": self.app_lock_waits,
            "app_lock_wait_us": self.app_lock_wait_us,
            "app_lock_longest_us": self.app_lock_longest_us,
            "send_buffer_waits": self.send_buffer_waits,
            "sends_left_to_progress": self.sends_left_to_progress,
            "connected_sends": self.connected_sends,
            "connected_receives": self.connected_receives,
            "connected_header_cuts": self.connected_header_cuts,
            "clean": self.clean(),
        })
    }
}

/// What became of the data check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataCheck {
    /// This side checked the data and it was right.
    Verified,
    /// The uroce peer checked it and said it was right.
    VerifiedByPeer,
    /// Nothing to check here (the peer is perftest, whose buffers hold random bytes).
    NotChecked(&'static str),
    /// Wrong data: what was wrong.
    Failed(String),
}

impl DataCheck {
    fn word(&self) -> &'static str {
        match self {
            DataCheck::Verified => "verified",
            DataCheck::VerifiedByPeer => "verified-by-peer",
            DataCheck::NotChecked(_) => "not-checked",
            DataCheck::Failed(_) => "FAILED",
        }
    }

    /// Whether the data is known to be wrong.
    pub fn failed(&self) -> bool {
        matches!(self, DataCheck::Failed(_))
    }
}

/// One bandwidth result.
#[derive(Debug, Clone)]
pub struct BwRow {
    /// Message size.
    pub size: u64,
    /// Messages (all QPs).
    pub iters: u64,
    /// Seconds from the first post to the last completion.
    pub secs: f64,
    /// CPU seconds of this process during the run.
    pub cpu: f64,
    /// Of them, the seconds in user space (the rest ran in the kernel).
    pub cpu_user: f64,
    /// Bytes the CPU time is charged to (usually `size * iters`).
    pub cpu_bytes: u64,
    /// Where the numbers come from: "measured", or "peer-report" (a server that only hosts
    /// the buffer shows what the client measured, as perftest's server does).
    pub source: &'static str,
    /// Link health during the run.
    pub health: Health,
    /// Data check.
    pub data: DataCheck,
}

impl BwRow {
    /// `x` per second (0 for a run of no measurable length: a peer whose clock failed
    /// reports a bandwidth of 0).
    fn rate(&self, x: f64) -> f64 {
        if self.secs > 0.0 {
            x / self.secs
        } else {
            0.0
        }
    }
    fn gbps(&self) -> f64 {
        self.rate((self.size * self.iters) as f64 * 8.0) / 1e9
    }
    /// perftest's MB/s: 2^20 bytes per second.
    pub fn mbps(&self) -> f64 {
        self.rate((self.size * self.iters) as f64) / 1_048_576.0
    }
    /// Millions of messages per second.
    pub fn mpps(&self) -> f64 {
        self.rate(self.iters as f64) / 1e6
    }
    fn cpu_per_gb(&self) -> f64 {
        if self.cpu_bytes == 0 {
            0.0
        } else {
            self.cpu / (self.cpu_bytes as f64 / 1e9)
        }
    }
}

/// One latency result: half round trips, as perftest's write_lat reports them.
#[derive(Debug)]
pub struct LatRow {
    /// Message size.
    pub size: u64,
    /// Round trips.
    pub iters: u64,
    /// Half round-trip times in nanoseconds.
    pub hist: Histogram<u64>,
    /// Link health during the run.
    pub health: Health,
    /// Data check.
    pub data: DataCheck,
}

impl LatRow {
    /// An empty histogram for nanoseconds up to an hour, 3 significant digits.
    pub fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
    }

    fn us(&self, ns: u64) -> f64 {
        ns as f64 / 1000.0
    }

    /// `[quantile, µs]` pairs: the distribution's shape for a CDF plot (the benchmark suite,
    /// `uroce-perf`, draws it).
    fn cdf(&self) -> Value {
        const Q: [f64; 24] = [
            0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7,
            0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 0.999, 1.0,
        ];
        Value::from(
            Q.iter()
                .map(|q| json!([q, self.us(self.hist.value_at_quantile(*q))]))
                .collect::<Vec<_>>(),
        )
    }
}

/// What every line says about the run.
#[derive(Debug, Clone)]
pub struct Context {
    /// write, read, send or atomic.
    pub test: &'static str,
    /// bw or lat.
    pub kind: &'static str,
    /// client or server.
    pub role: &'static str,
    /// uroce or perftest (its version).
    pub peer: String,
    /// Socket back end.
    pub backend: &'static str,
    /// Progress mode.
    pub progress: &'static str,
    /// The device's io_uring submissions are taken by a kernel thread (`--sqpoll`).
    pub sq_poll: bool,
    /// The device's sends are made by a send thread (`--tx-thread`).
    pub tx_thread: bool,
    /// QPs.
    pub qps: usize,
    /// Path MTU.
    pub mtu: u32,
    /// perftest's --report_gbits.
    pub report_gbits: bool,
}

/// Writes result lines: a table on the first one, or JSON objects.
pub struct Reporter<'a> {
    out: &'a mut dyn Write,
    json: bool,
    ctx: Context,
    header_done: bool,
}

impl<'a> Reporter<'a> {
    /// A reporter writing to `out`.
    pub fn new(out: &'a mut dyn Write, json: bool, ctx: Context) -> Self {
        Reporter {
            out,
            json,
            ctx,
            header_done: false,
        }
    }

    fn base(&self) -> serde_json::Map<String, Value> {
        let c = &self.ctx;
        let v = json!({
            "test": c.test,
            "kind": c.kind,
            "role": c.role,
            "peer": c.peer,
            "backend": c.backend,
            "progress": c.progress,
            "sq_poll": c.sq_poll,
            "tx_thread": c.tx_thread,
            "qps": c.qps,
            "mtu": c.mtu,
            "report_gbits": c.report_gbits,
        });
        match v {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }

    fn data_json(d: &DataCheck) -> (Value, Value) {
        let detail = match d {
            DataCheck::NotChecked(why) => Value::from(*why),
            DataCheck::Failed(what) => Value::from(what.as_str()),
            _ => Value::Null,
        };
        (Value::from(d.word()), detail)
    }

    /// One bandwidth line.
    pub fn bw(&mut self, r: &BwRow) -> std::io::Result<()> {
        if self.json {
            let mut m = self.base();
            let (data, detail) = Self::data_json(&r.data);
            let fields = json!({
                "size": r.size,
                "iterations": r.iters,
                "seconds": r.secs,
                "gbit_s": r.gbps(),
                "mb_s": r.mbps(),
                "mpps": r.mpps(),
                "cpu_s": r.cpu,
                "cpu_user_s": r.cpu_user,
                "cpu_s_per_gb": r.cpu_per_gb(),
                "source": r.source,
                "health": r.health.json(),
                "data": data,
                "data_detail": detail,
            });
            if let Value::Object(f) = fields {
                m.extend(f);
            }
            writeln!(self.out, "{}", Value::Object(m))?;
            return self.out.flush();
        }
        if !self.header_done {
            self.header_done = true;
            writeln!(self.out, "{}", "-".repeat(118))?;
            writeln!(
                self.out,
                " {:<9} {:<12} {:>12} {:>12} {:>14} {:>11} {:>8} {:>6} {:>6}  data",
                "#bytes",
                "#iterations",
                "BW [Gb/s]",
                "BW [MB/s]",
                "MsgRate[Mpps]",
                "CPU[s/GB]",
                "retrans",
                "ICRC",
                "clean",
            )?;
        }
        writeln!(
            self.out,
            " {:<9} {:<12} {:>12.2} {:>12.2} {:>14.6} {:>11.3} {:>8} {:>6} {:>6}  {}{}",
            r.size,
            r.iters,
            r.gbps(),
            r.mbps(),
            r.mpps(),
            r.cpu_per_gb(),
            r.health.retransmits,
            r.health.icrc_drops,
            if r.health.clean() { "yes" } else { "NO" },
            r.data.word(),
            if r.source == "peer-report" {
                "  (client's report)"
            } else {
                ""
            }
        )?;
        if r.health.placed > 0 || r.health.place_misses > 0 {
            writeln!(
                self.out,
                " zero-copy receive: {} packets placed by the kernel, {} copied after a miss",
                r.health.placed, r.health.place_misses
            )?;
        }
        self.connected_line(&r.health)?;
        self.out.flush()
    }

    /// " connected sends: N, receives: M" when the side sent from connected sockets.
    fn connected_line(&mut self, h: &Health) -> std::io::Result<()> {
        if h.connected_sends > 0 {
            writeln!(
                self.out,
                " connected sends: {}, receives: {}",
                h.connected_sends, h.connected_receives
            )?;
        }
        Ok(())
    }

    /// One latency line.
    pub fn lat(&mut self, r: &LatRow) -> std::io::Result<()> {
        let h = &r.hist;
        let (min, med, avg, p99, p999, max) = (
            r.us(h.min()),
            r.us(h.value_at_quantile(0.5)),
            h.mean() / 1000.0,
            r.us(h.value_at_quantile(0.99)),
            r.us(h.value_at_quantile(0.999)),
            r.us(h.max()),
        );
        if self.json {
            let mut m = self.base();
            let (data, detail) = Self::data_json(&r.data);
            let fields = json!({
                "size": r.size,
                "iterations": r.iters,
                "t_min_us": min,
                "t_median_us": med,
                "t_avg_us": avg,
                "t_p99_us": p99,
                "t_p99_9_us": p999,
                "t_max_us": max,
                "cdf_us": r.cdf(),
                "health": r.health.json(),
                "data": data,
                "data_detail": detail,
            });
            if let Value::Object(f) = fields {
                m.extend(f);
            }
            writeln!(self.out, "{}", Value::Object(m))?;
            return self.out.flush();
        }
        if !self.header_done {
            self.header_done = true;
            writeln!(self.out, "{}", "-".repeat(118))?;
            writeln!(
                self.out,
                " {:<9} {:<12} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>8} {:>6}  data",
                "#bytes",
                "#iterations",
                "t_min[us]",
                "t_med[us]",
                "t_avg[us]",
                "t_99%[us]",
                "t_99.9%[us]",
                "t_max[us]",
                "retrans",
                "clean",
            )?;
        }
        writeln!(
            self.out,
            " {:<9} {:<12} {:>11.2} {:>11.2} {:>11.2} {:>11.2} {:>11.2} {:>11.2} {:>8} {:>6}  {}",
            r.size,
            r.iters,
            min,
            med,
            avg,
            p99,
            p999,
            max,
            r.health.retransmits,
            if r.health.clean() { "yes" } else { "NO" },
            r.data.word()
        )?;
        self.connected_line(&r.health)?;
        self.out.flush()
    }

    /// Closes the table.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if !self.json && self.header_done {
            writeln!(self.out, "{}", "-".repeat(118))?;
        }
        self.out.flush()
    }
}

/// A progress line on stderr, at most once a second, for runs longer than a second.
pub struct Ticker {
    start: Instant,
    last: Instant,
}

impl Ticker {
    /// Starts timing.
    pub fn new() -> Self {
        let now = Instant::now();
        Ticker {
            start: now,
            last: now,
        }
    }

    /// Prints `what` with the rate so far if a second has passed since the last line.
    pub fn tick(&mut self, what: &str, done: u64, total: Option<u64>, bytes: u64) {
        let now = Instant::now();
        if now.duration_since(self.last) < Duration::from_secs(1) {
            return;
        }
        self.last = now;
        let secs = now.duration_since(self.start).as_secs_f64();
        let of = match total {
            Some(t) if t > 0 => format!("/{t} ({:.0}%)", done as f64 * 100.0 / t as f64),
            _ => String::new(),
        };
        eprintln!(
            "uroce bench: {what}: {done}{of} in {secs:.1} s, {:.2} Gbit/s",
            bytes as f64 * 8.0 / secs.max(1e-9) / 1e9
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(secs: f64) -> BwRow {
        BwRow {
            size: 65536,
            iters: 1000,
            secs,
            cpu: 0.5,
            cpu_user: 0.2,
            cpu_bytes: 65_536_000,
            source: "measured",
            health: Health::default(),
            data: DataCheck::Verified,
        }
    }

    #[test]
    fn rates() {
        let r = row(0.5);
        assert!((r.gbps() - 65_536_000.0 * 8.0 / 0.5 / 1e9).abs() < 1e-9);
        assert!((r.mbps() - 125.0).abs() < 1e-9);
        assert!((r.mpps() - 0.002).abs() < 1e-12);
        assert!((r.cpu_per_gb() - 0.5 / 0.065_536).abs() < 1e-9);
        // A peer whose clock failed reports 0: no rate, not infinity.
        let z = row(0.0);
        assert_eq!((z.gbps(), z.mbps(), z.mpps()), (0.0, 0.0, 0.0));
    }

    #[test]
    fn an_unclean_run_names_rnr_naks_as_the_cause_when_there_were_any() {
        assert_eq!(Health::default().verdict(4096), None);
        let lost = Health {
            retransmits: 5,
            out_of_sequence: 4,
            ..Health::default()
        };
        let v = lost.verdict(4096).expect("unclean");
        assert!(
            v.starts_with("4096 B: the link lost or damaged packets"),
            "{v}"
        );
        assert!(
            v.contains("retransmits 5") && v.contains("out of sequence 4"),
            "{v}"
        );
        // The responder's side of an RNR episode: it sent the NAK and dropped what followed.
        let dry = Health {
            rnr_naks_sent: 2,
            out_of_sequence: 87,
            ..Health::default()
        };
        let v = dry.verdict(4096).expect("unclean");
        assert!(
            v.contains("ran out of posted receives (RNR NAKs received 0, sent 2"),
            "{v}"
        );
        assert!(v.contains("out of sequence 87"), "{v}");
        assert!(!v.contains("lost or damaged"), "{v}");
    }

    #[test]
    fn health_is_clean_without_losses_only() {
        let mut h = Health::default();
        assert!(h.clean());
        h.rnr_naks = 3;
        assert!(h.clean(), "RNR NAKs are flow control");
        h.retransmits = 1;
        assert!(!h.clean());
        let h2 = Health {
            icrc_drops: 1,
            ..Health::default()
        };
        assert!(!h2.clean());
        assert_eq!(h.since(&h).retransmits, 0);
    }

    #[test]
    fn waits_and_sends_left_are_reported_not_judged_and_the_longest_is_not_a_difference() {
        let before = Health {
            app_lock_waits: 10,
            app_lock_wait_us: 500,
            app_lock_longest_us: 90,
            send_buffer_waits: 3,
            sends_left_to_progress: 100,
            ..Health::default()
        };
        let after = Health {
            app_lock_waits: 25,
            app_lock_wait_us: 2500,
            app_lock_longest_us: 4000,
            send_buffer_waits: 7,
            sends_left_to_progress: 160,
            ..Health::default()
        };
        let d = after.since(&before);
        assert!(d.clean(), "waiting for the lock loses no data");
        assert_eq!(
            (d.app_lock_waits, d.app_lock_wait_us, d.app_lock_longest_us),
            (15, 2000, 4000)
        );
        assert_eq!(d.json()["app_lock_longest_us"], 4000);
        assert_eq!(d.json()["send_buffer_waits"], 4, "a difference");
        assert_eq!(d.json()["sends_left_to_progress"], 60, "a difference");
    }

    #[test]
    fn json_lines() {
        let mut out = Vec::new();
        let ctx = Context {
            test: "write",
            kind: "bw",
            role: "client",
            peer: "uroce".into(),
            backend: "uring",
            progress: "thread",
            sq_poll: false,
            tx_thread: false,
            qps: 1,
            mtu: 4096,
            report_gbits: false,
        };
        let mut r = Reporter::new(&mut out, true, ctx);
        r.bw(&row(1.0)).unwrap();
        r.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["size"], 65536);
        assert_eq!(v["data"], "verified");
        assert_eq!(v["health"]["clean"], true);
    }

    #[test]
    fn latency_line_carries_a_monotonic_cdf() {
        let mut out = Vec::new();
        let ctx = Context {
            test: "write",
            kind: "lat",
            role: "client",
            peer: "uroce".into(),
            backend: "uring",
            progress: "polled",
            sq_poll: false,
            tx_thread: false,
            qps: 1,
            mtu: 4096,
            report_gbits: false,
        };
        let mut hist = LatRow::histogram();
        for ns in [5_000u64, 6_000, 7_000, 100_000] {
            hist.record(ns).unwrap();
        }
        let row = LatRow {
            size: 8,
            iters: 4,
            hist,
            health: Health::default(),
            data: DataCheck::Verified,
        };
        Reporter::new(&mut out, true, ctx).lat(&row).unwrap();
        let v: Value = serde_json::from_str(String::from_utf8(out).unwrap().trim()).unwrap();
        let cdf: Vec<(f64, f64)> = v["cdf_us"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        assert_eq!(cdf.first().unwrap().0, 0.0);
        assert_eq!(cdf.last().unwrap().0, 1.0);
        assert!(
            cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{cdf:?}"
        );
        assert!((cdf.last().unwrap().1 - 100.0).abs() < 0.1, "{cdf:?}");
    }
}

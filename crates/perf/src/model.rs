//! What one suite invocation measured, kept as one JSON document (`results.json`) so that the
//! CSV, plots and markdown can be regenerated from it (`uroce-perf report`) and tested on
//! made-up data.

use serde_json::{json, Value};

use crate::micro::{CopyPhase, Micro};

/// The machine the suite ran on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo.
    pub cpu: String,
    /// CPUs available to the suite.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// /proc/loadavg before the runs.
    pub load_before: String,
    /// /proc/loadavg after the runs.
    pub load_after: String,
    /// Share of the suite's wall time during which some runnable task waited for a CPU
    /// (`/proc/pressure/cpu`), or why it is unknown: how contended the machine was.
    pub cpu_pressure: String,
    /// RAPL: the zones used, or why there are none.
    pub rapl: String,
    /// UTC date and time of the start.
    pub date: String,
    /// Quick (smoke) run or full run.
    pub quick: bool,
}

/// One raw UDP bandwidth probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UdpBw {
    /// `per-packet` or `gso-gro` (plain syscalls), `uring-gso-gro` (uroce's io_uring back
    /// end without the engine: the ceiling).
    pub mode: String,
    /// Goodput at the receiver.
    pub gbit_s: f64,
    /// Sender + receiver CPU seconds per GB received.
    pub cpu_s_per_gb: f64,
    /// Share of the sent bytes that did not arrive (UDP has no flow control: a sender faster
    /// than its receiver loses datagrams; the goodput is what counts).
    pub loss: f64,
    /// Datagrams per second received, in millions (the message-rate ceiling for small ones).
    pub mdgram_s: f64,
    /// Whether the probe produced a number.
    pub valid: bool,
    /// Why not, or remarks.
    pub note: String,
}

/// The raw UDP busy-poll ping-pong.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UdpRtt {
    /// Empty for plain UDP sockets; `udp-ackN` for plain sockets in uroce's connected shape (a
    /// GSO send of the 40-byte WRITE packet and an N-byte second segment into a `UDP_GRO`
    /// `recvmsg`: the kernel's share); `raw-ackN` for uroce's driver without the engine (N
    /// bytes of a second GSO segment).
    pub mode: String,
    /// Payload bytes.
    pub size: u64,
    /// Median half round trip, µs.
    pub half_median_us: f64,
    /// 99th percentile half round trip, µs.
    pub half_p99_us: f64,
    /// (quantile, half round trip µs).
    pub cdf: Vec<(f64, f64)>,
    /// Whether the probe produced a number.
    pub valid: bool,
    /// Why not, or remarks.
    pub note: String,
}

/// iperf3, one TCP stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tcp {
    /// Received bits per second / 1e9.
    pub gbit_s: f64,
    /// Both sides' CPU seconds per GB (from iperf3's CPU utilisation).
    pub cpu_s_per_gb: f64,
    /// TCP retransmissions (kernel TCP recovers: informational).
    pub retransmits: u64,
    /// Whether iperf3 produced a number.
    pub valid: bool,
    /// Why not, or remarks.
    pub note: String,
}

/// One `uroce bench` run (one size, one configuration).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    /// `size` (the size sweep), `msgrate`, `qps`, `lat`.
    pub group: String,
    /// write, read or send.
    pub test: String,
    /// bw or lat.
    pub kind: String,
    /// uring or syscall.
    pub backend: String,
    /// thread or polled.
    pub progress: String,
    /// Path MTU.
    pub mtu: u32,
    /// QPs.
    pub qps: u32,
    /// Engine threads (`uroce bench --threads`: QPN-steered devices, one per thread, each
    /// driving `qps / threads` QPs); 1 is one device.
    pub threads: u32,
    /// Message size.
    pub size: u64,
    /// Messages (bw, all QPs) or round trips (lat).
    pub iters: u64,
    /// Gbit/s (client's measurement).
    pub gbit_s: f64,
    /// Millions of messages per second.
    pub mmsg_s: f64,
    /// Client + server CPU seconds during the run.
    pub cpu_s: f64,
    /// `cpu_s` per GB moved.
    pub cpu_s_per_gb: f64,
    /// Of `cpu_s`, the seconds in user space (0 where the bench did not report them); the
    /// rest ran in the kernel.
    pub cpu_user_s: f64,
    /// Joules per GB from RAPL, when present.
    pub joules_per_gb: Option<f64>,
    /// Median half round trip, µs (lat).
    pub lat_median_us: f64,
    /// 99th percentile, µs (lat).
    pub lat_p99_us: f64,
    /// (quantile, µs) (lat).
    pub cdf: Vec<(f64, f64)>,
    /// Request packets resent, both sides.
    pub retransmits: u64,
    /// ACK timer expiries, both sides.
    pub timeouts: u64,
    /// Packets dropped or lost: ICRC drops, out-of-sequence arrivals, CQ overruns, duplicates,
    /// datagrams the driver lost at its socket (a full send buffer, a truncated receive).
    pub drops: u64,
    /// Socket errors, error exits, failed data checks.
    pub errors: u64,
    /// The kernel's UDP receive drops in both namespaces during the run (`RcvbufErrors` of
    /// /proc/net/snmp: a full socket receive buffer), the usual cause of retransmits here.
    pub kernel_udp_drops: u64,
    /// Packets whose payload the kernel placed straight into the region (zero-copy receive),
    /// both sides.
    pub placed: u64,
    /// The longest wait of an application call for the engine lock, µs, on either side
    /// (`health.app_lock_longest_us` of `uroce bench`; `None` where no side reported it).
    pub app_lock_longest_us: Option<u64>,
    /// A side's io_uring submissions were taken by a kernel thread (`uroce bench --sqpoll`,
    /// as the bench reported it).
    pub sq_poll: bool,
    /// A side's sends were made by a send thread (`uroce bench --tx-thread`, as the bench
    /// reported it).
    pub tx_thread: bool,
    /// Sends both sides made from sockets connected to the peer (`uroce bench
    /// --connected-tx`, health `connected_sends`).
    pub connected_sends: u64,
    /// No data lost, no error: the run counts as a result.
    pub valid: bool,
    /// Why it is INVALID.
    pub reason: String,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Results {
    /// The machine.
    pub machine: Machine,
    /// Raw UDP probes.
    pub udp: Vec<UdpBw>,
    /// Raw UDP ping-pong.
    pub rtt: UdpRtt,
    /// The same through uroce's driver without the engine (the layers of the latency).
    pub raw_rtt: Vec<UdpRtt>,
    /// The raw UDP ping-pong of each paired latency round (the k-th pairs with the k-th run
    /// of group `suite::LAT_PAIRED`).
    pub rtt_paired: Vec<UdpRtt>,
    /// The kernel's share of uroce's connected ping-pong shape (`udp-ack20`), measured after
    /// [`Results::rtt`].
    pub rtt_shape: UdpRtt,
    /// The same in each paired latency round, right after that round's [`Results::rtt_paired`].
    pub rtt_shape_paired: Vec<UdpRtt>,
    /// Kernel TCP.
    pub tcp: Tcp,
    /// `uroce bench` runs.
    pub runs: Vec<Run>,
    /// Per-byte costs of the ICRC and region copies on this CPU (the design's floor).
    pub micro: Option<Micro>,
    /// The copy rates sampled at the start, before each paired round and at the end.
    pub copy_phases: Vec<CopyPhase>,
    /// The engine alone on the latency path: ns per half round trip of the polled 8-byte
    /// WRITE ping-pong between two engines in one thread (`uroce-perf engine-lat`, the
    /// median of its batches).
    pub engine_lat_ns: Option<f64>,
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}
fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}
fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}
fn b(v: &Value, k: &str) -> bool {
    v[k].as_bool().unwrap_or(false)
}
fn cdf_json(c: &[(f64, f64)]) -> Value {
    Value::from(c.iter().map(|(q, t)| json!([q, t])).collect::<Vec<_>>())
}
fn cdf_of(v: &Value) -> Vec<(f64, f64)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn rtt_json(r: &UdpRtt) -> Value {
    json!({
        "mode": r.mode, "size": r.size, "half_median_us": r.half_median_us,
        "half_p99_us": r.half_p99_us, "cdf": cdf_json(&r.cdf),
        "valid": r.valid, "note": r.note,
    })
}

fn rtt_of(r: &Value) -> UdpRtt {
    UdpRtt {
        mode: s(r, "mode"),
        size: u(r, "size"),
        half_median_us: f(r, "half_median_us"),
        half_p99_us: f(r, "half_p99_us"),
        cdf: cdf_of(&r["cdf"]),
        valid: b(r, "valid"),
        note: s(r, "note"),
    }
}

impl Results {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        let m = &self.machine;
        json!({
            "machine": {
                "cpu": m.cpu, "cores": m.cores, "kernel": m.kernel,
                "load_before": m.load_before, "load_after": m.load_after,
                "cpu_pressure": m.cpu_pressure,
                "rapl": m.rapl, "date": m.date, "quick": m.quick,
            },
            "udp": self.udp.iter().map(|x| json!({
                "mode": x.mode, "gbit_s": x.gbit_s, "cpu_s_per_gb": x.cpu_s_per_gb,
                "loss": x.loss, "mdgram_s": x.mdgram_s, "valid": x.valid, "note": x.note,
            })).collect::<Vec<_>>(),
            "rtt": rtt_json(&self.rtt),
            "raw_rtt": self.raw_rtt.iter().map(rtt_json).collect::<Vec<_>>(),
            "rtt_paired": self.rtt_paired.iter().map(rtt_json).collect::<Vec<_>>(),
            "rtt_shape": rtt_json(&self.rtt_shape),
            "rtt_shape_paired": self.rtt_shape_paired.iter().map(rtt_json).collect::<Vec<_>>(),
            "tcp": {
                "gbit_s": self.tcp.gbit_s, "cpu_s_per_gb": self.tcp.cpu_s_per_gb,
                "retransmits": self.tcp.retransmits, "valid": self.tcp.valid,
                "note": self.tcp.note,
            },
            "runs": self.runs.iter().map(|r| json!({
                "group": r.group, "test": r.test, "kind": r.kind, "backend": r.backend,
                "progress": r.progress, "mtu": r.mtu, "qps": r.qps, "threads": r.threads,
                "size": r.size,
                "iters": r.iters, "gbit_s": r.gbit_s, "mmsg_s": r.mmsg_s, "cpu_s": r.cpu_s,
                "cpu_s_per_gb": r.cpu_s_per_gb, "cpu_user_s": r.cpu_user_s, "joules_per_gb": r.joules_per_gb,
                "lat_median_us": r.lat_median_us, "lat_p99_us": r.lat_p99_us,
                "cdf": cdf_json(&r.cdf), "retransmits": r.retransmits,
                "timeouts": r.timeouts, "drops": r.drops, "errors": r.errors,
                "kernel_udp_drops": r.kernel_udp_drops, "placed": r.placed,
                "app_lock_longest_us": r.app_lock_longest_us, "sq_poll": r.sq_poll,
                "tx_thread": r.tx_thread, "connected_sends": r.connected_sends, "valid": r.valid, "reason": r.reason,
            })).collect::<Vec<_>>(),
            "micro": self.micro.map(Micro::to_json),
            "copy_phases": self.copy_phases.iter().map(CopyPhase::to_json).collect::<Vec<_>>(),
            "engine_lat_ns": self.engine_lat_ns,
        })
    }

    /// From [`Results::to_json`]'s output (missing fields read as empty).
    pub fn from_json(v: &Value) -> Results {
        let m = &v["machine"];
        let empty = Vec::new();
        Results {
            machine: Machine {
                cpu: s(m, "cpu"),
                cores: u(m, "cores") as usize,
                kernel: s(m, "kernel"),
                load_before: s(m, "load_before"),
                load_after: s(m, "load_after"),
                cpu_pressure: s(m, "cpu_pressure"),
                rapl: s(m, "rapl"),
                date: s(m, "date"),
                quick: b(m, "quick"),
            },
            udp: v["udp"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|x| UdpBw {
                    mode: s(x, "mode"),
                    gbit_s: f(x, "gbit_s"),
                    cpu_s_per_gb: f(x, "cpu_s_per_gb"),
                    loss: f(x, "loss"),
                    mdgram_s: f(x, "mdgram_s"),
                    valid: b(x, "valid"),
                    note: s(x, "note"),
                })
                .collect(),
            rtt: rtt_of(&v["rtt"]),
            raw_rtt: v["raw_rtt"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(rtt_of)
                .collect(),
            rtt_paired: v["rtt_paired"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(rtt_of)
                .collect(),
            rtt_shape: rtt_of(&v["rtt_shape"]),
            rtt_shape_paired: v["rtt_shape_paired"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(rtt_of)
                .collect(),
            tcp: {
                let t = &v["tcp"];
                Tcp {
                    gbit_s: f(t, "gbit_s"),
                    cpu_s_per_gb: f(t, "cpu_s_per_gb"),
                    retransmits: u(t, "retransmits"),
                    valid: b(t, "valid"),
                    note: s(t, "note"),
                }
            },
            runs: v["runs"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|r| Run {
                    group: s(r, "group"),
                    test: s(r, "test"),
                    kind: s(r, "kind"),
                    backend: s(r, "backend"),
                    progress: s(r, "progress"),
                    mtu: u(r, "mtu") as u32,
                    qps: u(r, "qps") as u32,
                    // Older results have no threads: one device.
                    threads: r["threads"].as_u64().map_or(1, |t| t as u32),
                    size: u(r, "size"),
                    iters: u(r, "iters"),
                    gbit_s: f(r, "gbit_s"),
                    mmsg_s: f(r, "mmsg_s"),
                    cpu_s: f(r, "cpu_s"),
                    cpu_s_per_gb: f(r, "cpu_s_per_gb"),
                    cpu_user_s: f(r, "cpu_user_s"),
                    joules_per_gb: r["joules_per_gb"].as_f64(),
                    lat_median_us: f(r, "lat_median_us"),
                    lat_p99_us: f(r, "lat_p99_us"),
                    cdf: cdf_of(&r["cdf"]),
                    retransmits: u(r, "retransmits"),
                    timeouts: u(r, "timeouts"),
                    drops: u(r, "drops"),
                    errors: u(r, "errors"),
                    kernel_udp_drops: u(r, "kernel_udp_drops"),
                    placed: u(r, "placed"),
                    app_lock_longest_us: r["app_lock_longest_us"].as_u64(),
                    sq_poll: b(r, "sq_poll"),
                    tx_thread: b(r, "tx_thread"),
                    connected_sends: u(r, "connected_sends"),
                    valid: b(r, "valid"),
                    reason: s(r, "reason"),
                })
                .collect(),
            micro: Micro::from_json(&v["micro"]),
            copy_phases: v["copy_phases"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(CopyPhase::from_json)
                .collect(),
            engine_lat_ns: v["engine_lat_ns"].as_f64(),
        }
    }

    /// The valid one-thread run matching all of the given fields, if any.
    pub fn find(
        &self,
        group: &str,
        test: &str,
        backend: &str,
        mtu: u32,
        qps: u32,
        size: u64,
    ) -> Option<&Run> {
        self.find_threads(group, test, backend, mtu, qps, 1, size)
    }

    /// [`Results::find`] with `threads` engine threads.
    #[allow(clippy::too_many_arguments)]
    pub fn find_threads(
        &self,
        group: &str,
        test: &str,
        backend: &str,
        mtu: u32,
        qps: u32,
        threads: u32,
        size: u64,
    ) -> Option<&Run> {
        self.runs.iter().find(|r| {
            r.valid
                && r.group == group
                && r.test == test
                && r.backend == backend
                && r.mtu == mtu
                && r.qps == qps
                && r.threads.max(1) == threads
                && r.size == size
        })
    }

    /// The valid UDP probe of a mode.
    pub fn udp(&self, mode: &str) -> Option<&UdpBw> {
        self.udp.iter().find(|u| u.valid && u.mode == mode)
    }
}

/// The result lines of one side: its last line, or with `--threads` (an `aggregate` line
/// present) every thread's line and the aggregate.
fn result_lines(lines: &[Value]) -> (Vec<&Value>, Option<&Value>) {
    let agg = lines.iter().rev().find(|l| b(l, "aggregate"));
    if agg.is_some() {
        let per = lines
            .iter()
            .filter(|l| !b(l, "aggregate") && l.get("health").is_some())
            .collect();
        (per, agg)
    } else {
        (lines.last().into_iter().collect(), None)
    }
}

/// Builds a [`Run`]'s numbers from the JSON lines of a `uroce bench` client and server.
/// `exits` are the two exit statuses (true = 0).
pub fn run_from_bench(
    mut run: Run,
    client: &[Value],
    server: &[Value],
    exits: (bool, bool),
) -> Run {
    let mut reasons = Vec::new();
    if !exits.0 {
        reasons.push("client exited with an error".to_string());
        run.errors += 1;
    }
    if !exits.1 {
        reasons.push("server exited with an error".to_string());
        run.errors += 1;
    }
    let (c, c_threads) = result_lines(client);
    let (sv, _) = result_lines(server);
    // read_lat/atomic_lat servers print nothing; every test here has a server line.
    for (side, lines) in [("client", &c), ("server", &sv)] {
        if lines.is_empty() {
            reasons.push(format!("no result line from the {side}"));
            continue;
        }
        let (mut cpu, mut user): (f64, f64) = (0.0, 0.0);
        for l in lines {
            let h = &l["health"];
            run.retransmits += u(h, "retransmits");
            run.timeouts += u(h, "timeouts");
            run.drops += u(h, "icrc_drops")
                + u(h, "out_of_sequence")
                + u(h, "cq_overruns")
                + u(h, "duplicates")
                + u(h, "socket_drops")
                + u(h, "rx_drops");
            run.errors += u(h, "io_errors");
            run.placed += u(h, "placed");
            run.sq_poll |= b(l, "sq_poll");
            run.tx_thread |= b(l, "tx_thread");
            run.connected_sends += u(h, "connected_sends");
            if let Some(w) = h["app_lock_longest_us"].as_u64() {
                run.app_lock_longest_us = Some(run.app_lock_longest_us.unwrap_or(0).max(w));
            }
            if !b(h, "clean") {
                // An RNR NAK's resends are the receive queue running dry, not the link.
                let why = if u(h, "rnr_naks") + u(h, "rnr_naks_sent") > 0 {
                    "receive queue ran dry (RNR NAKs), packets resent"
                } else {
                    "link not clean"
                };
                reasons.push(format!("{side}: {why} ({h})"));
            }
            if s(l, "data") == "FAILED" {
                run.errors += 1;
                reasons.push(format!(
                    "{side}: data check FAILED: {}",
                    s(l, "data_detail")
                ));
            }
            // Each thread's `cpu_s` is its process's CPU time over that thread's run, and the
            // threads run at the same time: the largest is the process's (one line: itself).
            if f(l, "cpu_s") > cpu {
                (cpu, user) = (f(l, "cpu_s"), f(l, "cpu_user_s"));
            }
        }
        run.cpu_s += cpu;
        run.cpu_user_s += user;
    }
    let aggregate = c_threads.filter(|_| !c.is_empty());
    if let Some(agg) = aggregate {
        // `--threads N`: the bytes of all threads over the longest thread's time.
        run.iters = c.iter().map(|l| u(l, "iterations")).sum();
        run.gbit_s = f(agg, "gbit_s");
        let secs = f(agg, "seconds");
        run.mmsg_s = if secs > 0.0 && run.size > 0 {
            u(agg, "bytes") as f64 / run.size as f64 / secs / 1e6
        } else {
            0.0
        };
        let gb = (run.size * run.iters) as f64 / 1e9;
        run.cpu_s_per_gb = if gb > 0.0 { run.cpu_s / gb } else { 0.0 };
        if run.gbit_s <= 0.0 {
            reasons.push("no throughput measured".into());
        }
    }
    let c = if aggregate.is_some() {
        None
    } else {
        c.last().copied()
    };
    if let Some(c) = c {
        run.iters = u(c, "iterations");
        if run.kind == "lat" {
            run.lat_median_us = f(c, "t_median_us");
            run.lat_p99_us = f(c, "t_p99_us");
            run.cdf = cdf_of(&c["cdf_us"]);
            if run.cdf.is_empty() {
                // An older `uroce bench` without the CDF: its percentiles.
                run.cdf = [
                    (0.0, "t_min_us"),
                    (0.5, "t_median_us"),
                    (0.99, "t_p99_us"),
                    (0.999, "t_p99_9_us"),
                    (1.0, "t_max_us"),
                ]
                .iter()
                .map(|(q, k)| (*q, f(c, k)))
                .collect();
            }
            if run.lat_median_us <= 0.0 {
                reasons.push("no latency measured".into());
            }
        } else {
            run.gbit_s = f(c, "gbit_s");
            run.mmsg_s = f(c, "mpps");
            let gb = (run.size * run.iters) as f64 / 1e9;
            run.cpu_s_per_gb = if gb > 0.0 { run.cpu_s / gb } else { 0.0 };
            if run.gbit_s <= 0.0 {
                reasons.push("no throughput measured".into());
            }
        }
    }
    run.valid = reasons.is_empty();
    run.reason = reasons.join("; ");
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(retrans: u64, clean: bool, data: &str) -> Value {
        json!({"iterations": 1000, "gbit_s": 10.0, "mpps": 1.2, "cpu_s": 0.5, "data": data,
               "health": {"retransmits": retrans, "timeouts": 0, "icrc_drops": 0,
                          "out_of_sequence": 1, "cq_overruns": 0, "duplicates": 0,
                          "io_errors": 0, "clean": clean}})
    }

    fn bw() -> Run {
        Run {
            kind: "bw".into(),
            size: 1 << 20,
            ..Run::default()
        }
    }

    #[test]
    fn clean_run_is_valid_and_sums_both_sides() {
        let r = run_from_bench(
            bw(),
            &[line(0, true, "verified")],
            &[line(0, true, "verified")],
            (true, true),
        );
        assert!(r.valid, "{}", r.reason);
        assert!((r.cpu_s - 1.0).abs() < 1e-12);
        assert!((r.cpu_s_per_gb - 1.0 / (1000.0 * 1048576.0 / 1e9)).abs() < 1e-9);
        assert_eq!(r.drops, 2);
        assert_eq!(r.cpu_user_s, 0.0, "not reported");
    }

    /// Each side's user-space seconds come from the same line as its CPU seconds (with
    /// threads, the largest process figure), summed over the sides, and survive the JSON.
    #[test]
    fn user_space_seconds_follow_each_sides_cpu_figure() {
        let with = |cpu: f64, user: f64| {
            let mut l = line(0, true, "verified");
            (l["cpu_s"], l["cpu_user_s"]) = (json!(cpu), json!(user));
            l
        };
        let r = run_from_bench(
            bw(),
            &[with(0.5, 0.2), with(0.7, 0.25)],
            &[with(0.4, 0.1)],
            (true, true),
        );
        assert!((r.cpu_s - 1.1).abs() < 1e-12, "{}", r.cpu_s);
        assert!((r.cpu_user_s - 0.35).abs() < 1e-12, "{}", r.cpu_user_s);
        let mut res = Results::default();
        res.runs.push(r.clone());
        let back = Results::from_json(&res.to_json());
        assert_eq!(back.runs[0].cpu_user_s, r.cpu_user_s);
    }

    #[test]
    fn the_longest_lock_wait_is_the_larger_sides_and_absent_when_unreported() {
        let with = |us: u64| {
            let mut l = line(0, true, "verified");
            l["health"]["app_lock_longest_us"] = json!(us);
            l
        };
        let both = run_from_bench(bw(), &[with(4000)], &[with(90)], (true, true));
        assert_eq!(both.app_lock_longest_us, Some(4000));
        assert!(both.valid, "lock waits do not judge a run: {}", both.reason);
        let old = run_from_bench(
            bw(),
            &[line(0, true, "verified")],
            &[line(0, true, "verified")],
            (true, true),
        );
        assert_eq!(old.app_lock_longest_us, None);
    }

    #[test]
    fn losses_errors_and_failed_data_make_a_run_invalid() {
        let r = run_from_bench(
            bw(),
            &[line(3, false, "verified")],
            &[line(0, true, "verified")],
            (true, true),
        );
        assert!(!r.valid);
        assert_eq!(r.retransmits, 3);
        assert!(r.reason.contains("client: link not clean"), "{}", r.reason);
        // A receive queue that ran dry is named as such, and still not a result.
        let mut dry = line(0, false, "verified");
        dry["health"]["rnr_naks_sent"] = json!(2);
        dry["health"]["out_of_sequence"] = json!(87);
        let r = run_from_bench(bw(), &[line(0, true, "verified")], &[dry], (true, true));
        assert!(!r.valid, "{r:?}");
        assert!(
            r.reason
                .contains("server: receive queue ran dry (RNR NAKs)"),
            "{}",
            r.reason
        );
        let r = run_from_bench(
            bw(),
            &[line(0, true, "verified")],
            &[line(0, true, "FAILED")],
            (true, true),
        );
        assert!(!r.valid && r.errors == 1, "{r:?}");
        let r = run_from_bench(bw(), &[line(0, true, "verified")], &[], (true, false));
        assert!(!r.valid && r.reason.contains("server exited"), "{r:?}");
    }

    #[test]
    fn threaded_runs_add_the_threads_and_take_the_aggregate_rate() {
        let thread = |cpu: f64, retrans: u64| {
            let mut l = line(retrans, retrans == 0, "verified");
            l["iterations"] = json!(500);
            l["cpu_s"] = json!(cpu);
            l
        };
        let agg = json!({"aggregate": true, "threads": 2, "qps": 4, "size": 1 << 20,
                         "bytes": 1000u64 << 20, "seconds": 0.5, "gbit_s": 16.8});
        let r = run_from_bench(
            bw(),
            &[thread(0.6, 0), thread(0.5, 0), agg.clone()],
            &[thread(0.4, 0), thread(0.3, 0), agg.clone()],
            (true, true),
        );
        assert!(r.valid, "{}", r.reason);
        assert_eq!(r.iters, 1000);
        assert!((r.gbit_s - 16.8).abs() < 1e-12);
        assert!((r.mmsg_s - 2000.0 / 1e6).abs() < 1e-12, "{}", r.mmsg_s);
        // The largest thread's process CPU per side: 0.6 + 0.4.
        assert!((r.cpu_s - 1.0).abs() < 1e-12, "{}", r.cpu_s);
        assert_eq!(r.drops, 4, "every thread's counters count");
        let r = run_from_bench(
            bw(),
            &[thread(0.6, 0), thread(0.5, 2), agg.clone()],
            &[thread(0.4, 0), thread(0.3, 0), agg],
            (true, true),
        );
        assert!(!r.valid && r.retransmits == 2, "{r:?}");
    }

    #[test]
    fn json_round_trip() {
        let mut res = Results::default();
        res.machine.cpu = "X".into();
        res.udp.push(UdpBw {
            mode: "gso-gro".into(),
            gbit_s: 80.0,
            valid: true,
            ..UdpBw::default()
        });
        res.rtt.cdf = vec![(0.5, 10.0)];
        res.runs.push(Run {
            joules_per_gb: Some(2.0),
            cdf: vec![(0.0, 1.0)],
            ..bw()
        });
        assert_eq!(Results::from_json(&res.to_json()), res);
    }
}

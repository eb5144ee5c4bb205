//! The suite: every measurement of issue 6 in one invocation, between two network namespaces
//! that `scripts/bench.sh` created (`NAME-a` serves, `NAME-b` drives): the raw UDP probes of
//! this binary, iperf3, and `uroce bench` over sizes, back ends, path MTUs, latency, message
//! rate and QP counts. Each side runs as its own process under `ip netns exec`; the JSON
//! lines they print become [`Results`].

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::model::{run_from_bench, Machine, Results, Run, Tcp, UdpBw, UdpRtt};
use crate::rapl::{Rapl, Sampler};
use crate::report::{HEADLINE_MTU, HEADLINE_SIZE, LAT_SIZE, MSGRATE_SIZE, QPS_SIZE, QPS_THREADS};

/// Options of a suite run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `uroce` binary.
    pub uroce: PathBuf,
    /// This binary (for the UDP probes).
    pub me: PathBuf,
    /// Namespace pair name (`NAME-a`, `NAME-b`).
    pub netns: String,
    /// Address of the server side (in `NAME-a`).
    pub server_ip: String,
    /// Address of the client side (in `NAME-b`), if known.
    pub client_ip: Option<String>,
    /// Short runs, few sizes.
    pub quick: bool,
    /// Where raw outputs go (`raw/` inside).
    pub out: PathBuf,
    /// The powercap root.
    pub powercap: PathBuf,
}

/// The message-rate ceiling's datagram: a 64-byte WRITE packet (BTH 12 + RETH 16 + 64 +
/// ICRC 4), [`SMALL_GSO`] per GSO send.
/// The bandwidth probes' datagram: a 4096-byte RoCE payload with its headers and ICRC.
const CEILING_DGRAM: u32 = 4154;
/// Datagrams per GSO send of the io_uring ceiling probe (and of the plain GSO/GRO one).
const CEILING_GSO: u32 = 15;

const SMALL_DGRAM: u32 = 96;
/// Datagrams per GSO send of the message-rate ceiling. Kept at 64, the limit every kernel
/// with `UDP_SEGMENT` accepts, so the ceiling means the same on every kernel and stays
/// comparable with committed runs; the engine batches up to 128 where the kernel allows
/// (`gso_max_segments` in uroce's io_uring back end), so on such kernels this ceiling is
/// conservative for the 64-byte message rate.
const SMALL_GSO: u32 = 64;

/// A child process whose output is collected by threads.
struct Proc {
    child: Child,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
    lines: Receiver<String>,
    what: String,
}

/// What a finished process printed.
#[derive(Debug)]
pub struct Done {
    /// Exited 0 (false also when killed at the deadline).
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Done {
    /// The JSON objects among the stdout lines.
    pub fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn spawn(ns: &str, prog: &Path, args: &[String]) -> std::io::Result<Proc> {
    spawn_on(ns, None, prog, args)
}

/// CPUs the busy-polling runs pin their two sides to (server, client): on a 2-vCPU machine two
/// unpinned spinners can land on one CPU and take turns, which measures the scheduler.
const PIN: (u32, u32) = (0, 1);

/// [`spawn`], pinned to `cpu` (`taskset -c`) when given.
fn spawn_on(ns: &str, cpu: Option<u32>, prog: &Path, args: &[String]) -> std::io::Result<Proc> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    if let Some(c) = cpu {
        cmd.args(["taskset", "-c", &c.to_string()]);
    }
    let mut child = cmd
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let err = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr"))?;
    // Lines of both streams also go to `lines`, for `wait_for`.
    let (tx, lines) = channel();
    let collect = |r: Box<dyn Read + Send>, tx: std::sync::mpsc::Sender<String>| {
        std::thread::spawn(move || {
            let mut all = String::new();
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send(l.clone());
                all.push_str(&l);
                all.push('\n');
            }
            all
        })
    };
    let stdout = collect(Box::new(out), tx.clone());
    let stderr = collect(Box::new(err), tx);
    Ok(Proc {
        child,
        stdout,
        stderr,
        lines,
        what: format!(
            "ip netns exec {ns} {}{} {}",
            cpu.map_or(String::new(), |c| format!("taskset -c {c} ")),
            prog.display(),
            args.join(" ")
        ),
    })
}

impl Proc {
    /// Waits for an output line containing `word` (a server saying it listens), up to `limit`.
    fn wait_for(&self, word: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(word) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Waits for the exit, killing the process after `limit`.
    fn finish(mut self, limit: Duration) -> Done {
        let end = Instant::now() + limit;
        let ok = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s.success(),
                Ok(None) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    eprintln!("uroce-perf: killing `{}` at its deadline", self.what);
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break false;
                }
            }
        };
        Done {
            ok,
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The machine, as far as /proc says.
pub fn machine(quick: bool, rapl: &Result<Rapl, String>) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        load_before: loadavg(),
        load_after: String::new(),
        cpu_pressure: String::new(),
        rapl: match rapl {
            Ok(r) => format!(
                "RAPL: {}",
                r.domains
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => format!("{e}: energy not measured, CPU-seconds per GB stand in"),
        },
        date,
        quick,
    }
}

/// The cumulative microseconds during which some runnable task waited for a CPU: the `total`
/// of the `some` line of `/proc/pressure/cpu` (PSI).
pub fn cpu_pressure_total(psi: &str) -> Option<u64> {
    psi.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// What [`cpu_pressure_total`] grew by over `wall`, as a share of it.
fn cpu_pressure_since(start: Option<u64>, wall: Duration) -> String {
    let now = std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|t| cpu_pressure_total(&t));
    match (start, now) {
        (Some(a), Some(b)) if wall.as_micros() > 0 => format!(
            "{:.1} % of the wall time some task waited for a CPU (/proc/pressure/cpu)",
            b.saturating_sub(a) as f64 / wall.as_micros() as f64 * 100.0
        ),
        _ => "unknown (no /proc/pressure/cpu)".into(),
    }
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Suite {
    o: Options,
    a: String,
    b: String,
    rapl: Option<Rapl>,
    raw: PathBuf,
    seq: usize,
}

/// One `uroce bench` configuration.
#[derive(Debug, Clone, Copy)]
struct Cfg<'a> {
    group: &'a str,
    test: &'a str,
    kind: &'a str,
    backend: &'a str,
    progress: &'a str,
    mtu: u32,
    qps: u32,
    /// `--threads`: engine threads, each a steered device with `qps / threads` QPs.
    threads: u32,
    size: u64,
    iters: u64,
    extra: &'a [&'a str],
    /// Options of the sending side only: the client of WRITE and SEND, the server of READ.
    sender_extra: &'a [&'a str],
    /// Pin the server to CPU [`PIN`].0 and the client to [`PIN`].1 (busy-polling runs).
    pin: bool,
}

impl<'a> Cfg<'a> {
    /// One thread, one QP, MTU 4096, thread progress, bandwidth.
    fn bw(group: &'a str, test: &'a str, backend: &'a str, size: u64, iters: u64) -> Self {
        Cfg {
            group,
            test,
            kind: "bw",
            backend,
            progress: "thread",
            mtu: HEADLINE_MTU,
            qps: 1,
            threads: 1,
            size,
            iters,
            extra: &[],
            sender_extra: &[],
            pin: false,
        }
    }
}

/// The 8-byte WRITE latency run: busy-polled progress, both sides pinned.
fn lat_cfg(backend: &str, quick: bool) -> Cfg<'_> {
    Cfg {
        kind: "lat",
        progress: "polled",
        pin: true,
        ..Cfg::bw(
            "lat",
            "write",
            backend,
            LAT_SIZE,
            if quick { 1000 } else { 20000 },
        )
    }
}

/// Attempts per configuration: a run that lost packets (on a shared machine, another job can
/// stall a side long enough) is tried once more; every attempt stays in the results, the
/// INVALID ones marked, and only a clean one counts.
const ATTEMPTS: usize = 2;

/// The bytes of an RC ACK (BTH, AETH, ICRC): the second GSO segment of a polled responder's
/// reply, which carries the ACK it held.
const ACK_LEN: usize = 20;

/// Which busy-poll ping-pong [`Suite::udp_rtt`] runs.
#[derive(Debug, Clone, Copy)]
enum Rtt {
    /// Plain UDP sockets, 8-byte datagrams: the baseline.
    Udp,
    /// Plain sockets in uroce's connected shape, with an ACK segment of this many bytes.
    Shape(usize),
    /// uroce's driver without the engine, with an ACK segment of this many bytes (0: none).
    Driver(usize),
}

impl Suite {
    /// One paired round: `probe` (a baseline) and the uroce runs `cs`, the probe first in
    /// even rounds (counting from 0) and last in odd ones, the runs then in reverse, so that a
    /// steady drift of the machine over the rounds cancels in their median. No second
    /// attempt: an INVALID run leaves its round out of the target. The runs come back in the
    /// order of `cs`.
    fn paired<T>(
        &mut self,
        round: usize,
        cs: &[Cfg<'_>],
        probe: impl FnOnce(&mut Self) -> T,
    ) -> (T, Vec<Run>) {
        if round % 2 == 0 {
            let p = probe(self);
            (p, cs.iter().map(|&c| self.bench(c)).collect())
        } else {
            let mut runs: Vec<Run> = cs.iter().rev().map(|&c| self.bench(c)).collect();
            runs.reverse();
            (probe(self), runs)
        }
    }

    /// [`Suite::bench`] up to [`ATTEMPTS`] times, until a valid run; all attempts go to `runs`.
    fn measure(&mut self, runs: &mut Vec<Run>, c: Cfg<'_>) {
        for _ in 0..ATTEMPTS {
            let r = self.bench(c);
            let valid = r.valid;
            runs.push(r);
            if valid {
                break;
            }
        }
    }

    fn save(&mut self, name: &str, server: &Done, client: &Done) {
        self.seq += 1;
        let base = self.raw.join(format!("{:03}-{name}", self.seq));
        let _ = std::fs::write(base.with_extension("server.out"), &server.stdout);
        let _ = std::fs::write(base.with_extension("server.err"), &server.stderr);
        let _ = std::fs::write(base.with_extension("client.out"), &client.stdout);
        let _ = std::fs::write(base.with_extension("client.err"), &client.stderr);
    }

    /// A raw UDP bandwidth probe between the namespaces: `per-packet` and `gso-gro` with plain
    /// syscalls ([`crate::udp`]), `uring-gso-gro` through uroce's io_uring back end
    /// ([`crate::uring_udp`]), all with 4154-byte datagrams; `uring-small`, the message-rate
    /// ceiling: the io_uring back end with datagrams the size of a 64-byte WRITE packet.
    fn udp_bw(&mut self, mode: &str) -> UdpBw {
        let secs = if self.o.quick { "0.5" } else { "3" };
        let (size, gso) = if mode == "uring-small" {
            (SMALL_DGRAM, SMALL_GSO)
        } else {
            (CEILING_DGRAM, CEILING_GSO)
        };
        let (port, how) = match mode {
            "per-packet" => ("47910", "one per send/recv syscall"),
            "gso-gro" => (
                "47911",
                "15 per send (UDP_SEGMENT), UDP_GRO recvmsg; plain syscalls",
            ),
            "uring-gso-gro-zc" => ("47914", "as uring-gso-gro but SENDMSG_ZC (zero copy)"),
            "uring-small" => (
                "47915",
                "the message-rate ceiling: uroce's io_uring back end without the engine, SENDMSG \
                 of 64 (UDP GSO), 16 per submit, into multishot RECVMSG with UDP_GRO",
            ),
            _ => (
                "47913",
                "uroce's io_uring back end without the engine: SENDMSG of 15 (UDP GSO), 16 per \
                 submit, into multishot RECVMSG with UDP_GRO over its 16 × 64 KiB buffer ring",
            ),
        };
        let g = gso.to_string();
        let (recv, send) = match mode {
            "per-packet" => (vec!["udp-recv"], vec!["udp-send", "--gso", "1"]),
            "gso-gro" => (vec!["udp-recv", "--gro"], vec!["udp-send", "--gso", "15"]),
            _ => {
                let mut send = vec![
                    "uring-send",
                    "--backend",
                    "uring",
                    "--gso",
                    &g,
                    "--depth",
                    "16",
                ];
                if mode == "uring-gso-gro-zc" {
                    send.push("--zc");
                }
                (vec!["uring-recv", "--backend", "uring"], send)
            }
        };
        let addr = sockaddr(&self.o.server_ip, port);
        let mut r = UdpBw {
            mode: mode.into(),
            ..UdpBw::default()
        };
        let mut rargs = strings(&recv);
        rargs.extend(strings(&["--bind", &addr]));
        let recv = match spawn(&self.a, &self.o.me, &rargs) {
            Ok(p) => p,
            Err(e) => {
                r.note = format!("spawn: {e}");
                return r;
            }
        };
        if !recv.wait_for("listening", Duration::from_secs(10)) {
            r.note = "receiver did not start".into();
            let d = recv.finish(Duration::ZERO);
            self.save(&format!("udp-{mode}"), &d, &d);
            return r;
        }
        let mut sargs = strings(&send);
        sargs.extend(strings(&[
            "--to",
            &addr,
            "--size",
            &size.to_string(),
            "--secs",
            secs,
        ]));
        let send = spawn(&self.b, &self.o.me, &sargs).map(|p| p.finish(Duration::from_secs(60)));
        let recv = recv.finish(Duration::from_secs(60));
        let send = send.unwrap_or(Done {
            ok: false,
            stdout: String::new(),
            stderr: "spawn failed".into(),
        });
        self.save(&format!("udp-{mode}"), &recv, &send);
        let (rv, sv) = (recv.json(), send.json());
        let (Some(rv), Some(sv)) = (rv.last(), sv.last()) else {
            r.note = format!("no result: {} {}", recv.stderr.trim(), send.stderr.trim());
            return r;
        };
        udp_bw_from(&mut r, rv, sv);
        r.valid = recv.ok && send.ok && r.gbit_s > 0.0;
        let mut note = format!(
            "{size} B datagrams, {how}; {:.1} % of sent bytes not received",
            r.loss * 100.0
        );
        if sv["zero_copy"] == true {
            note += &format!(
                "; the kernel copied {} of {} zero-copy sends",
                sv["zc_copied"], sv["zc_notifs"]
            );
        }
        // The io_uring probes must have run in the ceiling's shape.
        if mode.starts_with("uring-") && !ceiling_shape(rv, sv, gso) {
            r.valid = false;
            note += &format!(
                "; NOT the ceiling's shape: receiver {}, sender {} × {}",
                rv["driver"], sv["driver"], sv["gso"]
            );
        }
        r.note = note;
        r
    }

    /// The io_uring ceiling probe with `flows` sender/receiver pairs at once, each pair on its
    /// own port ([`TWO_FLOWS`] for two): the ceiling of engines that send from as many
    /// threads. One sender is bound by its one CPU (the kernel's send work runs on the
    /// sending thread), so on two cores two flows move nearly twice as much (67–69 against
    /// 38–39 Gbit/s by hand, session 20). Goodput and CPU are the sums over the pairs.
    fn udp_bw_flows(&mut self, flows: usize) -> UdpBw {
        let secs = if self.o.quick { "0.5" } else { "3" };
        let mut r = UdpBw {
            mode: TWO_FLOWS.into(),
            ..UdpBw::default()
        };
        let addrs: Vec<String> = (0..flows)
            .map(|i| sockaddr(&self.o.server_ip, &(47920 + i).to_string()))
            .collect();
        let mut recvs = Vec::new();
        for a in &addrs {
            let args = strings(&["uring-recv", "--backend", "uring", "--bind", a]);
            match spawn(&self.a, &self.o.me, &args) {
                Ok(p) if p.wait_for("listening", Duration::from_secs(10)) => recvs.push(p),
                Ok(p) => {
                    r.note = "a receiver did not start".into();
                    let d = p.finish(Duration::ZERO);
                    self.save("udp-flows", &d, &d);
                    return r;
                }
                Err(e) => {
                    r.note = format!("spawn: {e}");
                    return r;
                }
            }
        }
        let (size, gso) = (CEILING_DGRAM.to_string(), CEILING_GSO.to_string());
        let sends: Vec<_> = addrs
            .iter()
            .map(|a| {
                let args = strings(&[
                    "uring-send",
                    "--backend",
                    "uring",
                    "--gso",
                    &gso,
                    "--depth",
                    "16",
                    "--to",
                    a,
                    "--size",
                    &size,
                    "--secs",
                    secs,
                ]);
                spawn(&self.b, &self.o.me, &args)
            })
            .collect();
        let sends: Vec<Done> = sends
            .into_iter()
            .map(|p| match p {
                Ok(p) => p.finish(Duration::from_secs(60)),
                Err(e) => Done {
                    ok: false,
                    stdout: String::new(),
                    stderr: format!("spawn failed: {e}"),
                },
            })
            .collect();
        let recvs: Vec<Done> = recvs
            .into_iter()
            .map(|p| p.finish(Duration::from_secs(60)))
            .collect();
        let mut ok = true;
        let (mut gbit, mut bytes, mut got, mut sent, mut cpu) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (rd, sd) in recvs.iter().zip(&sends) {
            self.save("udp-flows", rd, sd);
            let (rv, sv) = (rd.json(), sd.json());
            let (Some(rv), Some(sv)) = (rv.last(), sv.last()) else {
                r.note = format!("no result: {} {}", rd.stderr.trim(), sd.stderr.trim());
                return r;
            };
            let g = rv["gbit_s"].as_f64().unwrap_or(0.0);
            ok &= rd.ok && sd.ok && g > 0.0 && ceiling_shape(rv, sv, CEILING_GSO);
            gbit += g;
            bytes += rv["bytes"].as_f64().unwrap_or(0.0);
            got += bytes_total(rv);
            sent += bytes_total(sv);
            cpu += rv["cpu_s"].as_f64().unwrap_or(0.0) + sv["cpu_s"].as_f64().unwrap_or(0.0);
        }
        r.gbit_s = gbit;
        r.cpu_s_per_gb = per_gb(cpu, bytes);
        r.loss = loss(got, sent);
        r.valid = ok;
        r.note = format!(
            "{flows} pairs at once, each as uring-gso-gro on its own port (4154 B datagrams, \
             SENDMSG of 15 with UDP GSO, multishot RECVMSG with UDP_GRO): the ceiling of \
             engines sending from {flows} threads; goodput and CPU summed; {:.1} % of sent \
             bytes not received",
            r.loss * 100.0
        );
        if !ok {
            r.note += "; INVALID: a pair failed or did not run in the ceiling's shape";
        }
        r
    }

    /// The busy-poll ping-pong: plain UDP sockets (`udp-echo`/`udp-ping`, 8 bytes), plain
    /// sockets in uroce's connected shape (the same with `--ack`: the 40-byte packet of an
    /// 8-byte WRITE and the held ACK as a second GSO segment, into a `UDP_GRO` socket's
    /// `recv`), or uroce's io_uring driver without the engine (`raw-echo`/`raw-ping`, the
    /// 40-byte packet, with `ack` bytes more as a second GSO segment when nonzero).
    fn udp_rtt(&mut self, kind: Rtt) -> UdpRtt {
        let port = match kind {
            Rtt::Udp => "47912",
            Rtt::Shape(_) => "47913",
            Rtt::Driver(0) => "47916",
            Rtt::Driver(_) => "47917",
        };
        let addr = sockaddr(&self.o.server_ip, port);
        let count = if self.o.quick { "2000" } else { "50000" };
        let mut r = UdpRtt {
            size: LAT_SIZE,
            mode: match kind {
                Rtt::Udp => String::new(),
                Rtt::Shape(a) => format!("udp-ack{a}"),
                Rtt::Driver(a) => format!("raw-ack{a}"),
            },
            ..UdpRtt::default()
        };
        let (echo_args, mut ping_args) = match kind {
            Rtt::Udp => (
                strings(&["udp-echo", "--bind", &addr]),
                strings(&["udp-ping", "--to", &addr, "--size", "8", "--count", count]),
            ),
            Rtt::Shape(a) => (
                strings(&["udp-echo", "--bind", &addr, "--ack", &a.to_string()]),
                strings(&[
                    "udp-ping",
                    "--to",
                    &addr,
                    "--size",
                    "40",
                    "--ack",
                    &a.to_string(),
                    "--count",
                    count,
                ]),
            ),
            Rtt::Driver(a) => (
                strings(&["raw-echo", "--bind", &addr, "--backend", "uring"]),
                strings(&[
                    "raw-ping",
                    "--to",
                    &addr,
                    "--backend",
                    "uring",
                    "--ack",
                    &a.to_string(),
                    "--count",
                    count,
                ]),
            ),
        };
        if let (Rtt::Driver(_), Some(ip)) = (kind, &self.o.client_ip) {
            ping_args.extend(strings(&["--bind", &sockaddr(ip, "0")]));
        }
        let echo = match spawn_on(&self.a, Some(PIN.0), &self.o.me, &echo_args) {
            Ok(p) => p,
            Err(e) => {
                r.note = format!("spawn: {e}");
                return r;
            }
        };
        if !echo.wait_for("listening", Duration::from_secs(10)) {
            r.note = "echo did not start".into();
            let _ = echo.finish(Duration::ZERO);
            return r;
        }
        let ping = spawn_on(&self.b, Some(PIN.1), &self.o.me, &ping_args)
            .map(|p| p.finish(Duration::from_secs(120)));
        let echo = echo.finish(Duration::from_secs(5));
        let ping = ping.unwrap_or(Done {
            ok: false,
            stdout: String::new(),
            stderr: "spawn failed".into(),
        });
        self.save(&format!("udp-rtt{}", r.mode), &echo, &ping);
        if let Some(v) = ping.json().last() {
            r.half_median_us = v["half_median_us"].as_f64().unwrap_or(0.0);
            r.half_p99_us = v["half_p99_us"].as_f64().unwrap_or(0.0);
            r.cdf = v["half_cdf_us"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default();
            r.valid = ping.ok && r.half_median_us > 0.0;
            let how = match kind {
                Rtt::Udp => "both sides connected, spinning on non-blocking recv".to_string(),
                Rtt::Shape(a) => {
                    // Only a probe whose every reply came back coalesced measured the shape.
                    let shaped = v["shaped_replies"].as_u64().unwrap_or(0);
                    let answered =
                        v["round_trips"].as_u64().unwrap_or(0) + v["warmup"].as_u64().unwrap_or(0);
                    r.valid &= shaped > 0 && shaped == answered;
                    format!(
                        "plain sockets in uroce's connected shape: both sides connected, each \
                         message one GSO send of the 40-byte packet of an 8-byte WRITE and a \
                         {a}-byte second segment (the held ACK), received whole by a \
                         plain `recv` on a `UDP_GRO` socket (the warm-up's by `recvmsg`, which \
                         read the segment size); {shaped} replies coalesced"
                    )
                }
                Rtt::Driver(0) => "uroce's io_uring driver without the engine (a polled device's \
                                   socket and receive path), one 40-byte datagram each way"
                    .to_string(),
                Rtt::Driver(a) => {
                    format!("as the driver row, plus a {a}-byte second GSO segment (the held ACK)")
                }
            };
            r.note = format!(
                "{count} round trips, {how}, pinned to CPUs {} and {}; {} resent",
                PIN.0, PIN.1, v["lost"]
            );
        } else {
            r.note = format!("no result: {}", ping.stderr.trim());
        }
        r
    }

    fn tcp(&mut self) -> Tcp {
        let mut t = Tcp::default();
        let secs = if self.o.quick { "1" } else { "5" };
        let iperf = PathBuf::from("iperf3");
        let server = match spawn(&self.a, &iperf, &strings(&["-s", "-1", "--forceflush"])) {
            Ok(p) => p,
            Err(e) => {
                t.note = format!("iperf3: {e}");
                return t;
            }
        };
        if !server.wait_for("Server listening", Duration::from_secs(10)) {
            t.note = "iperf3 server did not start".into();
            let _ = server.finish(Duration::ZERO);
            return t;
        }
        // Listening was printed just before listen(2) returned to its loop: a refused
        // connection is still retried, for up to 10 s.
        let mut client = None;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            let c = spawn(
                &self.b,
                &iperf,
                &strings(&["-c", &self.o.server_ip, "-t", secs, "-J"]),
            )
            .map(|p| p.finish(Duration::from_secs(60)));
            match c {
                Ok(d) if d.ok => {
                    client = Some(d);
                    break;
                }
                Ok(d) if d.stdout.contains("Connection refused") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(d) => {
                    client = Some(d);
                    break;
                }
                Err(e) => {
                    t.note = format!("iperf3: {e}");
                    break;
                }
            }
        }
        let server = server.finish(Duration::from_secs(5));
        let Some(client) = client else {
            if t.note.is_empty() {
                t.note = "iperf3 client never connected".into();
            }
            return t;
        };
        self.save("tcp-iperf3", &server, &client);
        let v: Value = serde_json::from_str(&client.stdout).unwrap_or(Value::Null);
        let end = &v["end"];
        let bps = end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        let bytes = end["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
        let dur = end["sum_received"]["seconds"].as_f64().unwrap_or(0.0);
        let cpu = &end["cpu_utilization_percent"];
        let pct =
            cpu["host_total"].as_f64().unwrap_or(0.0) + cpu["remote_total"].as_f64().unwrap_or(0.0);
        t.gbit_s = bps / 1e9;
        t.cpu_s_per_gb = if bytes > 0.0 {
            pct / 100.0 * dur / (bytes / 1e9)
        } else {
            0.0
        };
        t.retransmits = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        t.valid = client.ok && t.gbit_s > 0.0;
        t.note = format!("one stream, {secs} s; CPU from iperf3's host+remote utilisation");
        t
    }

    fn iters(&self, size: u64) -> u64 {
        let (budget, lo, hi) = if self.o.quick {
            (64u64 << 20, 50, 5_000)
        } else {
            (1u64 << 30, 200, 100_000)
        };
        (budget / size.max(1)).clamp(lo, hi)
    }

    fn bench(&mut self, c: Cfg<'_>) -> Run {
        let mut args = strings(&[
            "bench",
            c.test,
            c.kind,
            "--json",
            "--timeout",
            "30",
            "--backend",
            c.backend,
            "--progress",
            c.progress,
        ]);
        args.extend(strings(&[
            "-s",
            &c.size.to_string(),
            "-n",
            &c.iters.to_string(),
            "-m",
            &c.mtu.to_string(),
            "-q",
            &c.qps.to_string(),
        ]));
        if c.threads > 1 {
            args.extend(strings(&["--threads", &c.threads.to_string()]));
        }
        args.extend(strings(c.extra));
        let mut cargs = args.clone();
        if c.test == "read" {
            args.extend(strings(c.sender_extra));
        } else {
            cargs.extend(strings(c.sender_extra));
        }
        cargs.extend(strings(&["--connect-timeout", "30", &self.o.server_ip]));
        let run = Run {
            group: c.group.into(),
            test: c.test.into(),
            kind: c.kind.into(),
            backend: c.backend.into(),
            progress: c.progress.into(),
            mtu: c.mtu,
            qps: c.qps,
            threads: c.threads,
            size: c.size,
            iters: c.iters,
            ..Run::default()
        };
        let name = format!(
            "{}-{}-{}-{}-{}-m{}-q{}{}-s{}",
            c.group,
            c.test,
            c.kind,
            c.backend,
            c.progress,
            c.mtu,
            c.qps,
            if c.threads > 1 {
                format!("-t{}", c.threads)
            } else {
                String::new()
            },
            c.size
        );
        eprintln!("uroce-perf: {name}");
        let drops0 = udp_rcvbuf_errors(&self.a) + udp_rcvbuf_errors(&self.b);
        let (pa, pb) = if c.pin {
            (Some(PIN.0), Some(PIN.1))
        } else {
            (None, None)
        };
        let server = match spawn_on(&self.a, pa, &self.o.uroce, &args) {
            Ok(p) => p,
            Err(e) => {
                return Run {
                    reason: format!("spawn: {e}"),
                    errors: 1,
                    ..run
                };
            }
        };
        let sampler = self
            .rapl
            .clone()
            .map(|r| Sampler::start(r, Duration::from_millis(10)));
        let client = spawn_on(&self.b, pb, &self.o.uroce, &cargs)
            .map(|p| p.finish(Duration::from_secs(300)));
        let energy = sampler.map(Sampler::stop);
        let client = client.unwrap_or(Done {
            ok: false,
            stdout: String::new(),
            stderr: "spawn failed".into(),
        });
        let server = server.finish(if client.ok {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(2)
        });
        self.save(&name, &server, &client);
        let mut r = run_from_bench(run, &client.json(), &server.json(), (client.ok, server.ok));
        r.kernel_udp_drops =
            (udp_rcvbuf_errors(&self.a) + udp_rcvbuf_errors(&self.b)).saturating_sub(drops0);
        if let Some(e) = energy {
            let gb = (r.size * r.iters) as f64 / 1e9;
            if gb > 0.0 && r.kind == "bw" {
                r.joules_per_gb = Some(e.total() / gb);
            }
        }
        if !r.valid {
            let tail: String = client
                .stderr
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ");
            eprintln!(
                "uroce-perf: {name}: INVALID: {} (kernel UDP receive-buffer drops {}) [{}]",
                r.reason, r.kernel_udp_drops, tail
            );
        }
        r
    }
}

/// `RcvbufErrors` of the namespace's UDP counters (/proc/net/snmp is per network namespace).
fn udp_rcvbuf_errors(ns: &str) -> u64 {
    let Ok(o) = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
    else {
        return 0;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes a probe side moved in all (`bytes_total`, else `bytes`).
fn bytes_total(v: &Value) -> f64 {
    v.get("bytes_total")
        .and_then(Value::as_f64)
        .or_else(|| v["bytes"].as_f64())
        .unwrap_or(0.0)
}

/// Whether an io_uring probe ran in the ceiling's shape: a multishot receive with GRO, and
/// GSO sends of `gso` datagrams.
fn ceiling_shape(rv: &Value, sv: &Value, gso: u32) -> bool {
    rv["driver"]["multishot_recv"] == true
        && rv["driver"]["gro"] == true
        && sv["driver"]["gso"] == true
        && sv["gso"] == gso
}

/// Goodput, CPU and loss of a bandwidth probe from its receiver's and sender's JSON lines.
/// Loss compares the totals (`bytes_total`; older probes printed only the timed `bytes`).
fn udp_bw_from(r: &mut UdpBw, rv: &Value, sv: &Value) {
    let bytes = rv["bytes"].as_f64().unwrap_or(0.0);
    let (got, sent) = (bytes_total(rv), bytes_total(sv));
    let cpu = rv["cpu_s"].as_f64().unwrap_or(0.0) + sv["cpu_s"].as_f64().unwrap_or(0.0);
    r.gbit_s = rv["gbit_s"].as_f64().unwrap_or(0.0);
    r.cpu_s_per_gb = per_gb(cpu, bytes);
    let secs = rv["seconds"].as_f64().unwrap_or(0.0);
    r.mdgram_s = if secs > 0.0 {
        rv["datagrams"].as_f64().unwrap_or(0.0) / secs / 1e6
    } else {
        0.0
    };
    r.loss = loss(got, sent);
}

/// CPU seconds per GB of `bytes` (0 for none).
fn per_gb(cpu: f64, bytes: f64) -> f64 {
    if bytes > 0.0 {
        cpu / (bytes / 1e9)
    } else {
        0.0
    }
}

/// The share of `sent` bytes that were not `got` (UDP has no flow control).
fn loss(got: f64, sent: f64) -> f64 {
    if sent > 0.0 {
        (1.0 - got / sent).max(0.0)
    } else {
        0.0
    }
}

fn sockaddr(ip: &str, port: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Runs everything; returns the results (the caller writes them).
pub fn run(o: Options) -> Results {
    let rapl = Rapl::open(&o.powercap);
    let t0 = Instant::now();
    let psi0 = std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|t| cpu_pressure_total(&t));
    let mut res = Results {
        machine: machine(o.quick, &rapl),
        ..Results::default()
    };
    eprintln!("uroce-perf: {}", res.machine.rapl);
    let raw = o.out.join("raw");
    let _ = std::fs::remove_dir_all(&raw);
    let _ = std::fs::create_dir_all(&raw);
    let mut s = Suite {
        a: format!("{}-a", o.netns),
        b: format!("{}-b", o.netns),
        rapl: rapl.ok(),
        raw,
        seq: 0,
        o,
    };
    eprintln!("uroce-perf: per-byte costs on this CPU (ICRC, region copies)");
    let each = Duration::from_millis(if s.o.quick { 30 } else { 300 });
    res.micro = Some(crate::micro::measure(each));
    let phase_each = Duration::from_millis(if s.o.quick { 10 } else { 100 });
    res.copy_phases
        .push(crate::micro::CopyPhase::sample("start", phase_each));
    // The engine's share of the latency, beside the driver's layers (`raw_rtt` below).
    let trips = if s.o.quick { 20_000 } else { 1_000_000 };
    res.engine_lat_ns = match crate::engine_lat::run(trips, 10_000) {
        Ok(e) => Some(e.batch_median_ns),
        Err(e) => {
            eprintln!("uroce-perf: engine-lat: {e}");
            None
        }
    };
    eprintln!("uroce-perf: raw UDP probes, iperf3");
    res.udp.push(s.udp_bw("per-packet"));
    res.udp.push(s.udp_bw("gso-gro"));
    res.udp.push(s.udp_bw("uring-gso-gro"));
    res.udp.push(s.udp_bw_flows(2));
    // Issue 6: "SEND_ZC is always copied on veth/loopback (measure it, keep it only where it
    // wins)". Reported next to the ceiling, used by no target.
    res.udp.push(s.udp_bw("uring-gso-gro-zc"));
    res.udp.push(s.udp_bw("uring-small"));
    res.rtt = s.udp_rtt(Rtt::Udp);
    res.rtt_shape = s.udp_rtt(Rtt::Shape(ACK_LEN));
    res.raw_rtt = vec![s.udp_rtt(Rtt::Driver(0)), s.udp_rtt(Rtt::Driver(ACK_LEN))];
    res.tcp = s.tcp();
    let sizes: Vec<u64> = if s.o.quick {
        vec![64, 65536, HEADLINE_SIZE]
    } else {
        (0..9).map(|i| 64u64 << (2 * i)).collect()
    };
    for backend in ["uring", "syscall"] {
        for test in ["write", "read", "send"] {
            for &size in &sizes {
                let n = s.iters(size);
                s.measure(&mut res.runs, Cfg::bw("size", test, backend, size, n));
            }
            let mtu1024: &[u64] = if s.o.quick {
                &[HEADLINE_SIZE]
            } else {
                &[4096, 65536, HEADLINE_SIZE]
            };
            for &size in mtu1024 {
                let n = s.iters(size);
                let c = Cfg {
                    mtu: 1024,
                    ..Cfg::bw("size", test, backend, size, n)
                };
                s.measure(&mut res.runs, c);
            }
        }
        s.measure(&mut res.runs, lat_cfg(backend, s.o.quick));
        let mr_n = if s.o.quick { 20_000 } else { 1_000_000 };
        // Thread progress (the default), then busy polling pinned (the design's fast mode for
        // small messages: the posting thread runs the engine, no hand-offs).
        for (progress, pin) in [("thread", false), ("polled", true)] {
            let c = Cfg {
                extra: &["-t", "512"],
                progress,
                pin,
                ..Cfg::bw("msgrate", "write", backend, MSGRATE_SIZE, mr_n)
            };
            s.measure(&mut res.runs, c);
        }
        // QP scaling: QPs on one engine thread, then the 4 QPs on as many engine threads as
        // this machine's cores (QPN-steered devices, `uroce bench --threads`).
        let qps: &[(u32, u32)] = if s.o.quick {
            &[(1, 1), (4, 1), (4, QPS_THREADS)]
        } else {
            &[(1, 1), (2, 1), (4, 1), (4, QPS_THREADS)]
        };
        for &(q, threads) in qps {
            // -n is per QP: the same total bytes whatever the QP count.
            let n = (s.iters(QPS_SIZE) / u64::from(q)).max(10);
            let c = Cfg {
                qps: q,
                threads,
                ..Cfg::bw("qps", "write", backend, QPS_SIZE, n)
            };
            s.measure(&mut res.runs, c);
        }
    }
    // Paired rounds for the WRITE, READ/SEND and latency targets: the baseline and uroce
    // measured within seconds of each other, in ABBA order (`Suite::paired`), and the target
    // takes the median of the rounds' ratios. Single runs minutes apart differ by more than
    // the goals' margins on this VM: 24.65 and 27.20 Gbit/s for the same WRITE two minutes
    // apart in one run, UDP half round trips of 3.61 and 4.10 µs in hand runs minutes apart.
    let rounds = if s.o.quick { 1 } else { PAIRED_ROUNDS };
    for round in 0..rounds {
        res.copy_phases.push(crate::micro::CopyPhase::sample(
            &format!("round {}", round + 1),
            phase_each,
        ));
        eprintln!("uroce-perf: paired round {} of {rounds}", round + 1);
        let tag = |note: &str| format!("paired round {}; {note}", round + 1);
        let n = s.iters(HEADLINE_SIZE);
        let c = Cfg::bw(PAIRED, "write", "uring", HEADLINE_SIZE, n);
        // The same WRITE with the sender's submissions on a kernel thread (SQPOLL). (A send
        // thread, `--tx-thread`, measured level with the default here and is not a third
        // configuration: the target takes the better one, and the best of two equals is noise.)
        let sq = Cfg {
            group: PAIRED_SQPOLL,
            sender_extra: &["--sqpoll"],
            ..c
        };
        // READ and SEND 1 MiB in the same minute, for their targets against this WRITE.
        let rd = Cfg::bw(PAIRED_READ, "read", "uring", HEADLINE_SIZE, n);
        let sd = Cfg::bw(PAIRED_SEND, "send", "uring", HEADLINE_SIZE, n);
        // And 4 QPs on two engine threads, for the QP-scaling target against this WRITE.
        let q4 = Cfg {
            qps: 4,
            threads: QPS_THREADS,
            ..Cfg::bw(
                PAIRED_QPS,
                "write",
                "uring",
                QPS_SIZE,
                (s.iters(QPS_SIZE) / 4).max(10),
            )
        };
        let (mut u, runs) = s.paired(round, &[c, sq, rd, sd, q4], |s| s.udp_bw("uring-gso-gro"));
        u.mode = PAIRED_PROBE.into();
        u.note = tag(&u.note);
        res.udp.push(u);
        res.runs.extend(runs);
        let c = Cfg {
            group: LAT_PAIRED,
            ..lat_cfg("uring", s.o.quick)
        };
        // The same with both sides sending from sockets connected to the peer.
        let cc = Cfg {
            group: LAT_PAIRED_CONNECTED,
            extra: &["--connected-tx"],
            ..c
        };
        let ((mut u, mut shape), runs) = s.paired(round, &[c, cc], |s| {
            (s.udp_rtt(Rtt::Udp), s.udp_rtt(Rtt::Shape(ACK_LEN)))
        });
        u.note = tag(&u.note);
        shape.note = tag(&shape.note);
        res.rtt_paired.push(u);
        res.rtt_shape_paired.push(shape);
        res.runs.extend(runs);
    }
    // The ceiling again, last: the VM changes speed within minutes (ceilings of 21 and 36
    // Gbit/s in one evening), and a ratio to a ceiling measured in another phase means
    // nothing. The report says when the two differ (`report::ceiling_drift`).
    eprintln!("uroce-perf: the io_uring UDP ceiling again");
    let mut end = s.udp_bw("uring-gso-gro");
    end.mode = CEILING_END.into();
    end.note = format!(
        "the same probe repeated at the end of the suite; {}",
        end.note
    );
    res.udp.push(end);
    res.copy_phases
        .push(crate::micro::CopyPhase::sample("end", phase_each));
    res.machine.load_after = loadavg();
    res.machine.cpu_pressure = cpu_pressure_since(psi0, t0.elapsed());
    res
}

/// The mode of the io_uring ceiling probe with two sender/receiver pairs at once
/// (`Suite::udp_bw_flows`).
pub const TWO_FLOWS: &str = "uring-gso-gro-x2";

/// The mode of the ceiling probe repeated at the end of the suite.
pub const CEILING_END: &str = "uring-gso-gro-end";

/// The group of the paired rounds' WRITE runs: the k-th run of this group pairs with the k-th
/// probe of mode [`PAIRED_PROBE`].
pub const PAIRED: &str = "paired";

/// The group of the paired rounds' WRITE runs whose sender has a kernel submission thread
/// (`uroce bench --sqpoll`); the k-th pairs with the k-th probe of mode [`PAIRED_PROBE`], as
/// the k-th of [`PAIRED`] does.
pub const PAIRED_SQPOLL: &str = "paired-sqpoll";

/// The groups of the paired rounds' READ and SEND 1 MiB runs: the k-th run of each pairs with
/// the k-th run of [`PAIRED`] (their targets: within 20 % of WRITE).
pub const PAIRED_READ: &str = "paired-read";

/// See [`PAIRED_READ`].
pub const PAIRED_SEND: &str = "paired-send";

/// The group of the paired rounds' runs of 4 QPs on [`QPS_THREADS`] engine threads: the k-th
/// pairs with the k-th run of [`PAIRED`] (one QP) for the QP-scaling target.
pub const PAIRED_QPS: &str = "paired-qps";

/// The mode of the paired rounds' ceiling probes.
pub const PAIRED_PROBE: &str = "uring-gso-gro-paired";

/// The group of the paired latency rounds' runs: the k-th pairs with `Results::rtt_paired[k]`.
pub const LAT_PAIRED: &str = "lat-paired";

/// The group of the paired latency rounds' runs with both sides sending from sockets connected
/// to the peer (`uroce bench --connected-tx`); the k-th pairs with `Results::rtt_paired[k]`.
pub const LAT_PAIRED_CONNECTED: &str = "lat-paired-connected";

/// Paired rounds of each kind, WRITE with the io_uring ceiling and latency with the UDP
/// ping-pong (one of each with `--quick`).
const PAIRED_ROUNDS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_pressure_reads_the_some_total() {
        let psi = "some avg10=98.49 avg60=97.51 avg300=97.62 total=12381319996\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(cpu_pressure_total(psi), Some(12_381_319_996));
        assert_eq!(cpu_pressure_total("full avg10=0.00 total=5\n"), None);
        assert_eq!(cpu_pressure_total(""), None);
    }
}

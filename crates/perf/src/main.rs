//! `uroce-perf`: the benchmark suite of issue 6 (run it through `scripts/bench.sh`).
//!
//! - `suite`: every measurement in one invocation between two namespaces; writes CSV, SVG and
//!   the generated section of `docs/PERFORMANCE.md`.
//! - `report`: the same files again from a saved `results.json`.
//! - `udp-recv`/`udp-send`, `udp-echo`/`udp-ping`: the raw UDP ceiling probes with plain
//!   syscalls (see [`udp`]).
//! - `uring-recv`/`uring-send`: the io_uring UDP GSO/GRO ceiling, through uroce's own io_uring
//!   back end without the engine (see [`uring_udp`]).
//! - `raw-echo`/`raw-ping`: the busy-poll ping-pong through uroce's driver without the
//!   engine (see [`raw_rtt`]).
//! - `micro`: per-byte costs of the ICRC and the region copies on this CPU (see [`micro`]).
//! - `engine-lat`: the engine's own cost per half round trip of the polled 8-byte WRITE
//!   ping-pong, two engines in one thread (see [`engine_lat`]).
//! - `rapl`: what the RAPL reader finds on this machine.
//! - `profile-summary`: where the cycles go, from a `perf report` (`scripts/profile.sh`).
#![forbid(unsafe_code)]

mod engine_lat;
mod micro;
mod model;
mod profile;
mod rapl;
mod raw_rtt;
mod report;
mod suite;
mod svg;
mod udp;
mod uring_udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The uroce benchmark suite and its raw UDP probes.
#[derive(Debug, Parser)]
#[command(name = "uroce-perf", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, clap::Args)]
struct Outputs {
    /// Directory of results.json, the CSVs and raw/ (the processes' outputs).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Directory of the SVG plots.
    #[arg(long, default_value = "docs/perf")]
    plots: PathBuf,
    /// The markdown file whose generated section is replaced.
    #[arg(long, default_value = "docs/PERFORMANCE.md")]
    doc: PathBuf,
    /// How the markdown links the plots (relative to the markdown file).
    #[arg(long, default_value = "perf")]
    plots_link: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run every measurement between NETNS-a (server, SERVER_IP) and NETNS-b (client).
    Suite {
        /// The uroce binary.
        #[arg(long)]
        uroce: PathBuf,
        /// Namespace pair name.
        #[arg(long)]
        netns: String,
        /// Address of the server side, in NETNS-a.
        #[arg(long)]
        server_ip: String,
        /// Address of the client side, in NETNS-b (the driver-layer ping binds it, as a device
        /// does; without it, the unspecified address).
        #[arg(long)]
        client_ip: Option<String>,
        /// Short runs and few sizes (a smoke test, not a measurement).
        #[arg(long)]
        quick: bool,
        /// Root of the powercap tree (RAPL).
        #[arg(long, default_value = rapl::SYSFS)]
        powercap: PathBuf,
        #[command(flatten)]
        outputs: Outputs,
    },
    /// Rewrite the CSVs, plots and markdown from OUT/results.json.
    Report {
        #[command(flatten)]
        outputs: Outputs,
    },
    /// Raw UDP receiver: counts goodput and CPU until the sender goes quiet.
    UdpRecv {
        /// Address to bind.
        #[arg(long)]
        bind: SocketAddr,
        /// Receive with UDP_GRO.
        #[arg(long)]
        gro: bool,
        /// Stop this long after the last datagram (ms).
        #[arg(long, default_value_t = 500)]
        idle_ms: u64,
        /// Stop after this many seconds in all.
        #[arg(long, default_value_t = 60)]
        max_secs: u64,
    },
    /// Raw UDP sender.
    UdpSend {
        /// Receiver address.
        #[arg(long)]
        to: SocketAddr,
        /// Datagram size (4096-byte payload + RoCE headers and ICRC, as in issue 6).
        #[arg(long, default_value_t = 4154)]
        size: usize,
        /// Datagrams per send (UDP_SEGMENT when > 1).
        #[arg(long, default_value_t = 1)]
        gso: usize,
        /// Seconds to send.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// io_uring UDP receiver (uroce's back end, multishot RECVMSG + UDP_GRO over a buffer
    /// ring): counts goodput and CPU until the sender goes quiet.
    UringRecv {
        /// Address to bind.
        #[arg(long)]
        bind: SocketAddr,
        /// uroce back end (uring, syscall).
        #[arg(long, default_value = "uring")]
        backend: uroce::BackendKind,
        /// Stop this long after the last datagram (ms).
        #[arg(long, default_value_t = 500)]
        idle_ms: u64,
        /// Stop after this many seconds in all.
        #[arg(long, default_value_t = 60)]
        max_secs: u64,
    },
    /// io_uring UDP sender (uroce's back end, SENDMSG with UDP GSO).
    UringSend {
        /// Receiver address.
        #[arg(long)]
        to: SocketAddr,
        /// uroce back end (uring, syscall).
        #[arg(long, default_value = "uring")]
        backend: uroce::BackendKind,
        /// Datagram size.
        #[arg(long, default_value_t = 4154)]
        size: usize,
        /// Datagrams per send (GSO batch; at most what one UDP datagram holds).
        #[arg(long, default_value_t = 15)]
        gso: usize,
        /// Sends queued per submission (the back end has 32 send buffers).
        #[arg(long, default_value_t = 16)]
        depth: usize,
        /// Seconds to send.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Stop after this many batches, if sooner (0: no limit).
        #[arg(long, default_value_t = 0)]
        batches: u64,
        /// Send with SENDMSG_ZC (zero copy; io_uring only).
        #[arg(long)]
        zc: bool,
        /// Write every batch before sending it (as the engine builds packets in place).
        #[arg(long)]
        write: bool,
    },
    /// Busy-polling UDP echo.
    UdpEcho {
        /// Address to bind.
        #[arg(long)]
        bind: SocketAddr,
        /// Receive with `UDP_GRO` and `recvmsg`, and answer each message in the GSO shape it
        /// came in (the pinger's `--ack`; any nonzero value).
        #[arg(long, default_value_t = 0)]
        ack: usize,
        /// Stop after this many seconds in all.
        #[arg(long, default_value_t = 120)]
        max_secs: u64,
    },
    /// Busy-polling UDP ping-pong client: round-trip percentiles.
    UdpPing {
        /// Echo address.
        #[arg(long)]
        to: SocketAddr,
        /// Payload bytes.
        #[arg(long, default_value_t = 8)]
        size: usize,
        /// Send each message as two GSO segments, `--size` bytes and then this many (20: an
        /// RC ACK leaving with the reply), received with `UDP_GRO`: uroce's connected
        /// ping-pong shape under the kernel, with nothing above it. 0: plain datagrams.
        #[arg(long, default_value_t = 0)]
        ack: usize,
        /// Round trips measured.
        #[arg(long, default_value_t = 10000)]
        count: u64,
        /// Round trips before (not measured).
        #[arg(long, default_value_t = 1000)]
        warmup: u64,
    },
    /// Busy-polling echo through uroce's driver without the engine (a polled device's
    /// socket and receive path): answers each receive in its shape (datagram or GSO batch).
    RawEcho {
        /// Address to bind.
        #[arg(long)]
        bind: SocketAddr,
        /// uroce back end (uring, syscall).
        #[arg(long, default_value = "uring")]
        backend: uroce::BackendKind,
        /// Stop after this many seconds in all.
        #[arg(long, default_value_t = 120)]
        max_secs: u64,
    },
    /// Busy-polling ping-pong client through uroce's driver without the engine: round-trip
    /// percentiles (the layer between udp-ping and `uroce bench write lat --progress polled`).
    RawPing {
        /// Echo address.
        #[arg(long)]
        to: SocketAddr,
        /// Local address (default: any, port chosen by the kernel).
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// uroce back end (uring, syscall).
        #[arg(long, default_value = "uring")]
        backend: uroce::BackendKind,
        /// Bytes of the datagram (40: an 8-byte RDMA WRITE packet).
        #[arg(long, default_value_t = 40)]
        size: usize,
        /// Bytes of a second datagram in the same GSO send (20: the held ACK); 0: none.
        #[arg(long, default_value_t = 0)]
        ack: usize,
        /// Round trips measured.
        #[arg(long, default_value_t = 10000)]
        count: u64,
        /// Round trips before (not measured).
        #[arg(long, default_value_t = 1000)]
        warmup: u64,
    },
    /// Summarise `perf report --stdio -n --no-children --sort comm,dso,sym -g none` outputs:
    /// shares of the uroce processes' samples per category and the top symbols (markdown).
    ProfileSummary {
        /// Heading of the tables.
        #[arg(long)]
        label: String,
        /// Symbols listed.
        #[arg(long, default_value_t = 15)]
        top: usize,
        /// The report texts (merged by sample counts).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Per-byte costs on this CPU: ICRC, region reads and writes (AtomicMemory and memcpy).
    Micro {
        /// Milliseconds per measured rate.
        #[arg(long, default_value_t = 300)]
        ms: u64,
    },
    /// The engine's cost per half round trip of the polled 8-byte WRITE ping-pong (two
    /// engines in one thread, no sockets): total, and the split post / build+seal /
    /// receive+poll.
    EngineLat {
        /// Round trips per pass (one untimed pass for the total, one timed for the split).
        #[arg(short = 'n', long, default_value_t = 1_000_000)]
        iters: u64,
        /// Round trips before (not measured).
        #[arg(long, default_value_t = 10_000)]
        warmup: u64,
    },
    /// Show the RAPL zones found (or why there are none) and the energy over SECS seconds.
    Rapl {
        /// Root of the powercap tree.
        #[arg(long, default_value = rapl::SYSFS)]
        powercap: PathBuf,
        /// Seconds to sample.
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
    },
}

fn print(v: Result<serde_json::Value, udp::ProbeError>) -> ExitCode {
    match v {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("uroce-perf: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(r: &model::Results, o: &Outputs) -> ExitCode {
    match report::write_all(r, &o.out, &o.plots, &o.doc, &o.plots_link) {
        Ok(()) => {
            for t in report::targets(r) {
                eprintln!(
                    "uroce-perf: {:<42} {:>26} vs {:<30} ratio {:>6}  goal {:<15} {}",
                    t.name,
                    t.value,
                    t.baseline,
                    t.ratio,
                    t.target,
                    t.result()
                );
            }
            eprintln!(
                "uroce-perf: wrote {}, {} and {}",
                o.out.display(),
                o.plots.display(),
                o.doc.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("uroce-perf: writing results: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Suite {
            uroce,
            netns,
            server_ip,
            client_ip,
            quick,
            powercap,
            outputs,
        } => {
            let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("uroce-perf"));
            let r = suite::run(suite::Options {
                uroce,
                me,
                netns,
                server_ip,
                client_ip,
                quick,
                out: outputs.out.clone(),
                powercap,
            });
            write(&r, &outputs)
        }
        Cmd::Report { outputs } => {
            let text = match std::fs::read_to_string(outputs.out.join("results.json")) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!(
                        "uroce-perf: {}: {e}",
                        outputs.out.join("results.json").display()
                    );
                    return ExitCode::FAILURE;
                }
            };
            let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            write(&model::Results::from_json(&v), &outputs)
        }
        Cmd::UdpRecv {
            bind,
            gro,
            idle_ms,
            max_secs,
        } => print(udp::bw_recv(
            bind,
            gro,
            Duration::from_millis(idle_ms),
            Duration::from_secs(max_secs),
        )),
        Cmd::UdpSend {
            to,
            size,
            gso,
            secs,
        } => print(udp::bw_send(to, size, gso, secs)),
        Cmd::UringRecv {
            bind,
            backend,
            idle_ms,
            max_secs,
        } => print(uring_udp::recv(
            bind,
            backend,
            Duration::from_millis(idle_ms),
            Duration::from_secs(max_secs),
            // Ready: the suite starts the sender after this line.
            || eprintln!("uring-recv: listening on {bind}"),
        )),
        Cmd::UringSend {
            to,
            backend,
            size,
            gso,
            depth,
            secs,
            batches,
            zc,
            write,
        } => print(uring_udp::send(
            to,
            backend,
            uring_udp::SendOptions {
                size,
                gso,
                depth,
                secs,
                batches,
                zero_copy: zc,
                write,
            },
        )),
        Cmd::UdpEcho {
            bind,
            ack,
            max_secs,
        } => print(udp::rtt_echo(bind, ack, Duration::from_secs(max_secs))),
        Cmd::UdpPing {
            to,
            size,
            ack,
            count,
            warmup,
        } => print(udp::rtt_ping(to, size, ack, count, warmup)),
        Cmd::RawEcho {
            bind,
            backend,
            max_secs,
        } => print(raw_rtt::echo(
            bind,
            backend,
            Duration::from_secs(max_secs),
            // Ready: the ping may start after this line.
            |a| eprintln!("raw-echo: listening on {a}"),
        )),
        Cmd::RawPing {
            to,
            bind,
            backend,
            size,
            ack,
            count,
            warmup,
        } => print(raw_rtt::ping(raw_rtt::PingOptions {
            to,
            bind,
            backend,
            size,
            ack,
            count,
            warmup,
        })),
        Cmd::ProfileSummary { label, top, files } => {
            let mut texts = Vec::new();
            for f in &files {
                match std::fs::read_to_string(f) {
                    Ok(t) => texts.push(t),
                    Err(e) => {
                        eprintln!("uroce-perf: {}: {e}", f.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            print!("{}", profile::markdown(&label, &refs, top));
            ExitCode::SUCCESS
        }
        Cmd::Micro { ms } => {
            println!("{}", micro::measure(Duration::from_millis(ms)).to_json());
            ExitCode::SUCCESS
        }
        Cmd::EngineLat { iters, warmup } => match engine_lat::run(iters, warmup) {
            Ok(r) => {
                eprintln!(
                    "engine-lat: {:.1} ns per half round trip ({:.1} ns CPU; batches: median \
                     {:.1}, fastest {:.1}); timed pass {:.1} ns: post {:.1}, build+seal {:.1}, \
                     receive+poll {:.1}",
                    r.half_rtt_ns,
                    r.half_rtt_cpu_ns,
                    r.batch_median_ns,
                    r.batch_min_ns,
                    r.timed_half_rtt_ns(),
                    r.post_ns,
                    r.build_seal_ns,
                    r.receive_poll_ns
                );
                println!("{}", r.to_json());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("uroce-perf: engine-lat: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Rapl { powercap, secs } => match rapl::Rapl::open(&powercap) {
            Ok(r) => {
                let s = rapl::Sampler::start(r.clone(), Duration::from_millis(10));
                std::thread::sleep(Duration::from_secs_f64(secs));
                let e = s.stop();
                for (d, j) in r.domains.iter().zip(&e.joules) {
                    println!(
                        "{}: {:.3} J in {:.2} s ({:.1} W)",
                        d.name,
                        j,
                        e.seconds,
                        j / e.seconds.max(1e-9)
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{e}: CPU-seconds per GB stand in for energy");
                ExitCode::SUCCESS
            }
        },
    }
}

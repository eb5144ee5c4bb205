//! The subcommands: one module each, with an `Args` (clap) and a `run` returning
//! `Result<ExitCode, CliError>`.

pub mod bench;
pub mod decode;
pub mod demo;
pub mod devinfo;
pub(crate) use uroce::netif;
pub mod pingpong;
pub mod stat;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// A subcommand.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// perftest's bandwidth and latency tests (ib_write_bw, ib_read_bw, ib_send_bw,
    /// ib_atomic_bw, ib_write_lat): same TCP side channel on port 18515, either side.
    Bench(bench::Args),
    /// Print one line per frame of a pcap capture, decoding RoCEv2 headers and checking ICRCs.
    Decode(decode::Args),
    /// Move checked data between two devices on this machine (127.0.0.1 ↔ 127.0.0.2) with
    /// RDMA WRITE, READ, SEND and atomics, and print throughput, latency and CPU cost.
    Demo(demo::Args),
    /// Print the counters of every uroce device open on this machine (device, driver, per QP).
    Stat(stat::Args),
    /// Show the uroce device of each network interface as ibv_devinfo shows rxe's: port
    /// state, active MTU and the GID table with rxe's numbering.
    Devinfo(devinfo::Args),
    /// Ping-pong SENDs with rdma-core's ibv_rc_pingpong, ibv_uc_pingpong, ibv_ud_pingpong or
    /// ibv_srq_pingpong (same TCP exchange on port 18515, same data), or with another uroce.
    Pingpong(pingpong::Args),
}

/// A steered device's place and counters, one line (`--steer`); `None` when the device owns
/// its address.
pub(crate) fn steer_line(dev: &uroce::Device) -> Option<String> {
    let i = dev.steer_info()?;
    let c = i.counters;
    Some(format!(
        "steer: slot {} (QPNs {:#08x}..={:#08x}), group index {}, own rx {}, foreign drops {}, probes {}, repairs {}",
        i.slot, i.qpns.0, i.qpns.1, i.index, c.own_rx, c.foreign_drops, c.probes_rx, c.repairs
    ))
}

/// Runs a subcommand and reports its error, if any, on stderr.
pub fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Bench(args) => bench::run(&args, &mut io::stdout().lock()),
        Command::Decode(args) => decode::run(&args, &mut io::stdout().lock()),
        Command::Demo(args) => demo::run(&args, &mut io::stdout().lock()),
        Command::Stat(args) => stat::run(&args, &mut io::stdout().lock()),
        Command::Devinfo(args) => devinfo::run(&args, &mut io::stdout().lock()),
        Command::Pingpong(args) => pingpong::run(&args, &mut io::stdout().lock()),
    };
    match result {
        Ok(code) => code,
        // `uroce decode x.pcap | head` closes the pipe: not an error.
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uroce: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// An input file could not be opened.
    #[error("{}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A capture file could not be read.
    #[error("{}: {source}", path.display())]
    Pcap {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: uroce_capture::PcapError,
    },
    /// Writing to the output failed.
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
    /// A uroce device or verb failed.
    #[error(transparent)]
    Device(#[from] uroce::Error),
    /// A transfer did not complete or its data was wrong.
    #[error("{0}")]
    Failed(String),
}

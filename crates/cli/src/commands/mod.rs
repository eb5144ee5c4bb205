//! The subcommands: one module each, with an `Args` (clap) and a `run` returning
//! `Result<ExitCode, CliError>`.

pub mod decode;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// A subcommand.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Print one line per frame of a pcap capture, decoding RoCEv2 headers and checking ICRCs.
    Decode(decode::Args),
}

/// Runs a subcommand and reports its error, if any, on stderr.
pub fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Decode(args) => decode::run(&args, &mut io::stdout().lock()),
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
#[derive(Debug)]
#[non_exhaustive]
pub enum CliError {
    /// An input file could not be opened.
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A capture file could not be read.
    Pcap {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: uroce_capture::PcapError,
    },
    /// Writing to the output failed.
    Output(io::Error),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Open { path, source } => write!(f, "{}: {source}", path.display()),
            CliError::Pcap { path, source } => write!(f, "{}: {source}", path.display()),
            CliError::Output(e) => write!(f, "writing output: {e}"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Open { source, .. } => Some(source),
            CliError::Pcap { source, .. } => Some(source),
            CliError::Output(e) => Some(e),
        }
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError::Output(e)
    }
}

//! `uroce stat`: the counters of every uroce device open on this machine by this user (each
//! device publishes them about once a second; see `uroce::stats`).

use std::io::Write;
use std::process::ExitCode;

use super::CliError;

/// Options of `uroce stat`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints the published counters.
pub fn run(_args: &Args, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let all = uroce::stats::read_all();
    if all.is_empty() {
        writeln!(
            out,
            "no uroce device is open (looked in {})",
            uroce::stats::stats_dir().display()
        )?;
    }
    for (_, text) in all {
        write!(out, "{text}")?;
    }
    Ok(ExitCode::SUCCESS)
}

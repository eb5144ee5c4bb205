//! `uroce`: command-line tools for user-space RoCEv2. Each subcommand lives in its own module
//! under [`commands`]; this file only parses the command line and sets the exit code.
#![forbid(unsafe_code)]

mod commands;

use std::process::ExitCode;

use clap::Parser;

/// User-space RoCEv2 (soft-RoCE) tools.
#[derive(Debug, Parser)]
#[command(name = "uroce", version)]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    commands::run(Cli::parse().command)
}

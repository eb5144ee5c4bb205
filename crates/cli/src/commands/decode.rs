//! `uroce decode FILE`: one wireshark-like line per frame of a pcap file, then a summary line.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use uroce_capture::decode::{decode_frame, Summary};
use uroce_capture::pcap::PcapReader;

use super::CliError;

/// Arguments of `uroce decode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pcap file to decode (`-` reads standard input). Link types: Ethernet, raw IP,
    /// Linux cooked (SLL), IPv4, IPv6.
    pub file: PathBuf,
    /// Leave out the summary line.
    #[arg(long)]
    pub no_summary: bool,
}

/// Decodes `args.file` onto `out`. A capture that ends in the middle of a record still gets
/// its lines and summary printed before the error is returned.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let input: Box<dyn Read> = if args.file.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(&args.file).map_err(|source| CliError::Open {
            path: args.file.clone(),
            source,
        })?)
    };
    let pcap_error = |source| CliError::Pcap {
        path: args.file.clone(),
        source,
    };
    let reader = PcapReader::new(BufReader::new(input)).map_err(pcap_error)?;
    let mut out = BufWriter::new(out);
    let mut summary = Summary::default();
    let mut failure = None;
    for frame in reader {
        match frame {
            Ok(frame) => {
                let orig_len = usize::try_from(frame.orig_len).unwrap_or(usize::MAX);
                for d in decode_frame(frame.index, frame.link, &frame.data, orig_len) {
                    summary.add(&d);
                    writeln!(out, "{d}")?;
                }
            }
            Err(e) => failure = Some(pcap_error(e)),
        }
    }
    if !args.no_summary {
        writeln!(out, "{summary}")?;
    }
    out.flush()?;
    match failure {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

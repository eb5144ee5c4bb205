//! Loading the golden rxe captures and wireshark's decoding of them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use uroce_capture::{Frame, PcapReader};

/// The golden captures, by file stem.
pub const CAPTURES: [&str; 2] = ["rxe-mtu1024", "rxe-mtu4096"];

/// The repository's `tests/data`.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

/// Every frame of `tests/data/{stem}.pcap`.
pub fn frames(stem: &str) -> Vec<Frame> {
    let path = data_dir().join(format!("{stem}.pcap"));
    let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    PcapReader::new(BufReader::new(file))
        .expect("pcap header")
        .map(|f| f.expect("pcap record"))
        .collect()
}

/// One row of `{stem}.fields.csv`: tshark field name to value; empty values are left out.
#[derive(Debug)]
pub struct Row(pub HashMap<String, String>);

impl Row {
    /// The raw text of a field, if present.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }

    /// A numeric field (tshark writes `0x…` hex or decimal), if present.
    pub fn num(&self, field: &str) -> Option<u64> {
        self.text(field).map(|v| {
            let n = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            n.unwrap_or_else(|e| panic!("{field}={v}: {e}"))
        })
    }
}

/// The rows of `tests/data/{stem}.fields.csv`, in frame order.
pub fn rows(stem: &str) -> Vec<Row> {
    let path = data_dir().join(format!("{stem}.fields.csv"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("CSV header").split(',').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells.len(), header.len(), "CSV row {l}");
            Row(header
                .iter()
                .zip(cells)
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect())
        })
        .collect()
}

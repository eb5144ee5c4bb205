//! `uroce decode` on the golden captures: the opcode sequence must be wireshark's, every ICRC
//! must verify, and bad input must fail cleanly.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use uroce_wire::Opcode;

const CAPTURES: [&str; 2] = ["rxe-mtu1024", "rxe-mtu4096"];

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(name)
}

fn uroce(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uroce"))
        .args(args)
        .output()
        .expect("run uroce")
}

/// The `infiniband.bth.opcode` column of `{stem}.fields.csv`, as wireshark names.
fn csv_opcode_names(stem: &str) -> Vec<&'static str> {
    let text = std::fs::read_to_string(data(&format!("{stem}.fields.csv"))).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "infiniband.bth.opcode")
        .expect("opcode column");
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let code: u8 = l.split(',').nth(col).unwrap().parse().unwrap();
            Opcode::from_u8(code).expect("known opcode").name()
        })
        .collect()
}

/// The opcode name of a decoded RoCE line: `IDX SRC → DST NAME QP=…`.
fn line_opcode(line: &str) -> &str {
    let (_, after_arrow) = line.split_once(" → ").expect("arrow");
    let (_, rest) = after_arrow.split_once(' ').expect("destination");
    rest.split_once(" QP=").expect("QP").0
}

#[test]
fn decode_prints_wiresharks_opcodes_and_good_icrcs() {
    for stem in CAPTURES {
        let file = data(&format!("{stem}.pcap"));
        let out = uroce(&["decode", file.to_str().unwrap()]);
        assert!(out.status.success(), "{stem}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{stem}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        let (summary, frames) = lines.split_last().expect("output");
        let want = csv_opcode_names(stem);
        let got: Vec<&str> = frames.iter().map(|l| line_opcode(l)).collect();
        assert_eq!(got, want, "{stem}");
        for (n, line) in frames.iter().enumerate() {
            assert!(
                line.trim_start().starts_with(&format!("{} ", n + 1)),
                "{line}"
            );
            assert!(line.ends_with(" ICRC ok"), "{stem}: {line}");
        }
        let n = want.len();
        assert_eq!(
            *summary,
            format!("{n} frames, {n} RoCE, ICRC ok {n}, ICRC bad 0, malformed 0, not RoCE 0")
        );
    }
}

#[test]
fn decode_reads_standard_input_and_can_omit_the_summary() {
    let bytes = std::fs::read(data("rxe-mtu4096.pcap")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_uroce"))
        .args(["decode", "--no-summary", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 160);
    assert!(stdout.lines().all(|l| l.ends_with(" ICRC ok")));
}

#[test]
fn truncated_capture_prints_what_it_read_then_fails() {
    let bytes = std::fs::read(data("rxe-mtu1024.pcap")).unwrap();
    let dir = std::env::temp_dir().join(format!("uroce-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cut = dir.join("cut.pcap");
    // Header, then cut inside the second record.
    std::fs::write(&cut, &bytes[..24 + 16 + 1082 + 30]).unwrap();
    let out = uroce(&["decode", cut.to_str().unwrap()]);
    assert!(!out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.ends_with("1 frames, 1 RoCE, ICRC ok 1, ICRC bad 0, malformed 0, not RoCE 0\n"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pcap file truncated"));

    let ng = dir.join("x.pcapng");
    std::fs::write(&ng, [0x0A, 0x0D, 0x0D, 0x0A, 0, 0, 0, 0]).unwrap();
    let out = uroce(&["decode", ng.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pcapng files are not supported"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `pcap` with every record cut to `snap` bytes, as `tcpdump -s SNAP` writes it: the record's
/// captured length shrinks, its original length stays (little-endian microsecond pcap).
fn with_snap_length(pcap: &[u8], snap: usize) -> Vec<u8> {
    let mut out = pcap[..24].to_vec();
    out[16..20].copy_from_slice(&(snap as u32).to_le_bytes());
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let keep = incl.min(snap);
        out.extend_from_slice(&pcap[at..at + 8]);
        out.extend_from_slice(&(keep as u32).to_le_bytes());
        out.extend_from_slice(&pcap[at + 12..at + 16]);
        out.extend_from_slice(&pcap[at + 16..at + 16 + keep]);
        at += 16 + incl;
    }
    out
}

#[test]
fn decode_reads_gso_datagrams_and_captures_cut_by_a_snap_length() {
    let bytes = std::fs::read(data("uroce-veth-gso.pcap")).unwrap();
    let out = uroce(&["decode", data("uroce-veth-gso.pcap").to_str().unwrap()]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("    2 GSO 2/2 "), "{stdout}");
    assert!(stdout.ends_with(
        "23 frames, 41 RoCE, ICRC ok 41, ICRC bad 0, malformed 0, not RoCE 0 \
         (14 GSO datagrams cut into their packets)\n"
    ));

    let dir = std::env::temp_dir().join(format!("uroce-cli-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cut = dir.join("snap100.pcap");
    std::fs::write(&cut, with_snap_length(&bytes, 100)).unwrap();
    let out = uroce(&["decode", cut.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.ends_with(
            "23 frames, 23 RoCE, ICRC ok 5, ICRC bad 0, malformed 0, not RoCE 0 \
             (18 cut short by the capture: ICRC not checked)\n"
        ),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let out = uroce(&["decode", "/nonexistent/uroce.pcap"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("uroce: /nonexistent/uroce.pcap: "), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn help_lists_the_decode_subcommand() {
    let out = uroce(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("decode"));
}

//! A pcap of a uroce transfer decodes in wireshark's dissector (tshark) as RoCE: every frame has
//! an InfiniBand BTH with the opcode uroce's own decoder reads, no InfiniBand layer is malformed,
//! and every frame's ICRC verifies. (Wireshark guesses protocols inside RDMA payloads; a guess
//! that fails on our test data is reported as a payload-layer malformation, not a RoCE one.)

use std::process::Command;

#[test]
fn tshark_decodes_a_uroce_capture_as_roce() {
    if Command::new("tshark").arg("--version").output().is_err() {
        eprintln!("SKIPPED tshark_decodes_a_uroce_capture_as_roce: tshark is not installed (scripts/test.sh installs it when root)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("uroce-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("demo.pcap");
    let out = Command::new(env!("CARGO_BIN_EXE_uroce"))
        .args([
            "demo",
            "--a",
            "127.0.22.1",
            "--b",
            "127.0.22.2",
            "--mib",
            "16",
            "--pcap",
        ])
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Our decoder: every frame is RoCE with a good ICRC.
    let ours = Command::new(env!("CARGO_BIN_EXE_uroce"))
        .arg("decode")
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(ours.status.success());
    let ours = String::from_utf8_lossy(&ours.stdout);
    let frames: Vec<&str> = ours.lines().filter(|l| l.contains(" → ")).collect();
    assert!(frames.len() > 4000, "only {} frames", frames.len());
    assert!(
        frames.iter().all(|l| l.ends_with("ICRC ok")),
        "a frame with a bad ICRC"
    );

    // Wireshark's dissector: opcode of every frame, and malformations by layer.
    let ts = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "infiniband.bth.opcode",
            "-e",
            "_ws.col.info",
        ])
        .output()
        .unwrap();
    assert!(
        ts.status.success(),
        "{}",
        String::from_utf8_lossy(&ts.stderr)
    );
    let text = String::from_utf8_lossy(&ts.stdout);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(
        rows.len(),
        frames.len(),
        "tshark and uroce see the same frames"
    );
    for (i, row) in rows.iter().enumerate() {
        let (op, info) = row.split_once('|').unwrap_or((row, ""));
        assert!(
            !op.is_empty(),
            "frame {} not dissected as InfiniBand: {row}",
            i + 1
        );
        assert!(
            !info.contains("Malformed Packet: InfiniBand"),
            "frame {}: {row}",
            i + 1
        );
    }
    let payload_guesses = rows.iter().filter(|r| r.contains("Malformed")).count();
    eprintln!("{} frames dissected as RoCE; {payload_guesses} RDMA payloads wireshark mis-guessed as another protocol", rows.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

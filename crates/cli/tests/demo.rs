//! `uroce demo`, the README's main job, runs to completion as an ordinary process: data checked,
//! table printed, exit status 0.

use std::process::Command;

#[test]
fn demo_moves_checked_data_and_prints_the_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_uroce"))
        .args([
            "demo",
            "--a",
            "127.0.20.1",
            "--b",
            "127.0.20.2",
            "--mib",
            "16",
        ])
        .output()
        .expect("run uroce demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "RDMA WRITE",
        "RDMA READ",
        "SEND 4 KiB",
        "latency: median",
        "all data verified",
    ] {
        assert!(stdout.contains(needle), "missing '{needle}' in:\n{stdout}");
    }
}

#[test]
fn demo_refuses_a_bad_mtu() {
    let out = Command::new(env!("CARGO_BIN_EXE_uroce"))
        .args([
            "demo",
            "--a",
            "127.0.21.1",
            "--b",
            "127.0.21.2",
            "--mtu",
            "1000",
        ])
        .output()
        .expect("run uroce demo");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MTU 1000"));
}

/// The demo needs no privilege: as root, run it again as `nobody`.
#[test]
fn demo_runs_without_root() {
    let bin = env!("CARGO_BIN_EXE_uroce");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let can = root
        && Command::new("runuser")
            .args(["-u", "nobody", "--", "test", "-x", bin])
            .status()
            .is_ok_and(|s| s.success());
    if !can {
        println!("demo_runs_without_root: skipped: needs root (to switch to nobody) and a binary nobody can run");
        return;
    }
    let out = Command::new("runuser")
        .args([
            "-u",
            "nobody",
            "--",
            bin,
            "demo",
            "--a",
            "127.0.25.1",
            "--b",
            "127.0.25.2",
            "--mib",
            "16",
        ])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run uroce demo as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo as nobody failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all data verified"), "{stdout}");
}

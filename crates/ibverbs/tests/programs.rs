//! Debian's unmodified verbs programs on this library, between two uroce processes on one
//! host (127.0.71.1 and 127.0.71.2 on loopback, addresses no other test uses), each run as
//! the unprivileged user `nobody` when the test runs as root (so "no root needed" is what is
//! shown), with `LD_LIBRARY_PATH` pointing at the built `libibverbs.so.1`.
//!
//! Each program pair goes through `scripts/ibverbs/pair.sh` (the same runner the rxe guest
//! matrix uses) and must exit 0 on both ends with its result line printed. Skipped, and said
//! so, when rdma-core's or perftest's programs are not installed (`scripts/test.sh` installs
//! them). The pairs run one at a time: each moves real traffic with real RC timers.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::lib_dir;

const SERVER_IP: &str = "127.0.71.1";
const CLIENT_IP: &str = "127.0.71.2";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The command prefix for one end: as `nobody` if we are root, with the library and device.
fn prefix(lib: &Path, ip: &str) -> String {
    let drop = if is_root() {
        "setpriv --reuid nobody --regid nogroup --clear-groups "
    } else {
        ""
    };
    format!(
        "{drop}env LD_LIBRARY_PATH={} UROCE_DEVICES=uroce0={ip}",
        lib.display()
    )
}

fn installed(programs: &[&str]) -> bool {
    let missing: Vec<_> = programs
        .iter()
        .filter(|p| !Path::new("/usr/bin").join(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    println!("SKIPPED: not installed: {missing:?} (apt-get install ibverbs-utils perftest)");
    false
}

/// Runs one pair and checks both ends completed and the client printed `result`.
fn pair(lib: &Path, logs: &Path, name: &str, args: &[&str], result: &str) -> Result<(), String> {
    let out = Command::new(repo().join("scripts/ibverbs/pair.sh"))
        .args([
            name,
            &prefix(lib, SERVER_IP),
            &prefix(lib, CLIENT_IP),
            SERVER_IP,
            "--",
        ])
        .args(args)
        .env("PAIR_LOGDIR", logs)
        .output()
        .map_err(|e| format!("{name}: pair.sh: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{name}: {text}"));
    }
    let client = std::fs::read_to_string(logs.join(format!("{name}.client.log")))
        .map_err(|e| format!("{name}: client log: {e}"))?;
    if !client.contains(result) {
        return Err(format!(
            "{name}: no {result:?} in the client's output:\n{client}"
        ));
    }
    println!("{}", text.trim());
    Ok(())
}

#[test]
fn device_listing_as_nobody() {
    if !installed(&["ibv_devices", "ibv_devinfo"]) {
        return;
    }
    let lib = lib_dir();
    let run = |cmd: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} {cmd}", prefix(&lib, SERVER_IP)))
            .output()
            .expect("run");
        assert!(out.status.success(), "{cmd}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = run("ibv_devices");
    assert!(list.contains("uroce0"), "{list}");
    let info = run("ibv_devinfo -v");
    assert!(info.contains("PORT_ACTIVE"), "{info}");
    assert!(info.contains("link_layer:\t\tEthernet"), "{info}");
    assert!(
        info.contains("GID[  1]:\t\t::ffff:127.0.71.1, RoCE v2"),
        "{info}"
    );
}

#[test]
fn programs_between_two_uroce_processes() {
    let progs = [
        "ibv_rc_pingpong",
        "ibv_uc_pingpong",
        "ibv_ud_pingpong",
        "ibv_srq_pingpong",
        "ib_write_bw",
        "ib_read_bw",
        "ib_send_bw",
        "ib_atomic_bw",
        "ib_write_lat",
        "ib_send_lat",
    ];
    if !installed(&progs) {
        return;
    }
    let lib = lib_dir();
    let logs = std::env::temp_dir().join(format!("uroce-ibverbs-{}", std::process::id()));
    // A side-channel TCP port of our own (the default 18515 may be in use by other tests).
    let port = (20000 + std::process::id() % 20000).to_string();
    let pp = |p: &'static str| -> Vec<String> {
        vec![
            p.into(),
            "-g".into(),
            "1".into(),
            "-n".into(),
            "200".into(),
            "-c".into(),
            "-p".into(),
            port.clone(),
        ]
    };
    let pt = |p: &'static str, n: &str| -> Vec<String> {
        vec![
            p.into(),
            "-x".into(),
            "1".into(),
            "-n".into(),
            n.into(),
            "-p".into(),
            port.clone(),
        ]
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("rc_pingpong", pp("ibv_rc_pingpong"), "iters in"),
        (
            "rc_pingpong_events",
            [pp("ibv_rc_pingpong"), vec!["-e".into()]].concat(),
            "iters in",
        ),
        ("uc_pingpong", pp("ibv_uc_pingpong"), "iters in"),
        // Above the 1024-byte default path MTU: UD QPs must take the port's MTU, as on rxe.
        (
            "ud_pingpong",
            [pp("ibv_ud_pingpong"), vec!["-s".into(), "4096".into()]].concat(),
            "iters in",
        ),
        ("srq_pingpong", pp("ibv_srq_pingpong"), "iters in"),
        ("write_bw", pt("ib_write_bw", "1000"), "BW average"),
        ("read_bw", pt("ib_read_bw", "1000"), "BW average"),
        ("send_bw", pt("ib_send_bw", "1000"), "BW average"),
        ("atomic_bw", pt("ib_atomic_bw", "1000"), "BW average"),
        ("write_lat", pt("ib_write_lat", "200"), "t_avg"),
        ("send_lat", pt("ib_send_lat", "200"), "t_avg"),
    ];
    let mut failed = Vec::new();
    for (name, args, result) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(e) = pair(&lib, &logs, name, &args, result) {
            failed.push(e);
        }
    }
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
    let _ = std::fs::remove_dir_all(&logs);
}

//! Asynchronous events through the C ABI: `c/async_event.c`, compiled against the system's
//! verbs.h and linked with `-libverbs`, runs on this library (`LD_LIBRARY_PATH`), provokes a
//! QP error (an RC peer that never answers) and must see `IBV_EVENT_QP_FATAL` and
//! `IBV_EVENT_CQ_ERR` by `poll(2)` on `async_fd`, then acknowledge them so the destroys
//! return. Skipped, and says so, without the C compiler or libibverbs-dev.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::lib_dir;

#[test]
fn qp_error_raises_async_events_on_a_pollable_fd() {
    if !Path::new("/usr/include/infiniband/verbs.h").exists() {
        println!("SKIPPED: verbs.h missing (apt-get install libibverbs-dev; scripts/test.sh does)");
        return;
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/async_event.c");
    let dir = std::env::temp_dir().join(format!("uroce-async-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("async_event");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-O1", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-libverbs")
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 127.0.73.1/.2: addresses no other test uses; nobody listens on .2.
    let run = Command::new(&exe)
        .arg("127.0.73.2")
        .env("LD_LIBRARY_PATH", lib_dir())
        .env("UROCE_DEVICES", "uroce0=127.0.73.1")
        .output()
        .expect("run the program");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.trim() == "ok",
        "{:?}\nstdout: {stdout}\nstderr: {}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

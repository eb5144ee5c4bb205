//! `ibv_poll_cq` from a pthread key destructor: `c/poll_at_thread_exit.c`, compiled against
//! the system's verbs.h and linked with `-libverbs`, runs on this library
//! (`LD_LIBRARY_PATH`). glibc runs an exiting thread's key destructors after its
//! thread_local destructors, so the library's per-thread poll buffer is gone by then; the
//! poll must still return 0 (an empty CQ) instead of aborting the program (it did, with
//! "thread caused non-unwinding panic", before the buffer got a fallback). Skipped, and says
//! so, without the C compiler or libibverbs-dev.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::lib_dir;

#[test]
fn a_poll_after_the_threads_locals_are_gone_still_answers() {
    if !Path::new("/usr/include/infiniband/verbs.h").exists() {
        println!("SKIPPED: verbs.h missing (apt-get install libibverbs-dev; scripts/test.sh does)");
        return;
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/poll_at_thread_exit.c");
    let dir = std::env::temp_dir().join(format!("uroce-thread-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("poll_at_thread_exit");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-O1", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(["-libverbs", "-lpthread"])
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 127.0.74.1: an address no other test uses.
    let run = Command::new(&exe)
        .env("LD_LIBRARY_PATH", lib_dir())
        .env("UROCE_DEVICES", "uroce0=127.0.74.1")
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

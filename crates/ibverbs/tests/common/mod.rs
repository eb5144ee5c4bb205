//! What the ibverbs integration tests share. Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A directory holding `libibverbs.so.1` → the cdylib cargo built with this test (in
/// target/<profile>/deps, next to the test binary: `cargo test` does not copy it up). Made once
/// per test process: the tests run in parallel threads, and a remove-then-link by each raced
/// (EEXIST).
pub fn lib_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let deps = exe.parent().expect("target/<profile>/deps");
        let so = deps.join("libibverbs.so");
        assert!(
            so.exists(),
            "cargo builds the cdylib with the tests: {so:?}"
        );
        let dir = deps.join("ibverbs-ld");
        std::fs::create_dir_all(&dir).expect("create the library directory");
        // Link under a private name, then rename over: atomic even if another test binary
        // of this crate does the same at the same time.
        let tmp = dir.join(format!("libibverbs.so.1.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&so, &tmp).expect("link libibverbs.so.1");
        std::fs::rename(&tmp, dir.join("libibverbs.so.1")).expect("rename libibverbs.so.1");
        dir
    })
    .clone()
}

/// Compiles `tests/c/<name>.c` against the system's verbs.h (linked with `-libverbs` and
/// `libs`), runs it on this library with `args` and `UROCE_DEVICES=devices`, and asserts that
/// it exits 0 printing "ok". Says SKIPPED and returns without libibverbs-dev.
pub fn run_c_program(name: &str, libs: &[&str], args: &[&str], devices: &str) {
    if !Path::new("/usr/include/infiniband/verbs.h").exists() {
        println!("SKIPPED: verbs.h missing (apt-get install libibverbs-dev; scripts/test.sh does)");
        return;
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let dir = std::env::temp_dir().join(format!("uroce-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join(name);
    let mut flags = vec!["-O1", "-Wall", "-libverbs"];
    flags.extend_from_slice(libs);
    compile_c(&src, &exe, &flags);
    let run = Command::new(&exe)
        .args(args)
        .env("LD_LIBRARY_PATH", lib_dir())
        .env("UROCE_DEVICES", devices)
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

/// Compiles the C program `src` into `exe` with `$CC` (default `cc`) and `flags` after the
/// source, and asserts that the compiler succeeded.
pub fn compile_c(src: &Path, exe: &Path, flags: &[&str]) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .arg("-o")
        .arg(exe)
        .arg(src)
        .args(flags)
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "{cc} failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! What the ibverbs integration tests share.

use std::path::PathBuf;
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

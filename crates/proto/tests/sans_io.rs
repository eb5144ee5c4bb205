//! The engine must stay sans-IO: no clock, no sockets, no threads, no unsafe. This scans its
//! source so a change that adds one fails here, not in review.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).expect("read"),
            ));
        }
    }
}

#[test]
fn engine_reads_no_clock_opens_no_socket_spawns_no_thread() {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(
        files.len() >= 8,
        "expected the engine's modules, found {}",
        files.len()
    );
    let forbidden = [
        "std::time::Instant",
        "SystemTime",
        "UdpSocket",
        "TcpStream",
        "std::net::Tcp",
        "std::thread",
        "thread::spawn",
        "std::fs",
        "unsafe ",
    ];
    for (path, text) in &files {
        for f in forbidden {
            assert!(!text.contains(f), "{path} mentions `{f}`");
        }
    }
    let lib = files
        .iter()
        .find(|(p, _)| p.ends_with("lib.rs"))
        .expect("lib.rs");
    assert!(lib.1.contains("#![forbid(unsafe_code)]"));
}

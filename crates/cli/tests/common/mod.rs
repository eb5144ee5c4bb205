//! Running `uroce pingpong` server/client pairs from tests: start the server, wait for its
//! "listening" line on stderr (no sleeps), start the client, collect both outputs with a
//! deadline, and check the summary lines and the exchanged addresses.

#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_uroce");

/// How long one side may take before it is killed.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// A running `uroce`.
pub struct Proc {
    child: Child,
    stdout: Receiver<String>,
    stderr_lines: Receiver<String>,
    stderr: JoinHandle<String>,
    what: String,
}

/// What a finished `uroce` printed.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status (`None` if it was killed at the deadline).
    pub status: Option<ExitStatus>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line, for messages.
    pub what: String,
}

impl Outcome {
    /// Whether it exited 0.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` → {:?}\n--- stdout\n{}--- stderr\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

/// Starts `prefix... BIN args...` (a prefix such as `ip netns exec NS`).
pub fn spawn(prefix: &[&str], args: &[String]) -> Proc {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{} {} {}", prefix.join(" "), "uroce", args.join(" "));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let (otx, orx) = channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = otx.send(s);
    });
    let err = child.stderr.take().unwrap();
    let (ltx, lrx) = channel();
    let stderr = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            let _ = ltx.send(line);
        }
        all
    });
    Proc {
        child,
        stdout: orx,
        stderr_lines: lrx,
        stderr,
        what,
    }
}

impl Proc {
    /// Waits until a stderr line contains `needle`; false if the process ended or the
    /// deadline passed first.
    pub fn wait_for_stderr(&self, needle: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Waits until a stderr line contains `needle` and returns it; `None` if the process ended
    /// or the deadline passed first.
    pub fn stderr_line(&self, needle: &str, within: Duration) -> Option<String> {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits for the end (killing it at `DEADLINE`) and returns what it printed.
    pub fn finish(mut self) -> Outcome {
        let (stdout, killed) = match self.stdout.recv_timeout(DEADLINE) {
            Ok(s) => (s, false),
            Err(_) => {
                let _ = self.child.kill();
                let s = self
                    .stdout
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_default();
                (s + "[killed at the deadline]\n", true)
            }
        };
        let status = self.child.wait().ok().filter(|_| !killed);
        let stderr = self.stderr.join().unwrap_or_default();
        Outcome {
            status,
            stdout,
            stderr,
            what: self.what,
        }
    }

    /// Whether it has ended (without waiting).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Kills it (a server whose client never came).
    pub fn kill(mut self) -> Outcome {
        let _ = self.child.kill();
        self.finish()
    }
}

/// One side's address line: (QPN, PSN, GID).
fn addr_lines(stdout: &str, which: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(which))
        .map(|l| {
            let field = |key: &str| {
                let i = l.find(key).unwrap_or_else(|| panic!("{key} in {l:?}")) + key.len();
                l[i..]
                    .split([',', ':', ' '])
                    .find(|s| !s.is_empty())
                    .unwrap()
                    .to_string()
            };
            let gid = l[l.find("GID ").unwrap() + 4..].trim().to_string();
            (field("QPN "), field("PSN "), gid)
        })
        .collect()
}

/// Runs a server (`server_prefix`, `server_args`) and a client, both with `common` options,
/// and checks: both exit 0, both print the two summary lines with `size * iters * 2` bytes,
/// and each side's remote addresses are the other's local ones. Returns both outcomes.
pub fn pair(
    server_prefix: &[&str],
    server_args: &[String],
    client_prefix: &[&str],
    client_args: &[String],
    size: u64,
    iters: u64,
) -> (Outcome, Outcome) {
    let server = spawn(server_prefix, server_args);
    if !server.wait_for_stderr("listening", Duration::from_secs(60)) {
        let o = server.kill();
        panic!("the server did not start listening\n{o}");
    }
    let client = spawn(client_prefix, client_args).finish();
    let server = if client.ok() {
        server.finish()
    } else {
        // The server may wait for a client that failed: don't wait for it long.
        server.kill()
    };
    assert!(client.ok(), "client failed\n{client}\n{server}");
    assert!(server.ok(), "server failed\n{server}\n{client}");
    let bytes = format!("{} bytes in ", size * iters * 2);
    let iters_line = format!("{iters} iters in ");
    for o in [&client, &server] {
        let lines: Vec<&str> = o.stdout.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&bytes) && l.ends_with(" Mbit/sec")),
            "no bytes summary line\n{o}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&iters_line) && l.ends_with(" usec/iter")),
            "no iters summary line\n{o}"
        );
        assert!(!o.stdout.contains("invalid data"), "{o}");
    }
    let (cl, cr) = (
        addr_lines(&client.stdout, "local address:"),
        addr_lines(&client.stdout, "remote address:"),
    );
    let (sl, sr) = (
        addr_lines(&server.stdout, "local address:"),
        addr_lines(&server.stdout, "remote address:"),
    );
    assert!(!cl.is_empty(), "no address lines\n{client}");
    assert_eq!(
        cl, sr,
        "the server's remote addresses are the client's local ones"
    );
    assert_eq!(
        sl, cr,
        "the client's remote addresses are the server's local ones"
    );
    (server, client)
}

/// `s` as owned strings.
pub fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

/// Asserts of one `uroce bench --json` result that at least `n` sends went from a socket
/// connected to the peer and `n` datagrams arrived on one (`--connected-tx`), that (on a
/// WRITE ping-pong of `n` > 128 round trips) receives were cut by the lengths the packets
/// state once 64 in a row allowed it, and that the run was clean with no ICRC drop (a packet
/// resealed or cut wrong would be one).
pub fn assert_connected_and_clean(v: &serde_json::Value, n: u64) {
    let h = &v["health"];
    assert!(h["connected_sends"].as_u64().unwrap_or(0) >= n, "{v}");
    assert!(h["connected_receives"].as_u64().unwrap_or(0) >= n, "{v}");
    assert!(
        h["connected_header_cuts"].as_u64().unwrap_or(0) >= n - 128,
        "{v}"
    );
    assert_eq!(
        (h["clean"].as_bool(), h["icrc_drops"].as_u64()),
        (Some(true), Some(0)),
        "{v}"
    );
}

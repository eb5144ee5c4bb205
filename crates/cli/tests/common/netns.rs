//! Two network namespaces for tests (`scripts/netns.sh`), and the root check that skips such
//! tests for ordinary users.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Namespace tests of one test binary run one at a time: each runs real transfers with real
/// timeouts (e.g. RC's 67 ms ACK timeout × 7 retries), and several at once on 2 cores starve
/// each other's processes long enough to exhaust those retries.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/netns.sh")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Skips (returns false, saying so) when not root.
pub fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    println!("{test}: skipped: the netns tests need root (scripts/netns.sh creates namespaces)");
    false
}

/// Two namespaces NAME-a and NAME-b, removed on drop (also when the test fails).
pub struct Netns {
    name: String,
    _turn: MutexGuard<'static, ()>,
}

impl Netns {
    /// `scripts/netns.sh up NAME N`.
    pub fn up(name: &str, n: u8) -> Netns {
        let ns = Netns {
            name: name.to_string(),
            _turn: ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner),
        };
        let o = Command::new("bash")
            .arg(script())
            .args(["up", name, &n.to_string()])
            .output()
            .expect("run scripts/netns.sh");
        assert!(
            o.status.success(),
            "scripts/netns.sh up {name} {n}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        ns
    }

    /// The first namespace.
    pub fn a(&self) -> String {
        format!("{}-a", self.name)
    }

    /// The second namespace.
    pub fn b(&self) -> String {
        format!("{}-b", self.name)
    }

    /// `ip netns exec NAME-side` as a command prefix.
    pub fn exec(&self, side: &str) -> Vec<String> {
        super::strings(&["ip", "netns", "exec", &format!("{}-{side}", self.name)])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.name])
            .status();
    }
}

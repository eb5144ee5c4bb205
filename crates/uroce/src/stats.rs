//! Counters published for `uroce stat`: each open device writes its device, driver and per-QP
//! counters to a small text file, at most once a second, and removes it when closed. The
//! directory is `$UROCE_STATS_DIR`, else `/tmp/uroce-stats-<uid>`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use uroce_proto::Instant;

use crate::DriverStats;

/// Where devices publish their counters.
pub fn stats_dir() -> PathBuf {
    match std::env::var_os("UROCE_STATS_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("uroce-stats-{}", nix::unistd::getuid())),
    }
}

/// The published files: (path, contents), sorted by path. Files of processes that died without
/// removing theirs are skipped and deleted.
pub fn read_all() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(stats_dir()) else {
        return out;
    };
    for e in rd.flatten() {
        let path = e.path();
        let pid = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        let alive = pid
            .is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok());
        if !alive {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if let Ok(s) = std::fs::read_to_string(&path) {
            out.push((path, s));
        }
    }
    out.sort();
    out
}

pub(crate) struct StatsFile {
    path: PathBuf,
    next: u64,
}

impl StatsFile {
    pub(crate) fn new(local: SocketAddr) -> Option<StatsFile> {
        let dir = stats_dir();
        std::fs::create_dir_all(&dir).ok()?;
        let name =
            format!("{}-{}-{}", std::process::id(), local.ip(), local.port()).replace(':', "_");
        Some(StatsFile {
            path: dir.join(name),
            next: 0,
        })
    }

    /// Whether a second has passed since the last write (checked before the driver's
    /// counters are gathered: a busy poll asks on every pass).
    pub(crate) fn due(&self, now: Instant) -> bool {
        now.as_nanos() >= self.next
    }

    /// Writes the counters if a second has passed since the last write.
    pub(crate) fn maybe_write(
        &mut self,
        now: Instant,
        local: SocketAddr,
        eng: &uroce_proto::Device,
        drv: &DriverStats,
    ) {
        if !self.due(now) {
            return;
        }
        self.next = now.as_nanos() + 1_000_000_000;
        let mut s = String::new();
        let _ = writeln!(s, "device {local} pid {}", std::process::id());
        let _ = writeln!(s, "  {:?}", eng.counters());
        let _ = writeln!(s, "  {drv:?}");
        let mut qps: Vec<_> = eng.qps().collect();
        qps.sort_by_key(|q| q.qpn());
        for q in qps {
            let _ = writeln!(
                s,
                "  qp {:#08x} {:?} {:?} {:?}",
                q.qpn(),
                q.qp_type(),
                q.state(),
                q.counters()
            );
        }
        // Write then rename, so a reader never sees half a file.
        let tmp = self.path.with_extension("tmp");
        if std::fs::write(&tmp, s).is_ok() {
            let _ = std::fs::rename(&tmp, &self.path);
        }
    }
}

impl Drop for StatsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

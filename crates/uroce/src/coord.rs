//! Coordination of the engines that share one address (`steer.rs`): which slot (QPN range)
//! each owns and which reuseport-group index its socket has, among the processes of one user.
//!
//! One directory per user, network namespace, address and port (`$XDG_RUNTIME_DIR/uroce/…` or
//! `/tmp/uroce-$UID/…`) holds `group.lock`, taken with `flock` around every membership change,
//! and `slot.N`, one per slot: an engine holds an exclusive `flock` on its slot file for its
//! life and writes its socket's current group index into it. The kernel drops a dead process's
//! locks (`kill -9` included), so a slot whose file can be locked is free: no daemon, no clean-up
//! step, no PID reuse question. The network namespace is part of the name because each has its
//! own reuseport groups while `/tmp` is shared.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Slots 0..SLOTS are handed out; slot 255 is the probes' (`steer.rs`).
pub(crate) const SLOTS: u8 = 255;

/// The coordination directory of one address.
#[derive(Debug, Clone)]
pub(crate) struct GroupDir {
    dir: PathBuf,
}

/// `group.lock` held: membership may change.
pub(crate) struct GroupLock<'a> {
    dir: &'a Path,
    _lock: Flock<File>,
}

/// A slot owned for as long as this value lives.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The slot number.
    pub n: u8,
    file: Flock<File>,
}

fn user_dir() -> io::Result<PathBuf> {
    let uid = nix::unistd::getuid();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("uroce"),
        _ => PathBuf::from(format!("/tmp/uroce-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // A directory in /tmp someone else made (or a symlink) must not steer our traffic.
    let m = std::fs::symlink_metadata(&dir)?;
    if !m.is_dir() || m.uid() != uid.as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a directory of ours", dir.display()),
        ));
    }
    Ok(dir)
}

/// The network namespace's inode: `/proc/self/ns/net` reads `net:[4026531840]`.
fn netns_id() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|p| {
            let s = p.to_string_lossy().into_owned();
            let digits: String = s.chars().filter(char::is_ascii_digit).collect();
            (!digits.is_empty()).then_some(digits)
        })
        .unwrap_or_else(|| "unknown".into())
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

fn flock_err((_, e): (File, Errno)) -> io::Error {
    io::Error::from(e)
}

impl GroupDir {
    /// The directory for `local` in this network namespace (created if missing).
    pub(crate) fn for_addr(local: SocketAddr) -> io::Result<GroupDir> {
        let name = format!("net{}-{}-{}", netns_id(), local.ip(), local.port()).replace(':', "_");
        let dir = user_dir()?.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(GroupDir { dir })
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Takes `group.lock` (waits for another engine's membership change to finish).
    pub(crate) fn lock(&self) -> io::Result<GroupLock<'_>> {
        let f = open_rw(&self.dir.join("group.lock"))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(flock_err)?;
        Ok(GroupLock {
            dir: &self.dir,
            _lock: lock,
        })
    }
}

impl GroupLock<'_> {
    fn slot_path(&self, n: u8) -> PathBuf {
        self.dir.join(format!("slot.{n}"))
    }

    /// Claims the lowest free slot.
    pub(crate) fn claim(&self) -> io::Result<Slot> {
        for n in 0..SLOTS {
            let f = open_rw(&self.slot_path(n))?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(mut file) => {
                    // A dead owner's index is stale.
                    file.set_len(0)?;
                    file.rewind()?;
                    return Ok(Slot { n, file });
                }
                Err((_, Errno::EWOULDBLOCK)) => continue,
                Err(e) => return Err(flock_err(e)),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("all {SLOTS} slots of {} are taken", self.dir.display()),
        ))
    }

    /// Records `index` as slot `n`'s group index (our own slot, or one the kernel just moved).
    pub(crate) fn record(&self, slot: &mut Slot, index: Option<u32>) -> io::Result<()> {
        write_index(&mut slot.file, index)
    }

    /// Records `index` for another live engine's slot `n` (its socket was moved by ours leaving).
    pub(crate) fn record_other(&self, n: u8, index: u32) -> io::Result<()> {
        let mut f = open_rw(&self.slot_path(n))?;
        write_index(&mut f, Some(index))
    }

    /// The live slots (`me` included, its file read through its own handle) and the group
    /// index each recorded. A slot file nobody holds belongs to a dead engine and is left out.
    pub(crate) fn members(&self, me: &mut Slot) -> io::Result<Vec<(u8, Option<u32>)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_prefix("slot."))
                .and_then(|s| s.parse::<u8>().ok())
            else {
                continue;
            };
            if n == me.n {
                out.push((n, read_index(&mut me.file)?));
                continue;
            }
            let f = open_rw(&entry.path())?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                // Nobody holds it: free (the lock is dropped at once).
                Ok(_) => {}
                Err((mut f, Errno::EWOULDBLOCK)) => out.push((n, read_index(&mut f)?)),
                Err(e) => return Err(flock_err(e)),
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

impl Slot {
    /// The index recorded in our slot file (another engine records ours when its leaving
    /// moved our socket).
    pub(crate) fn recorded(&mut self) -> io::Result<Option<u32>> {
        read_index(&mut self.file)
    }
}

fn write_index(f: &mut File, index: Option<u32>) -> io::Result<()> {
    f.set_len(0)?;
    f.rewind()?;
    if let Some(i) = index {
        writeln!(f, "{i} {}", std::process::id())?;
    }
    Ok(())
}

fn read_index(f: &mut File) -> io::Result<Option<u32>> {
    let mut s = String::new();
    f.rewind()?;
    f.read_to_string(&mut s)?;
    Ok(s.split_whitespace().next().and_then(|t| t.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_freed_when_dropped() {
        let dir = GroupDir::for_addr("127.0.93.1:9".parse().expect("addr")).expect("dir");
        let g = dir.lock().expect("lock");
        let mut a = g.claim().expect("a");
        let b = g.claim().expect("b");
        assert_ne!(a.n, b.n);
        g.record(&mut a, Some(7)).expect("record");
        let m = g.members(&mut a).expect("members");
        assert!(m.contains(&(a.n, Some(7))), "{m:?}");
        assert!(m.contains(&(b.n, None)), "{m:?}");
        let freed = b.n;
        drop(b);
        let m = g.members(&mut a).expect("members");
        assert!(!m.iter().any(|&(n, _)| n == freed), "{m:?}");
        let c = g.claim().expect("c");
        assert_eq!(c.n, freed, "the freed slot is handed out again");
    }
}

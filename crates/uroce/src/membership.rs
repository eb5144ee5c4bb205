//! One engine's life in its address's reuseport group (see `steer.rs` for the mechanism and
//! `coord.rs` for the directory): join (claim a slot, learn the socket's group index from the
//! kernel, rebuild the group's program), the periodic check that repairs the table after a
//! member died, and a graceful leave.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::coord::{GroupDir, GroupLock, Slot};
use crate::steer::{self, Prober, SteerShared};

/// An engine's membership; the engine's socket stays in the group while this lives.
pub(crate) struct Membership {
    dir: GroupDir,
    slot: Mutex<Slot>,
    /// A handle on the engine's socket (same socket, another descriptor).
    sock: UdpSocket,
    local: SocketAddr,
    pub shared: Arc<SteerShared>,
    prober: Mutex<Prober>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Claims a slot for an engine about to bind `local`.
pub(crate) fn claim(local: SocketAddr) -> io::Result<(GroupDir, Slot)> {
    let dir = GroupDir::for_addr(local)?;
    let slot = dir.lock()?.claim()?;
    Ok((dir, slot))
}

impl Membership {
    /// The membership of an engine whose socket `sock` (already bound into the group) owns
    /// `slot`. Nothing is steered to it before [`Membership::establish`].
    pub(crate) fn new(
        dir: GroupDir,
        slot: Slot,
        sock: UdpSocket,
        local: SocketAddr,
    ) -> io::Result<Membership> {
        let prober = Prober::new(local, slot.n)?;
        Ok(Membership {
            shared: Arc::new(SteerShared::new(slot.n)),
            dir,
            slot: Mutex::new(slot),
            sock,
            local,
            prober: Mutex::new(prober),
            stop: AtomicBool::new(false),
        })
    }

    /// Waits until `done` holds for the probe nonces received so far, running `pump` (which
    /// receives, when no progress thread does) between looks.
    fn wait_probes(&self, pump: &dyn Fn(), mut done: impl FnMut(&[u64]) -> bool) -> bool {
        let deadline = Instant::now() + steer::PROBE_WAIT;
        let mut seen = Vec::new();
        loop {
            pump();
            seen.extend(self.shared.take_seen());
            if done(&seen) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Rebuilds the group's program from every live engine's recorded index and attaches it.
    fn attach(&self, g: &GroupLock<'_>, slot: &mut Slot, skip_self: bool) -> io::Result<()> {
        let me = slot.n;
        let table: Vec<(u8, u32)> = g
            .members(slot)?
            .into_iter()
            .filter(|&(n, _)| !(skip_self && n == me))
            .filter_map(|(n, i)| Some((n, i?)))
            .collect();
        crate::sys::attach_reuseport_cbpf(&self.sock, &steer::program(&table))
    }

    /// Learns this socket's group index from the kernel, records it and rebuilds the group's
    /// program, then checks with a probe through our slot that it reaches us.
    pub(crate) fn establish(&self, pump: &dyn Fn()) -> io::Result<u32> {
        let g = self.dir.lock()?;
        let mut slot = lock(&self.slot);
        let mut last = None;
        for _ in 0..3 {
            // The identity branch must be in place: a group without a program picks sockets
            // by hash, and all the probes (one source port) would land on one socket.
            self.attach(&g, &mut slot, false)?;
            let members = g.members(&mut slot)?.len() as u32;
            // Sockets of engines that are exiting may still be in the group: probe beyond.
            let base = lock(&self.prober).send_identity(members + 8)?;
            let mut index = None;
            if !self.wait_probes(pump, |s| {
                index = steer::index_from(base, s);
                index.is_some()
            }) {
                continue;
            }
            let Some(i) = index else { continue };
            g.record(&mut slot, Some(i))?;
            self.shared.index.store(i, Ordering::Relaxed);
            self.attach(&g, &mut slot, false)?;
            let n = lock(&self.prober).send_self()?;
            if self.wait_probes(pump, |s| s.contains(&n)) {
                tracing::debug!(slot = slot.n, index = i, local = %self.local, "steering set");
                return Ok(i);
            }
            last = Some(i);
        }
        Err(io::Error::other(format!(
            "steering on {}: could not verify slot {}'s group index (last seen {last:?})",
            self.local, slot.n
        )))
    }

    /// Whether our table entry is right: the index recorded for us (a leaving engine may have
    /// recorded the kernel's move of our socket) is below the number of live engines, and a
    /// probe through our slot's entry reaches us (a slow probe costs a needless repair). The first test
    /// matters because an index out of range makes the kernel choose by hash, which may pick
    /// our socket for the probe by chance.
    fn check(&self, pump: &dyn Fn()) -> io::Result<bool> {
        {
            let g = self.dir.lock()?;
            let mut slot = lock(&self.slot);
            let live = g.members(&mut slot)?.len() as u32;
            match slot.recorded()? {
                Some(i) if i < live => {
                    // Another engine's leave moved our socket and recorded it; the program it
                    // left may still name our old index (see `leave`): attach the exact one.
                    if self.shared.index.swap(i, Ordering::Relaxed) != i {
                        self.attach(&g, &mut slot, false)?;
                    }
                }
                _ => return Ok(false),
            }
        }
        let n = lock(&self.prober).send_self()?;
        Ok(self.wait_probes(pump, |s| s.contains(&n)))
    }

    /// Checks every [`steer::CHECK_EVERY`] and repairs the table when our entry is wrong,
    /// until [`Membership::leave`].
    pub(crate) fn spawn_checker(
        self: &Arc<Self>,
        pump: Box<dyn Fn() + Send>,
    ) -> io::Result<JoinHandle<()>> {
        let m = self.clone();
        std::thread::Builder::new()
            .name(format!("uroce-steer-{}", m.shared.slot))
            .spawn(move || {
                while !m.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(steer::CHECK_EVERY);
                    if m.stop.load(Ordering::Acquire) {
                        break;
                    }
                    match m.check(&*pump) {
                        Ok(true) => {}
                        Ok(false) => {
                            m.shared.repairs.fetch_add(1, Ordering::Relaxed);
                            match m.establish(&*pump) {
                                Ok(i) => tracing::info!(
                                    slot = m.shared.slot,
                                    index = i,
                                    "steering repaired"
                                ),
                                Err(e) => tracing::warn!("steering repair failed: {e}"),
                            }
                        }
                        Err(e) => tracing::warn!("steering check failed: {e}"),
                    }
                }
            })
    }

    /// Asks the checker to stop (it exits within one period; [`Membership::leave`] does not
    /// wait for it).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Leaves the group, detaching our socket at once by connecting it (`udp_lib_rehash`
    /// detaches a connected socket from its group; closing would be delayed while io_uring
    /// still holds the file). The kernel then moves the group's last socket into our index
    /// (`reuseport_detach_sock`), and no program is right on both sides of that instant: one
    /// naming the moved socket's new index, attached before, sends its packets to our socket
    /// until we are gone, where nobody reads them.
    /// - When one engine stays, we attach the table without us (the stayer at its current
    ///   index), detach, then record the move. Once we are gone its old index is out of range,
    ///   and the kernel's fallback (its hash over the group's sockets) can only pick the one
    ///   socket left: nothing is lost. The stayer re-attaches the exact table at its next
    ///   check ([`Membership::check`]), before a newcomer could take the old index.
    /// - With more engines staying, the hash could pick any of them, so we record the move and
    ///   attach the table for after it, then detach at once: the moved engine's packets of
    ///   those microseconds are lost, and RC resends them.
    pub(crate) fn leave(&self) -> io::Result<()> {
        self.stop();
        let g = self.dir.lock()?;
        let mut slot = lock(&self.slot);
        let me = self.shared.index.load(Ordering::Relaxed);
        let members = g.members(&mut slot)?;
        let moved = members
            .iter()
            .filter(|&&(n, _)| n != slot.n)
            .filter_map(|&(n, i)| Some((n, i?)))
            .max_by_key(|&(_, i)| i)
            .filter(|&(_, i)| i > me && me != u32::MAX);
        // Port 9 (discard): nothing is sent from it, so the connected socket receives nothing.
        let detach = || self.sock.connect(SocketAddr::new(self.local.ip(), 9));
        // Either order detaches once and attaches the table without us once (see above).
        let one_stays = members.len() == 2;
        if one_stays {
            self.attach(&g, &mut slot, true)?;
            detach()?;
        }
        if let Some((n, _)) = moved {
            g.record_other(n, me)?;
        }
        g.record(&mut slot, None)?;
        if !one_stays {
            self.attach(&g, &mut slot, true)?;
            detach()?;
        }
        Ok(())
    }

    /// The coordination directory (for diagnostics).
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

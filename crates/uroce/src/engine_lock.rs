//! The lock around a device's engine, and the progress thread's hand-over to application
//! threads that wait for it.
//!
//! std's `Mutex` is not fair: a thread that releases it and takes it again at once wins over
//! a waiter that the release has only just woken. A busy progress thread does exactly that, pass
//! after pass, while data flows, so an application's post or CQ poll waited for its turn:
//! measured on a 1 MiB WRITE stream with thread progress (session 20), the client's
//! application thread spent 0.7–1.0 s of each second waiting for the lock, up to 90 ms at a
//! time. So the lock counts the threads blocked on it and notes when the current stretch of
//! waiting began. Once someone has waited longer than [`PATIENCE`], the progress thread,
//! before it takes the lock for its next pass, yields the CPU until the waiters have had it or
//! [`HAND_OVER`] has passed. Shorter waits are left alone: on a ping-pong the waiter is often
//! still waking up when the progress thread has a packet in hand, and yielding to it would
//! delay that packet (docs/perf/JOURNAL.md, "The engine lock hands over", has the measurements).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// How long threads may have waited for the lock before the progress thread hands it over.
pub(crate) const PATIENCE: Duration = Duration::from_millis(1);

/// How long the progress thread yields to waiting threads before each pass at most. Long
/// enough for a waiter on the same CPU to run (a `sched_yield` away); a waiter on the other
/// CPU that was asleep may need longer to wake (≈ 60 µs on these VMs) and then gets the
/// lock at the next pass.
pub(crate) const HAND_OVER: Duration = Duration::from_micros(50);

/// How often and how long threads other than the progress thread waited for a device's
/// engine lock (`Device::lock_waits`): what an application's verbs lost to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockWaits {
    /// Calls that found the lock held and waited for it.
    pub waits: u64,
    /// Time spent waiting, in all, in nanoseconds.
    pub total_ns: u64,
    /// The longest single wait, in nanoseconds.
    pub longest_ns: u64,
}

/// A mutex that knows how many threads are blocked on it.
#[derive(Debug)]
pub(crate) struct EngineLock<T> {
    inner: Mutex<T>,
    /// Threads inside [`EngineLock::lock`] that found the lock taken and have not got it yet.
    waiters: AtomicU32,
    /// When `waiters` last rose from zero ([`stamp`]; 0 while nobody waits).
    waiting_since: AtomicU64,
    /// [`LockWaits`] of [`EngineLock::lock`]'s callers.
    waits: AtomicU64,
    total_ns: AtomicU64,
    longest_ns: AtomicU64,
}

/// `at` in nanoseconds since the first call in this process, plus one (so that 0 means
/// "never").
fn stamp_at(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*EPOCH.get_or_init(|| at))
        .as_nanos() as u64
        + 1
}

/// [`stamp_at`] now.
fn stamp() -> u64 {
    stamp_at(Instant::now())
}

impl<T> EngineLock<T> {
    pub(crate) fn new(value: T) -> Self {
        EngineLock {
            inner: Mutex::new(value),
            waiters: AtomicU32::new(0),
            waiting_since: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            longest_ns: AtomicU64::new(0),
        }
    }

    /// Takes the lock, counted as a waiter while it is held by another thread, and its wait
    /// counted in [`LockWaits`]. A panic while locked does not make the engine unusable (the
    /// poison is ignored, as before).
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.take(true)
    }

    /// [`EngineLock::lock`] for the progress thread: its own waits are not in [`LockWaits`].
    pub(crate) fn lock_progress(&self) -> MutexGuard<'_, T> {
        self.take(false)
    }

    fn take(&self, counted: bool) -> MutexGuard<'_, T> {
        match self.inner.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let start = Instant::now();
                if self.waiters.fetch_add(1, Ordering::AcqRel) == 0 {
                    // The clock read once for both the stamp and this call's wait.
                    self.waiting_since.store(stamp_at(start), Ordering::Release);
                }
                let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
                if self.waiters.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.waiting_since.store(0, Ordering::Release);
                }
                if counted {
                    let ns = start.elapsed().as_nanos() as u64;
                    self.waits.fetch_add(1, Ordering::Relaxed);
                    self.total_ns.fetch_add(ns, Ordering::Relaxed);
                    self.longest_ns.fetch_max(ns, Ordering::Relaxed);
                }
                g
            }
        }
    }

    /// The waits of [`EngineLock::lock`]'s callers so far.
    pub(crate) fn waits(&self) -> LockWaits {
        LockWaits {
            waits: self.waits.load(Ordering::Relaxed),
            total_ns: self.total_ns.load(Ordering::Relaxed),
            longest_ns: self.longest_ns.load(Ordering::Relaxed),
        }
    }

    /// Threads blocked on the lock right now.
    pub(crate) fn waiters(&self) -> u32 {
        self.waiters.load(Ordering::Acquire)
    }

    /// Whether threads have been waiting for the lock for longer than `patience`, without a
    /// moment in which none waited.
    pub(crate) fn waited_longer_than(&self, patience: Duration) -> bool {
        let since = self.waiting_since.load(Ordering::Acquire);
        if since == 0 {
            // A thread that started waiting just as the last one got the lock can see its
            // stamp cleared by that one: start the clock now, one pass late.
            if self.waiters() > 0 {
                let _ = self.waiting_since.compare_exchange(
                    0,
                    stamp(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            return false;
        }
        stamp().saturating_sub(since) > patience.as_nanos() as u64
    }

    /// Yields the CPU while threads wait for the lock, for at most `limit`. Returns whether
    /// every thread that waited has taken the lock meanwhile (true at once if none waited).
    /// Call it without holding the lock.
    pub(crate) fn hand_over(&self, limit: Duration) -> bool {
        if self.waiters() == 0 {
            return true;
        }
        let start = Instant::now();
        while self.waiters() > 0 {
            if start.elapsed() >= limit {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Spins (yielding) until `f` holds, failing the test after 10 s.
    fn until(what: &str, f: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_waiter_is_counted_and_gets_the_lock_in_the_hand_over() {
        let lock = EngineLock::new(0u32);
        let took = AtomicBool::new(false);
        std::thread::scope(|s| {
            let held = lock.lock();
            assert_eq!(lock.waiters(), 0, "an uncontended lock counts no waiter");
            let waiter = s.spawn(|| {
                let mut g = lock.lock();
                *g += 1;
                took.store(true, Ordering::Release);
            });
            until("the thread to block on the lock", || lock.waiters() == 1);
            until("the wait to outlast a patience of 1 ms", || {
                lock.waited_longer_than(Duration::from_millis(1))
            });
            assert!(!lock.waited_longer_than(Duration::from_secs(3600)));
            // Still held: the waiter cannot take it, so the hand-over gives up at its bound.
            assert!(!lock.hand_over(Duration::from_millis(1)));
            drop(held);
            assert!(
                lock.hand_over(Duration::from_secs(10)),
                "the waiter takes the lock while the releasing thread yields"
            );
            assert_eq!(lock.waiters(), 0);
            assert!(
                !lock.waited_longer_than(Duration::ZERO),
                "nobody waits: the stretch of waiting is over"
            );
            // The waiter took the lock before this thread asks again; once it is done, this
            // thread takes the lock without a wait of its own and sees the increment.
            waiter.join().unwrap();
            assert_eq!(*lock.lock(), 1);
            assert!(took.load(Ordering::Acquire));
            // One wait counted (the waiter's), of at least the 1 ms it was seen to outlast.
            let w = lock.waits();
            assert_eq!(w.waits, 1, "{w:?}");
            assert!(
                w.longest_ns >= 1_000_000 && w.total_ns >= w.longest_ns,
                "{w:?}"
            );
        });
    }

    #[test]
    fn with_no_waiter_the_hand_over_returns_at_once() {
        let lock = EngineLock::new(());
        assert!(lock.hand_over(Duration::ZERO));
        assert!(!lock.waited_longer_than(Duration::ZERO));
    }

    #[test]
    fn the_progress_threads_own_waits_are_not_counted() {
        let lock = EngineLock::new(());
        std::thread::scope(|s| {
            let held = lock.lock();
            let h = s.spawn(|| drop(lock.lock_progress()));
            until("the progress thread to block on the lock", || {
                lock.waiters() == 1
            });
            drop(held);
            h.join().unwrap();
        });
        assert_eq!(lock.waits(), LockWaits::default());
    }
}

//! A send thread of the io_uring back end's own (`DeviceConfig::tx_thread`, off by default).
//!
//! A bulk sender is CPU-bound on its progress thread, about two thirds of it the kernel's
//! work of each `sendmsg` (copying into socket buffers, UDP, IP, veth; docs/perf/JOURNAL.md,
//! "A user-space send thread"). This thread takes that work: the progress thread hands it
//! each prepared send slot (a `msghdr` with its address, iovec and control message) and goes
//! on building the next batch, the thread issues the sends in order with blocking `sendmsg`
//! and hands back each slot with its result, as a completion queue would. Unlike `SQPOLL`'s
//! kernel thread it sleeps when there is nothing to send, after spinning for a short while
//! (a blocking wake-up across cores costs tens of microseconds on the VMs measured).
//!
//! The socket is a duplicate of the device's (`try_clone`), owned by the thread, so it stays
//! open for every send the thread makes. The slot memory is the back end's: see
//! [`TxThread::send`] for the contract that keeps it alive and unchanged.

#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the thread spins for more sends before it sleeps, unless `UROCE_TXTHREAD_SPIN_US`
/// says otherwise.
const SPIN: Duration = Duration::from_micros(20);

/// One send handed to the thread: slot `slot`'s `msghdr`.
struct Job {
    slot: usize,
    msg: *const libc::msghdr,
}

// SAFETY: `msg` points into a send slot that the back end neither changes nor frees until the
// thread has handed the slot back (the contract of `TxThread::send`); the pointer is only read
// by the thread's `sendmsg`, so moving it to that thread is moving a read-only borrow.
unsafe impl Send for Job {}

/// What the back end and the thread share, under one lock.
#[derive(Default)]
struct State {
    /// Sends not yet taken by the thread, in order.
    queue: Vec<Job>,
    /// Slots sent, with the result of their `sendmsg` (bytes, or `-errno`).
    done: Vec<(usize, i32)>,
    /// The thread sleeps on `Shared::work`.
    sleeping: bool,
    /// The back end sleeps on `Shared::done`.
    waiting: bool,
    /// The back end is closing: send what is queued and end.
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// `State::queue` is not empty (changed only under the lock); the thread spins on it
    /// before sleeping.
    queued: AtomicBool,
    /// Wakes the thread.
    work: Condvar,
    /// Wakes the back end waiting for a slot.
    done: Condvar,
}

impl Shared {
    /// The state; a panic elsewhere while the lock was held leaves nothing inconsistent
    /// here (every field is valid on its own), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The send thread of one back end (see the module documentation). Dropping it sends what is
/// queued, then stops and joins the thread.
pub(crate) struct TxThread {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl TxThread {
    /// Starts the thread on `sock`, a duplicate of the device's socket.
    pub(crate) fn start(sock: UdpSocket) -> io::Result<TxThread> {
        let spin = std::env::var("UROCE_TXTHREAD_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(SPIN, Duration::from_micros);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            queued: AtomicBool::new(false),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("uroce-tx".into())
            .spawn(move || run(&s, &sock, spin))?;
        Ok(TxThread {
            shared,
            handle: Some(handle),
        })
    }

    /// Queues the send of slot `slot` as described by `msg`; the slot comes back from
    /// [`TxThread::take_done`] with the result of its `sendmsg`.
    ///
    /// # Safety
    ///
    /// `msg` and everything it points to (name, iovec, the data, the control message) must
    /// stay valid and unchanged until the slot has come back from [`TxThread::take_done`], or
    /// this `TxThread` was dropped (which joins the thread).
    pub(crate) unsafe fn send(&self, slot: usize, msg: *const libc::msghdr) {
        let mut st = self.shared.lock();
        st.queue.push(Job { slot, msg });
        self.shared.queued.store(true, Ordering::Release);
        if st.sleeping {
            st.sleeping = false;
            self.shared.work.notify_one();
        }
    }

    /// Moves the slots sent since the last call, with their results, to `out`.
    pub(crate) fn take_done(&self, out: &mut Vec<(usize, i32)>) {
        let mut st = self.shared.lock();
        out.append(&mut st.done);
    }

    /// Waits until a sent slot is there to take, at most `timeout`. Fails when the thread
    /// has ended (it ends only when dropped, or if it panicked).
    pub(crate) fn wait_done(&self, timeout: Duration) -> io::Result<()> {
        if self.handle.as_ref().is_none_or(|h| h.is_finished()) {
            return Err(io::Error::other("the send thread has ended"));
        }
        let end = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.done.is_empty() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            st.waiting = true;
            st = match self.shared.done.wait_timeout(st, end - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        st.waiting = false;
        Ok(())
    }

    /// Lets the thread send what is queued, then ends it and waits for it. The slots it
    /// sent can still be taken with [`TxThread::take_done`]; later sends are not made.
    pub(crate) fn stop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            self.shared.work.notify_one();
        }
        if let Some(h) = self.handle.take() {
            // A panic of the thread is reported by the panic hook already.
            let _ = h.join();
        }
    }
}

impl Drop for TxThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread: takes the queued sends in order, sends each, hands the slots back.
fn run(shared: &Shared, sock: &UdpSocket, spin: Duration) {
    let fd = sock.as_raw_fd();
    let mut jobs: Vec<Job> = Vec::new();
    let mut results: Vec<(usize, i32)> = Vec::new();
    loop {
        if !shared.queued.load(Ordering::Acquire) {
            // Spin a little before sleeping: the next batch is usually being built.
            let end = Instant::now() + spin;
            while !shared.queued.load(Ordering::Acquire) && Instant::now() < end {
                std::hint::spin_loop();
            }
        }
        {
            let mut st = shared.lock();
            while st.queue.is_empty() && !st.stop {
                st.sleeping = true;
                st = match shared.work.wait(st) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
            st.sleeping = false;
            if st.queue.is_empty() {
                return; // stopped, nothing left
            }
            std::mem::swap(&mut st.queue, &mut jobs);
            shared.queued.store(false, Ordering::Relaxed);
        }
        for job in jobs.drain(..) {
            results.push((job.slot, send(fd, job.msg)));
        }
        let mut st = shared.lock();
        st.done.append(&mut results);
        if st.waiting {
            st.waiting = false;
            shared.done.notify_one();
        }
    }
}

/// One blocking `sendmsg`: the bytes sent, or `-errno`.
fn send(fd: i32, msg: *const libc::msghdr) -> i32 {
    loop {
        // SAFETY: `msg` and what it points to are valid and unchanged until the slot is handed
        // back, which happens only after this call returned (`TxThread::send`'s contract); the
        // descriptor is the thread's own duplicate of the socket, open until the thread ends.
        let n = unsafe { libc::sendmsg(fd, msg, 0) };
        if n >= 0 {
            return i32::try_from(n).unwrap_or(i32::MAX);
        }
        let e = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if e != libc::EINTR {
            return -e;
        }
    }
}

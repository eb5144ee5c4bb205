//! Asynchronous events (`ibv_get_async_event`): errors the engine finds outside any
//! completion's reach (a QP that went to ERR by itself, a CQ that overflowed), delivered
//! through a descriptor the application can put in poll/epoll.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::sys::eventfd::{EfdFlags, EventFd};

pub use uroce_proto::AsyncEvent;

use crate::Result;

/// Most events held for an application that does not take them; later ones are dropped.
const MAX_PENDING: usize = 1024;

pub(crate) struct EventsShared {
    /// Its counter is non-zero exactly while `pending` is not empty (both change under the
    /// lock), so the descriptor polls readable exactly while an event waits and a read never
    /// blocks although the descriptor is blocking (an application may set `O_NONBLOCK`).
    fd: EventFd,
    pending: Mutex<VecDeque<AsyncEvent>>,
}

impl EventsShared {
    fn lock(&self) -> MutexGuard<'_, VecDeque<AsyncEvent>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn push(&self, e: AsyncEvent) {
        let mut p = self.lock();
        if p.len() < MAX_PENDING {
            if p.is_empty() {
                let _ = self.fd.write(1);
            }
            p.push_back(e);
        }
    }
}

/// Where a device reports its asynchronous events ([`crate::DeviceConfig::async_events`]).
/// Made before the device, so a C context can hand out its descriptor at once.
#[derive(Clone)]
pub struct AsyncEvents {
    pub(crate) shared: Arc<EventsShared>,
}

impl std::fmt::Debug for AsyncEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AsyncEvents")
    }
}

impl AsyncEvents {
    /// An empty event queue.
    pub fn new() -> Result<Self> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)?;
        Ok(AsyncEvents {
            shared: Arc::new(EventsShared {
                fd,
                pending: Mutex::new(VecDeque::new()),
            }),
        })
    }

    /// The descriptor that polls readable while an event waits.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shared.fd.as_fd()
    }

    /// Takes the oldest event, without waiting.
    pub fn try_get(&self) -> Option<AsyncEvent> {
        let mut p = self.shared.lock();
        let e = p.pop_front()?;
        if p.is_empty() {
            // The counter is non-zero (an event was waiting), so this read does not block.
            let _ = self.shared.fd.read();
        }
        Some(e)
    }
}

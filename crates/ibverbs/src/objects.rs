//! The verbs objects as C sees them and as uroce holds them. Each is `#[repr(C)]` with the
//! rdma-core struct first, so the pointer handed to C (`*mut ibv_pd`, …) is the pointer to the
//! whole object, and the uroce object behind it is reached by a cast (what rdma-core's
//! providers do with `container_of`).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::config::DeviceInfo;
use crate::sys::*;

/// Locks, ignoring poisoning (a panic elsewhere must not turn into one here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A device in the list (`ibv_device`), alive for the whole process.
#[repr(C)]
pub(crate) struct UDevice {
    pub ibv: ibv_device,
    pub info: DeviceInfo,
}

/// An open device (`ibv_context` at the end of a `verbs_context`, as verbs.h's
/// `verbs_get_ctx` expects).
#[repr(C)]
pub(crate) struct UContext {
    pub vctx: verbs_context,
    pub dev: &'static UDevice,
    /// The uroce device, opened (its UDP socket bound) at the first verb that needs it, so
    /// that `ibv_devinfo` can query a device another process is using.
    pub engine: Mutex<Option<Arc<uroce::Device>>>,
    /// The asynchronous events; its descriptor is `async_fd`.
    pub events: uroce::AsyncEvents,
    /// The live QPs (QPN → `*mut UQp`) and CQs (id → `*mut UCq`), to name an event's
    /// object; an object leaves its map before it is freed.
    pub qps: Mutex<HashMap<u32, usize>>,
    pub cqs: Mutex<HashMap<u32, usize>>,
}

impl UContext {
    /// The object behind a context pointer.
    ///
    /// # Safety
    /// `ctx` must come from this library's `ibv_open_device` and not be closed.
    pub unsafe fn from_ibv<'a>(ctx: *mut ibv_context) -> &'a UContext {
        let off = core::mem::offset_of!(verbs_context, context);
        // SAFETY: ctx is the `context` field of the `vctx` field at offset 0 of a UContext
        // (repr(C)), per the caller's contract.
        unsafe { &*(ctx.cast::<u8>().sub(off).cast::<UContext>()) }
    }

    /// The uroce device, opening it on first use.
    pub fn engine(&self) -> uroce::Result<Arc<uroce::Device>> {
        let mut g = lock(&self.engine);
        if let Some(d) = g.as_ref() {
            return Ok(d.clone());
        }
        let mut cfg = uroce::DeviceConfig::new(self.dev.info.ip);
        // The peer may be the kernel's rxe, whose IPv4 Identification the ICRC check
        // cannot see (docs/ARCHITECTURE.md, wire).
        cfg.accept_any_ipv4_id = true;
        cfg.async_events = Some(self.events.clone());
        if std::env::var("UROCE_PROGRESS").is_ok_and(|v| v == "polled") {
            cfg.progress = uroce::Progress::Polled;
        }
        let d = Arc::new(uroce::Device::open(cfg)?);
        *g = Some(d.clone());
        Ok(d)
    }
}

/// The asynchronous events handed out for an object and those acknowledged: destroying the
/// object waits until they are equal, as rdma-core's `ibv_destroy_qp`/`ibv_destroy_cq` do
/// (`ibv_get_async_event(3)`), so an event never names freed memory.
#[derive(Default)]
pub(crate) struct EventAcks {
    /// (reported, acknowledged).
    n: Mutex<(u64, u64)>,
    cv: Condvar,
}

impl EventAcks {
    pub fn reported(&self) {
        lock(&self.n).0 += 1;
    }

    pub fn acked(&self) {
        let mut g = lock(&self.n);
        g.1 = (g.1 + 1).min(g.0);
        self.cv.notify_all();
    }

    /// Blocks until every reported event was acknowledged.
    pub fn wait_all(&self) {
        let mut g = lock(&self.n);
        while g.1 < g.0 {
            g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// `ibv_pd`.
#[repr(C)]
pub(crate) struct UPd {
    pub ibv: ibv_pd,
    pub pd: uroce::ProtectionDomain,
}

/// `ibv_mr`.
#[repr(C)]
pub(crate) struct UMr {
    pub ibv: ibv_mr,
    pub mr: uroce::MemoryRegion,
}

/// `ibv_comp_channel`.
#[repr(C)]
pub(crate) struct UChannel {
    pub ibv: ibv_comp_channel,
    pub ch: uroce::CompletionChannel,
    /// CQ id → the `ibv_cq` to hand back from `ibv_get_cq_event`.
    pub cqs: Mutex<HashMap<u32, usize>>,
}

/// `ibv_cq`.
#[repr(C)]
pub(crate) struct UCq {
    pub ibv: ibv_cq,
    pub cq: uroce::CompletionQueue,
    /// The channel it reports to (to unregister on destroy).
    pub channel: *mut UChannel,
    pub acks: EventAcks,
}

/// `ibv_srq`.
#[repr(C)]
pub(crate) struct USrq {
    pub ibv: ibv_srq,
    pub srq: uroce::SharedReceiveQueue,
    pub attr: ibv_srq_attr,
}

/// `ibv_qp`.
#[repr(C)]
pub(crate) struct UQp {
    pub ibv: ibv_qp,
    pub qp: uroce::QueuePair,
    /// What `ibv_query_qp` reports: the creation attributes and the last values set.
    pub init: ibv_qp_init_attr,
    pub attr: Mutex<ibv_qp_attr>,
    pub acks: EventAcks,
}

/// `ibv_ah`.
#[repr(C)]
pub(crate) struct UAh {
    pub ibv: ibv_ah,
    pub ah: uroce::AddressHandle,
}

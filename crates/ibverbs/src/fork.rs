//! Fork, as `ibv_fork_init(3)` documents it, for a device with no DMA.
//!
//! rdma-core's fork support exists because a NIC writes registered memory by physical page:
//! after `fork`, copy-on-write gives the parent a new page while the NIC keeps writing the
//! old one, so rdma-core marks registered ranges `MADV_DONTFORK`. uroce pins nothing and maps
//! nothing for DMA: its engine thread writes registered memory through the parent's virtual
//! addresses, which always reach the parent's current pages. So the parent's verbs objects
//! keep working across a `fork`, and `ibv_is_fork_initialized` answers
//! `IBV_FORK_UNNEEDED`, the value rdma-core gives when the kernel makes fork safe without it.
//!
//! The child is another matter: it inherits the context's descriptors (the UDP socket bound
//! to the device's address, the eventfds) but not the engine's progress thread, so it must not
//! use any of the parent's contexts or objects (it would steal the parent's packets from the
//! shared socket). It may open its own device on another address. This is what rdma-core
//! requires of a child too (objects are not shared across fork).

use std::ffi::{c_int, c_void};

use crate::sys::ibv_fork_status;

/// `ibv_fork_init`: nothing to prepare (no pinned pages); 0, also when called after devices
/// were opened, since there is nothing it could have missed.
#[no_mangle]
pub extern "C" fn ibv_fork_init() -> c_int {
    0
}

/// `ibv_is_fork_initialized`: `IBV_FORK_UNNEEDED` (see the module documentation).
#[no_mangle]
pub extern "C" fn ibv_is_fork_initialized() -> ibv_fork_status::Type {
    ibv_fork_status::IBV_FORK_UNNEEDED
}

/// `ibv_dontfork_range`: 0; nothing is pinned, so no range needs `MADV_DONTFORK`.
#[no_mangle]
pub extern "C" fn ibv_dontfork_range(_base: *mut c_void, _size: usize) -> c_int {
    0
}

/// `ibv_dofork_range`: 0 (as `ibv_dontfork_range`).
#[no_mangle]
pub extern "C" fn ibv_dofork_range(_base: *mut c_void, _size: usize) -> c_int {
    0
}

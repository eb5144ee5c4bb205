//! `libibverbs.so.1` for uroce: rdma-core's verbs C ABI (the symbols and versions of Debian's
//! library, the struct layouts of its `verbs.h`) implemented over the safe `uroce` API, so
//! unmodified verbs programs (`ibv_devinfo`, `ibv_rc_pingpong`, perftest's `ib_write_bw`, …)
//! run on uroce with `LD_LIBRARY_PATH` pointing at this library and no kernel module or root.
//!
//! - `sys` — the C structs, generated from `verbs.h` (tools/gen-bindings.sh), checked by
//!   tests/layout.rs against the system header with the C compiler.
//! - `config` — the devices (`UROCE_DEVICES`), their GID tables and port attributes.
//! - `objects` — each verbs object: the C struct first, the uroce object after it.
//! - `device`, `verbs`, `datapath` — the exported functions: devices and contexts; PDs, MRs,
//!   CQs, channels, QPs, SRQs, AHs; and the `context->ops` table behind verbs.h's inline
//!   `ibv_post_send`/`ibv_post_recv`/`ibv_poll_cq`.
//! - `strings`, `stubs` — enum-to-string helpers; the provider-facing and unsupported symbols
//!   (present so programs and the providers they load link, failing with `EOPNOTSUPP`).
//!
//! Every function taking pointers from C is `unsafe extern "C"`: its contract is verbs', and
//! each `unsafe` block says what it relies on. Nothing here panics on a caller's input
//! (a panic would abort the C program).

pub mod config;
mod datapath;
mod device;
mod fork;
pub mod layout;
pub mod memory;
mod objects;
mod strings;
mod stubs;
pub mod sys;
mod verbs;

// The `.symver` directives that give each exported symbol rdma-core's version (build.rs).
include!(concat!(env!("OUT_DIR"), "/symver.rs"));

/// Sets the C `errno`.
pub(crate) fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e };
}

/// Maps a uroce error to the errno verbs would report.
pub(crate) fn errno_of(e: &uroce::Error) -> i32 {
    use uroce_proto::Error as P;
    match e {
        uroce::Error::Io(io) => io.raw_os_error().unwrap_or(libc::EIO),
        uroce::Error::Verb(P::Limit { .. } | P::QueueFull(_)) => libc::ENOMEM,
        uroce::Error::Verb(P::Busy(_)) => libc::EBUSY,
        uroce::Error::Verb(P::NotFound(_)) => libc::ENOENT,
        uroce::Error::Closed => libc::ENODEV,
        _ => libc::EINVAL,
    }
}

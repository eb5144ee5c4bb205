//! Asynchronous events through the C ABI: `c/async_event.c`, compiled against the system's
//! verbs.h and linked with `-libverbs`, runs on this library (`LD_LIBRARY_PATH`), provokes a
//! QP error (an RC peer that never answers) and must see `IBV_EVENT_QP_FATAL` and
//! `IBV_EVENT_CQ_ERR` by `poll(2)` on `async_fd`, then acknowledge them so the destroys
//! return. Skipped, and says so, without the C compiler or libibverbs-dev.

mod common;

#[test]
fn qp_error_raises_async_events_on_a_pollable_fd() {
    // 127.0.73.1/.2: addresses no other test uses; nobody listens on .2.
    common::run_c_program("async_event", &[], &["127.0.73.2"], "uroce0=127.0.73.1");
}

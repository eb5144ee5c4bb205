//! `ibv_poll_cq` from a pthread key destructor: `c/poll_at_thread_exit.c`, compiled against
//! the system's verbs.h and linked with `-libverbs`, runs on this library
//! (`LD_LIBRARY_PATH`). glibc runs an exiting thread's key destructors after its
//! thread_local destructors, so the library's per-thread poll buffer is gone by then; the
//! poll must still return 0 (an empty CQ) instead of aborting the program (it did, with
//! "thread caused non-unwinding panic", before the buffer got a fallback). Skipped, and says
//! so, without the C compiler or libibverbs-dev.

mod common;

#[test]
fn a_poll_after_the_threads_locals_are_gone_still_answers() {
    // 127.0.74.1: an address no other test uses.
    common::run_c_program(
        "poll_at_thread_exit",
        &["-lpthread"],
        &[],
        "uroce0=127.0.74.1",
    );
}

//! The data path: verbs.h's inline `ibv_post_send`, `ibv_post_recv`, `ibv_post_srq_recv`,
//! `ibv_poll_cq` and `ibv_req_notify_cq` call through `context->ops`, which `fill_ops` sets to
//! these functions. They translate the C work requests and completions to and from uroce's.

use std::ffi::{c_int, c_uint};

use uroce::{Completion, Payload, QpType, RecvWr, SendFlags, SendOp, SendWr, Sge, UdDest};
use uroce_proto::WcOpcode;

use crate::errno_of;
use crate::objects::{UAh, UCq, UQp, USrq};
use crate::sys::*;

/// Points the context's op table at this module.
pub(crate) fn fill_ops(ops: &mut ibv_context_ops) {
    ops.poll_cq = Some(poll_cq);
    ops.req_notify_cq = Some(req_notify_cq);
    ops.post_send = Some(post_send);
    ops.post_recv = Some(post_recv);
    ops.post_srq_recv = Some(post_srq_recv);
}

/// The SGEs of a WR, or EINVAL for a negative count or a NULL list.
///
/// # Safety
/// `list` must point at `n` SGEs (verbs contract).
unsafe fn sges(list: *const ibv_sge, n: c_int) -> Result<Vec<Sge>, c_int> {
    let n = usize::try_from(n).map_err(|_| libc::EINVAL)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if list.is_null() || n > 1024 {
        return Err(libc::EINVAL);
    }
    // SAFETY: per the contract, n SGEs at list.
    let s = unsafe { std::slice::from_raw_parts(list, n) };
    Ok(s.iter()
        .map(|e| Sge {
            addr: e.addr,
            length: e.length,
            lkey: e.lkey,
        })
        .collect())
}

/// One C send WR as uroce's.
///
/// # Safety
/// `wr` must be a valid WR of `qp` (its SGEs, inline buffers and AH included).
unsafe fn send_wr(qp: &UQp, wr: &ibv_send_wr) -> Result<SendWr, c_int> {
    use ibv_wr_opcode as o;
    // SAFETY: reading union members as the opcode selects them, as a provider does; every
    // bit pattern is a valid integer.
    let (rdma, atomic, imm) = unsafe { (wr.wr.rdma, wr.wr.atomic, wr.__bindgen_anon_1.imm_data) };
    let op = match wr.opcode {
        o::IBV_WR_SEND => SendOp::Send,
        o::IBV_WR_SEND_WITH_IMM => SendOp::SendWithImm(u32::from_be(imm)),
        o::IBV_WR_SEND_WITH_INV => {
            // SAFETY: as above.
            SendOp::SendWithInv(unsafe { wr.__bindgen_anon_1.invalidate_rkey })
        }
        o::IBV_WR_RDMA_WRITE => SendOp::RdmaWrite {
            remote_addr: rdma.remote_addr,
            rkey: rdma.rkey,
        },
        o::IBV_WR_RDMA_WRITE_WITH_IMM => SendOp::RdmaWriteWithImm {
            remote_addr: rdma.remote_addr,
            rkey: rdma.rkey,
            imm: u32::from_be(imm),
        },
        o::IBV_WR_RDMA_READ => SendOp::RdmaRead {
            remote_addr: rdma.remote_addr,
            rkey: rdma.rkey,
        },
        o::IBV_WR_ATOMIC_CMP_AND_SWP => SendOp::CompareSwap {
            remote_addr: atomic.remote_addr,
            rkey: atomic.rkey,
            compare: atomic.compare_add,
            swap: atomic.swap,
        },
        o::IBV_WR_ATOMIC_FETCH_AND_ADD => SendOp::FetchAdd {
            remote_addr: atomic.remote_addr,
            rkey: atomic.rkey,
            add: atomic.compare_add,
        },
        o::IBV_WR_LOCAL_INV | o::IBV_WR_BIND_MW | o::IBV_WR_TSO | o::IBV_WR_ATOMIC_WRITE => {
            return Err(libc::EOPNOTSUPP)
        }
        _ => return Err(libc::EINVAL),
    };
    let f = wr.send_flags;
    let payload = if f & ibv_send_flags::IBV_SEND_INLINE != 0 && !op.is_read_or_atomic() {
        // SAFETY: the WR's SGE list (contract).
        let sgl = unsafe { sges(wr.sg_list, wr.num_sge) }?;
        // Inline: the bytes are copied now and need no registration (verbs semantics).
        let total: u64 = sgl.iter().map(|s| u64::from(s.length)).sum();
        if total > u64::from(qp.init.cap.max_inline_data) {
            return Err(libc::EINVAL);
        }
        let mut data = Vec::with_capacity(total as usize);
        for s in &sgl {
            if s.length > 0 && s.addr == 0 {
                return Err(libc::EINVAL);
            }
            // SAFETY: an inline SGE names `length` readable bytes of the caller's at `addr`.
            data.extend_from_slice(unsafe {
                std::slice::from_raw_parts(s.addr as *const u8, s.length as usize)
            });
        }
        Payload::Inline(data)
    } else if wr.num_sge == 1 && !wr.sg_list.is_null() {
        // The common one-SGE WR, without allocating a list.
        // SAFETY: the WR's SGE list holds `num_sge` = 1 entry (contract).
        let e = unsafe { &*wr.sg_list };
        Payload::Sge(Sge {
            addr: e.addr,
            length: e.length,
            lkey: e.lkey,
        })
    } else {
        // SAFETY: the WR's SGE list (contract).
        Payload::Sgl(unsafe { sges(wr.sg_list, wr.num_sge) }?)
    };
    let mut w = SendWr::new(wr.wr_id, op, payload);
    w.flags = SendFlags {
        signaled: f & ibv_send_flags::IBV_SEND_SIGNALED != 0,
        solicited: f & ibv_send_flags::IBV_SEND_SOLICITED != 0,
        fence: f & ibv_send_flags::IBV_SEND_FENCE != 0,
    };
    if qp.qp.qp_type() == QpType::Ud {
        // SAFETY: a UD WR's `ud` member (contract).
        let ud = unsafe { wr.wr.ud };
        if ud.ah.is_null() {
            return Err(libc::EINVAL);
        }
        // SAFETY: ah came from ibv_create_ah.
        let ah = unsafe { &*ud.ah.cast::<UAh>() };
        w.ud = Some(UdDest {
            ah: ah.ah.handle(),
            remote_qpn: ud.remote_qpn,
            remote_qkey: ud.remote_qkey,
        });
    }
    Ok(w)
}

/// `ops.post_send`: on failure `*bad_wr` names the first WR not posted.
unsafe extern "C" fn post_send(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad_wr: *mut *mut ibv_send_wr,
) -> c_int {
    if qp.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp came from ibv_create_qp.
    let u = unsafe { &*qp.cast::<UQp>() };
    let mut cur = wr;
    while !cur.is_null() {
        // SAFETY: cur is a WR of the caller's chain.
        let w = unsafe { &*cur };
        // SAFETY: a valid WR of this QP (contract).
        let r = unsafe { send_wr(u, w) }.and_then(|s| u.qp.post_send(s).map_err(|e| errno_of(&e)));
        if let Err(e) = r {
            if !bad_wr.is_null() {
                // SAFETY: the caller's out pointer.
                unsafe { *bad_wr = cur };
            }
            return e;
        }
        cur = w.next;
    }
    0
}

/// The receive WRs of a chain, posting each with `post`.
///
/// # Safety
/// `wr` must be a valid chain of receive WRs; `bad_wr` NULL or writable.
unsafe fn post_recv_chain(
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
    post: impl Fn(RecvWr) -> uroce::Result<()>,
) -> c_int {
    let mut cur = wr;
    while !cur.is_null() {
        // SAFETY: cur is a WR of the caller's chain.
        let w = unsafe { &*cur };
        // SAFETY: its SGE list (contract).
        let r = unsafe { sges(w.sg_list, w.num_sge) }.and_then(|sgl| {
            post(RecvWr {
                wr_id: w.wr_id,
                sgl,
            })
            .map_err(|e| errno_of(&e))
        });
        if let Err(e) = r {
            if !bad_wr.is_null() {
                // SAFETY: the caller's out pointer.
                unsafe { *bad_wr = cur };
            }
            return e;
        }
        cur = w.next;
    }
    0
}

/// `ops.post_recv`.
unsafe extern "C" fn post_recv(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> c_int {
    if qp.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp came from ibv_create_qp.
    let u = unsafe { &*qp.cast::<UQp>() };
    // SAFETY: forwarded contract.
    unsafe { post_recv_chain(wr, bad_wr, |r| u.qp.post_recv(r)) }
}

/// `ops.post_srq_recv`.
unsafe extern "C" fn post_srq_recv(
    srq: *mut ibv_srq,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> c_int {
    if srq.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: srq came from ibv_create_srq.
    let u = unsafe { &*srq.cast::<USrq>() };
    // SAFETY: forwarded contract.
    unsafe { post_recv_chain(wr, bad_wr, |r| u.srq.post_recv(r)) }
}

fn wc_of(c: &Completion) -> ibv_wc {
    use ibv_wc_opcode as o;
    // SAFETY: ibv_wc is plain integers (and a union of two u32); all-zero is valid.
    let mut wc: ibv_wc = unsafe { std::mem::zeroed() };
    wc.wr_id = c.wr_id;
    // WcStatus holds ibv_wc_status's values (crates/proto/src/cq.rs).
    wc.status = c.status as c_uint;
    wc.opcode = match c.opcode {
        WcOpcode::Send => o::IBV_WC_SEND,
        WcOpcode::RdmaWrite => o::IBV_WC_RDMA_WRITE,
        WcOpcode::RdmaRead => o::IBV_WC_RDMA_READ,
        WcOpcode::CompSwap => o::IBV_WC_COMP_SWAP,
        WcOpcode::FetchAdd => o::IBV_WC_FETCH_ADD,
        WcOpcode::RecvRdmaWithImm => o::IBV_WC_RECV_RDMA_WITH_IMM,
        _ => o::IBV_WC_RECV,
    };
    wc.byte_len = c.byte_len;
    wc.qp_num = c.qp_num;
    wc.src_qp = c.src_qp;
    let mut flags = 0;
    if c.grh {
        flags |= ibv_wc_flags::IBV_WC_GRH;
    }
    if let Some(imm) = c.imm {
        flags |= ibv_wc_flags::IBV_WC_WITH_IMM;
        wc.__bindgen_anon_1.imm_data = imm.to_be();
    } else if let Some(rkey) = c.invalidated_rkey {
        flags |= ibv_wc_flags::IBV_WC_WITH_INV;
        wc.__bindgen_anon_1.invalidated_rkey = rkey;
    }
    wc.wc_flags = flags;
    wc
}

/// `ops.poll_cq`: up to `n` completions into `wc`; their number, or -1 on a CQ overrun.
unsafe extern "C" fn poll_cq(cq: *mut ibv_cq, n: c_int, wc: *mut ibv_wc) -> c_int {
    let Ok(n) = usize::try_from(n) else {
        return -1;
    };
    if cq.is_null() || (wc.is_null() && n > 0) {
        return -1;
    }
    // SAFETY: cq came from ibv_create_cq.
    let u = unsafe { &*cq.cast::<UCq>() };
    let fill = |got: &mut Vec<uroce::Completion>| -> c_int {
        got.clear();
        match u.cq.poll_into(n, got) {
            Ok(_) => {
                for (i, c) in got.iter().enumerate() {
                    // SAFETY: the caller gives room for n >= got.len() entries.
                    unsafe { wc.add(i).write(wc_of(c)) };
                }
                if got.is_empty() {
                    // A program spinning on an empty CQ would otherwise keep the device lock
                    // hot and, on a busy machine, the progress thread that fills the CQ off
                    // the CPU.
                    std::thread::yield_now();
                }
                got.len() as c_int
            }
            Err(_) => -1,
        }
    };
    // One buffer per thread, reused: no allocation per poll. A call while it is in use (from
    // a signal handler) or while the thread's locals are being torn down gets a fresh one
    // instead of a panic.
    POLLED
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut got) => fill(&mut got),
            Err(_) => fill(&mut Vec::new()),
        })
        .unwrap_or_else(|_| fill(&mut Vec::new()))
}

thread_local! {
    /// [`poll_cq`]'s completions on their way into the caller's array.
    static POLLED: std::cell::RefCell<Vec<uroce::Completion>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// `ops.req_notify_cq`.
unsafe extern "C" fn req_notify_cq(cq: *mut ibv_cq, solicited_only: c_int) -> c_int {
    if cq.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: cq came from ibv_create_cq.
    let u = unsafe { &*cq.cast::<UCq>() };
    match u.cq.req_notify(solicited_only != 0) {
        Ok(()) => 0,
        Err(e) => errno_of(&e),
    }
}

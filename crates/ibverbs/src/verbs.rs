//! The object verbs: PDs, MRs, completion channels, CQs, QPs (create, modify, query,
//! destroy), SRQs and address handles. Each creates the uroce object and wraps it behind the
//! rdma-core struct (`objects`); each destroy reclaims that allocation.

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uroce::{Access, Mtu, QpAttr, QpCap, QpState, QpType};

use crate::memory::RawMemory;
use crate::objects::{lock, EventAcks, UAh, UChannel, UContext, UCq, UMr, UPd, UQp, USrq};
use crate::sys::*;
use crate::{config, errno_of, set_errno};

/// Fails a pointer-returning verb with `errno`.
fn fail<T>(errno: i32) -> *mut T {
    set_errno(errno);
    std::ptr::null_mut()
}

/// Hands ownership of a boxed object to C as a pointer to its first field.
fn leak<T, U>(b: Box<T>) -> *mut U {
    Box::into_raw(b).cast()
}

/// Takes back an object handed out by `leak`.
///
/// # Safety
/// `p` must come from `leak::<T, _>` and not have been reclaimed.
unsafe fn reclaim<T, U>(p: *mut U) -> Box<T> {
    // SAFETY: per the contract, p is the start of a leaked Box<T>.
    unsafe { Box::from_raw(p.cast::<T>()) }
}

/// The context of an object's `context` field.
///
/// # Safety
/// `ctx` must be an open context of this library.
unsafe fn ctx_of<'a>(ctx: *mut ibv_context) -> &'a UContext {
    // SAFETY: forwarded contract.
    unsafe { UContext::from_ibv(ctx) }
}

/// `ibv_alloc_pd`; opens the uroce device (binds its socket) on the first call.
#[no_mangle]
pub unsafe extern "C" fn ibv_alloc_pd(ctx: *mut ibv_context) -> *mut ibv_pd {
    if ctx.is_null() {
        return fail(libc::EINVAL);
    }
    // SAFETY: ctx is open (verbs contract).
    let u = unsafe { ctx_of(ctx) };
    let dev = match u.engine() {
        Ok(d) => d,
        Err(e) => return fail(errno_of(&e)),
    };
    let pd = dev.alloc_pd();
    leak(Box::new(UPd {
        ibv: ibv_pd {
            context: ctx,
            handle: 0,
        },
        pd,
    }))
}

/// `ibv_dealloc_pd`.
#[no_mangle]
pub unsafe extern "C" fn ibv_dealloc_pd(pd: *mut ibv_pd) -> c_int {
    if pd.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: pd came from ibv_alloc_pd (verbs contract).
    drop(unsafe { reclaim::<UPd, _>(pd) });
    0
}

/// `ibv_reg_mr`.
#[no_mangle]
pub unsafe extern "C" fn ibv_reg_mr(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    length: usize,
    access: c_int,
) -> *mut ibv_mr {
    // SAFETY: forwarded contract, with the buffer's address as its I/O address.
    unsafe { ibv_reg_mr_iova2(pd, addr, length, addr as u64, access as c_uint) }
}

/// `ibv_reg_mr_iova`.
#[no_mangle]
pub unsafe extern "C" fn ibv_reg_mr_iova(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    length: usize,
    iova: u64,
    access: c_int,
) -> *mut ibv_mr {
    // SAFETY: forwarded contract.
    unsafe { ibv_reg_mr_iova2(pd, addr, length, iova, access as c_uint) }
}

/// `ibv_reg_mr_iova2`: registers the caller's buffer `addr..addr+length`, addressed by peers
/// and SGEs as `iova..iova+length`, with the rights in `access` enforced by the engine.
#[no_mangle]
pub unsafe extern "C" fn ibv_reg_mr_iova2(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    length: usize,
    iova: u64,
    access: c_uint,
) -> *mut ibv_mr {
    const KNOWN: c_uint = 0xf; // LOCAL_WRITE | REMOTE_WRITE | REMOTE_READ | REMOTE_ATOMIC
                               // IBTA §10.6.3.1 (and rdma-core): remote write or atomic rights need local write.
    if pd.is_null() || (addr.is_null() && length > 0) || (access & 0xa != 0 && access & 1 == 0) {
        return fail(libc::EINVAL);
    }
    if iova.checked_add(length as u64).is_none() {
        return fail(libc::EINVAL);
    }
    // SAFETY: pd came from ibv_alloc_pd.
    let upd = unsafe { &*pd.cast::<UPd>() };
    // SAFETY: the caller keeps the buffer mapped until ibv_dereg_mr (verbs contract).
    let mem = Arc::new(unsafe { RawMemory::new(addr.cast(), length) });
    let mr = match upd
        .pd
        .reg_memory(iova, mem, Access::from_bits(access & KNOWN))
    {
        Ok(m) => m,
        Err(e) => return fail(errno_of(&e)),
    };
    leak(Box::new(UMr {
        ibv: ibv_mr {
            context: upd.ibv.context,
            pd,
            addr,
            length,
            handle: 0,
            lkey: mr.lkey(),
            rkey: mr.rkey(),
        },
        mr,
    }))
}

/// `ibv_dereg_mr`.
#[no_mangle]
pub unsafe extern "C" fn ibv_dereg_mr(mr: *mut ibv_mr) -> c_int {
    if mr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: mr came from ibv_reg_mr*.
    drop(unsafe { reclaim::<UMr, _>(mr) });
    0
}

/// `ibv_rereg_mr`: not supported (deregister and register again instead).
#[no_mangle]
pub unsafe extern "C" fn ibv_rereg_mr(
    _mr: *mut ibv_mr,
    _flags: c_int,
    _pd: *mut ibv_pd,
    _addr: *mut c_void,
    _length: usize,
    _access: c_int,
) -> c_int {
    libc::EOPNOTSUPP
}

/// `ibv_create_comp_channel`: an eventfd that polls readable while events are pending.
#[no_mangle]
pub unsafe extern "C" fn ibv_create_comp_channel(ctx: *mut ibv_context) -> *mut ibv_comp_channel {
    if ctx.is_null() {
        return fail(libc::EINVAL);
    }
    let ch = match uroce::CompletionChannel::new() {
        Ok(c) => c,
        Err(e) => return fail(errno_of(&e)),
    };
    let fd = ch.fd().as_fd().as_raw_fd();
    leak(Box::new(UChannel {
        ibv: ibv_comp_channel {
            context: ctx,
            fd,
            refcnt: 0,
        },
        ch,
        cqs: Mutex::new(HashMap::new()),
    }))
}

/// `ibv_destroy_comp_channel`: EBUSY while CQs still report to it.
#[no_mangle]
pub unsafe extern "C" fn ibv_destroy_comp_channel(ch: *mut ibv_comp_channel) -> c_int {
    if ch.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: ch came from ibv_create_comp_channel.
    if !lock(&unsafe { &*ch.cast::<UChannel>() }.cqs).is_empty() {
        return libc::EBUSY;
    }
    // SAFETY: as above; no CQ refers to it any more.
    drop(unsafe { reclaim::<UChannel, _>(ch) });
    0
}

/// `ibv_get_cq_event`: waits for the next event on the channel.
#[no_mangle]
pub unsafe extern "C" fn ibv_get_cq_event(
    ch: *mut ibv_comp_channel,
    cq: *mut *mut ibv_cq,
    cq_context: *mut *mut c_void,
) -> c_int {
    if ch.is_null() || cq.is_null() || cq_context.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: ch came from ibv_create_comp_channel.
    let uch = unsafe { &*ch.cast::<UChannel>() };
    loop {
        let id = match uch.ch.get_event(Duration::from_secs(3600)) {
            Ok(Some(id)) => id,
            Ok(None) => continue,
            Err(e) => {
                set_errno(errno_of(&e));
                return -1;
            }
        };
        // An event of a CQ destroyed meanwhile is dropped.
        if let Some(&p) = lock(&uch.cqs).get(&id) {
            let p = p as *mut ibv_cq;
            // SAFETY: p is a live CQ (it unregisters itself before it is freed); the out
            // pointers are the caller's.
            unsafe {
                *cq = p;
                *cq_context = (*p).cq_context;
            }
            return 0;
        }
    }
}

/// `ibv_ack_cq_events`: events need no acknowledgement in uroce (nothing waits for them on
/// destroy).
#[no_mangle]
pub unsafe extern "C" fn ibv_ack_cq_events(_cq: *mut ibv_cq, _nevents: c_uint) {}

/// `ibv_create_cq`.
#[no_mangle]
pub unsafe extern "C" fn ibv_create_cq(
    ctx: *mut ibv_context,
    cqe: c_int,
    cq_context: *mut c_void,
    channel: *mut ibv_comp_channel,
    _comp_vector: c_int,
) -> *mut ibv_cq {
    if ctx.is_null() || cqe < 1 {
        return fail(libc::EINVAL);
    }
    // SAFETY: ctx is open.
    let dev = match unsafe { ctx_of(ctx) }.engine() {
        Ok(d) => d,
        Err(e) => return fail(errno_of(&e)),
    };
    let uch = channel.cast::<UChannel>();
    // SAFETY: a non-NULL channel came from ibv_create_comp_channel.
    let ch = (!uch.is_null()).then(|| unsafe { &(*uch).ch });
    let cq = match dev.create_cq(cqe as usize, ch) {
        Ok(c) => c,
        Err(e) => return fail(errno_of(&e)),
    };
    let id = cq.id();
    // SAFETY: ibv_cq is C data (pointers, integers, pthread mutex/cond) for which all-zero is
    // valid (the pthread initialisers are zero in glibc).
    let mut ibv: ibv_cq = unsafe { std::mem::zeroed() };
    ibv.context = ctx;
    ibv.channel = channel;
    ibv.cq_context = cq_context;
    ibv.cqe = cqe;
    let p: *mut ibv_cq = leak(Box::new(UCq {
        ibv,
        cq,
        channel: uch,
        acks: EventAcks::default(),
    }));
    // SAFETY: ctx is open.
    lock(&unsafe { ctx_of(ctx) }.cqs).insert(id, p as usize);
    if !uch.is_null() {
        // SAFETY: uch is a live channel (above).
        lock(&unsafe { &*uch }.cqs).insert(id, p as usize);
    }
    p
}

/// `ibv_resize_cq`: not supported.
#[no_mangle]
pub unsafe extern "C" fn ibv_resize_cq(_cq: *mut ibv_cq, _cqe: c_int) -> c_int {
    libc::EOPNOTSUPP
}

/// `ibv_destroy_cq`.
#[no_mangle]
pub unsafe extern "C" fn ibv_destroy_cq(cq: *mut ibv_cq) -> c_int {
    if cq.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: cq came from ibv_create_cq; its context is open.
    let u = unsafe { reclaim::<UCq, _>(cq) };
    // No new event names it once it left the map; wait for those handed out to be acked.
    // SAFETY: as above.
    lock(&unsafe { ctx_of(u.ibv.context) }.cqs).remove(&u.cq.id());
    u.acks.wait_all();
    if !u.channel.is_null() {
        // SAFETY: a CQ's channel outlives it (destroy_comp_channel refuses while CQs exist).
        lock(&unsafe { &*u.channel }.cqs).remove(&u.cq.id());
    }
    drop(u);
    0
}

fn qp_type(t: ibv_qp_type::Type) -> Option<QpType> {
    match t {
        ibv_qp_type::IBV_QPT_RC => Some(QpType::Rc),
        ibv_qp_type::IBV_QPT_UC => Some(QpType::Uc),
        ibv_qp_type::IBV_QPT_UD => Some(QpType::Ud),
        _ => None,
    }
}

/// `ibv_create_qp`: RC, UC and UD (others fail with EOPNOTSUPP). The granted capacities are
/// written back to `attr->cap`, as verbs do.
#[no_mangle]
pub unsafe extern "C" fn ibv_create_qp(
    pd: *mut ibv_pd,
    attr: *mut ibv_qp_init_attr,
) -> *mut ibv_qp {
    if pd.is_null() || attr.is_null() {
        return fail(libc::EINVAL);
    }
    // SAFETY: pd from ibv_alloc_pd; attr is the caller's.
    let (upd, a) = unsafe { (&*pd.cast::<UPd>(), &mut *attr) };
    let Some(ty) = qp_type(a.qp_type) else {
        return fail(libc::EOPNOTSUPP);
    };
    if a.send_cq.is_null() || a.recv_cq.is_null() {
        return fail(libc::EINVAL);
    }
    // SAFETY: the CQs and SRQ come from this library (verbs contract).
    let (scq, rcq) = unsafe { (&*a.send_cq.cast::<UCq>(), &*a.recv_cq.cast::<UCq>()) };
    // SAFETY: as above.
    let srq = (!a.srq.is_null()).then(|| unsafe { &(*a.srq.cast::<USrq>()).srq });
    let cap = QpCap {
        max_send_wr: a.cap.max_send_wr.max(1),
        max_recv_wr: a.cap.max_recv_wr.max(1),
        max_send_sge: a.cap.max_send_sge.max(1),
        max_recv_sge: a.cap.max_recv_sge.max(1),
        // rxe offers 256 bytes inline whatever is asked; programs read back what they got.
        max_inline_data: a.cap.max_inline_data.max(256),
    };
    let qp = match upd
        .pd
        .create_qp_sig(ty, &scq.cq, &rcq.cq, srq, cap, a.sq_sig_all != 0)
    {
        Ok(q) => q,
        Err(e) => return fail(errno_of(&e)),
    };
    a.cap = ibv_qp_cap {
        max_send_wr: cap.max_send_wr,
        max_recv_wr: cap.max_recv_wr,
        max_send_sge: cap.max_send_sge,
        max_recv_sge: cap.max_recv_sge,
        max_inline_data: cap.max_inline_data,
    };
    // SAFETY: ibv_qp is C data for which all-zero is valid (pthread initialisers are zero).
    let mut ibv: ibv_qp = unsafe { std::mem::zeroed() };
    ibv.context = upd.ibv.context;
    ibv.qp_context = a.qp_context;
    ibv.pd = pd;
    ibv.send_cq = a.send_cq;
    ibv.recv_cq = a.recv_cq;
    ibv.srq = a.srq;
    ibv.qp_num = qp.qpn();
    ibv.state = ibv_qp_state::IBV_QPS_RESET;
    ibv.qp_type = a.qp_type;
    // SAFETY: ibv_qp_attr is C data; all-zero is valid.
    let mut last: ibv_qp_attr = unsafe { std::mem::zeroed() };
    last.cap = a.cap;
    let qpn = qp.qpn();
    let p: *mut ibv_qp = leak(Box::new(UQp {
        ibv,
        qp,
        init: *a,
        attr: Mutex::new(last),
        acks: EventAcks::default(),
    }));
    // SAFETY: the PD's context is open.
    lock(&unsafe { ctx_of(upd.ibv.context) }.qps).insert(qpn, p as usize);
    p
}

fn qp_state(s: ibv_qp_state::Type) -> Option<QpState> {
    Some(match s {
        ibv_qp_state::IBV_QPS_RESET => QpState::Reset,
        ibv_qp_state::IBV_QPS_INIT => QpState::Init,
        ibv_qp_state::IBV_QPS_RTR => QpState::Rtr,
        ibv_qp_state::IBV_QPS_RTS => QpState::Rts,
        ibv_qp_state::IBV_QPS_SQD => QpState::Sqd,
        ibv_qp_state::IBV_QPS_SQE => QpState::Sqe,
        ibv_qp_state::IBV_QPS_ERR => QpState::Err,
        _ => return None,
    })
}

fn ibv_state(s: QpState) -> ibv_qp_state::Type {
    match s {
        QpState::Reset => ibv_qp_state::IBV_QPS_RESET,
        QpState::Init => ibv_qp_state::IBV_QPS_INIT,
        QpState::Rtr => ibv_qp_state::IBV_QPS_RTR,
        QpState::Rts => ibv_qp_state::IBV_QPS_RTS,
        QpState::Sqd => ibv_qp_state::IBV_QPS_SQD,
        QpState::Sqe => ibv_qp_state::IBV_QPS_SQE,
        _ => ibv_qp_state::IBV_QPS_ERR,
    }
}

/// The peer address of an address vector: RoCE needs the GRH's destination GID (rxe refuses
/// an AV without one too).
fn av_ip(ah: &ibv_ah_attr) -> Option<std::net::IpAddr> {
    // SAFETY: every bit pattern of the GID union's `raw` view is valid.
    (ah.is_global != 0).then(|| config::gid_to_ip(unsafe { ah.grh.dgid.raw }))
}

/// The engine attributes selected by `mask`.
fn qp_attr(a: &ibv_qp_attr, mask: c_int) -> Result<QpAttr, c_int> {
    use ibv_qp_attr_mask as m;
    let mask = mask as c_uint;
    let has = |bit: c_uint| mask & bit != 0;
    let mut q = QpAttr::default();
    if has(m::IBV_QP_STATE) {
        q.state = Some(qp_state(a.qp_state).ok_or(libc::EINVAL)?);
    }
    if has(m::IBV_QP_PKEY_INDEX) {
        q.pkey_index = Some(a.pkey_index);
    }
    if has(m::IBV_QP_PORT) {
        q.port = Some(a.port_num);
    }
    if has(m::IBV_QP_QKEY) {
        q.qkey = Some(a.qkey);
    }
    if has(m::IBV_QP_ACCESS_FLAGS) {
        q.access = Some(Access::from_bits(a.qp_access_flags & 0xf));
    }
    if has(m::IBV_QP_PATH_MTU) {
        let mtu = match a.path_mtu {
            ibv_mtu::IBV_MTU_256 => Mtu::M256,
            ibv_mtu::IBV_MTU_512 => Mtu::M512,
            ibv_mtu::IBV_MTU_1024 => Mtu::M1024,
            ibv_mtu::IBV_MTU_2048 => Mtu::M2048,
            ibv_mtu::IBV_MTU_4096 => Mtu::M4096,
            _ => return Err(libc::EINVAL),
        };
        q.path_mtu = Some(mtu);
    }
    if has(m::IBV_QP_AV) {
        q.dest_ip = Some(av_ip(&a.ah_attr).ok_or(libc::EINVAL)?);
    }
    if has(m::IBV_QP_DEST_QPN) {
        q.dest_qpn = Some(a.dest_qp_num);
    }
    if has(m::IBV_QP_RQ_PSN) {
        q.rq_psn = Some(a.rq_psn);
    }
    if has(m::IBV_QP_SQ_PSN) {
        q.sq_psn = Some(a.sq_psn);
    }
    if has(m::IBV_QP_MAX_DEST_RD_ATOMIC) {
        q.max_dest_rd_atomic = Some(a.max_dest_rd_atomic);
    }
    if has(m::IBV_QP_MAX_QP_RD_ATOMIC) {
        q.max_rd_atomic = Some(a.max_rd_atomic);
    }
    if has(m::IBV_QP_MIN_RNR_TIMER) {
        q.min_rnr_timer = Some(a.min_rnr_timer);
    }
    if has(m::IBV_QP_TIMEOUT) {
        q.timeout = Some(a.timeout);
    }
    if has(m::IBV_QP_RETRY_CNT) {
        q.retry_cnt = Some(a.retry_cnt);
    }
    if has(m::IBV_QP_RNR_RETRY) {
        q.rnr_retry = Some(a.rnr_retry);
    }
    Ok(q)
}

/// `ibv_modify_qp`.
#[no_mangle]
pub unsafe extern "C" fn ibv_modify_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    mask: c_int,
) -> c_int {
    if qp.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp from ibv_create_qp; attr is the caller's.
    let (u, a) = unsafe { (&*qp.cast::<UQp>(), &*attr) };
    let mut q = match qp_attr(a, mask) {
        Ok(q) => q,
        Err(e) => return e,
    };
    if u.qp.qp_type() == QpType::Ud && q.state == Some(QpState::Init) && q.path_mtu.is_none() {
        // UD has no path MTU attribute: as rxe (rxe_qp_init_req), a UD QP sends up to the
        // port's active MTU.
        // SAFETY: the QP's context is open while the QP exists.
        let active = unsafe { ctx_of(u.ibv.context) }.dev.info.active_mtu;
        q.path_mtu = Mtu::from_bytes(active);
    }
    if let Err(e) = u.qp.modify(&q) {
        return errno_of(&e);
    }
    if let Some(s) = u.qp.state() {
        // SAFETY: `state` is a plain C field of the caller's QP that verbs updates here; written
        // through the raw pointer, not through the shared reference other threads may hold.
        unsafe { (*qp).state = ibv_state(s) };
    }
    // Remember what was set, for ibv_query_qp.
    let mut last = lock(&u.attr);
    let cap = last.cap;
    let mut merged = *a;
    merged.cap = cap;
    if mask as c_uint & ibv_qp_attr_mask::IBV_QP_AV == 0 {
        merged.ah_attr = last.ah_attr;
    }
    *last = merged;
    0
}

/// `ibv_query_qp`: the current state, the creation attributes and the last values set.
#[no_mangle]
pub unsafe extern "C" fn ibv_query_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    _mask: c_int,
    init: *mut ibv_qp_init_attr,
) -> c_int {
    if qp.is_null() || attr.is_null() || init.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp from ibv_create_qp; the out pointers are the caller's.
    let u = unsafe { &*qp.cast::<UQp>() };
    let mut a = *lock(&u.attr);
    let state = u.qp.state().map_or(ibv_qp_state::IBV_QPS_ERR, ibv_state);
    a.qp_state = state;
    a.cur_qp_state = state;
    // SAFETY: as above.
    unsafe {
        *attr = a;
        *init = u.init;
    }
    0
}

/// `ibv_destroy_qp`.
#[no_mangle]
pub unsafe extern "C" fn ibv_destroy_qp(qp: *mut ibv_qp) -> c_int {
    if qp.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp from ibv_create_qp; its context is open.
    let u = unsafe { reclaim::<UQp, _>(qp) };
    // SAFETY: as above.
    lock(&unsafe { ctx_of(u.ibv.context) }.qps).remove(&u.ibv.qp_num);
    u.acks.wait_all();
    drop(u);
    0
}

/// `ibv_create_srq`.
#[no_mangle]
pub unsafe extern "C" fn ibv_create_srq(
    pd: *mut ibv_pd,
    attr: *mut ibv_srq_init_attr,
) -> *mut ibv_srq {
    if pd.is_null() || attr.is_null() {
        return fail(libc::EINVAL);
    }
    // SAFETY: pd from ibv_alloc_pd; attr is the caller's.
    let (upd, a) = unsafe { (&*pd.cast::<UPd>(), &mut *attr) };
    let srq = match upd
        .pd
        .create_srq(a.attr.max_wr.max(1), a.attr.max_sge.max(1))
    {
        Ok(s) => s,
        Err(e) => return fail(errno_of(&e)),
    };
    // SAFETY: ibv_srq is C data for which all-zero is valid.
    let mut ibv: ibv_srq = unsafe { std::mem::zeroed() };
    ibv.context = upd.ibv.context;
    ibv.srq_context = a.srq_context;
    ibv.pd = pd;
    leak(Box::new(USrq {
        ibv,
        srq,
        attr: a.attr,
    }))
}

/// `ibv_modify_srq`: uroce neither resizes SRQs nor raises the limit event.
#[no_mangle]
pub unsafe extern "C" fn ibv_modify_srq(
    _srq: *mut ibv_srq,
    _attr: *mut ibv_srq_attr,
    _mask: c_int,
) -> c_int {
    libc::EOPNOTSUPP
}

/// `ibv_query_srq`.
#[no_mangle]
pub unsafe extern "C" fn ibv_query_srq(srq: *mut ibv_srq, attr: *mut ibv_srq_attr) -> c_int {
    if srq.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: srq from ibv_create_srq; attr is the caller's.
    unsafe { *attr = (*srq.cast::<USrq>()).attr };
    0
}

/// `ibv_destroy_srq`.
#[no_mangle]
pub unsafe extern "C" fn ibv_destroy_srq(srq: *mut ibv_srq) -> c_int {
    if srq.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: srq from ibv_create_srq.
    drop(unsafe { reclaim::<USrq, _>(srq) });
    0
}

/// `ibv_create_ah`: the destination is the GRH's GID (as an IP address).
#[no_mangle]
pub unsafe extern "C" fn ibv_create_ah(pd: *mut ibv_pd, attr: *mut ibv_ah_attr) -> *mut ibv_ah {
    if pd.is_null() || attr.is_null() {
        return fail(libc::EINVAL);
    }
    // SAFETY: pd from ibv_alloc_pd; attr is the caller's.
    let (upd, a) = unsafe { (&*pd.cast::<UPd>(), &*attr) };
    let Some(ip) = av_ip(a) else {
        return fail(libc::EINVAL);
    };
    let ah = match upd.pd.create_ah(ip) {
        Ok(h) => h,
        Err(e) => return fail(errno_of(&e)),
    };
    leak(Box::new(UAh {
        ibv: ibv_ah {
            context: upd.ibv.context,
            pd,
            handle: 0,
        },
        ah,
    }))
}

/// `ibv_destroy_ah`.
#[no_mangle]
pub unsafe extern "C" fn ibv_destroy_ah(ah: *mut ibv_ah) -> c_int {
    if ah.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: ah from ibv_create_ah.
    drop(unsafe { reclaim::<UAh, _>(ah) });
    0
}

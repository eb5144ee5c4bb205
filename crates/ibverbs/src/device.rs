//! Devices and contexts: the device list, `ibv_open_device`/`ibv_close_device`, the
//! `ibv_query_*` of device, port, GID and P_Key, and asynchronous events.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, OnceLock};

use crate::config::{self, DeviceInfo};
use crate::objects::{lock, UContext, UCq, UDevice, UQp};
use crate::sys::*;
use crate::{datapath, set_errno};

/// rxe's answers where uroce has no reason to differ (`rxe_param.h`).
const VENDOR_ID: u32 = 0xffffff; // RXE_VENDOR_ID
const MAX_MSG_SZ: u32 = 0x8000_0000;
/// IBV_PORT_CM_SUP | IBV_PORT_IP_BASED_GIDS, as rxe's port capabilities.
const PORT_CAP_FLAGS: u32 = 0x0001_0000 | 0x0400_0000;
const LINK_LAYER_ETHERNET: u8 = 2;
const PORT_ACTIVE: u32 = 4;
const PORT_DOWN: u32 = 1;
/// `ibv_gid_type_sysfs`: RoCE v2 (driver.h), what every uroce GID is.
const GID_TYPE_SYSFS_ROCE_V2: u32 = 1;

/// The devices, built once; they never move (the Vec is not touched after), so pointers to
/// them stay valid for the process.
fn devices() -> &'static [UDevice] {
    static LIST: OnceLock<Vec<UDevice>> = OnceLock::new();
    LIST.get_or_init(|| config::devices().into_iter().map(new_device).collect())
}

fn copy_str(dst: &mut [c_char], s: &str) {
    let room = dst.len().saturating_sub(1);
    for (d, b) in dst.iter_mut().zip(s.bytes().take(room)) {
        *d = b as c_char;
    }
}

fn new_device(info: DeviceInfo) -> UDevice {
    // SAFETY: ibv_device is plain C data (integers, char arrays, nullable function pointers),
    // for which all-zero is a valid value.
    let mut ibv: ibv_device = unsafe { std::mem::zeroed() };
    ibv.node_type = ibv_node_type::IBV_NODE_CA;
    ibv.transport_type = ibv_transport_type::IBV_TRANSPORT_IB;
    copy_str(&mut ibv.name, &info.name);
    copy_str(&mut ibv.dev_name, &format!("uverbs-{}", info.name));
    copy_str(&mut ibv.dev_path, "/dev/null");
    copy_str(&mut ibv.ibdev_path, "/dev/null");
    UDevice { ibv, info }
}

/// The UDevice behind a device pointer, if it is one of ours.
fn device_of(dev: *mut ibv_device) -> Option<&'static UDevice> {
    devices().iter().find(|d| std::ptr::eq(&d.ibv, dev))
}

/// `ibv_get_device_list`: a NULL-terminated, malloc'd array (freed by `ibv_free_device_list`).
#[no_mangle]
pub unsafe extern "C" fn ibv_get_device_list(num_devices: *mut c_int) -> *mut *mut ibv_device {
    let list = devices();
    // SAFETY: calloc of (n + 1) pointers; checked for NULL below.
    let arr = unsafe { libc::calloc(list.len() + 1, std::mem::size_of::<*mut ibv_device>()) }
        .cast::<*mut ibv_device>();
    if arr.is_null() {
        set_errno(libc::ENOMEM);
        return arr;
    }
    for (i, d) in list.iter().enumerate() {
        // SAFETY: i < n + 1 slots; the devices live for the process, so handing out a mutable
        // pointer is what verbs does (callers only read them).
        unsafe { *arr.add(i) = std::ptr::from_ref(&d.ibv).cast_mut() };
    }
    if !num_devices.is_null() {
        // SAFETY: the caller passes a valid int pointer or NULL.
        unsafe { *num_devices = list.len() as c_int };
    }
    arr
}

/// `ibv_free_device_list`.
#[no_mangle]
pub unsafe extern "C" fn ibv_free_device_list(list: *mut *mut ibv_device) {
    // SAFETY: `list` came from ibv_get_device_list's calloc (or is NULL).
    unsafe { libc::free(list.cast()) }
}

/// `ibv_get_device_name`.
#[no_mangle]
pub unsafe extern "C" fn ibv_get_device_name(dev: *mut ibv_device) -> *const c_char {
    match device_of(dev) {
        Some(d) => d.ibv.name.as_ptr(),
        None => std::ptr::null(),
    }
}

/// `ibv_get_device_guid`: big-endian in memory.
#[no_mangle]
pub unsafe extern "C" fn ibv_get_device_guid(dev: *mut ibv_device) -> __be64 {
    device_of(dev).map_or(0, |d| u64::from_ne_bytes(d.info.guid))
}

/// `ibv_get_device_index`.
#[no_mangle]
pub unsafe extern "C" fn ibv_get_device_index(dev: *mut ibv_device) -> c_int {
    devices()
        .iter()
        .position(|d| std::ptr::eq(&d.ibv, dev))
        .map_or(-1, |i| i as c_int)
}

/// `ibv_open_device`: a context whose `ops` table holds the data-path verbs. The UDP socket is
/// bound at the first verb that needs it.
#[no_mangle]
pub unsafe extern "C" fn ibv_open_device(dev: *mut ibv_device) -> *mut ibv_context {
    let Some(d) = device_of(dev) else {
        set_errno(libc::ENODEV);
        return std::ptr::null_mut();
    };
    let events = match uroce::AsyncEvents::new() {
        Ok(e) => e,
        Err(e) => {
            set_errno(crate::errno_of(&e));
            return std::ptr::null_mut();
        }
    };
    // SAFETY: verbs_context is C data (pointers, integers, nullable function pointers, a
    // pthread mutex) for which all-zero is valid (and PTHREAD_MUTEX_INITIALIZER).
    let mut vctx: verbs_context = unsafe { std::mem::zeroed() };
    vctx.sz = std::mem::size_of::<verbs_context>();
    vctx.query_port = Some(query_port_ex);
    vctx.query_device_ex = Some(query_device_ex);
    vctx.context.device = dev;
    vctx.context.cmd_fd = -1;
    vctx.context.async_fd = events.fd().as_raw_fd();
    vctx.context.num_comp_vectors = 1;
    // verbs_get_ctx: only an extended context may be cast back to its verbs_context.
    vctx.context.abi_compat = usize::MAX as *mut c_void; // __VERBS_ABI_IS_EXTENDED ((void *)UINTPTR_MAX)
    datapath::fill_ops(&mut vctx.context.ops);
    let ctx = Box::new(UContext {
        vctx,
        dev: d,
        engine: Mutex::new(None),
        events,
        qps: Mutex::new(HashMap::new()),
        cqs: Mutex::new(HashMap::new()),
    });
    let p = Box::into_raw(ctx);
    // SAFETY: p is a valid, leaked Box; the context pointer is its field.
    unsafe { &raw mut (*p).vctx.context }
}

/// `ibv_close_device`: stops the device's progress thread and closes its socket.
#[no_mangle]
pub unsafe extern "C" fn ibv_close_device(ctx: *mut ibv_context) -> c_int {
    if ctx.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: ctx came from ibv_open_device (verbs contract); reclaim the Box it leaked.
    let u = unsafe { UContext::from_ibv(ctx) };
    // SAFETY: as above; after this nothing uses ctx.
    drop(unsafe { Box::from_raw(std::ptr::from_ref(u).cast_mut()) });
    0
}

/// `ibv_query_device`.
#[no_mangle]
pub unsafe extern "C" fn ibv_query_device(
    ctx: *mut ibv_context,
    attr: *mut ibv_device_attr,
) -> c_int {
    if ctx.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: ctx is an open context (verbs contract).
    let info = &unsafe { UContext::from_ibv(ctx) }.dev.info;
    // SAFETY: attr points at a caller-owned ibv_device_attr; all-zero is valid C data.
    let a = unsafe { &mut *attr };
    // SAFETY: as above.
    *a = unsafe { std::mem::zeroed() };
    copy_str(&mut a.fw_ver, env!("CARGO_PKG_VERSION"));
    a.node_guid = u64::from_ne_bytes(info.guid);
    a.sys_image_guid = a.node_guid;
    a.max_mr_size = u64::MAX;
    a.page_size_cap = 0xffff_f000;
    a.vendor_id = VENDOR_ID;
    a.max_qp = 4096;
    a.max_qp_wr = 16384;
    // IBV_DEVICE_RC_RNR_NAK_GEN | IBV_DEVICE_SRQ_RESIZE? uroce: RNR NAK generation only.
    a.device_cap_flags = 1 << 12;
    a.max_sge = 32;
    a.max_sge_rd = 32;
    a.max_cq = 4096;
    a.max_cqe = (1 << 20) - 1;
    a.max_mr = 65536;
    a.max_pd = 65536;
    a.max_qp_rd_atom = 128;
    a.max_res_rd_atom = 128 * 4096;
    a.max_qp_init_rd_atom = 128;
    a.atomic_cap = ibv_atomic_cap::IBV_ATOMIC_HCA;
    a.max_ah = 65536;
    a.max_srq = 4096;
    a.max_srq_wr = 16384;
    a.max_srq_sge = 32;
    a.max_pkeys = 1;
    a.local_ca_ack_delay = 15;
    a.phys_port_cnt = 1;
    0
}

/// `verbs_context::query_device_ex`: the basic attributes; the extensions read as zero
/// (nothing beyond the basic verbs is offered).
unsafe extern "C" fn query_device_ex(
    ctx: *mut ibv_context,
    _input: *const ibv_query_device_ex_input,
    attr: *mut ibv_device_attr_ex,
    attr_size: usize,
) -> c_int {
    if attr.is_null() || attr_size < std::mem::size_of::<ibv_device_attr>() {
        return libc::EINVAL;
    }
    // SAFETY: the caller gives attr_size writable bytes at attr.
    unsafe { std::ptr::write_bytes(attr.cast::<u8>(), 0, attr_size) };
    // SAFETY: orig_attr is the first member of ibv_device_attr_ex (size checked above).
    unsafe { ibv_query_device(ctx, &raw mut (*attr).orig_attr) }
}

fn port_attr(info: &DeviceInfo) -> ibv_port_attr {
    // SAFETY: ibv_port_attr is plain integers; all-zero is valid.
    let mut a: ibv_port_attr = unsafe { std::mem::zeroed() };
    a.state = if info.active { PORT_ACTIVE } else { PORT_DOWN };
    a.max_mtu = ibv_mtu::IBV_MTU_4096;
    a.active_mtu = uroce::netif::mtu_enum(info.active_mtu);
    a.gid_tbl_len = info.gids.len() as c_int;
    a.port_cap_flags = PORT_CAP_FLAGS;
    a.max_msg_sz = MAX_MSG_SZ;
    a.pkey_tbl_len = 1;
    a.max_vl_num = 1;
    a.active_width = 2; // 4X, as rxe
    a.active_speed = 32; // EDR-class (rxe reports from the netdev)
    a.phys_state = if info.active { 5 } else { 3 }; // LinkUp / Disabled
    a.link_layer = LINK_LAYER_ETHERNET;
    a
}

/// `verbs_context::query_port`, what verbs.h's inline `ibv_query_port` calls.
unsafe extern "C" fn query_port_ex(
    ctx: *mut ibv_context,
    port: u8,
    attr: *mut ibv_port_attr,
    attr_len: usize,
) -> c_int {
    if ctx.is_null() || attr.is_null() || port != 1 {
        return libc::EINVAL;
    }
    // SAFETY: ctx is an open context.
    let a = port_attr(&unsafe { UContext::from_ibv(ctx) }.dev.info);
    let n = attr_len.min(std::mem::size_of::<ibv_port_attr>());
    // SAFETY: the caller gives attr_len writable bytes; we copy at most our struct's size.
    unsafe { std::ptr::copy_nonoverlapping((&raw const a).cast::<u8>(), attr.cast(), n) };
    0
}

/// `ibv_query_port` (the exported, old-layout entry point): the fields before
/// `port_cap_flags2`.
#[no_mangle]
pub unsafe extern "C" fn ibv_query_port(
    ctx: *mut ibv_context,
    port: u8,
    attr: *mut _compat_ibv_port_attr,
) -> c_int {
    let n = std::mem::offset_of!(ibv_port_attr, port_cap_flags2);
    // SAFETY: same contract, with the compat struct's length.
    unsafe { query_port_ex(ctx, port, attr.cast(), n) }
}

fn gid_at(ctx: *mut ibv_context, port: u32, index: u32) -> Option<[u8; 16]> {
    if ctx.is_null() || port != 1 {
        return None;
    }
    // SAFETY: ctx is an open context.
    let info = &unsafe { UContext::from_ibv(ctx) }.dev.info;
    info.gids.get(index as usize).map(|g| g.octets())
}

/// `ibv_query_gid`.
#[no_mangle]
pub unsafe extern "C" fn ibv_query_gid(
    ctx: *mut ibv_context,
    port: u8,
    index: c_int,
    gid: *mut ibv_gid,
) -> c_int {
    let Some(g) = u32::try_from(index)
        .ok()
        .and_then(|i| gid_at(ctx, port.into(), i))
    else {
        return -1;
    };
    if gid.is_null() {
        return -1;
    }
    // SAFETY: gid points at a caller-owned union ibv_gid.
    unsafe { (*gid).raw = g };
    0
}

/// `_ibv_query_gid_ex` (behind verbs.h's `ibv_query_gid_ex`).
#[no_mangle]
pub unsafe extern "C" fn _ibv_query_gid_ex(
    ctx: *mut ibv_context,
    port: u32,
    index: u32,
    entry: *mut ibv_gid_entry,
    _flags: u32,
    entry_size: usize,
) -> c_int {
    if entry.is_null() || entry_size < std::mem::size_of::<ibv_gid_entry>() {
        return libc::EINVAL;
    }
    let Some(g) = gid_at(ctx, port, index) else {
        return libc::ENODATA;
    };
    // SAFETY: entry points at entry_size >= sizeof(ibv_gid_entry) caller-owned bytes.
    let e = unsafe { &mut *entry };
    e.gid.raw = g;
    e.gid_index = index;
    e.port_num = port;
    e.gid_type = ibv_gid_type::IBV_GID_TYPE_ROCE_V2;
    e.ndev_ifindex = 0;
    0
}

/// `ibv_query_gid_type` (IBVERBS_PRIVATE, used by perftest): every GID is RoCE v2.
#[no_mangle]
pub unsafe extern "C" fn ibv_query_gid_type(
    ctx: *mut ibv_context,
    port: u8,
    index: u32,
    ty: *mut u32,
) -> c_int {
    if gid_at(ctx, port.into(), index).is_none() || ty.is_null() {
        return -1;
    }
    // SAFETY: ty points at a caller-owned enum ibv_gid_type_sysfs (an int).
    unsafe { *ty = GID_TYPE_SYSFS_ROCE_V2 };
    0
}

/// `ibv_query_pkey`: one P_Key, the default 0xffff.
#[no_mangle]
pub unsafe extern "C" fn ibv_query_pkey(
    _ctx: *mut ibv_context,
    port: u8,
    index: c_int,
    pkey: *mut __be16,
) -> c_int {
    if port != 1 || index != 0 || pkey.is_null() {
        return -1;
    }
    // SAFETY: pkey points at a caller-owned __be16.
    unsafe { *pkey = 0xffff };
    0
}

/// `ibv_get_pkey_index`.
#[no_mangle]
pub unsafe extern "C" fn ibv_get_pkey_index(
    _ctx: *mut ibv_context,
    port: u8,
    pkey: __be16,
) -> c_int {
    if port == 1 && (u16::from_be(pkey) | 0x8000) == 0xffff {
        0
    } else {
        -1
    }
}

/// The next event whose object still exists, filled into `event`, its object's count of
/// events handed out raised (under the map's lock, so a destroy waits for its ack).
fn next_event(u: &UContext, event: &mut ibv_async_event) -> Option<()> {
    use ibv_event_type as t;
    loop {
        let e = u.events.try_get()?;
        match e {
            uroce::AsyncEvent::QpFatal(qpn) => {
                let qps = lock(&u.qps);
                let Some(&p) = qps.get(&qpn) else { continue };
                // SAFETY: a QP in the map is alive (it leaves the map before it is freed).
                unsafe { &*(p as *const UQp) }.acks.reported();
                event.element.qp = p as *mut ibv_qp;
                event.event_type = t::IBV_EVENT_QP_FATAL;
            }
            uroce::AsyncEvent::CqErr(cq) => {
                let cqs = lock(&u.cqs);
                let Some(&p) = cqs.get(&cq.0) else { continue };
                // SAFETY: as for QPs.
                unsafe { &*(p as *const UCq) }.acks.reported();
                event.element.cq = p as *mut ibv_cq;
                event.event_type = t::IBV_EVENT_CQ_ERR;
            }
            // Events this library does not know yet are not handed out.
            _ => continue,
        }
        return Some(());
    }
}

/// `ibv_get_async_event`: the next asynchronous event (`IBV_EVENT_QP_FATAL` when a QP went
/// to ERR by itself, `IBV_EVENT_CQ_ERR` when a CQ overflowed). Blocks until one comes, unless
/// the program made `async_fd` non-blocking (then -1 with errno EAGAIN), as rdma-core's
/// `read` of the kernel's async fd does. Each event must be acknowledged
/// (`ibv_ack_async_event`) before its object can be destroyed.
#[no_mangle]
pub unsafe extern "C" fn ibv_get_async_event(
    ctx: *mut ibv_context,
    event: *mut ibv_async_event,
) -> c_int {
    if ctx.is_null() || event.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: ctx is an open context; event is the caller's.
    let (u, ev) = unsafe { (UContext::from_ibv(ctx), &mut *event) };
    let fd = u.events.fd().as_raw_fd();
    loop {
        if next_event(u, ev).is_some() {
            return 0;
        }
        // SAFETY: fcntl(F_GETFL) on our open descriptor.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
            set_errno(libc::EAGAIN);
            return -1;
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return -1;
        }
    }
}

/// `ibv_ack_async_event`: counts the event as handled, which a destroy of its QP or CQ waits
/// for.
#[no_mangle]
pub unsafe extern "C" fn ibv_ack_async_event(event: *mut ibv_async_event) {
    if event.is_null() {
        return;
    }
    use ibv_event_type as t;
    // SAFETY: the caller's event, filled by ibv_get_async_event.
    let ev = unsafe { &*event };
    // SAFETY: the element is the member the event type selects, and the object is alive
    // until this ack (its destroy waits for it).
    unsafe {
        match ev.event_type {
            t::IBV_EVENT_QP_FATAL if !ev.element.qp.is_null() => {
                (*ev.element.qp.cast::<UQp>()).acks.acked();
            }
            t::IBV_EVENT_CQ_ERR if !ev.element.cq.is_null() => {
                (*ev.element.cq.cast::<UCq>()).acks.acked();
            }
            _ => {}
        }
    }
}

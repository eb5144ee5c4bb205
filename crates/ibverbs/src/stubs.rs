//! Symbols present so that programs, and the providers and librdmacm they load, link against
//! this library (they are bound at load time: Debian builds with `-z now`), but that uroce
//! does not implement. Each fails cleanly: `EOPNOTSUPP` (as a return value or errno), NULL, or
//! nothing for `void` functions. The `IBVERBS_PRIVATE_34` ones are rdma-core's interface to
//! its kernel-driver providers (mlx5, efa, …), which never see a uroce device.
//! (Fork: `fork.rs`.)

use std::ffi::{c_int, c_void};

use crate::set_errno;

/// Functions returning an int error code.
macro_rules! stub_int {
    ($($name:ident => $val:expr),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported by uroce.")]
        #[no_mangle]
        pub extern "C" fn $name() -> c_int {
            $val
        }
    )*};
}

/// Functions returning a pointer: NULL with errno EOPNOTSUPP.
macro_rules! stub_ptr {
    ($($name:ident),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported by uroce (NULL, errno EOPNOTSUPP).")]
        #[no_mangle]
        pub extern "C" fn $name() -> *mut c_void {
            set_errno(libc::EOPNOTSUPP);
            std::ptr::null_mut()
        }
    )*};
}

/// `void` functions: do nothing.
macro_rules! stub_void {
    ($($name:ident),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "`: nothing to do in uroce.")]
        #[no_mangle]
        pub extern "C" fn $name() {}
    )*};
}

const NOTSUP: c_int = libc::EOPNOTSUPP;

stub_int! {
    ibv_read_sysfs_file => -1,
    ibv_attach_mcast => NOTSUP,
    ibv_detach_mcast => NOTSUP,
    ibv_init_ah_from_wc => NOTSUP,
    ibv_resolve_eth_l2_from_gid => NOTSUP,
    ibv_query_ece => NOTSUP,
    ibv_set_ece => NOTSUP,
    execute_ioctl => NOTSUP,
    ibv_cmd_advise_mr => NOTSUP,
    ibv_cmd_alloc_dm => NOTSUP,
    ibv_cmd_alloc_mw => NOTSUP,
    ibv_cmd_alloc_pd => NOTSUP,
    ibv_cmd_attach_mcast => NOTSUP,
    ibv_cmd_close_xrcd => NOTSUP,
    ibv_cmd_create_ah => NOTSUP,
    ibv_cmd_create_counters => NOTSUP,
    ibv_cmd_create_cq_ex => NOTSUP,
    ibv_cmd_create_flow => NOTSUP,
    ibv_cmd_create_flow_action_esp => NOTSUP,
    ibv_cmd_create_qp_ex => NOTSUP,
    ibv_cmd_create_qp_ex2 => NOTSUP,
    ibv_cmd_create_rwq_ind_table => NOTSUP,
    ibv_cmd_create_srq => NOTSUP,
    ibv_cmd_create_srq_ex => NOTSUP,
    ibv_cmd_create_wq => NOTSUP,
    ibv_cmd_dealloc_mw => NOTSUP,
    ibv_cmd_dealloc_pd => NOTSUP,
    ibv_cmd_dereg_mr => NOTSUP,
    ibv_cmd_destroy_ah => NOTSUP,
    ibv_cmd_destroy_counters => NOTSUP,
    ibv_cmd_destroy_cq => NOTSUP,
    ibv_cmd_destroy_flow => NOTSUP,
    ibv_cmd_destroy_flow_action => NOTSUP,
    ibv_cmd_destroy_qp => NOTSUP,
    ibv_cmd_destroy_rwq_ind_table => NOTSUP,
    ibv_cmd_destroy_srq => NOTSUP,
    ibv_cmd_destroy_wq => NOTSUP,
    ibv_cmd_detach_mcast => NOTSUP,
    ibv_cmd_free_dm => NOTSUP,
    ibv_cmd_get_context => NOTSUP,
    ibv_cmd_modify_cq => NOTSUP,
    ibv_cmd_modify_flow_action_esp => NOTSUP,
    ibv_cmd_modify_qp => NOTSUP,
    ibv_cmd_modify_qp_ex => NOTSUP,
    ibv_cmd_modify_srq => NOTSUP,
    ibv_cmd_modify_wq => NOTSUP,
    ibv_cmd_open_qp => NOTSUP,
    ibv_cmd_open_xrcd => NOTSUP,
    ibv_cmd_query_context => NOTSUP,
    ibv_cmd_query_device_any => NOTSUP,
    ibv_cmd_query_mr => NOTSUP,
    ibv_cmd_query_port => NOTSUP,
    ibv_cmd_query_qp => NOTSUP,
    ibv_cmd_query_srq => NOTSUP,
    ibv_cmd_read_counters => NOTSUP,
    ibv_cmd_reg_dm_mr => NOTSUP,
    ibv_cmd_reg_dmabuf_mr => NOTSUP,
    ibv_cmd_reg_mr => NOTSUP,
    ibv_cmd_rereg_mr => NOTSUP,
    ibv_cmd_resize_cq => NOTSUP,
    verbs_allow_disassociate_destroy => 0,
}

stub_ptr! {
    ibv_get_sysfs_path,
    ibv_create_ah_from_wc,
    ibv_qp_to_qp_ex,
    _verbs_init_and_alloc_context,
    verbs_open_device,
}

stub_void! {
    ibv_copy_path_rec_from_kern,
    ibv_copy_qp_attr_from_kern,
    ibv_copy_ah_attr_from_kern,
    __verbs_log,
    verbs_init_cq,
    verbs_register_driver_34,
    verbs_set_ops,
    verbs_uninit_context,
}

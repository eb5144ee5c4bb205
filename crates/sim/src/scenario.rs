//! Set-up helpers shared by the simulator's tests: two hosts with a connected QP pair, each
//! with one memory region and one CQ.

use std::net::IpAddr;
use std::sync::Arc;

use uroce_proto::{
    Access, Completion, CqHandle, MrKeys, Mtu, PdHandle, QpAttr, QpCap, QpInit, QpState, QpType,
    VecMemory,
};

use crate::Sim;

/// One side of a connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host index in the simulator.
    pub host: usize,
    /// Protection domain.
    pub pd: PdHandle,
    /// CQ for sends and receives.
    pub cq: CqHandle,
    /// QP number.
    pub qpn: u32,
    /// The region's bytes.
    pub mem: Arc<VecMemory>,
    /// The region's keys.
    pub keys: MrKeys,
    /// The region's first address.
    pub base: u64,
}

/// Options for [`connect`].
#[derive(Debug, Clone, Copy)]
pub struct PairOpts {
    /// Service.
    pub qp_type: QpType,
    /// Path MTU.
    pub mtu: Mtu,
    /// Bytes of memory per side.
    pub mem_len: usize,
    /// Remote rights of each side's QP and region.
    pub access: Access,
    /// Local ACK timeout exponent.
    pub timeout: u8,
    /// Retries.
    pub retry_cnt: u8,
    /// RNR retries.
    pub rnr_retry: u8,
    /// RNR timer code each side asks for.
    pub min_rnr_timer: u8,
    /// READ/atomic depth both ways.
    pub rd_atomic: u8,
    /// Queue capacities.
    pub cap: QpCap,
    /// CQ depth.
    pub cq_depth: usize,
}

impl Default for PairOpts {
    fn default() -> Self {
        PairOpts {
            qp_type: QpType::Rc,
            mtu: Mtu::M1024,
            mem_len: 1 << 16,
            access: Access::LOCAL_WRITE
                | Access::REMOTE_WRITE
                | Access::REMOTE_READ
                | Access::REMOTE_ATOMIC,
            timeout: 10,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 1,
            rd_atomic: 16,
            cap: QpCap {
                max_send_wr: 1024,
                max_recv_wr: 1024,
                ..QpCap::default()
            },
            cq_depth: 8192,
        }
    }
}

/// Base address of the region on host `h` (distinct per host to catch address mix-ups).
pub fn base_of(h: usize) -> u64 {
    0x1000_0000 * (h as u64 + 1)
}

/// Creates a PD, CQ, MR and QP on host `h` (QP left in RESET).
pub fn endpoint(sim: &mut Sim, h: usize, o: &PairOpts) -> Endpoint {
    let dev = sim.dev(h);
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(o.cq_depth).expect("cq");
    let mem = VecMemory::zeroed(o.mem_len);
    let keys = dev
        .reg_mr(pd, base_of(h), mem.clone(), o.access)
        .expect("mr");
    let qpn = dev
        .create_qp(QpInit {
            qp_type: o.qp_type,
            pd,
            send_cq: cq,
            recv_cq: cq,
            srq: None,
            cap: o.cap,
            sq_sig_all: false,
        })
        .expect("qp");
    Endpoint {
        host: h,
        pd,
        cq,
        qpn,
        mem,
        keys,
        base: base_of(h),
    }
}

/// Moves `a`'s QP to RTS connected to `b`'s (RC/UC), or to RTS (UD).
pub fn bring_up(sim: &mut Sim, a: &Endpoint, b: &Endpoint, o: &PairOpts) {
    let peer_ip: IpAddr = sim.hosts[b.host].ip;
    let dev = sim.dev(a.host);
    let init = QpAttr {
        state: Some(QpState::Init),
        pkey_index: Some(0),
        port: Some(1),
        access: Some(o.access),
        qkey: Some(0x1111_1111),
        ..QpAttr::default()
    };
    dev.modify_qp(a.qpn, &init).expect("init");
    let rtr = if o.qp_type == QpType::Ud {
        QpAttr {
            state: Some(QpState::Rtr),
            ..QpAttr::default()
        }
    } else {
        QpAttr {
            state: Some(QpState::Rtr),
            path_mtu: Some(o.mtu),
            dest_ip: Some(peer_ip),
            dest_qpn: Some(b.qpn),
            rq_psn: Some(0x00AB_CD00 ^ b.qpn),
            max_dest_rd_atomic: Some(o.rd_atomic),
            min_rnr_timer: Some(o.min_rnr_timer),
            ..QpAttr::default()
        }
    };
    dev.modify_qp(a.qpn, &rtr).expect("rtr");
    let rts = QpAttr {
        state: Some(QpState::Rts),
        sq_psn: Some(0x00AB_CD00 ^ a.qpn),
        timeout: Some(o.timeout),
        retry_cnt: Some(o.retry_cnt),
        rnr_retry: Some(o.rnr_retry),
        max_rd_atomic: Some(o.rd_atomic),
        ..QpAttr::default()
    };
    dev.modify_qp(a.qpn, &rts).expect("rts");
}

/// Two hosts (10.0.0.1 and 10.0.0.2) with connected QPs.
pub fn pair(sim: &mut Sim, o: &PairOpts) -> (Endpoint, Endpoint) {
    let h0 = sim.add_host([10, 0, 0, 1].into());
    let h1 = sim.add_host([10, 0, 0, 2].into());
    let a = endpoint(sim, h0, o);
    let b = endpoint(sim, h1, o);
    bring_up(sim, &a, &b, o);
    bring_up(sim, &b, &a, o);
    (a, b)
}

/// Takes every completion waiting on `ep`'s CQ.
pub fn drain(sim: &mut Sim, ep: &Endpoint) -> Vec<Completion> {
    let mut v = Vec::new();
    while let Ok(Some(c)) = sim.dev(ep.host).poll_cq(ep.cq) {
        v.push(c);
    }
    v
}

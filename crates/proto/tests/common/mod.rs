//! What proto's integration tests share: an RC QP on an engine, connecting it to a peer's
//! (INIT, RTR, RTS), the packets an engine sends now, and a data pattern. Each test binary
//! uses a part of it.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use uroce_proto::{
    Access, CqHandle, Device, Instant, Mtu, PdHandle, Placement, QpAttr, QpCap, QpInit, QpState,
    QpType, Scatter,
};

/// What `create_qp` takes for an RC QP with `cq` for both queues and no SRQ.
pub fn rc_init(pd: PdHandle, cq: CqHandle, cap: QpCap, sq_sig_all: bool) -> QpInit {
    QpInit {
        qp_type: QpType::Rc,
        pd,
        send_cq: cq,
        recv_cq: cq,
        srq: None,
        cap,
        sq_sig_all,
    }
}

/// An RC QP on `dev` with `cq` for both queues.
pub fn rc_qp(dev: &mut Device, pd: PdHandle, cq: CqHandle, cap: QpCap, sq_sig_all: bool) -> u32 {
    dev.create_qp(rc_init(pd, cq, cap, sq_sig_all)).expect("qp")
}

/// Where and how a QP is connected.
#[derive(Clone, Copy)]
pub struct Link {
    /// The peer's address and QPN.
    pub peer_ip: IpAddr,
    pub peer_qpn: u32,
    pub mtu: Mtu,
    /// Both directions' first PSN.
    pub psn: u32,
    /// Local ACK timeout exponent.
    pub timeout: u8,
    /// Remote access rights the QP grants.
    pub access: Access,
    /// READs/atomics in flight each way (`max_rd_atomic`, `max_dest_rd_atomic`).
    pub rd_atomic: u8,
}

impl Link {
    /// To `peer_qpn` at `peer_ip`: path MTU 1024, PSN 100, timeout 10 (4 ms), local write,
    /// remote write and remote read.
    pub fn new(peer_ip: IpAddr, peer_qpn: u32) -> Link {
        Link {
            peer_ip,
            peer_qpn,
            mtu: Mtu::M1024,
            psn: 100,
            timeout: 10,
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
            rd_atomic: 4,
        }
    }
}

/// Takes `qpn` through INIT, RTR and RTS to `l` (7 retries, infinite RNR retries,
/// `l.rd_atomic` READs in flight each way).
pub fn connect_rc(dev: &mut Device, qpn: u32, l: &Link) {
    let steps = [
        QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port: Some(1),
            access: Some(l.access),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rtr),
            path_mtu: Some(l.mtu),
            dest_ip: Some(l.peer_ip),
            dest_qpn: Some(l.peer_qpn),
            rq_psn: Some(l.psn),
            max_dest_rd_atomic: Some(l.rd_atomic),
            min_rnr_timer: Some(1),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(l.psn),
            timeout: Some(l.timeout),
            retry_cnt: Some(7),
            rnr_retry: Some(7),
            max_rd_atomic: Some(l.rd_atomic),
            ..QpAttr::default()
        },
    ];
    for a in &steps {
        dev.modify_qp(qpn, a).expect("modify");
    }
}

/// Every packet `dev` sends now, one per element (GSO batches split).
pub fn packets(dev: &mut Device, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Some(t) = dev.poll_transmit(now, &mut buf) {
        let seg = t.segment_size.unwrap_or(t.len);
        out.extend(buf[..t.len].chunks(seg).map(<[u8]>::to_vec));
    }
    out
}

/// `len` bytes that differ with `seed` and do not repeat every 256 bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 8) as u8)
        .collect()
}

/// What the kernel's scatter `recvmsg` does with the driver's scatter list for `plan`
/// ([`Placement::scatter_list`] over a `cap`-byte buffer): the datagram's bytes in order,
/// into the buffer at each range's offset or into a piece's region. The buffer's bytes that
/// went to regions are junk.
pub fn kernel_scatter(plan: &Placement, cap: usize, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0xEE; data.len()];
    let mut at = 0;
    for entry in plan.scatter_list(cap) {
        if at >= data.len() {
            break;
        }
        match entry {
            Scatter::Buffer { offset, len } => {
                let n = len.min(data.len() - at);
                buf[offset..offset + n].copy_from_slice(&data[at..at + n]);
                at += n;
            }
            Scatter::Piece(p) => {
                let raw = p
                    .memory
                    .raw_parts()
                    .expect("only addressable regions are planned");
                assert!(p.offset + p.len <= raw.len);
                let n = p.len.min(data.len() - at);
                p.memory.write(p.offset, &data[at..at + n]);
                at += n;
            }
            other => panic!("unknown scatter entry {other:?}"),
        }
    }
    assert_eq!(
        at,
        data.len(),
        "the scatter list must hold the whole datagram"
    );
    buf
}

/// For two engines with nothing left to send: moves `now` to the earlier of their next
/// timers and fires both, if that timer comes within `horizon_ns` of `now`. False when none
/// does: the traffic between them has settled.
pub fn fire_next_timer(a: &mut Device, b: &mut Device, now: &mut Instant, horizon_ns: u64) -> bool {
    let next = [a.poll_timeout(), b.poll_timeout()]
        .into_iter()
        .flatten()
        .min();
    match next {
        Some(n) if n.as_nanos() < now.as_nanos() + horizon_ns => {
            *now = n;
            a.handle_timeout(n);
            b.handle_timeout(n);
            true
        }
        _ => false,
    }
}

/// Hands one datagram of `seg`-byte GRO segments from `from` to `dev` (at `to`) as the
/// io_uring driver does: plan from a peek of `data`, or with `next_qp` from that QP's
/// expected PSN whatever `data` is (a `buf_len`-byte receive buffer); a plan goes through
/// the "kernel" scatter to `handle_placed`, no plan means the packets are handled one by one.
/// Returns the segments planned (0: none).
#[allow(clippy::too_many_arguments)]
pub fn deliver(
    dev: &mut Device,
    to: IpAddr,
    from: IpAddr,
    data: &[u8],
    seg: usize,
    now: Instant,
    next_qp: Option<u32>,
    buf_len: usize,
) -> usize {
    let from = SocketAddr::new(from, 4791);
    let mut plan = Placement::default();
    let planned = match next_qp {
        Some(q) => dev.plan_next(q, buf_len, &mut plan),
        None => dev.plan_placement(from, data, seg, data.len(), &mut plan),
    };
    if planned {
        let cap = if next_qp.is_some() {
            buf_len
        } else {
            data.len()
        };
        let mut scratch = kernel_scatter(&plan, cap, data);
        dev.handle_placed(now, from, to, &mut scratch, seg, &plan);
        plan.segments
    } else {
        for pkt in data.chunks(seg.max(1)) {
            dev.handle_datagram(now, from, to, pkt);
        }
        0
    }
}

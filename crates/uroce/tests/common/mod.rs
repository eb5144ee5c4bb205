//! What the loopback tests of the safe API share: one side (device, PD, region, CQ, QP),
//! connecting two sides, a data pattern, and waiting for a completion while driving polled
//! peers. Each test binary uses a part of it.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use uroce::{
    Access, Completion, CompletionQueue, Connect, Device, DeviceConfig, MemoryRegion,
    ProtectionDomain, QpCap, QpType, QueuePair, WcOpcode, WcStatus,
};

/// Every access right.
pub const ALL: Access = Access::from_bits(0xF);

/// One endpoint: a device with one region (every right), one CQ for both queues, one QP.
pub struct Side {
    pub dev: Device,
    pub _pd: ProtectionDomain,
    pub cq: CompletionQueue,
    pub mr: MemoryRegion,
    pub qp: QueuePair,
}

/// Sizes of a [`Side`]'s objects.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub mr_len: usize,
    pub cq_depth: usize,
    pub wrs: u32,
}

/// A side on a device opened with `cfg`; the region is at IOVA 0x10_0000.
pub fn side_with(cfg: DeviceConfig, qp_type: QpType, sizes: Sizes) -> Side {
    let dev = Device::open(cfg).expect("open device");
    let pd = dev.alloc_pd();
    let mr = pd.reg_mr(0x10_0000, sizes.mr_len, ALL).expect("mr");
    let cq = dev.create_cq(sizes.cq_depth, None).expect("cq");
    let cap = QpCap {
        max_send_wr: sizes.wrs,
        max_recv_wr: sizes.wrs,
        ..QpCap::default()
    };
    let qp = pd
        .create_qp(qp_type, &cq, &cq, None, cap)
        .expect("create qp");
    Side {
        dev,
        _pd: pd,
        cq,
        mr,
        qp,
    }
}

/// Connects two RC/UC sides to each other (PSNs 100 and 200).
pub fn connect(a: &Side, b: &Side) {
    let ip = |s: &Side| -> IpAddr { s.dev.local_addr().ip() };
    a.qp.connect(&Connect::new(ip(b), b.qp.qpn(), 100, 200))
        .expect("connect a");
    b.qp.connect(&Connect::new(ip(a), a.qp.qpn(), 200, 100))
        .expect("connect b");
}

/// `len` bytes that differ with `seed` and do not repeat every 256 bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// Waits up to `within` for one completion on `s`, which must be a success of `op`; the
/// devices of `others` are driven meanwhile (in polled mode, as the applications owning them
/// would).
pub fn one_ok(s: &Side, op: WcOpcode, others: &[&Side], within: Duration) -> Completion {
    let end = Instant::now() + within;
    loop {
        if let Some(c) = s.cq.poll(1).expect("poll").first() {
            assert_eq!(c.status, WcStatus::Success, "{c:?}");
            assert_eq!(c.opcode, op);
            return *c;
        }
        for o in others {
            o.dev.progress();
        }
        assert!(Instant::now() < end, "no completion within {within:?}");
    }
}

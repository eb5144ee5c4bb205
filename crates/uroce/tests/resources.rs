//! 1000 RC QPs per side created, connected, used for a checked RDMA WRITE each, and destroyed,
//! over real sockets on loopback (no root), several rounds: the engine's tables return to their
//! start after every round, and the process's resident memory reaches a steady state (after the
//! first round has grown the allocator's pools and the tables' capacity, later rounds add at
//! most a small bound).

use std::time::{Duration, Instant};

use uroce::{
    Access, Connect, Device, DeviceConfig, Payload, QpCap, QpType, SendOp, SendWr, WcStatus,
};

const QPS: usize = 1000;
const MSG: usize = 64;
/// RSS a round may add once warmed up (allocator noise, not per-QP state: 1000 leaked QPs would
/// be far more, each holds its queues and attributes).
const STEADY_KB: u64 = 1024;

fn rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

struct Side {
    dev: Device,
    pd: uroce::ProtectionDomain,
    cq: uroce::CompletionQueue,
    mr: uroce::MemoryRegion,
}

fn side(ip: &str) -> Side {
    let dev = Device::open(DeviceConfig::new(ip.parse().expect("ip"))).expect("open device");
    let pd = dev.alloc_pd();
    let all = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
    let mr = pd.reg_mr(0x10_0000, QPS * MSG, all).expect("mr");
    let cq = dev.create_cq(2 * QPS, None).expect("cq");
    Side { dev, pd, cq, mr }
}

/// One round: QPS connected pairs, one WRITE from `a` to `b` on each, all checked, all dropped.
fn round(a: &Side, b: &Side, seed: u8) {
    let cap = QpCap {
        max_send_wr: 4,
        max_recv_wr: 4,
        ..QpCap::default()
    };
    let mk = |s: &Side| {
        s.pd.create_qp(QpType::Rc, &s.cq, &s.cq, None, cap)
            .expect("create QP")
    };
    let pairs: Vec<_> = (0..QPS).map(|_| (mk(a), mk(b))).collect();
    let (ipa, ipb) = (a.dev.local_addr().ip(), b.dev.local_addr().ip());
    for (qa, qb) in &pairs {
        qa.connect(&Connect::new(ipb, qb.qpn(), 1, 2))
            .expect("connect a");
        qb.connect(&Connect::new(ipa, qa.qpn(), 2, 1))
            .expect("connect b");
    }
    assert_eq!(a.dev.usage().qps, QPS);
    let data: Vec<u8> = (0..QPS * MSG)
        .map(|i| (i as u8) ^ (i >> 8) as u8 ^ seed)
        .collect();
    a.mr.write(0, &data);
    for (i, (qa, _)) in pairs.iter().enumerate() {
        let off = (i * MSG) as u64;
        let op = SendOp::RdmaWrite {
            remote_addr: b.mr.addr() + off,
            rkey: b.mr.rkey(),
        };
        qa.post_send(SendWr::new(
            i as u64,
            op,
            Payload::Sgl(vec![a.mr.sge(off, MSG as u32)]),
        ))
        .expect("post");
    }
    let end = Instant::now() + Duration::from_secs(60);
    let mut done = 0;
    while done < QPS {
        assert!(
            Instant::now() < end,
            "only {done} of {QPS} WRITEs completed"
        );
        for c in
            a.cq.wait(QPS - done, Duration::from_millis(200))
                .expect("poll")
        {
            assert_eq!(c.status, WcStatus::Success, "{c:?}");
            done += 1;
        }
    }
    assert_eq!(b.mr.to_vec(), data, "WRITE data differs");
    drop(pairs);
}

#[test]
fn thousand_qps_created_used_destroyed_memory_returns() {
    let a = side("127.81.0.1");
    let b = side("127.81.0.2");
    let start = (a.dev.usage(), b.dev.usage(), rss_kb());
    round(&a, &b, 1);
    let warm = rss_kb();
    for s in [&a, &b] {
        let u = s.dev.usage();
        assert_eq!(
            (u.qps, u.mrs, u.cqs, u.pds, u.cqes),
            (0, 1, 1, 1, 0),
            "{u:?}"
        );
    }
    assert_eq!((a.dev.usage(), b.dev.usage()), (start.0, start.1));
    let mut samples = vec![warm];
    for r in 0..3 {
        round(&a, &b, 2 + r);
        assert_eq!((a.dev.usage(), b.dev.usage()), (start.0, start.1));
        samples.push(rss_kb());
    }
    let last = *samples.last().expect("samples");
    eprintln!(
        "RSS KiB: start {}, after round 1 (warm-up) {warm}, after rounds 2-4 {:?}; \
         engine tables back to {:?}",
        start.2,
        &samples[1..],
        a.dev.usage()
    );
    assert!(
        last <= warm + STEADY_KB,
        "RSS grew from {warm} KiB to {last} KiB over 3 rounds of {QPS} QPs: {samples:?}"
    );
}

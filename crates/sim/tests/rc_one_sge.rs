//! One-SGE work requests (`Payload::Sge`, no allocation per WR) and the requester's direct
//! path for one-packet messages (the region checked and gathered while the packet is built,
//! never held): data, order and key checks as with an SGL, also when packets are lost and
//! the messages are sent again.

use std::time::Duration;

use uroce_proto::{Payload, RegionMemory, SendOp, SendWr, Sge, WcOpcode, WcStatus};
use uroce_sim::scenario::{drain, pair, Endpoint, PairOpts};
use uroce_sim::{Link, Sim};

const MSG: usize = 64;

fn write(b: &Endpoint, k: usize, payload: Payload) -> SendWr {
    SendWr::new(
        k as u64,
        SendOp::RdmaWrite {
            remote_addr: b.base + (k * MSG) as u64,
            rkey: b.keys.rkey,
        },
        payload,
    )
}

/// Posts `n` 64-byte WRITEs from distinct slots of A to the same slots of B, every other one
/// as `Payload::Sge` and the rest as a one-entry SGL; returns the completions, in order.
fn stream(
    link: Link,
    seed: u64,
    n: usize,
) -> (Sim, Endpoint, Endpoint, Vec<uroce_proto::Completion>) {
    let mut sim = Sim::new(seed, link);
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let data: Vec<u8> = (0..n * MSG)
        .map(|i| (i * 7 + seed as usize) as u8)
        .collect();
    a.mem.write(0, &data);
    for k in 0..n {
        let sge = a.sge((k * MSG) as u64, MSG as u32);
        let p = if k % 2 == 0 {
            Payload::Sge(sge)
        } else {
            Payload::Sgl(vec![sge])
        };
        sim.post_send(a.host, a.qpn, write(&b, k, p)).unwrap();
    }
    let mut got = Vec::new();
    let a2 = a.clone();
    let ok = sim.run_until(Duration::from_secs(20), |s| {
        got.extend(drain(s, &a2));
        got.len() >= n
    });
    assert!(ok, "seed {seed}: {} of {n} completions", got.len());
    assert_eq!(&b.mem.to_vec()[..n * MSG], &data[..], "seed {seed}");
    (sim, a, b, got)
}

#[test]
fn one_sge_writes_complete_in_order_with_their_data() {
    let (mut sim, a, _, got) = stream(Link::default(), 1, 300);
    for (k, c) in got.iter().enumerate() {
        assert_eq!(
            (c.wr_id, c.status, c.opcode, c.byte_len),
            (k as u64, WcStatus::Success, WcOpcode::RdmaWrite, MSG as u32)
        );
    }
    assert_eq!(
        sim.dev(a.host).qp(a.qpn).unwrap().counters().tx_packets,
        300
    );
}

#[test]
fn one_sge_writes_survive_loss_and_are_gathered_again() {
    let link = Link {
        loss: 0.05,
        reorder: 0.05,
        duplicate: 0.01,
        corrupt: 0.01,
        ..Link::default()
    };
    let mut retransmits = 0;
    for seed in 10..16 {
        let (mut sim, a, _, got) = stream(link, seed, 200);
        let ids: Vec<u64> = got.iter().map(|c| c.wr_id).collect();
        assert_eq!(ids, (0..200).collect::<Vec<_>>(), "seed {seed}");
        assert!(
            got.iter().all(|c| c.status == WcStatus::Success),
            "seed {seed}"
        );
        retransmits += sim.dev(a.host).qp(a.qpn).unwrap().counters().retransmits;
    }
    assert!(
        retransmits > 0,
        "the loss never made the requester send again"
    );
}

#[test]
fn one_sge_with_a_bad_lkey_or_range_completes_in_error() {
    let opts = PairOpts::default();
    for (seed, bad) in [(3, "lkey"), (4, "range")] {
        let mut sim = Sim::new(seed, Link::default());
        let (a, b) = pair(&mut sim, &opts);
        let good = a.sge(0, MSG as u32);
        let sge = match bad {
            "lkey" => Sge {
                lkey: good.lkey ^ 0x100,
                ..good
            },
            _ => Sge {
                addr: a.base + opts.mem_len as u64 - 8,
                ..good
            },
        };
        sim.post_send(a.host, a.qpn, write(&b, 1, Payload::Sge(sge)))
            .unwrap();
        sim.post_send(a.host, a.qpn, write(&b, 2, Payload::Sge(good)))
            .unwrap();
        let mut got = Vec::new();
        let a2 = a.clone();
        assert!(sim.run_until(Duration::from_secs(5), |s| {
            got.extend(drain(s, &a2));
            got.len() >= 2
        }));
        assert_eq!(
            got.iter().map(|c| (c.wr_id, c.status)).collect::<Vec<_>>(),
            [(1, WcStatus::LocProtErr), (2, WcStatus::WrFlushErr)],
            "bad {bad}"
        );
        assert_eq!(sim.dev(a.host).qp(a.qpn).unwrap().counters().tx_packets, 0);
        assert!(b.mem.to_vec().iter().all(|x| *x == 0), "bad {bad}");
    }
}

#[test]
fn a_batch_posts_in_order_and_stops_at_the_first_bad_wr() {
    let mut sim = Sim::new(5, Link::default());
    let opts = PairOpts::default();
    let (a, b) = pair(&mut sim, &opts);
    let data: Vec<u8> = (0..4 * MSG).map(|i| i as u8 ^ 0x5A).collect();
    a.mem.write(0, &data);
    let wr = |k: usize| write(&b, k, Payload::Sge(a.sge((k * MSG) as u64, MSG as u32)));
    // The third WR is refused at post time (more SGEs than the QP takes): the two before it
    // are posted, the one after it is not.
    let too_many = Payload::Sgl(vec![a.sge(0, 1); opts.cap.max_send_sge as usize + 1]);
    let batch = vec![wr(0), wr(1), write(&b, 2, too_many), wr(3)];
    let now = sim.now;
    let r = sim.dev(a.host).post_send_batch(now, a.qpn, batch);
    assert!(
        matches!(r, Err(uroce_proto::Error::InvalidArgument(_))),
        "{r:?}"
    );
    sim.dev(a.host)
        .post_send_batch(now, a.qpn, [wr(3)])
        .unwrap();
    let mut got = Vec::new();
    let a2 = a.clone();
    assert!(sim.run_until(Duration::from_secs(5), |s| {
        got.extend(drain(s, &a2));
        got.len() >= 3
    }));
    let ids: Vec<u64> = got.iter().map(|c| c.wr_id).collect();
    assert_eq!(ids, [0, 1, 3]);
    assert!(got.iter().all(|c| c.status == WcStatus::Success));
    let m = b.mem.to_vec();
    assert_eq!(&m[..2 * MSG], &data[..2 * MSG]);
    assert!(
        m[2 * MSG..3 * MSG].iter().all(|x| *x == 0),
        "WR 2 was never posted"
    );
    assert_eq!(&m[3 * MSG..4 * MSG], &data[3 * MSG..]);
    // An unknown QP refuses the whole batch.
    assert!(matches!(
        sim.dev(a.host).post_send_batch(now, 0xFF_FFFF, [wr(0)]),
        Err(uroce_proto::Error::NotFound(_))
    ));
}

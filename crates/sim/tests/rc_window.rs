//! Transfers larger than the unacknowledged-PSN window (2048 packets) under loss, a READ whose
//! response PSNs exceed the window, an infinite ACK timeout, and packets from a stranger.

use std::time::Duration;

use uroce_proto::{Mtu, Payload, QpState, RegionMemory, SendOp, SendWr, WcStatus};
use uroce_sim::scenario::{
    bring_up, drain, endpoint, pair, pattern, settle, wait_completions, PairOpts,
};
use uroce_sim::{Link, Sim};

#[test]
fn two_mib_write_and_read_at_mtu_256_under_loss() {
    const N: usize = 2 << 20;
    for seed in 0..3u64 {
        let mut sim = Sim::new(
            200 + seed,
            Link {
                loss: 0.01,
                reorder: 0.01,
                ..Link::default()
            },
        );
        let o = PairOpts {
            mtu: Mtu::M256,
            mem_len: 2 * N,
            timeout: 8,
            ..PairOpts::default()
        };
        let (a, b) = pair(&mut sim, &o);
        let src = pattern(N, seed as u8);
        let far = pattern(N, !seed as u8);
        a.mem.write(0, &src);
        b.mem.write(N, &far);
        let w = SendWr::new(
            1,
            SendOp::RdmaWrite {
                remote_addr: b.base,
                rkey: b.keys.rkey,
            },
            Payload::Sgl(vec![a.sge(0, N as u32)]),
        );
        let r = SendWr::new(
            2,
            SendOp::RdmaRead {
                remote_addr: b.base + N as u64,
                rkey: b.keys.rkey,
            },
            Payload::Sgl(vec![a.sge(N as u64, N as u32)]),
        );
        sim.post_send(a.host, a.qpn, w).unwrap();
        sim.post_send(a.host, a.qpn, r).unwrap();
        let c = wait_completions(&mut sim, &a, 2, Duration::from_secs(30));
        assert_eq!(
            c.iter().map(|c| (c.wr_id, c.status)).collect::<Vec<_>>(),
            [(1, WcStatus::Success), (2, WcStatus::Success)],
            "seed {seed}"
        );
        assert!(b.read(0, N) == src, "seed {seed}: WRITE bytes");
        assert!(a.read(N, N) == far, "seed {seed}: READ bytes");
        let ca = a.counters(&sim);
        assert!(ca.retransmits > 0, "seed {seed}: loss was recovered from");
    }
}

#[test]
fn infinite_timeout_never_gives_up() {
    let mut sim = Sim::new(
        210,
        Link {
            loss: 1.0,
            ..Link::default()
        },
    );
    let (a, b) = pair(
        &mut sim,
        &PairOpts {
            timeout: 0,
            ..PairOpts::default()
        },
    );
    let w = SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(0, 100)]),
    );
    sim.post_send(a.host, a.qpn, w).unwrap();
    settle(&mut sim, Duration::from_secs(10));
    assert!(drain(&mut sim, &a).is_empty());
    assert_eq!(
        sim.dev(a.host).poll_timeout(),
        None,
        "no ACK timer with timeout 0"
    );
    assert_eq!(a.counters(&sim).timeouts, 0);
    assert_eq!(a.state(&sim), QpState::Rts);
    // The link comes back, but nothing retransmits without a timer: still nothing.
    sim.link.loss = 0.0;
    settle(&mut sim, Duration::from_secs(1));
    assert!(drain(&mut sim, &a).is_empty());
}

#[test]
fn packets_from_a_stranger_are_dropped() {
    let mut sim = Sim::new(211, Link::default());
    let o = PairOpts::default();
    let (a, b) = pair(&mut sim, &o);
    // Host C connects a QP to B's QP, which is connected to A.
    let h2 = sim.add_host([10, 0, 0, 3].into());
    let c = endpoint(&mut sim, h2, &o);
    bring_up(&mut sim, &c, &b, &o);
    c.fill(0, 64, 9);
    let w = SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![c.sge(0, 64)]),
    );
    sim.post_send(c.host, c.qpn, w).unwrap();
    settle(&mut sim, Duration::from_millis(1));
    assert_eq!(sim.dev(b.host).counters().wrong_source, 1);
    assert!(b.mem.to_vec().iter().all(|x| *x == 0));
    assert_eq!(b.counters(&sim).rx_packets, 0);
    assert_eq!(
        b.state(&sim),
        QpState::Rts,
        "B's connection to A is unharmed"
    );
    let _ = a;
}

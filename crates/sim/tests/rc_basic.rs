//! RC operations over a clean simulated link: each asserts completions, memory and counters.

use std::time::Duration;

use uroce_proto::{Payload, RecvWr, SendOp, SendWr, Sge, WcOpcode, WcStatus};
use uroce_sim::scenario::{drain, pair, Endpoint, PairOpts};
use uroce_sim::{Link, Sim};

fn sge(ep: &Endpoint, off: u64, len: u32) -> Sge {
    Sge {
        addr: ep.base + off,
        length: len,
        lkey: ep.keys.lkey,
    }
}

fn fill(ep: &Endpoint, off: usize, len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    uroce_proto::RegionMemory::write(&*ep.mem, off, &data);
    data
}

fn run(sim: &mut Sim, a: &Endpoint, n: usize) -> Vec<uroce_proto::Completion> {
    let mut got = Vec::new();
    let a = a.clone();
    let ok = sim.run_until(Duration::from_secs(5), |s| {
        got.extend(drain(s, &a));
        got.len() >= n
    });
    assert!(ok, "timed out with {got:?}");
    got
}

#[test]
fn rdma_write_multi_packet() {
    let mut sim = Sim::new(1, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let data = fill(&a, 0, 5000, 7);
    let mut wr = SendWr::new(
        1,
        SendOp::RdmaWrite {
            remote_addr: b.base + 100,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![sge(&a, 0, 5000)]),
    );
    wr.flags.signaled = true;
    sim.post_send(a.host, a.qpn, wr).unwrap();
    let c = run(&mut sim, &a, 1);
    assert_eq!(c[0].status, WcStatus::Success);
    assert_eq!(c[0].opcode, WcOpcode::RdmaWrite);
    let m = b.mem.to_vec();
    assert_eq!(&m[100..5100], &data[..]);
    assert!(m[..100].iter().all(|x| *x == 0) && m[5100..].iter().all(|x| *x == 0));
    let qa = sim.dev(a.host).qp(a.qpn).unwrap().counters();
    assert_eq!(qa.tx_packets, 5, "5000 B at MTU 1024 is 5 packets");
    assert_eq!(qa.retransmits, 0);
}

#[test]
fn send_with_imm_and_recv() {
    let mut sim = Sim::new(2, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let data = fill(&a, 0, 3000, 3);
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 77,
                sgl: vec![sge(&b, 0, 1000), sge(&b, 8000, 4000)],
            },
        )
        .unwrap();
    let wr = SendWr::new(
        5,
        SendOp::SendWithImm(0xDEAD_BEEF),
        Payload::Sgl(vec![sge(&a, 0, 3000)]),
    );
    sim.post_send(a.host, a.qpn, wr).unwrap();
    let c = run(&mut sim, &a, 1);
    assert_eq!(c[0].status, WcStatus::Success);
    let r = run(&mut sim, &b, 1);
    assert_eq!(r[0].wr_id, 77);
    assert_eq!(r[0].byte_len, 3000);
    assert_eq!(r[0].imm, Some(0xDEAD_BEEF));
    let m = b.mem.to_vec();
    assert_eq!(&m[0..1000], &data[..1000]);
    assert_eq!(&m[8000..10000], &data[1000..]);
}

#[test]
fn rdma_read_and_atomics() {
    let mut sim = Sim::new(3, Link::default());
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let data = fill(&b, 0, 4100, 9);
    let wr = SendWr::new(
        9,
        SendOp::RdmaRead {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![sge(&a, 256, 4100)]),
    );
    sim.post_send(a.host, a.qpn, wr).unwrap();
    let c = run(&mut sim, &a, 1);
    assert_eq!(
        (c[0].status, c[0].opcode),
        (WcStatus::Success, WcOpcode::RdmaRead)
    );
    assert_eq!(&a.mem.to_vec()[256..256 + 4100], &data[..]);

    uroce_proto::RegionMemory::write(&*b.mem, 8192, &5u64.to_ne_bytes());
    let fa = SendWr::new(
        10,
        SendOp::FetchAdd {
            remote_addr: b.base + 8192,
            rkey: b.keys.rkey,
            add: 3,
        },
        Payload::Sgl(vec![sge(&a, 0, 8)]),
    );
    let cs = SendWr::new(
        11,
        SendOp::CompareSwap {
            remote_addr: b.base + 8192,
            rkey: b.keys.rkey,
            compare: 8,
            swap: 100,
        },
        Payload::Sgl(vec![sge(&a, 8, 8)]),
    );
    sim.post_send(a.host, a.qpn, fa).unwrap();
    sim.post_send(a.host, a.qpn, cs).unwrap();
    let c = run(&mut sim, &a, 2);
    assert!(c.iter().all(|c| c.status == WcStatus::Success), "{c:?}");
    let am = a.mem.to_vec();
    assert_eq!(u64::from_ne_bytes(am[0..8].try_into().unwrap()), 5);
    assert_eq!(u64::from_ne_bytes(am[8..16].try_into().unwrap()), 8);
    assert_eq!(
        u64::from_ne_bytes(b.mem.to_vec()[8192..8200].try_into().unwrap()),
        100
    );
}

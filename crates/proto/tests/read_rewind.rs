//! Go-back-N for READs: a READ response that arrives ahead of a lost one rewinds the send
//! queue (IBTA §9.7.5.1.2); when the missing responses then arrive after all (a late or
//! duplicated datagram) and complete the READs, the requester must not resend a later READ
//! under the PSN of one it already completed: the responder takes that for a duplicate and
//! replays the old READ's data, which the requester accepted as the new one's (found by
//! `tests/place_prop.rs`).

mod common;

use std::net::{IpAddr, SocketAddr};

use common::{packets, Link};

use uroce_proto::{
    Access, AtomicMemory, Config, Device, Instant, Payload, QpCap, RegionMemory, SendOp, SendWr,
    Sge, WcStatus,
};

fn device(ip: [u8; 4]) -> (Device, uroce_proto::PdHandle, uroce_proto::CqHandle, u32) {
    let mut dev = Device::new(Config::new(IpAddr::from(ip)));
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(16).expect("cq");
    let qpn = common::rc_qp(&mut dev, pd, cq, QpCap::default(), true);
    (dev, pd, cq, qpn)
}

fn connect(dev: &mut Device, qpn: u32, peer: [u8; 4], peer_qpn: u32) {
    let mut l = Link::new(IpAddr::from(peer), peer_qpn);
    l.access = Access::LOCAL_WRITE | Access::REMOTE_READ;
    common::connect_rc(dev, qpn, &l);
}

#[test]
fn a_read_completed_after_a_rewind_keeps_its_psn_to_itself() {
    let (a_ip, b_ip) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let (mut a, a_pd, a_cq, aq) = device(a_ip);
    let (mut b, b_pd, _, bq) = device(b_ip);
    connect(&mut a, aq, b_ip, bq);
    connect(&mut b, bq, a_ip, aq);
    let (from_a, from_b) = (
        SocketAddr::new(IpAddr::from(a_ip), 4791),
        SocketAddr::new(IpAddr::from(b_ip), 4791),
    );
    // Two one-byte READs of different bytes of B into two bytes of A.
    let src = AtomicMemory::zeroed(8);
    src.write(0, &[0x11, 0x22]);
    let sk = b
        .reg_mr(b_pd, 0x1000, src, Access::LOCAL_WRITE | Access::REMOTE_READ)
        .expect("mr");
    let dst = AtomicMemory::zeroed(8);
    let dk = a
        .reg_mr(a_pd, 0x2000, dst.clone(), Access::LOCAL_WRITE)
        .expect("mr");
    let now = Instant::ZERO;
    for i in 0..2u64 {
        let wr = SendWr::new(
            i,
            SendOp::RdmaRead {
                remote_addr: 0x1000 + i,
                rkey: sk.rkey,
            },
            Payload::Sge(Sge {
                addr: 0x2000 + i,
                length: 1,
                lkey: dk.lkey,
            }),
        );
        a.post_send(now, aq, wr).expect("post");
    }
    for p in packets(&mut a, now) {
        b.handle_datagram(now, from_a, from_b.ip(), &p);
    }
    let responses = packets(&mut b, now);
    assert_eq!(responses.len(), 2, "one READ response ONLY per READ");
    // The first response is corrupted on the way: the second one, ahead of it, rewinds A.
    let mut bad = responses[0].clone();
    bad[16] ^= 1;
    a.handle_datagram(now, from_b, from_a.ip(), &bad);
    a.handle_datagram(now, from_b, from_a.ip(), &responses[1]);
    // Both then arrive intact (a duplicate of the datagram).
    for p in &responses {
        a.handle_datagram(now, from_b, from_a.ip(), p);
    }
    // Whatever A still sends (resends of the second READ) goes to B, and B's answers back.
    let mut t = now;
    for _ in 0..20 {
        for p in packets(&mut a, t) {
            b.handle_datagram(t, from_a, from_b.ip(), &p);
        }
        for p in packets(&mut b, t) {
            a.handle_datagram(t, from_b, from_a.ip(), &p);
        }
        t = Instant::from_nanos(t.as_nanos() + 10_000_000);
        a.handle_timeout(t);
        b.handle_timeout(t);
    }
    let mut done = Vec::new();
    while let Ok(Some(c)) = a.poll_cq(a_cq) {
        assert_eq!(c.status, WcStatus::Success, "{c:?}");
        done.push(c.wr_id);
    }
    assert_eq!(done, [0, 1]);
    assert_eq!(
        &dst.to_vec()[..2],
        &[0x11, 0x22],
        "each READ got its own byte"
    );
}

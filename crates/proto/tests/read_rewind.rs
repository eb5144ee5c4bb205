//! Go-back-N for READs: a READ response that arrives ahead of a lost one rewinds the send
//! queue (IBTA §9.7.5.1.2); when the missing responses then arrive after all (a late or
//! duplicated datagram) and complete the READs, the requester must not resend a later READ
//! under the PSN of one it already completed: the responder takes that for a duplicate and
//! replays the old READ's data, which the requester accepted as the new one's (found by
//! `tests/place_prop.rs`).

use std::net::{IpAddr, SocketAddr};

use uroce_proto::{
    Access, AtomicMemory, Config, Device, Instant, Mtu, Payload, QpAttr, QpCap, QpInit, QpState,
    QpType, RegionMemory, SendOp, SendWr, Sge, WcStatus,
};

fn device(ip: [u8; 4]) -> (Device, uroce_proto::PdHandle, uroce_proto::CqHandle, u32) {
    let mut dev = Device::new(Config::new(IpAddr::from(ip)));
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(16).expect("cq");
    let qpn = dev
        .create_qp(QpInit {
            qp_type: QpType::Rc,
            pd,
            send_cq: cq,
            recv_cq: cq,
            srq: None,
            cap: QpCap::default(),
            sq_sig_all: true,
        })
        .expect("qp");
    (dev, pd, cq, qpn)
}

fn connect(dev: &mut Device, qpn: u32, peer: [u8; 4], peer_qpn: u32) {
    let steps = [
        QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port: Some(1),
            access: Some(Access::LOCAL_WRITE | Access::REMOTE_READ),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rtr),
            path_mtu: Some(Mtu::M1024),
            dest_ip: Some(IpAddr::from(peer)),
            dest_qpn: Some(peer_qpn),
            rq_psn: Some(100),
            max_dest_rd_atomic: Some(4),
            min_rnr_timer: Some(1),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(100),
            timeout: Some(10),
            retry_cnt: Some(7),
            rnr_retry: Some(7),
            max_rd_atomic: Some(4),
            ..QpAttr::default()
        },
    ];
    for a in &steps {
        dev.modify_qp(qpn, a).expect("modify");
    }
}

/// Every packet `dev` sends now, one per element.
fn packets(dev: &mut Device, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Some(t) = dev.poll_transmit(now, &mut buf) {
        let seg = t.segment_size.unwrap_or(t.len);
        out.extend(buf[..t.len].chunks(seg).map(<[u8]>::to_vec));
    }
    out
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

//! The shape of the engine's GSO batches (`Device::poll_transmit`): every packet of a batch
//! but the last is one size, the last is no longer (the kernel's UDP GSO rule), and a packet
//! that does not fit a batch opens the next one, which its QP's later packets of the same
//! size join. Each test checks the datagrams and that the data arrives whole.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::{pattern, Link};

use uroce_proto::{
    Access, AtomicMemory, Config, Device, Instant, Payload, QpCap, RegionMemory, SendOp, SendWr,
    Sge, WcStatus,
};

const A_IP: [u8; 4] = [10, 0, 0, 1];
const B_IP: [u8; 4] = [10, 0, 0, 2];
const MTU: usize = 1024;
/// BTH, payload, ICRC of a full MIDDLE.
const MIDDLE: usize = 12 + MTU + 4;
/// A READ response FIRST or LAST: an AETH more.
const WITH_AETH: usize = MIDDLE + 4;

fn device(ip: [u8; 4]) -> (Device, uroce_proto::PdHandle, uroce_proto::CqHandle, u32) {
    let mut dev = Device::new(Config::new(IpAddr::from(ip)));
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(64).expect("cq");
    let cap = QpCap {
        max_send_wr: 16,
        ..QpCap::default()
    };
    let qpn = common::rc_qp(&mut dev, pd, cq, cap, true);
    (dev, pd, cq, qpn)
}

/// Each datagram `dev` sends now, as its packets' lengths, checked against the GSO rule.
fn datagrams(dev: &mut Device) -> Vec<(Vec<u8>, Vec<usize>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Some(t) = dev.poll_transmit(Instant::ZERO, &mut buf) {
        let seg = t.segment_size.unwrap_or(t.len);
        let lens: Vec<usize> = buf[..t.len].chunks(seg).map(<[u8]>::len).collect();
        assert!(lens.len() == 1 || t.segment_size.is_some());
        out.push((buf[..t.len].to_vec(), lens));
    }
    out
}

#[test]
fn a_read_responses_last_opens_the_batch_the_next_responses_first_joins() {
    let (mut a, a_pd, a_cq, aq) = device(A_IP);
    let (mut b, b_pd, _, bq) = device(B_IP);
    for (dev, qpn, peer, peer_qpn) in [(&mut a, aq, B_IP, bq), (&mut b, bq, A_IP, aq)] {
        let mut l = Link::new(IpAddr::from(peer), peer_qpn);
        l.access = Access::LOCAL_WRITE | Access::REMOTE_READ;
        common::connect_rc(dev, qpn, &l);
    }
    let (from_a, from_b) = (
        SocketAddr::new(IpAddr::from(A_IP), 4791),
        SocketAddr::new(IpAddr::from(B_IP), 4791),
    );
    // Three READs of 4 packets each (path MTU 1024) from B's region into A's.
    let len = 4 * MTU;
    let src = AtomicMemory::zeroed(3 * len);
    src.write(0, &pattern(3 * len, 9));
    let sk = b
        .reg_mr(b_pd, 0x1000, src, Access::LOCAL_WRITE | Access::REMOTE_READ)
        .expect("mr");
    let dst = AtomicMemory::zeroed(3 * len);
    let dk = a
        .reg_mr(a_pd, 0x8000, dst.clone(), Access::LOCAL_WRITE)
        .expect("mr");
    for i in 0..3u64 {
        let wr = SendWr::new(
            i,
            SendOp::RdmaRead {
                remote_addr: 0x1000 + i * len as u64,
                rkey: sk.rkey,
            },
            Payload::Sge(Sge {
                addr: 0x8000 + i * len as u64,
                length: len as u32,
                lkey: dk.lkey,
            }),
        );
        a.post_send(Instant::ZERO, aq, wr).expect("post");
    }
    for (d, lens) in datagrams(&mut a) {
        let seg = lens[0];
        for p in d.chunks(seg) {
            b.handle_datagram(Instant::ZERO, from_a, IpAddr::from(B_IP), p);
        }
    }
    let sent = datagrams(&mut b);
    let shapes: Vec<Vec<usize>> = sent.iter().map(|(_, l)| l.clone()).collect();
    // FIRST and LAST carry an AETH, the MIDDLEs do not. A LAST used to go alone (three
    // datagrams per READ); now it opens the next batch: 2 per READ and one more.
    let (f, m) = (WITH_AETH, MIDDLE);
    assert_eq!(
        shapes,
        [
            vec![f, m],
            vec![m],
            vec![f, f, m],
            vec![m],
            vec![f, f, m],
            vec![m],
            vec![f],
        ]
    );
    for (d, lens) in &sent {
        for p in d.chunks(lens[0]) {
            a.handle_datagram(Instant::ZERO, from_b, IpAddr::from(A_IP), p);
        }
    }
    let mut done = Vec::new();
    while let Ok(Some(c)) = a.poll_cq(a_cq) {
        assert_eq!(c.status, WcStatus::Success, "{c:?}");
        done.push(c.wr_id);
    }
    assert_eq!(done, [0, 1, 2]);
    assert_eq!(dst.to_vec(), pattern(3 * len, 9));
    assert_eq!(b.counters().tx_datagrams, 7);
}

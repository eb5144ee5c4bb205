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
    device_with(Config::new(IpAddr::from(ip)))
}

fn device_with(config: Config) -> (Device, uroce_proto::PdHandle, uroce_proto::CqHandle, u32) {
    let mut dev = Device::new(config);
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

/// Hands every packet of `sent` (datagrams as `datagrams` returns them) from `from` to `dev`
/// at `to`; returns how many packets that was.
fn deliver(dev: &mut Device, from: [u8; 4], to: [u8; 4], sent: &[(Vec<u8>, Vec<usize>)]) -> usize {
    let src = SocketAddr::new(IpAddr::from(from), 4791);
    let mut n = 0;
    for (d, lens) in sent {
        for p in d.chunks(lens[0]) {
            dev.handle_datagram(Instant::ZERO, src, IpAddr::from(to), p);
            n += 1;
        }
    }
    n
}

/// The successful completions waiting on `cq` as (wr_id, byte_len); panics on any other.
fn completed(dev: &mut Device, cq: uroce_proto::CqHandle) -> Vec<(u64, u32)> {
    let mut done = Vec::new();
    while let Ok(Some(c)) = dev.poll_cq(cq) {
        assert_eq!(c.status, WcStatus::Success, "{c:?}");
        done.push((c.wr_id, c.byte_len));
    }
    done
}

/// A (the reader) and B, connected with `slots` READ slots each way, B's region holding
/// `pattern(3 * len, seed)` at 0x1000: three READs of four packets (`len` = 4 × MTU each)
/// from it into A's region at 0x8000 are posted on A, their `requests` delivered to B, and
/// B's `responses` taken, not yet delivered.
struct Reads {
    a: Device,
    a_cq: uroce_proto::CqHandle,
    dst: std::sync::Arc<AtomicMemory>,
    len: usize,
    requests: usize,
    responses: Vec<(Vec<u8>, Vec<usize>)>,
}

fn three_reads(a_config: Config, slots: u8, seed: u8) -> Reads {
    let (mut a, a_pd, a_cq, aq) = device_with(a_config);
    let (mut b, b_pd, _, bq) = device(B_IP);
    for (dev, qpn, peer, peer_qpn) in [(&mut a, aq, B_IP, bq), (&mut b, bq, A_IP, aq)] {
        let mut l = Link::new(IpAddr::from(peer), peer_qpn);
        l.access = Access::LOCAL_WRITE | Access::REMOTE_READ;
        l.rd_atomic = slots;
        common::connect_rc(dev, qpn, &l);
    }
    let len = 4 * MTU;
    let src = AtomicMemory::zeroed(3 * len);
    src.write(0, &pattern(3 * len, seed));
    let sk = b
        .reg_mr(b_pd, 0x1000, src, Access::LOCAL_WRITE | Access::REMOTE_READ)
        .expect("mr");
    let dst = AtomicMemory::zeroed(3 * len);
    let dk = a
        .reg_mr(a_pd, 0x8000, dst.clone(), Access::LOCAL_WRITE)
        .expect("mr");
    for i in 0..3u64 {
        let op = SendOp::RdmaRead {
            remote_addr: 0x1000 + i * len as u64,
            rkey: sk.rkey,
        };
        let sge = Sge {
            addr: 0x8000 + i * len as u64,
            length: len as u32,
            lkey: dk.lkey,
        };
        a.post_send(Instant::ZERO, aq, SendWr::new(i, op, Payload::Sge(sge)))
            .expect("post");
    }
    let requests = deliver(&mut b, A_IP, B_IP, &datagrams(&mut a));
    let responses = datagrams(&mut b);
    assert_eq!(b.counters().tx_datagrams, responses.len() as u64);
    Reads {
        a,
        a_cq,
        dst,
        len,
        requests,
        responses,
    }
}

#[test]
fn a_read_responses_last_opens_the_batch_the_next_responses_first_joins() {
    // Three READs of 4 packets each (path MTU 1024) from B's region into A's; 4 READ slots,
    // so each is one request (`Config::split_reads` needs four times the packets).
    let Reads {
        mut a,
        a_cq,
        dst,
        len,
        responses: sent,
        ..
    } = three_reads(Config::new(IpAddr::from(A_IP)), 4, 9);
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
    deliver(&mut a, B_IP, A_IP, &sent);
    let l = len as u32;
    assert_eq!(completed(&mut a, a_cq), [(0, l), (1, l), (2, l)]);
    assert_eq!(dst.to_vec(), pattern(3 * len, 9));
    assert_eq!(sent.len(), 7, "B's datagrams");
}

/// A's RC QP connected to B's with remote write granted; B's region of `len` bytes at 0x8000.
fn write_pair(
    config: impl Fn(&mut Config),
    len: usize,
) -> (
    Device,
    u32,
    uroce_proto::CqHandle,
    Device,
    std::sync::Arc<AtomicMemory>,
    u32,
    u32,
) {
    let mk = |ip: [u8; 4]| {
        let mut c = Config::new(IpAddr::from(ip));
        config(&mut c);
        let mut dev = Device::new(c);
        let pd = dev.alloc_pd();
        let cq = dev.create_cq(64).expect("cq");
        let cap = QpCap {
            max_send_wr: 16,
            max_recv_wr: 16,
            ..QpCap::default()
        };
        let qpn = common::rc_qp(&mut dev, pd, cq, cap, true);
        (dev, pd, cq, qpn)
    };
    let (mut a, a_pd, a_cq, aq) = mk(A_IP);
    let (mut b, b_pd, _, bq) = mk(B_IP);
    for (dev, qpn, peer, peer_qpn) in [(&mut a, aq, B_IP, bq), (&mut b, bq, A_IP, aq)] {
        common::connect_rc(dev, qpn, &Link::new(IpAddr::from(peer), peer_qpn));
    }
    let src = AtomicMemory::zeroed(len);
    src.write(0, &pattern(len, 5));
    let sk = a
        .reg_mr(a_pd, 0x1000, src, Access::LOCAL_WRITE)
        .expect("mr");
    let dst = AtomicMemory::zeroed(len);
    let dk = b
        .reg_mr(
            b_pd,
            0x8000,
            dst.clone(),
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        )
        .expect("mr");
    (a, aq, a_cq, b, dst, sk.lkey, dk.rkey)
}

fn write_wr(id: u64, at: usize, len: usize, lkey: u32, op: SendOp) -> SendWr {
    SendWr::new(
        id,
        op,
        Payload::Sge(Sge {
            addr: 0x1000 + at as u64,
            length: len as u32,
            lkey,
        }),
    )
}

/// `Config::split_writes` (the default): each packet of a multi-packet RC WRITE is a WRITE
/// ONLY whose RETH names its own part, so three WRITEs of four packets leave as one GSO
/// batch of twelve equal packets, and the data and completions are those of three WRITEs.
/// Without it, each message's FIRST (a RETH more) cuts the stream: six datagrams.
#[test]
fn split_writes_batch_into_one_gso_send_and_land_whole() {
    let len = 4 * MTU;
    for split in [true, false] {
        let (mut a, aq, a_cq, mut b, dst, lkey, rkey) =
            write_pair(|c| c.split_writes = split, 3 * len);
        for i in 0..3u64 {
            let op = SendOp::RdmaWrite {
                remote_addr: 0x8000 + i * len as u64,
                rkey,
            };
            let wr = write_wr(i, i as usize * len, len, lkey, op);
            a.post_send(Instant::ZERO, aq, wr).expect("post");
        }
        let sent = datagrams(&mut a);
        let shapes: Vec<Vec<usize>> = sent.iter().map(|(_, l)| l.clone()).collect();
        let mut packets = Vec::new();
        for (d, lens) in &sent {
            packets.extend(d.chunks(lens[0]).map(<[u8]>::to_vec));
        }
        let opcodes: Vec<u8> = packets.iter().map(|p| p[0]).collect();
        if split {
            // BTH, RETH, payload, ICRC: all twelve one size, one datagram.
            assert_eq!(shapes, [vec![MIDDLE + 16; 12]]);
            assert_eq!(opcodes, [0x0A; 12], "RC RDMA WRITE ONLY");
            for (k, p) in packets.iter().enumerate() {
                let va = u64::from_be_bytes(p[12..20].try_into().expect("8"));
                let dma_len = u32::from_be_bytes(p[24..28].try_into().expect("4"));
                assert_eq!((va, dma_len), (0x8000 + (k * MTU) as u64, MTU as u32));
            }
        } else {
            let (f, m) = (MIDDLE + 16, MIDDLE);
            assert_eq!(
                shapes,
                [
                    vec![f, m],
                    vec![m, m],
                    vec![f, m],
                    vec![m, m],
                    vec![f, m],
                    vec![m, m]
                ]
            );
            assert_eq!(opcodes, [6, 7, 7, 8].repeat(3), "FIRST MIDDLE MIDDLE LAST");
        }
        deliver(&mut b, A_IP, B_IP, &sent);
        let acks = datagrams(&mut b);
        deliver(&mut a, B_IP, A_IP, &acks);
        let l = len as u32;
        assert_eq!(
            completed(&mut a, a_cq),
            [(0, l), (1, l), (2, l)],
            "split {split}"
        );
        assert_eq!(dst.to_vec(), pattern(3 * len, 5), "split {split}");
    }
}

/// A WRITE with immediate stays one message even with `split_writes`: the responder's
/// completion reports the message's length, which only the FIRST's RETH carries.
#[test]
fn writes_with_immediate_are_not_split() {
    let len = 4 * MTU;
    let (mut a, aq, _, _, _, lkey, rkey) = write_pair(|_| {}, len);
    let op = SendOp::RdmaWriteWithImm {
        remote_addr: 0x8000,
        rkey,
        imm: 7,
    };
    a.post_send(Instant::ZERO, aq, write_wr(1, 0, len, lkey, op))
        .expect("post");
    let mut opcodes = Vec::new();
    for (d, lens) in datagrams(&mut a) {
        opcodes.extend(d.chunks(lens[0]).map(|p| p[0]));
    }
    assert_eq!(
        opcodes,
        [6, 7, 7, 9],
        "FIRST MIDDLE MIDDLE LAST with immediate"
    );
}

/// `Config::split_reads` (the default): a READ of four packets on a QP with 16 READ slots is
/// asked for with four requests, each answered by a READ RESPONSE ONLY, so three READs'
/// twelve responses leave as one GSO batch of equal packets and land whole, one completion
/// per READ. With 4 slots (a quarter is 1 packet) or with the option off, one request each:
/// FIRST and LAST (an AETH more) cut the responses into several datagrams.
#[test]
fn split_reads_answer_in_one_gso_send_and_land_whole() {
    for (split, slots) in [(true, 16u8), (true, 4), (false, 16)] {
        let mut config = Config::new(IpAddr::from(A_IP));
        config.split_reads = split;
        let Reads {
            mut a,
            a_cq,
            dst,
            len,
            requests: n_requests,
            responses,
        } = three_reads(config, slots, 3);
        let shapes: Vec<Vec<usize>> = responses.iter().map(|(_, l)| l.clone()).collect();
        let split_here = split && slots >= 16;
        if split_here {
            assert_eq!(n_requests, 12, "one request per packet");
            assert_eq!(shapes, [vec![WITH_AETH; 12]], "twelve READ RESPONSE ONLYs");
            let opcodes: Vec<u8> = responses[0].0.chunks(WITH_AETH).map(|p| p[0]).collect();
            assert_eq!(opcodes, [0x10; 12], "RC RDMA READ RESPONSE ONLY");
        } else {
            assert_eq!(n_requests, 3, "one request per READ");
            assert!(responses.len() > 3, "{shapes:?}");
        }
        deliver(&mut a, B_IP, A_IP, &responses);
        let l = len as u32;
        let done = completed(&mut a, a_cq);
        assert_eq!(
            done,
            [(0, l), (1, l), (2, l)],
            "split {split} slots {slots}"
        );
        assert_eq!(
            dst.to_vec(),
            pattern(3 * len, 3),
            "split {split} slots {slots}"
        );
    }
}

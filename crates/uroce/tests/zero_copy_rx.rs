//! Zero-copy receive on the io_uring back end (thread progress), over real UDP sockets on
//! loopback (no root; the kernel hands GSO batches to a UDP_GRO socket whole): WRITE and READ
//! of several MiB move with the payload placed straight into the regions, every byte is
//! checked, and the counters show that placement happened and never missed; a SEND (never
//! placed, `uroce_proto::place`) still arrives whole beside them.

use std::time::Duration;

mod common;

use common::{connect, pattern, Side, Sizes};
use uroce::{
    BackendKind, DeviceConfig, Payload, Progress, QpType, RecvWr, SendOp, SendWr, WcOpcode,
};

const T: Duration = Duration::from_secs(20);
const LEN: usize = (3 << 20) + 4096 * 5 + 13;

fn side(ip: &str) -> Side {
    let mut cfg = DeviceConfig::new(ip.parse().unwrap());
    cfg.backend = BackendKind::Uring;
    cfg.progress = Progress::Thread;
    // The kernel places FIRST/MIDDLE/LAST streams (rxe's and NICs' framing); a split WRITE's
    // WRITE ONLY packets are received by copy.
    cfg.split_writes = false;
    common::side_with(
        cfg,
        QpType::Rc,
        Sizes {
            mr_len: 16 << 20,
            cq_depth: 256,
            wrs: 64,
        },
    )
}

fn placed(s: &Side) -> (u64, u64, u64) {
    let c = s.dev.counters();
    let d = s.dev.driver_stats();
    (c.rx_placed, c.rx_place_misses, d.rx_placed_bytes)
}

#[test]
fn write_and_read_payloads_are_placed_by_the_kernel_and_sends_copied() {
    if std::env::var_os("UROCE_ZCRX").is_some_and(|v| v == "0") {
        println!("skipped: UROCE_ZCRX=0 turns zero-copy receive off");
        return;
    }
    let a = side("127.0.51.1");
    let b = side("127.0.51.2");
    let f = b.dev.driver_features();
    if f.backend != BackendKind::Uring || !f.multishot_recv || !f.gro {
        println!("skipped: no io_uring multishot receive with GRO here ({f:?})");
        return;
    }
    connect(&a, &b);
    let data = pattern(LEN, 3);
    a.mr.write(0, &data);
    let mut got = vec![0; LEN];

    // WRITE: B places. Bytes around the destination stay zero.
    for round in 0..3u64 {
        a.qp.post_send(SendWr::new(
            round,
            SendOp::RdmaWrite {
                remote_addr: b.mr.addr() + 100,
                rkey: b.mr.rkey(),
            },
            Payload::Sgl(vec![a.mr.sge(0, LEN as u32)]),
        ))
        .unwrap();
        common::one_ok(&a, WcOpcode::RdmaWrite, &[], T);
    }
    b.mr.read(100, &mut got);
    assert!(got == data, "WRITE data differs");
    let mut edge = vec![0xAA; 100];
    b.mr.read(0, &mut edge);
    assert!(
        edge.iter().all(|&x| x == 0),
        "bytes before the WRITE touched"
    );
    b.mr.read(100 + LEN, &mut edge);
    assert!(
        edge.iter().all(|&x| x == 0),
        "bytes after the WRITE touched"
    );
    let (w_placed, w_miss, w_bytes) = placed(&b);
    let d = b.dev.driver_stats();
    // After the first placed datagram of a message the next ones are planned without a peek.
    assert!(d.rx_place_unpeeked > d.rx_place_peeks, "{d:?}");
    // 3 × ~790 packets of 4 KiB: most are MIDDLE packets at the head of or inside a GRO
    // datagram whose first packet is not a FIRST.
    assert!(
        w_placed > 1000,
        "WRITE: {w_placed} placed ({:?})",
        b.dev.driver_stats()
    );
    assert_eq!(w_miss, 0);
    assert!(w_bytes >= w_placed * 1024);

    // READ it back from B into A, twice: A places the responses. The first READ's responses
    // may all be taken by the multishot receive before A's progress thread has switched to
    // placing (it can hold 4 MiB); placing mode then lasts into the second.
    for round in 0..2u64 {
        a.qp.post_send(SendWr::new(
            10 + round,
            SendOp::RdmaRead {
                remote_addr: b.mr.addr() + 100,
                rkey: b.mr.rkey(),
            },
            Payload::Sgl(vec![a.mr.sge(8 << 20, LEN as u32)]),
        ))
        .unwrap();
        common::one_ok(&a, WcOpcode::RdmaRead, &[], T);
        a.mr.read(8 << 20, &mut got);
        assert!(got == data, "READ data differs");
        a.mr.write(8 << 20, &vec![0; LEN]);
    }
    let (r_placed, r_miss, _) = placed(&a);
    assert!(
        r_placed > 300,
        "READ: {r_placed} placed ({:?})",
        a.dev.driver_stats()
    );
    assert_eq!(r_miss, 0);

    // SEND into two receive SGEs split off the MTU grid: copied, never placed.
    let split = 1_000_003u32;
    b.qp.post_recv(RecvWr {
        wr_id: 7,
        sgl: vec![
            b.mr.sge(8 << 20, split),
            b.mr.sge((8 << 20) + split as u64 + 50, LEN as u32 - split),
        ],
    })
    .unwrap();
    a.qp.post_send(SendWr::new(
        11,
        SendOp::Send,
        Payload::Sgl(vec![a.mr.sge(0, LEN as u32)]),
    ))
    .unwrap();
    common::one_ok(&a, WcOpcode::Send, &[], T);
    let r = common::one_ok(&b, WcOpcode::Recv, &[], T);
    assert_eq!(r.byte_len, LEN as u32);
    let mut first = vec![0; split as usize];
    b.mr.read(8 << 20, &mut first);
    let mut second = vec![0; LEN - split as usize];
    b.mr.read((8 << 20) + split as usize + 50, &mut second);
    first.extend_from_slice(&second);
    assert!(first == data, "SEND data differs");
    let (s_placed, s_miss, _) = placed(&b);
    assert_eq!((s_placed, s_miss), (w_placed, 0), "SEND is not placed");
    for s in [&a, &b] {
        let c = s.dev.counters();
        assert_eq!((c.icrc_drops, c.malformed), (0, 0), "{c:?}");
    }
}

//! Duplicate requests (IBTA §9.7.5.2.3): a duplicated or re-requested READ is answered from the
//! saved responder resource with the right bytes; a duplicated atomic is answered with its saved
//! original value and never executed twice; `max_rd_atomic` bounds the READs in flight.

use std::net::SocketAddr;
use std::time::Duration;

use uroce_proto::{Payload, RegionMemory, SendOp, SendWr, WcOpcode, WcStatus};
use uroce_sim::scenario::{
    drain, drop_in_flight, opcode_of, pair, psn_of, record_packets, settle, transmit_now,
    wait_completions, Endpoint, PairOpts,
};
use uroce_sim::{Link, Sim};
use uroce_wire::Opcode;

const LIMIT: Duration = Duration::from_secs(1);

fn read(a: &Endpoint, b: &Endpoint, id: u64, roff: u64, loff: u64, len: u32) -> SendWr {
    SendWr::new(
        id,
        SendOp::RdmaRead {
            remote_addr: b.base + roff,
            rkey: b.keys.rkey,
        },
        Payload::Sgl(vec![a.sge(loff, len)]),
    )
}

fn word(ep: &Endpoint, off: usize) -> u64 {
    u64::from_ne_bytes(ep.read(off, 8).try_into().unwrap())
}

#[test]
fn replayed_read_request_is_answered_from_the_resource() {
    let mut sim = Sim::new(50, Link::default());
    // One request for the whole READ, answered FIRST/MIDDLE/LAST (rxe's and NICs' framing).
    let one_request = PairOpts {
        split_reads: false,
        ..PairOpts::default()
    };
    let (a, b) = pair(&mut sim, &one_request);
    let data = b.fill(0, 3000, 1);
    let log = record_packets(&mut sim);
    sim.post_send(a.host, a.qpn, read(&a, &b, 1, 0, 0, 3000))
        .unwrap();
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(
        (c[0].status, c[0].opcode, c[0].byte_len),
        (WcStatus::Success, WcOpcode::RdmaRead, 3000)
    );
    assert_eq!(a.read(0, 3000), data);
    let req: Vec<_> = log
        .borrow()
        .iter()
        .filter(|p| opcode_of(&p.bytes) == Some(Opcode::RcReadRequest))
        .cloned()
        .collect();
    assert_eq!(req.len(), 1);
    let before_b = b.counters(&sim);
    let before_a = a.counters(&sim);
    // Deliver the same READ request again.
    let to = sim.hosts[b.host].ip;
    let now = sim.now;
    sim.dev(b.host)
        .handle_datagram(now, req[0].src, to, &req[0].bytes);
    settle(&mut sim, Duration::from_millis(1));
    let (ca, cb) = (a.counters(&sim), b.counters(&sim));
    assert_eq!(cb.duplicates - before_b.duplicates, 1);
    assert_eq!(
        cb.tx_packets - before_b.tx_packets,
        3,
        "the three responses replayed"
    );
    assert_eq!(
        ca.dropped - before_a.dropped,
        3,
        "the requester drops the stale responses"
    );
    assert!(drain(&mut sim, &a).is_empty(), "no second completion");
    assert_eq!(a.read(0, 3000), data);
    let replayed: Vec<u8> = log
        .borrow()
        .iter()
        .filter(|p| p.src.ip() == sim.hosts[b.host].ip)
        .filter_map(|p| opcode_of(&p.bytes))
        .map(Opcode::as_u8)
        .collect();
    assert_eq!(
        replayed,
        [0x0D, 0x0E, 0x0F, 0x0D, 0x0E, 0x0F],
        "FIRST/MIDDLE/LAST, then the same again"
    );
}

#[test]
fn lost_read_response_is_re_requested_from_the_middle() {
    let mut sim = Sim::new(51, Link::default());
    // One request for the whole READ, so that a response MIDDLE exists to be lost.
    let one_request = PairOpts {
        split_reads: false,
        ..PairOpts::default()
    };
    let (a, b) = pair(&mut sim, &one_request);
    let data = b.fill(0, 3000, 2);
    let log = record_packets(&mut sim);
    sim.post_send(a.host, a.qpn, read(&a, &b, 1, 0, 0, 3000))
        .unwrap();
    // Run until B has sent its responses, then lose the MIDDLE one.
    let b_ip = sim.hosts[b.host].ip;
    let mut dropped = 0;
    sim.run_until(LIMIT, |s| {
        dropped += drop_in_flight(s, |from: SocketAddr, _, p| {
            from.ip() == b_ip && opcode_of(p) == Some(Opcode::RcReadResponseMiddle)
        });
        dropped > 0
    });
    assert_eq!(dropped, 1);
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(c[0].status, WcStatus::Success);
    assert_eq!(a.read(0, 3000), data);
    let reqs: Vec<(u32, Vec<u8>)> = log
        .borrow()
        .iter()
        .filter(|p| opcode_of(&p.bytes) == Some(Opcode::RcReadRequest))
        .map(|p| (psn_of(&p.bytes).unwrap(), p.bytes.clone()))
        .collect();
    assert_eq!(reqs.len(), 2, "the original and one re-request");
    assert_eq!(
        reqs[1].0,
        (reqs[0].0 + 1) & 0xFF_FFFF,
        "re-requested from the lost PSN"
    );
    // RETH (after the 12-byte BTH): VA + 1024, DMA length 3000 - 1024.
    let reth = |p: &[u8]| {
        (
            u64::from_be_bytes(p[12..20].try_into().unwrap()),
            u32::from_be_bytes(p[24..28].try_into().unwrap()),
        )
    };
    assert_eq!(reth(&reqs[1].1), (b.base + 1024, 3000 - 1024));
    let (ca, cb) = (a.counters(&sim), b.counters(&sim));
    assert_eq!(cb.duplicates, 1);
    assert_eq!(ca.out_of_sequence, 1);
    assert_eq!(ca.retransmits, 1);
    assert_eq!(
        ca.timeouts, 0,
        "recovered by the sequence gap, not the timer"
    );
}

#[test]
fn duplicated_link_read_and_atomics_execute_once() {
    let mut sim = Sim::new(
        52,
        Link {
            duplicate: 1.0,
            ..Link::default()
        },
    );
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let data = b.fill(0, 5000, 3);
    b.mem.write(8192, &1000u64.to_ne_bytes());
    sim.post_send(a.host, a.qpn, read(&a, &b, 1, 0, 0, 5000))
        .unwrap();
    for i in 0..5u64 {
        let fa = SendWr::new(
            10 + i,
            SendOp::FetchAdd {
                remote_addr: b.base + 8192,
                rkey: b.keys.rkey,
                add: i + 1,
            },
            Payload::Sgl(vec![a.sge(10_000 + 8 * i, 8)]),
        );
        sim.post_send(a.host, a.qpn, fa).unwrap();
    }
    // 1000 + 1 + 2 + 3 + 4 + 5 = 1015: swaps only if every add happened exactly once.
    let cs = SendWr::new(
        20,
        SendOp::CompareSwap {
            remote_addr: b.base + 8192,
            rkey: b.keys.rkey,
            compare: 1015,
            swap: 7,
        },
        Payload::Sgl(vec![a.sge(10_100, 8)]),
    );
    sim.post_send(a.host, a.qpn, cs).unwrap();
    let c = wait_completions(&mut sim, &a, 7, LIMIT);
    settle(&mut sim, Duration::from_millis(1));
    assert!(drain(&mut sim, &a).is_empty(), "no extra completion");
    assert_eq!(
        c.iter().map(|c| c.wr_id).collect::<Vec<_>>(),
        [1, 10, 11, 12, 13, 14, 20]
    );
    assert!(c.iter().all(|c| c.status == WcStatus::Success), "{c:?}");
    assert_eq!(a.read(0, 5000), data);
    let mut expect = 1000;
    for i in 0..5 {
        assert_eq!(
            word(&a, 10_000 + 8 * i),
            expect,
            "fetch-add {i} returned the original"
        );
        expect += i as u64 + 1;
    }
    assert_eq!(word(&a, 10_100), 1015);
    assert_eq!(word(&b, 8192), 7);
    let cb = b.counters(&sim);
    assert!(cb.duplicates >= 7, "{cb:?}");
    assert_eq!(cb.naks_sent, [0; 4]);
    assert!(sim.stats.duplicated > 0);
}

#[test]
fn lost_atomic_ack_is_answered_from_the_saved_value() {
    let mut sim = Sim::new(53, Link::default());
    let (a, b) = pair(
        &mut sim,
        &PairOpts {
            timeout: 8,
            ..PairOpts::default()
        },
    );
    b.mem.write(64, &40u64.to_ne_bytes());
    let fa = SendWr::new(
        1,
        SendOp::FetchAdd {
            remote_addr: b.base + 64,
            rkey: b.keys.rkey,
            add: 2,
        },
        Payload::Sgl(vec![a.sge(0, 8)]),
    );
    sim.post_send(a.host, a.qpn, fa).unwrap();
    transmit_now(&mut sim);
    // Step until B executed it; its atomic ACK is then in flight: lose it.
    let bb = b.clone();
    assert!(sim.run_until(LIMIT, |_| word(&bb, 64) == 42));
    let a_host = a.host;
    assert_eq!(drop_in_flight(&mut sim, |_, to, _| to == a_host), 1);
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(
        (c[0].status, c[0].opcode),
        (WcStatus::Success, WcOpcode::FetchAdd)
    );
    assert_eq!(
        word(&a, 0),
        40,
        "the original value, from the responder resource"
    );
    assert_eq!(word(&b, 64), 42, "added exactly once");
    let (ca, cb) = (a.counters(&sim), b.counters(&sim));
    assert_eq!(ca.timeouts, 1);
    assert_eq!(ca.retransmits, 1);
    assert_eq!(cb.duplicates, 1);
    // Same for compare-and-swap: the retried CAS must not swap again (it would, with 42 == 42
    // compare after a second execution, but it must report the saved 42 and leave 99).
    let cs = SendWr::new(
        2,
        SendOp::CompareSwap {
            remote_addr: b.base + 64,
            rkey: b.keys.rkey,
            compare: 42,
            swap: 99,
        },
        Payload::Sgl(vec![a.sge(8, 8)]),
    );
    sim.post_send(a.host, a.qpn, cs).unwrap();
    transmit_now(&mut sim);
    assert!(sim.run_until(LIMIT, |_| word(&bb, 64) == 99));
    b.mem.write(64, &42u64.to_ne_bytes()); // so a second execution would be visible
    assert_eq!(drop_in_flight(&mut sim, |_, to, _| to == a_host), 1);
    let c = wait_completions(&mut sim, &a, 1, LIMIT);
    assert_eq!(
        (c[0].status, c[0].opcode),
        (WcStatus::Success, WcOpcode::CompSwap)
    );
    assert_eq!(word(&a, 8), 42);
    assert_eq!(word(&b, 64), 42, "not swapped a second time");
    assert_eq!(b.counters(&sim).duplicates, 2);
}

#[test]
fn max_rd_atomic_bounds_reads_in_flight() {
    for depth in [1u8, 2, 4] {
        let mut sim = Sim::new(54, Link::default());
        let (a, b) = pair(
            &mut sim,
            &PairOpts {
                rd_atomic: depth,
                ..PairOpts::default()
            },
        );
        let data = b.fill(0, 8 * 4096, 4);
        let log = record_packets(&mut sim);
        for i in 0..8u64 {
            sim.post_send(a.host, a.qpn, read(&a, &b, i, i * 4096, i * 4096, 4096))
                .unwrap();
        }
        let c = wait_completions(&mut sim, &a, 8, LIMIT);
        assert!(c.iter().all(|c| c.status == WcStatus::Success), "{c:?}");
        assert_eq!(a.read(0, 8 * 4096), data);
        // Outstanding = requests sent − responses completed (the LAST response goes out
        // before the completion that lets the next request go).
        let (mut out, mut max) = (0i32, 0i32);
        for p in log.borrow().iter() {
            match opcode_of(&p.bytes) {
                Some(Opcode::RcReadRequest) => out += 1,
                Some(Opcode::RcReadResponseLast | Opcode::RcReadResponseOnly) => out -= 1,
                _ => {}
            }
            max = max.max(out);
        }
        assert_eq!(max, i32::from(depth), "max_rd_atomic {depth}");
        assert_eq!(b.counters(&sim).naks_sent, [0; 4]);
        assert_eq!(a.counters(&sim).retransmits, 0);
    }
}

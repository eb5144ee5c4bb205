//! The engine's per-packet path allocates nothing in steady state (issue 6: "no allocation or
//! lock per packet"): a stream of multi-packet RC WRITEs, whose FIRST packet (longer by its
//! RETH) never fits the GSO batch of MIDDLEs before it and is staged for the next datagram,
//! runs through two engines while a counting global allocator watches every `poll_transmit`
//! and every `handle_datagram` (the WRITEs and their ACKs, both ways). (It lives in
//! this crate, not in `uroce-sim`, because a global allocator needs `unsafe`, which only the
//! driver and C ABI crates allow.)
//!
//! And a busy-polled device's `CompletionQueue::poll_into` with a reused vector allocates
//! nothing either, the completion's receive included (real sockets on loopback).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;

use uroce::{Access, Connect, Device, DeviceConfig, Progress, QpCap, QpType};
use uroce_proto::{Instant, Mtu, Payload, SendOp, SendWr, WcStatus};
use uroce_sim::scenario::{pair, PairOpts};
use uroce_sim::{Link, Sim};

/// Counts allocations made on this thread while `COUNTING` is set.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the allocator can run while thread-locals are torn down.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments and only counts, so
// `System`'s guarantees are `Counting`'s.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn streaming_multi_packet_writes_allocates_nothing_per_packet() {
    const SIZE: usize = 16 * 1024;
    const MESSAGES: u64 = 2000;
    const DEPTH: u64 = 64;
    let mut sim = Sim::new(1, Link::default());
    let opts = PairOpts {
        mtu: Mtu::M4096,
        mem_len: 1 << 20,
        // FIRST/MIDDLE/LAST: a FIRST is staged (it does not fit the MIDDLEs' batch), the path
        // under test. Split WRITEs are all WRITE ONLYs of one size and never staged.
        split_writes: false,
        cap: uroce_proto::QpCap {
            max_send_wr: DEPTH as u32,
            ..PairOpts::default().cap
        },
        ..PairOpts::default()
    };
    let (a, b) = pair(&mut sim, &opts);
    let slots = (opts.mem_len / SIZE) as u64;
    let mut buf = vec![0u8; 64 * (4096 + 128)];
    let now = Instant::ZERO;
    let (mut posted, mut done) = (0u64, 0u64);
    // Allocations during `poll_transmit` and `handle_datagram` from message `warm` on (the
    // first messages may grow buffers once), and datagrams sent in that time.
    let warm = 200;
    let (mut allocs, mut datagrams, mut staged) = (0u64, 0u64, 0u64);
    let mut rx_allocs = 0u64;
    while done < MESSAGES {
        while posted < MESSAGES && posted - done < DEPTH {
            let k = posted % slots;
            let mut wr = SendWr::new(
                posted,
                SendOp::RdmaWrite {
                    remote_addr: b.base + k * SIZE as u64,
                    rkey: b.keys.rkey,
                },
                Payload::Sge(a.sge(k * SIZE as u64, SIZE as u32)),
            );
            wr.flags.signaled = (posted + 1) % 16 == 0 || posted + 1 == MESSAGES;
            sim.hosts[a.host]
                .dev
                .post_send(now, a.qpn, wr)
                .expect("post");
            posted += 1;
        }
        for (from, to) in [(a.host, b.host), (b.host, a.host)] {
            let src = SocketAddr::new(sim.hosts[from].ip, sim.hosts[from].dev.config().udp_port);
            let dst_ip = sim.hosts[to].ip;
            loop {
                let count = done >= warm;
                COUNTING.with(|c| c.set(count));
                let before = ALLOCS.with(Cell::get);
                let t = sim.hosts[from].dev.poll_transmit(now, &mut buf);
                COUNTING.with(|c| c.set(false));
                allocs += ALLOCS.with(Cell::get) - before;
                let Some(t) = t else { break };
                if count && from == a.host {
                    datagrams += 1;
                    // A datagram opened by a packet the size of a FIRST (BTH + RETH + 4096 +
                    // ICRC): staged, since it did not fit the MIDDLEs' batch before it.
                    let first = t.segment_size.unwrap_or(t.len) == 12 + 16 + 4096 + 4;
                    staged += u64::from(first);
                }
                let seg = t.segment_size.unwrap_or(t.len);
                for p in buf[..t.len].chunks(seg) {
                    COUNTING.with(|c| c.set(count));
                    let before = ALLOCS.with(Cell::get);
                    sim.hosts[to].dev.handle_datagram(now, src, dst_ip, p);
                    COUNTING.with(|c| c.set(false));
                    rx_allocs += ALLOCS.with(Cell::get) - before;
                }
            }
        }
        while let Ok(Some(c)) = sim.hosts[a.host].dev.poll_cq(a.cq) {
            assert_eq!(c.status, WcStatus::Success, "{c:?}");
            done = done.max(c.wr_id + 1);
        }
    }
    // The stream really staged FIRST packets (one per message), so the path under test ran.
    assert!(
        staged >= (MESSAGES - warm) / 2,
        "only {staged} staged FIRST packets in {datagrams} datagrams"
    );
    assert_eq!(
        allocs, 0,
        "{allocs} allocations in poll_transmit over {datagrams} datagrams"
    );
    assert_eq!(
        rx_allocs, 0,
        "{rx_allocs} allocations in handle_datagram over {datagrams} datagrams"
    );
}

#[test]
fn a_busy_poll_that_returns_a_completion_allocates_nothing() {
    const ROUNDS: u64 = 2000;
    let open = |ip: &str| {
        let mut cfg = DeviceConfig::new(ip.parse().unwrap());
        cfg.progress = Progress::Polled;
        let dev = Device::open(cfg).expect("open device");
        let pd = dev.alloc_pd();
        let all = Access::from_bits(0xF);
        let mr = pd.reg_mr(0x10_0000, 4096, all).expect("mr");
        let cq = dev.create_cq(16, None).expect("cq");
        let qp = pd
            .create_qp(QpType::Rc, &cq, &cq, None, QpCap::default())
            .expect("qp");
        (dev, pd, mr, cq, qp)
    };
    let (a_dev, _a_pd, a_mr, a_cq, a_qp) = open("127.0.66.1");
    let (b_dev, _b_pd, b_mr, _b_cq, b_qp) = open("127.0.66.2");
    let (a_at, b_at) = (a_dev.local_addr(), b_dev.local_addr());
    a_qp.connect(&Connect::new(b_at.ip(), b_qp.qpn(), 100, 200))
        .expect("connect a");
    b_qp.connect(&Connect::new(a_at.ip(), a_qp.qpn(), 200, 100))
        .expect("connect b");
    let mut wcs = Vec::with_capacity(4);
    let (mut allocs, mut polls, mut counted) = (0u64, 0u64, 0u64);
    for i in 0..ROUNDS {
        a_mr.write(7, &[i as u8]);
        a_qp.post_send(SendWr::new(
            i,
            SendOp::RdmaWrite {
                remote_addr: b_mr.addr(),
                rkey: b_mr.rkey(),
            },
            Payload::Sge(a_mr.sge(0, 8)),
        ))
        .expect("post");
        wcs.clear();
        let count = i >= 200;
        loop {
            b_dev.progress();
            COUNTING.with(|c| c.set(count));
            let before = ALLOCS.with(Cell::get);
            let got = a_cq.poll_into(4, &mut wcs);
            COUNTING.with(|c| c.set(false));
            allocs += ALLOCS.with(Cell::get) - before;
            polls += u64::from(count);
            if got.expect("poll") > 0 {
                break;
            }
        }
        assert_eq!(wcs.len(), 1, "{wcs:?}");
        assert_eq!((wcs[0].status, wcs[0].wr_id), (WcStatus::Success, i));
        counted += u64::from(count);
        let mut last = [0u8; 8];
        b_mr.read(0, &mut last);
        assert_eq!(last[7], i as u8, "round {i}: the peer's region");
    }
    assert_eq!(counted, ROUNDS - 200);
    assert_eq!(
        allocs, 0,
        "{allocs} allocations in {polls} polls returning {counted} completions"
    );
}

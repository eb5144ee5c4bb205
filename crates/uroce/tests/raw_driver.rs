//! `uroce::driver::raw::RawDriver`: raw datagrams through the back ends without the engine (the
//! suite's io_uring UDP ceiling probe). Over loopback: every datagram the sender's kernel
//! accepted arrives once, whole and in order, split out of GRO super-buffers, and the counters
//! of both ends agree with what was seen.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use uroce::driver::raw::RawDriver;
use uroce::{BackendKind, DriverStats};

/// A RoCE packet of 4096 payload bytes with its headers and ICRC, as in issue 6.
const SEG: usize = 4154;

/// Sends `batches` batches of as many `SEG`-byte datagrams as one send holds, each stamped
/// with its sequence number, from a `tx` back end to an `rx` back end on `ip`; receives them
/// all and checks them.
/// `zc`: the sender uses `SENDMSG_ZC`. Returns the sender's counters.
fn transfer(ip: &str, tx: BackendKind, rx: BackendKind, batches: u64, zc: bool) -> DriverStats {
    let any: SocketAddr = format!("{ip}:0").parse().unwrap();
    let mut r = RawDriver::open(any, rx).unwrap();
    let mut s = if zc {
        RawDriver::open_send_zc(any).unwrap()
    } else {
        RawDriver::open(any, tx).unwrap()
    };
    let dst = r.local_addr();
    assert_ne!(dst.port(), 0, "the bound port is reported");
    let per = s.max_batch(SEG);
    match tx {
        BackendKind::Uring => assert_eq!(per, 15, "15 × 4154 B fill one GSO batch"),
        _ => assert_eq!(per, 1),
    }
    // Arm the receive before sending (a multishot receive also takes what is queued).
    assert_eq!(r.recv(|_, _| panic!("nothing sent yet")).unwrap(), 0);
    let mut seq = 0u64;
    for b in 0..batches {
        s.send_batch(dst, SEG, per, |buf| {
            for d in buf.chunks_mut(SEG) {
                d[..8].copy_from_slice(&seq.to_be_bytes());
                d[8..].fill(seq as u8);
                seq += 1;
            }
        })
        .unwrap();
        // Several batches per submission, as the probe does.
        if b % 8 == 7 {
            s.flush().unwrap();
        }
    }
    assert!(s.drain_sends(Duration::from_secs(10)).unwrap());
    let sent = seq;
    let st = s.stats();
    assert_eq!(st.tx_dropped, 0, "{st:?}");
    assert_eq!(st.tx_errors, 0, "{st:?}");
    assert_eq!(
        st.tx_bytes,
        sent * SEG as u64,
        "the kernel took every send: {st:?}"
    );
    let mut seen = BTreeSet::new();
    let mut bytes = 0u64;
    let end = Instant::now() + Duration::from_secs(20);
    while (seen.len() as u64) < sent && Instant::now() < end {
        let n = r
            .recv(|from, d| {
                assert_eq!(from.ip(), dst.ip());
                assert_eq!(d.len(), SEG, "a datagram, not a GRO super-buffer");
                let q = u64::from_be_bytes(d[..8].try_into().unwrap());
                assert!(d[8..].iter().all(|&x| x == q as u8), "datagram {q} damaged");
                assert!(seen.insert(q), "datagram {q} twice");
                bytes += d.len() as u64;
            })
            .unwrap();
        if n == 0 {
            r.wait(Duration::from_millis(100)).unwrap();
        }
    }
    let rs = r.stats();
    assert_eq!(
        seen.len() as u64,
        sent,
        "received {} of {sent}: {rs:?}",
        seen.len()
    );
    assert_eq!(
        seen.iter().copied().collect::<Vec<_>>(),
        (0..sent).collect::<Vec<_>>()
    );
    assert_eq!(bytes, st.tx_bytes, "receiver bytes == sender bytes");
    assert_eq!(rs.rx_datagrams, sent, "{rs:?}");
    if rx == BackendKind::Uring && tx == BackendKind::Uring {
        assert!(r.features().multishot_recv && r.features().gro);
        assert!(rs.rx_gro_receives > 0, "GRO coalesced nothing: {rs:?}");
        assert_eq!(st.tx_gso_sends, batches, "{st:?}");
    }
    st
}

#[test]
fn uring_gso_batches_arrive_whole_through_the_multishot_gro_receive() {
    // 200 batches = 3000 datagrams: more GRO super-buffers than the 64 provided buffers, so
    // the ring runs dry and the receive is re-armed; 12.5 MB fits the socket's buffer.
    let st = transfer(
        "127.0.41.1",
        BackendKind::Uring,
        BackendKind::Uring,
        200,
        false,
    );
    assert_eq!(st.tx_zc_notifs, 0);
}

#[test]
fn zero_copy_sends_arrive_and_each_is_notified() {
    let st = transfer(
        "127.0.41.4",
        BackendKind::Uring,
        BackendKind::Uring,
        200,
        true,
    );
    // Every slot came back through its notification (the transfer drained them all).
    assert_eq!(st.tx_zc_notifs, st.tx_sends, "{st:?}");
    assert!(st.tx_zc_copied <= st.tx_zc_notifs);
    println!(
        "loopback SENDMSG_ZC: {} of {} sends copied by the kernel",
        st.tx_zc_copied, st.tx_zc_notifs
    );
}

#[test]
fn syscall_back_end_sends_and_receives_one_by_one() {
    transfer(
        "127.0.41.2",
        BackendKind::Syscall,
        BackendKind::Syscall,
        300,
        false,
    );
}

#[test]
fn a_batch_larger_than_a_datagram_is_refused() {
    let any: SocketAddr = "127.0.41.3:0".parse().unwrap();
    let mut s = RawDriver::open(any, BackendKind::Uring).unwrap();
    let dst = s.local_addr();
    let e = s.send_batch(dst, SEG, 16, |_| {}).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(s.send_batch(dst, 0, 1, |_| {}).is_err());
    assert_eq!(s.stats().tx_sends, 0);
}

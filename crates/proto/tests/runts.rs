//! Datagrams too short to be transport packets (issue 8, hostile peers): counted as malformed,
//! before any ICRC work, and never looked into further.

use std::net::{IpAddr, SocketAddr};

use uroce_proto::{Config, Device, Instant};

#[test]
fn runts_are_counted_malformed_not_as_icrc_failures() {
    let local: IpAddr = "10.0.0.2".parse().unwrap();
    let from: SocketAddr = "10.0.0.1:4791".parse().unwrap();
    let mut d = Device::new(Config::new(local));
    // Shorter than a BTH (12) plus an ICRC (4).
    for n in [0usize, 1, 12, 15] {
        d.handle_datagram(Instant::ZERO, from, local, &vec![0; n]);
    }
    let c = d.counters();
    assert_eq!((c.rx_packets, c.malformed, c.icrc_drops), (4, 4, 0));
    // Sixteen bytes can be a packet: they reach the ICRC check (and fail it).
    d.handle_datagram(Instant::ZERO, from, local, &[0; 16]);
    let c = d.counters();
    assert_eq!((c.malformed, c.icrc_drops), (4, 1));
}

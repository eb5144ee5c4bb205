//! Writing frames built by the `frame` module with `PcapWriter` and reading them back with
//! `PcapReader` must decode exactly as the original capture, for every link type.

mod common;

use std::time::Duration;

use common::{frames, CAPTURES};
use uroce_capture::decode::{decode, Outcome, Summary};
use uroce_capture::frame::{
    build_datagram, decapsulate, encapsulate, BuildError, LinkType, NotRoce,
};
use uroce_capture::pcap::{PcapError, PcapReader, PcapWriter};

#[test]
fn written_frames_read_back_and_decode_equal() {
    for stem in CAPTURES {
        let originals = frames(stem);
        for link in LinkType::ALL {
            let mut file = Vec::new();
            let mut w = PcapWriter::with_link_type(&mut file, link).unwrap();
            let mut written = Vec::new();
            for f in &originals {
                let r = decapsulate(f.link, &f.data).unwrap();
                let datagram = build_datagram(&r.ctx, r.payload).unwrap();
                match w.write_roce(f.timestamp, &r.ctx, r.payload) {
                    Ok(()) => written.push((f, datagram)),
                    Err(PcapError::Build(BuildError::LinkMismatch { .. })) => {
                        assert!(matches!(link, LinkType::Ipv4 | LinkType::Ipv6));
                    }
                    Err(e) => panic!("{stem} #{} on {link:?}: {e}", f.index),
                }
            }
            w.into_inner();
            let reader = PcapReader::new(&file[..]).unwrap();
            assert_eq!(reader.link_type(), link);
            let back: Vec<_> = reader.map(|f| f.unwrap()).collect();
            assert_eq!(back.len(), written.len(), "{stem} on {link:?}");
            for (n, (b, (orig, datagram))) in back.iter().zip(&written).enumerate() {
                assert_eq!(b.index, n as u64 + 1);
                assert_eq!(b.timestamp, orig.timestamp);
                assert_eq!(b.link, link);
                assert_eq!(b.data, encapsulate(link, datagram).unwrap());
                // Same frame number so the lines compare whole.
                let got = decode(orig.index, b.link, &b.data);
                let want = decode(orig.index, orig.link, &orig.data);
                assert_eq!(got, want, "{stem} #{} on {link:?}", orig.index);
                assert_eq!(got.to_string(), want.to_string());
                assert!(matches!(got.outcome, Outcome::Roce(_)));
            }
        }
    }
}

#[test]
fn foreign_and_broken_frames_are_counted_not_fatal() {
    let golden = &frames(CAPTURES[0])[0];
    let mut file = Vec::new();
    let mut w = PcapWriter::with_link_type(&mut file, LinkType::Ethernet).unwrap();
    let ts = Duration::from_secs(1);
    // An ARP frame, a DNS query, a cut-off RoCE frame, a good one with a flipped payload bit.
    let mut arp = vec![0xFFu8; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    w.write_frame(ts, &arp).unwrap();
    let mut dns = golden.data.clone();
    dns[36..38].copy_from_slice(&53u16.to_be_bytes());
    w.write_frame(ts, &dns).unwrap();
    w.write_frame(ts, &golden.data[..60]).unwrap();
    let mut bad = golden.data.clone();
    bad[100] ^= 0x20;
    w.write_frame(ts, &bad).unwrap();
    w.write_frame(ts, &golden.data).unwrap();
    w.into_inner();

    let mut summary = Summary::default();
    let mut lines = Vec::new();
    for f in PcapReader::new(&file[..]).unwrap() {
        let f = f.unwrap();
        let d = decode(f.index, f.link, &f.data);
        summary.add(&d);
        lines.push(d.to_string());
    }
    assert_eq!(
        decode(1, LinkType::Ethernet, &arp).outcome,
        Outcome::NotRoce(NotRoce::EtherType(0x0806))
    );
    assert!(
        lines[0].ends_with("not RoCEv2: EtherType 0x0806"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].ends_with("not RoCEv2: UDP destination port 53"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("malformed frame: IPv4 truncated"),
        "{}",
        lines[2]
    );
    assert!(lines[3].contains("ICRC bad (carried 0x"), "{}", lines[3]);
    assert!(lines[4].ends_with("ICRC ok"), "{}", lines[4]);
    assert_eq!(
        summary.to_string(),
        "5 frames, 2 RoCE, ICRC ok 1, ICRC bad 1, malformed 1, not RoCE 2"
    );
}

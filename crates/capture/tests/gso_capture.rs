//! A real capture of uroce's GSO datagrams, taken by tcpdump on a veth end (so before the
//! kernel cut them into packets): `uroce decode`'s reading of it.

mod common;

use common::frames;
use uroce_capture::decode::{decode, decode_frame, Outcome, Summary};

#[test]
fn every_packet_of_an_unsegmented_gso_capture_verifies() {
    let frames = frames("uroce-veth-gso");
    let mut sum = Summary::default();
    let mut whole_bad = 0;
    for f in &frames {
        let lines = decode_frame(f.index, f.link, &f.data, f.data.len());
        // Read as one packet, every GSO datagram fails its ICRC: what decode printed before.
        if decode(f.index, f.link, &f.data).icrc_ok() == Some(false) {
            whole_bad += 1;
            assert!(lines.len() > 1, "frame {} was not cut", f.index);
        }
        let psns: Vec<u32> = lines
            .iter()
            .filter_map(|d| d.roce())
            .filter(|p| p.repr.aeth.is_none())
            .map(|p| p.repr.bth.psn)
            .collect();
        assert!(
            psns.windows(2).all(|w| w[1] == (w[0] + 1) & 0xFF_FFFF),
            "frame {}: requests of one batch have consecutive PSNs: {psns:?}",
            f.index
        );
        for d in &lines {
            sum.add(d);
        }
    }
    assert_eq!(whole_bad, 14);
    assert_eq!(
        sum.to_string(),
        "23 frames, 41 RoCE, ICRC ok 41, ICRC bad 0, malformed 0, not RoCE 0 \
         (14 GSO datagrams cut into their packets)"
    );
}

#[test]
fn a_capture_cut_by_its_snap_length_still_shows_every_header() {
    let frames = frames("uroce-veth-gso");
    let mut sum = Summary::default();
    for f in &frames {
        // tcpdump -s 100: Ethernet 14 + IPv4 20 + UDP 8 leave 58 bytes of the transport packet.
        let snap = &f.data[..f.data.len().min(100)];
        let lines = decode_frame(f.index, f.link, snap, f.data.len());
        assert_eq!(lines.len(), 1);
        let d = &lines[0];
        sum.add(d);
        let text = d.to_string();
        if f.data.len() <= 100 {
            assert!(text.ends_with("ICRC ok"), "{text}");
            continue;
        }
        match d.outcome {
            Outcome::Truncated { repr, len, frame } => {
                let r = repr.expect("headers captured");
                assert_eq!(len, f.data.len() - 42, "{text}");
                assert_eq!(frame.payload.len(), 58, "{text}");
                assert!(r.bth.opcode.name().starts_with("RC RDMA Write"), "{text}");
                // The datagrams of several packets say so instead of a payload length.
                assert_eq!(
                    text.contains(" and more packets ("),
                    decode(f.index, f.link, &f.data).icrc_ok() == Some(false),
                    "{text}"
                );
            }
            _ => panic!("frame {}: {text}", f.index),
        }
        assert!(
            text.ends_with(&format!(
                "; ICRC not checked: the capture kept 58 of {} bytes",
                f.data.len() - 42
            )),
            "{text}"
        );
    }
    assert_eq!(sum.truncated, 18, "{sum}");
    assert_eq!(sum.icrc_bad + sum.malformed, 0, "{sum}");
}

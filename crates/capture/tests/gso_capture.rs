//! A real capture of uroce's GSO datagrams, taken by tcpdump on a veth end (so before the
//! kernel cut them into packets): `uroce decode`'s reading of it.

mod common;

use common::frames;
use uroce_capture::decode::{decode, decode_frame, Summary};

#[test]
fn every_packet_of_an_unsegmented_gso_capture_verifies() {
    let frames = frames("uroce-veth-gso");
    let mut sum = Summary::default();
    let mut whole_bad = 0;
    for f in &frames {
        let lines = decode_frame(f.index, f.link, &f.data);
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

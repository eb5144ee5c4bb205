//! Nothing panics on mangled input: truncated and bit-mangled pcap files and frames, for every
//! link type, go through the reader and the decoder and come out as typed errors or lines.

mod common;

use common::{data_dir, frames, CAPTURES};
use uroce_capture::decode::decode_frame as decode;
use uroce_capture::frame::LinkType;
use uroce_capture::pcap::PcapReader;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Formats every line (what `uroce decode` prints).
fn lines(d: &[uroce_capture::Decoded<'_>]) -> usize {
    d.iter().map(|d| d.to_string().len()).sum()
}

fn read_all(bytes: &[u8]) -> usize {
    let Ok(reader) = PcapReader::new(bytes) else {
        return 0;
    };
    let mut n = 0;
    for f in reader {
        let Ok(f) = f else { break };
        n += lines(&decode(f.index, f.link, &f.data, f.orig_len as usize));
    }
    n
}

#[test]
fn mangled_pcap_files_do_not_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let file = std::fs::read(data_dir().join("rxe-mtu1024.pcap")).unwrap();
    // Every truncation point within the header and the first records, then random ones.
    for cut in (0..400).chain((0..50).map(|_| rng.below(file.len()))) {
        read_all(&file[..cut]);
    }
    // Random byte changes anywhere, including record lengths.
    for _ in 0..200 {
        let mut f = file[..4096].to_vec();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(f.len());
            f[at] = rng.next() as u8;
        }
        read_all(&f);
    }
}

#[test]
fn mangled_frames_do_not_panic_on_any_link_type() {
    let mut rng = Rng(42);
    for stem in CAPTURES {
        for f in frames(stem).iter().step_by(7) {
            for link in LinkType::ALL {
                for cut in 0..f.data.len().min(120) {
                    // As a capture with a snap length of `cut` would hold it.
                    lines(&decode(f.index, link, &f.data[..cut], f.data.len()));
                }
                for _ in 0..20 {
                    let mut d = f.data.clone();
                    for _ in 0..1 + rng.below(4) {
                        // Mostly the headers, where the structure is.
                        let at = rng.below(d.len().min(120));
                        d[at] = rng.next() as u8;
                    }
                    lines(&decode(f.index, link, &d, d.len()));
                }
            }
        }
    }
}

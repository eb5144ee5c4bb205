//! Tables keyed by the engine's 32-bit numbers (QPNs, memory keys, CQ/SRQ/AH handles).
//!
//! std's default SipHash costs more than the rest of a 64-byte WRITE's lookup on the receive
//! path (a QPN per packet, an R_Key per message). These keys are not chosen by a peer: the
//! engine allocates them (sequentially), and a peer can only look them up, so the flooding that
//! SipHash guards against (many inserted keys in one bucket) cannot be provoked from the wire.
//! One multiplication by a 64-bit odd constant (Fibonacci hashing), with the halves swapped so
//! that the well-mixed high bits pick the bucket.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes one `u32` (other writes fold bytes in the same way).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(32)
    }
}

/// A map keyed by an engine number.
pub type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_keys_spread_over_buckets() {
        // Keys as the engine makes them: QPNs 17.., memory keys index << 8 | generation.
        let b = BuildHasherDefault::<IdHasher>::default();
        for keys in [
            (17u32..17 + 1024).collect::<Vec<_>>(),
            (1u32..=1024).map(|i| i << 8 | (i & 0xFF)).collect(),
            (1u32..=1024).map(|i| i << 16 | 0x11).collect(),
        ] {
            let mut used = [0u32; 256];
            for k in &keys {
                used[(b.hash_one(k) & 0xFF) as usize] += 1;
            }
            // 1024 keys in 256 buckets: 4 each on average; none crowded.
            assert!(used.iter().all(|&n| n <= 12), "{used:?}");
        }
    }

    #[test]
    fn map_works() {
        let mut m: IdMap<u32> = IdMap::default();
        for k in 0..1000u32 {
            m.insert(k * 7, k);
        }
        assert!((0..1000u32).all(|k| m.get(&(k * 7)) == Some(&k)));
        assert_eq!(m.get(&1), None);
    }
}

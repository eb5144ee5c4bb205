//! The memory behind [`crate::ProtectionDomain::reg_mr`]: [`AtomicMemory`] whose bulk reads
//! are made by the CPU's string move instead of a loop of 8-byte atomic loads.
//!
//! The engine copies every payload byte it sends out of a region, and reads back every payload
//! byte the kernel placed into one for the ICRC. As relaxed `AtomicU64` loads (which the
//! compiler may not vectorise) that copy ran at 28 GB/s where `rep movsb` runs at 47 on this
//! CPU (4 KiB out of a 1 MiB region), and it was 15 % of each side's samples in a WRITE
//! 1 MiB profile (docs/perf/JOURNAL.md, "Region reads by the string move"). Writes into the
//! region stay word by word (see [`Region::write`]).
//!
//! Why this is sound: the bytes are the same words [`AtomicMemory`] holds, shared with the
//! application, the peer's writes and the kernel's placing copies, any of which may run at the
//! same time. `rep movsb` accesses each byte once with the hardware's single-copy atomicity,
//! inside an `asm!` block, outside the Rust abstract machine: the same kind of access as the
//! kernel's copies into and out of the region ([`uroce_proto::RawParts`]), or a NIC's DMA. It
//! never forms a Rust reference to the region's bytes, and writes only into the caller's own
//! buffer. What a racing read observes is, as with the atomic loop, a mix of old and new
//! bytes, never undefined behaviour; completions say when data is whole. The 8-byte atomics
//! stay on the words.

#![allow(unsafe_code)]

use std::sync::Arc;

use uroce_proto::{AtomicMemory, RawParts, RegionMemory};

/// Reads shorter than this go through the atomic words (the string move's start-up costs
/// more than a few word moves).
const STRING_MOVE_MIN: usize = 256;

/// [`AtomicMemory`] with bulk reads by `rep movsb` (x86-64; elsewhere the atomic loop).
#[derive(Debug)]
pub(crate) struct Region {
    words: Arc<AtomicMemory>,
    raw: RawParts,
}

impl Region {
    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Arc<Region> {
        let words = AtomicMemory::zeroed(len);
        let raw = words.raw_parts().unwrap_or(RawParts { addr: 0, len: 0 });
        Arc::new(Region { words, raw })
    }

    /// The region's address of `[offset, offset + len)`, if it lies inside and is long
    /// enough to be worth the string move.
    fn span(&self, offset: usize, len: usize) -> Option<usize> {
        let end = offset.checked_add(len)?;
        (cfg!(target_arch = "x86_64") && len >= STRING_MOVE_MIN && end <= self.raw.len)
            .then(|| self.raw.addr + offset)
    }
}

impl RegionMemory for Region {
    fn len(&self) -> usize {
        self.words.len()
    }

    fn read(&self, offset: usize, dst: &mut [u8]) {
        match self.span(offset, dst.len()) {
            // SAFETY: `at..at + dst.len()` lies inside the words `self.words` owns (checked by
            // `span` against `raw_parts`), alive while `&self` is; `dst` is an exclusive Rust
            // buffer, which cannot overlap them (nothing lends the words as bytes). The racing
            // accesses are discussed in the module documentation.
            Some(at) => unsafe { string_move(at as *const u8, dst.as_mut_ptr(), dst.len()) },
            None => self.words.read(offset, dst),
        }
    }

    /// Writes stay word by word: with the string move, four QPs on two steered devices (which
    /// copy every payload into the region) spent more server CPU per byte in 9 of 10
    /// alternated runs, though it writes faster in isolation (docs/perf/JOURNAL.md).
    fn write(&self, offset: usize, src: &[u8]) {
        self.words.write(offset, src)
    }

    fn compare_swap(&self, offset: usize, compare: u64, swap: u64) -> u64 {
        self.words.compare_swap(offset, compare, swap)
    }

    fn fetch_add(&self, offset: usize, add: u64) -> u64 {
        self.words.fetch_add(offset, add)
    }

    fn raw_parts(&self) -> Option<RawParts> {
        self.words.raw_parts()
    }
}

/// Copies `len` bytes from `src` to `dst` with `rep movsb`.
///
/// # Safety
/// Both ranges must be valid for `len` bytes, the destination writable, and not overlap.
#[cfg(target_arch = "x86_64")]
unsafe fn string_move(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller's contract; the direction flag is clear at every call (System V ABI),
    // so the move runs forward; rcx, rsi and rdi are declared clobbered.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn string_move(_src: *const u8, _dst: *mut u8, _len: usize) {
    unreachable!("`span` never chooses the string move off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of every length around the threshold and every alignment return exactly the
    /// bytes the atomic path does; writes place them and leave the neighbours alone.
    #[test]
    fn copies_match_the_atomic_words_at_every_offset_and_length() {
        let data: Vec<u8> = (0..2048u32).map(|i| (i * 13 + 5) as u8).collect();
        let r = Region::zeroed(data.len());
        r.write(0, &data);
        assert_eq!(r.words.to_vec(), data);
        for off in [0, 1, 7, 8, 9, 100, 777] {
            for len in [0, 1, 255, 256, 257, 1000, 1271] {
                let mut got = vec![0; len];
                r.read(off, &mut got);
                assert_eq!(got, data[off..off + len], "read at {off}, {len} bytes");
                let fill: Vec<u8> = (0..len).map(|i| !(i as u8)).collect();
                r.write(off, &fill);
                let mut want = data.clone();
                want[off..off + len].copy_from_slice(&fill);
                assert_eq!(r.words.to_vec(), want, "write at {off}, {len} bytes");
                r.write(0, &data);
            }
        }
        // Past the end: left to the words' own bounds (the engine checks before).
        assert!(r.span(2000, 256).is_none());
    }

    #[test]
    fn atomics_act_on_the_same_words() {
        let r = Region::zeroed(512);
        r.write(0, &[0u8; 512]);
        assert_eq!(r.fetch_add(256, 5), 0);
        assert_eq!(r.compare_swap(256, 5, 9), 5);
        let mut b = [0u8; 300];
        r.read(0, &mut b);
        assert_eq!(u64::from_ne_bytes(b[256..264].try_into().unwrap()), 9);
    }
}

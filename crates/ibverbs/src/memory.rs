//! A C caller's buffer as the engine's [`RegionMemory`]: what `ibv_reg_mr` registers.
//!
//! The engine reaches region bytes only through this trait, after `MrTable::check` has verified
//! keys, rights and bounds, so every offset here is inside `[0, len)` (and 8-byte aligned for
//! the atomics). The bytes belong to the C program, which reads and writes them while the
//! engine does: the same contract as a NIC's DMA into registered memory, where verbs say the
//! application must not touch a buffer between posting and completion.

use std::sync::atomic::{AtomicU64, Ordering};

use uroce_proto::RegionMemory;

/// `len` bytes at `addr` in this process, registered by a C caller.
#[derive(Debug)]
pub struct RawMemory {
    addr: usize,
    len: usize,
}

impl RawMemory {
    /// # Safety
    /// `addr..addr + len` must stay mapped, readable and writable until the region is
    /// deregistered (`ibv_reg_mr`'s contract with its caller).
    pub unsafe fn new(addr: *mut u8, len: usize) -> Self {
        RawMemory {
            addr: addr as usize,
            len,
        }
    }

    fn at(&self, offset: usize) -> *mut u8 {
        (self.addr + offset) as *mut u8
    }
}

impl RegionMemory for RawMemory {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, offset: usize, dst: &mut [u8]) {
        if offset
            .checked_add(dst.len())
            .is_none_or(|end| end > self.len)
        {
            return;
        }
        // SAFETY: the range is inside the registered buffer (checked above and by MrTable),
        // which `new`'s caller keeps mapped; `dst` is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.at(offset), dst.as_mut_ptr(), dst.len()) }
    }

    fn write(&self, offset: usize, src: &[u8]) {
        if offset
            .checked_add(src.len())
            .is_none_or(|end| end > self.len)
        {
            return;
        }
        // SAFETY: as in `read`, with the buffer writable (registration contract).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.at(offset), src.len()) }
    }

    fn compare_swap(&self, offset: usize, compare: u64, swap: u64) -> u64 {
        match self.word(offset) {
            Some(w) => {
                match w.compare_exchange(compare, swap, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(v) | Err(v) => v,
                }
            }
            None => 0,
        }
    }

    fn fetch_add(&self, offset: usize, add: u64) -> u64 {
        self.word(offset)
            .map_or(0, |w| w.fetch_add(add, Ordering::SeqCst))
    }

    fn raw_parts(&self) -> Option<uroce_proto::RawParts> {
        Some(uroce_proto::RawParts {
            addr: self.addr,
            len: self.len,
        })
    }
}

impl RawMemory {
    /// The 8-byte word at `offset` as an atomic, if aligned and inside the buffer.
    fn word(&self, offset: usize) -> Option<&AtomicU64> {
        let p = self.at(offset);
        if offset.checked_add(8).is_none_or(|end| end > self.len) || (p as usize) % 8 != 0 {
            return None;
        }
        // SAFETY: aligned, inside the registered buffer, which outlives `self`; a C program
        // accessing the word concurrently is the verbs atomics contract (as with a NIC).
        Some(unsafe { AtomicU64::from_ptr(p.cast()) })
    }
}

//! Memory regions: the only way the engine touches application memory.
//!
//! The engine never holds raw pointers. A region's bytes live behind [`RegionMemory`], a narrow
//! interface (read, write, two 8-byte atomics) that the caller implements: [`VecMemory`] here for
//! tests and the simulator, memory-mapped buffers in the drivers. Every access is bounds- and
//! rights-checked against the region by [`MrTable`] before the memory is called.

use std::sync::{Arc, Mutex, PoisonError};

use crate::{Error, PdHandle};

/// Access rights of a memory region (IBTA §10.6.3.1; the same bits as `ibv_access_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access(u32);

impl Access {
    /// Local read only.
    pub const NONE: Access = Access(0);
    /// The local HCA may write (receive buffers, READ and atomic results).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Remote peers may RDMA WRITE.
    pub const REMOTE_WRITE: Access = Access(2);
    /// Remote peers may RDMA READ.
    pub const REMOTE_READ: Access = Access(4);
    /// Remote peers may perform atomics.
    pub const REMOTE_ATOMIC: Access = Access(8);
    /// uroce extension (no `ibv_access_flags` equivalent): a peer's SEND with Invalidate may
    /// invalidate this region. In verbs only fast-registered MRs and type-2 memory windows can
    /// be invalidated remotely, never an `ibv_reg_mr` region (rxe's `rxe_invalidate_mr` refuses
    /// them), and uroce has neither: without this bit any peer of any QP in the PD could revoke
    /// every region of that PD.
    pub const REMOTE_INVALIDATE: Access = Access(1 << 31);

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// From raw bits; unknown bits are kept and ignored.
    pub const fn from_bits(bits: u32) -> Self {
        Access(bits)
    }
    /// Whether all of `other` is granted.
    pub const fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// The bytes behind a memory region. Offsets passed in are always within `len()` and, for the
/// atomics, 8-byte aligned: [`MrTable`] checks before calling.
pub trait RegionMemory: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `dst.len()` bytes from `offset`.
    fn read(&self, offset: usize, dst: &mut [u8]);
    /// Copies `src` to `offset`.
    fn write(&self, offset: usize, src: &[u8]);
    /// Atomically: if the u64 at `offset` equals `compare`, store `swap`; return the old value.
    /// Atomics use the host's byte order, as verbs do.
    fn compare_swap(&self, offset: usize, compare: u64, swap: u64) -> u64;
    /// Atomically add `add` to the u64 at `offset`; return the old value.
    fn fetch_add(&self, offset: usize, add: u64) -> u64;
    /// Where the bytes lie in this process, for a driver that has the kernel copy straight
    /// between a socket and the region (no user-space copy on send or receive). `None` (the
    /// default) for memory that is not plain addressable bytes, such as [`VecMemory`] behind
    /// its mutex. The engine never dereferences it; a driver that does must keep the region
    /// (its `Arc`) alive until the kernel is done with the range.
    fn raw_parts(&self) -> Option<RawParts> {
        None
    }
}

/// A region's bytes as an address and a length in this process (see
/// [`RegionMemory::raw_parts`]). An address, not a pointer, so that it is `Send` and needs no
/// `unsafe` to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawParts {
    /// Address of byte 0.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
}

/// Heap memory behind a mutex: safe, simple, for tests and the simulator.
#[derive(Debug, Default)]
pub struct VecMemory(Mutex<Vec<u8>>);

impl VecMemory {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Arc<Self> {
        Arc::new(VecMemory(Mutex::new(vec![0; len])))
    }
    /// Memory holding `bytes`.
    pub fn from_vec(bytes: Vec<u8>) -> Arc<Self> {
        Arc::new(VecMemory(Mutex::new(bytes)))
    }
    /// A copy of the contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.lock().clone()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn word(v: &[u8], offset: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&v[offset..offset + 8]);
        u64::from_ne_bytes(w)
    }
}

impl RegionMemory for VecMemory {
    fn len(&self) -> usize {
        self.lock().len()
    }
    fn read(&self, offset: usize, dst: &mut [u8]) {
        dst.copy_from_slice(&self.lock()[offset..offset + dst.len()]);
    }
    fn write(&self, offset: usize, src: &[u8]) {
        self.lock()[offset..offset + src.len()].copy_from_slice(src);
    }
    fn compare_swap(&self, offset: usize, compare: u64, swap: u64) -> u64 {
        let mut v = self.lock();
        let old = Self::word(&v, offset);
        if old == compare {
            v[offset..offset + 8].copy_from_slice(&swap.to_ne_bytes());
        }
        old
    }
    fn fetch_add(&self, offset: usize, add: u64) -> u64 {
        let mut v = self.lock();
        let old = Self::word(&v, offset);
        v[offset..offset + 8].copy_from_slice(&old.wrapping_add(add).to_ne_bytes());
        old
    }
}

/// The keys of a registered region; uroce, like rxe, uses the same value for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MrKeys {
    /// Local key, named in scatter/gather entries.
    pub lkey: u32,
    /// Remote key, named by peers in RETH/AtomicETH.
    pub rkey: u32,
}

/// A registered memory region.
#[derive(Clone)]
pub struct MemoryRegion {
    /// Owning protection domain.
    pub pd: PdHandle,
    /// The address peers and SGEs use for the first byte (the verbs "iova").
    pub iova: u64,
    /// Length in bytes.
    pub len: u64,
    /// Rights.
    pub access: Access,
    /// The bytes.
    pub memory: Arc<dyn RegionMemory>,
    /// False once invalidated (SEND with Invalidate): every key check then fails.
    pub valid: bool,
}

impl core::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("pd", &self.pd)
            .field("iova", &self.iova)
            .field("len", &self.len)
            .field("access", &self.access)
            .field("valid", &self.valid)
            .finish()
    }
}

/// Why a key check failed; the responder maps these to NAK codes, the requester to statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// No region has this key, or it was invalidated.
    UnknownKey,
    /// The region belongs to another protection domain.
    WrongPd,
    /// The region does not grant the needed right.
    Access,
    /// The range is not inside the region.
    Bounds,
    /// An atomic target is not 8-byte aligned.
    Misaligned,
}

/// A checked byte range within a region, ready to be read or written.
#[derive(Clone)]
pub struct Span {
    memory: Arc<dyn RegionMemory>,
    offset: usize,
    len: usize,
}

impl core::fmt::Debug for Span {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Span({}+{})", self.offset, self.len)
    }
}

impl Span {
    /// A span over all of `memory` (zero-length or inline data: no region, no key check).
    pub(crate) fn whole(memory: Arc<dyn RegionMemory>) -> Span {
        let len = memory.len();
        Span {
            memory,
            offset: 0,
            len,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The region the span lies in (for placement plans, `crate::place`).
    pub(crate) fn memory(&self) -> &Arc<dyn RegionMemory> {
        &self.memory
    }
    /// Offset of the span's first byte within its region.
    pub(crate) fn offset(&self) -> usize {
        self.offset
    }
    /// The same range, borrowed: where its reads and writes are defined.
    pub fn span_ref(&self) -> SpanRef<'_> {
        SpanRef {
            memory: &*self.memory,
            offset: self.offset,
            len: self.len,
        }
    }
    /// Reads `dst.len()` bytes starting `at` bytes into the span (`at + dst.len() <= len()`).
    pub fn read(&self, at: usize, dst: &mut [u8]) {
        self.span_ref().read(at, dst);
    }
    /// Writes `src` starting `at` bytes into the span (`at + src.len() <= len()`).
    pub fn write(&self, at: usize, src: &[u8]) {
        self.span_ref().write(at, src);
    }
    /// Atomic compare-and-swap on the span's first 8 bytes.
    pub fn compare_swap(&self, compare: u64, swap: u64) -> u64 {
        self.memory.compare_swap(self.offset, compare, swap)
    }
    /// Atomic fetch-and-add on the span's first 8 bytes.
    pub fn fetch_add(&self, add: u64) -> u64 {
        self.memory.fetch_add(self.offset, add)
    }
}

/// The memory behind an empty [`SpanRef`].
static EMPTY: VecMemory = VecMemory(Mutex::new(Vec::new()));

/// A checked byte range borrowed from the [`MrTable`] ([`MrTable::check_ref`]).
#[derive(Clone, Copy)]
pub struct SpanRef<'a> {
    memory: &'a dyn RegionMemory,
    offset: usize,
    len: usize,
}

impl core::fmt::Debug for SpanRef<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SpanRef({}+{})", self.offset, self.len)
    }
}

impl SpanRef<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Reads `dst.len()` bytes starting `at` bytes into the span (`at + dst.len() <= len()`).
    pub fn read(&self, at: usize, dst: &mut [u8]) {
        debug_assert!(at + dst.len() <= self.len);
        self.memory.read(self.offset + at, dst);
    }
    /// Writes `src` starting `at` bytes into the span (`at + src.len() <= len()`).
    pub fn write(&self, at: usize, src: &[u8]) {
        debug_assert!(at + src.len() <= self.len);
        self.memory.write(self.offset + at, src);
    }
}

/// The checked spans of one work request's scatter/gather list. Nearly every WR names one SGE
/// (perftest, the bench, most applications), so one span is held inline: resolving it costs
/// no allocation per message.
#[derive(Debug, Clone)]
pub(crate) enum Spans {
    /// One span (one SGE, or inline data).
    One(Span),
    /// Any other number.
    Many(Vec<Span>),
}

impl Spans {
    /// The spans in order.
    pub fn as_slice(&self) -> &[Span] {
        match self {
            Spans::One(s) => std::slice::from_ref(s),
            Spans::Many(v) => v,
        }
    }
}

/// All regions of a device, by key.
#[derive(Debug, Default)]
pub struct MrTable {
    regions: crate::idmap::IdMap<MemoryRegion>,
    next_index: u32,
    generation: u8,
}

impl MrTable {
    /// Registers a region. Like verbs, remote write or atomic rights require local write.
    pub fn register(
        &mut self,
        pd: PdHandle,
        iova: u64,
        memory: Arc<dyn RegionMemory>,
        access: Access,
        limit: usize,
    ) -> Result<MrKeys, Error> {
        if (access.contains(Access::REMOTE_WRITE) || access.contains(Access::REMOTE_ATOMIC))
            && !access.contains(Access::LOCAL_WRITE)
        {
            return Err(Error::InvalidArgument(
                "remote write/atomic needs local write",
            ));
        }
        let len = memory.len() as u64;
        if iova.checked_add(len).is_none() {
            return Err(Error::InvalidArgument("iova + length overflows"));
        }
        if self.regions.len() >= limit {
            return Err(Error::Limit {
                resource: crate::Resource::MemoryRegions,
                max: limit as u64,
            });
        }
        // Key = 24-bit index << 8 | 8-bit generation, as rxe: a stale key from a deregistered
        // region does not alias a new one at the same index until the generation wraps.
        self.generation = self.generation.wrapping_add(1);
        let mut key;
        loop {
            self.next_index = (self.next_index + 1) & 0xFF_FFFF;
            key = (self.next_index << 8) | u32::from(self.generation);
            if self.next_index != 0 && !self.regions.contains_key(&key) {
                break;
            }
        }
        self.regions.insert(
            key,
            MemoryRegion {
                pd,
                iova,
                len,
                access,
                memory,
                valid: true,
            },
        );
        Ok(MrKeys {
            lkey: key,
            rkey: key,
        })
    }

    /// Removes a region.
    pub fn deregister(&mut self, key: u32) -> Result<(), Error> {
        self.regions
            .remove(&key)
            .map(|_| ())
            .ok_or(Error::NotFound("memory region"))
    }

    /// The region with `key`, if any.
    pub fn get(&self, key: u32) -> Option<&MemoryRegion> {
        self.regions.get(&key)
    }

    /// Number of registered regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether no region is registered.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Invalidates the region with `rkey` if it belongs to `pd` and was registered with
    /// [`Access::REMOTE_INVALIDATE`] (SEND with Invalidate).
    pub fn invalidate(&mut self, pd: PdHandle, rkey: u32) -> Result<(), KeyError> {
        match self.regions.get_mut(&rkey) {
            Some(mr) if mr.pd != pd => Err(KeyError::WrongPd),
            Some(mr) if mr.valid && !mr.access.contains(Access::REMOTE_INVALIDATE) => {
                Err(KeyError::Access)
            }
            Some(mr) if mr.valid => {
                mr.valid = false;
                Ok(())
            }
            _ => Err(KeyError::UnknownKey),
        }
    }

    /// Checks that `[addr, addr + len)` lies in the region named by `key`, which belongs to `pd`
    /// and grants `need`, and returns it as a [`Span`]. A zero-length access is always allowed
    /// (IBTA §9.4.1: a zero-length RDMA does not check the key), returning an empty span.
    pub fn check(
        &self,
        pd: PdHandle,
        key: u32,
        addr: u64,
        len: usize,
        need: Access,
    ) -> Result<Span, KeyError> {
        if len == 0 {
            return Ok(Span::whole(Arc::new(VecMemory::default())));
        }
        let (mr, offset) = self.find(pd, key, addr, len, need)?;
        Ok(Span {
            memory: mr.memory.clone(),
            offset,
            len,
        })
    }

    /// Like [`Self::check`], borrowing the region instead of holding it: for an access done
    /// at once (a one-packet WRITE placed or gathered in the same call), it saves the
    /// reference count's two atomic operations per message.
    pub fn check_ref(
        &self,
        pd: PdHandle,
        key: u32,
        addr: u64,
        len: usize,
        need: Access,
    ) -> Result<SpanRef<'_>, KeyError> {
        if len == 0 {
            return Ok(SpanRef {
                memory: &EMPTY,
                offset: 0,
                len: 0,
            });
        }
        let (mr, offset) = self.find(pd, key, addr, len, need)?;
        Ok(SpanRef {
            memory: &*mr.memory,
            offset,
            len,
        })
    }

    /// The checks of [`Self::check`] for a non-empty range: the region and the offset in it.
    fn find(
        &self,
        pd: PdHandle,
        key: u32,
        addr: u64,
        len: usize,
        need: Access,
    ) -> Result<(&MemoryRegion, usize), KeyError> {
        let mr = self
            .regions
            .get(&key)
            .filter(|m| m.valid)
            .ok_or(KeyError::UnknownKey)?;
        if mr.pd != pd {
            return Err(KeyError::WrongPd);
        }
        if !mr.access.contains(need) {
            return Err(KeyError::Access);
        }
        let start = addr.checked_sub(mr.iova).ok_or(KeyError::Bounds)?;
        let end = start.checked_add(len as u64).ok_or(KeyError::Bounds)?;
        if end > mr.len {
            return Err(KeyError::Bounds);
        }
        Ok((mr, start as usize))
    }

    /// Like [`Self::check`] for an 8-byte atomic target, which must also be 8-byte aligned.
    pub fn check_atomic(&self, pd: PdHandle, key: u32, addr: u64) -> Result<Span, KeyError> {
        if addr % 8 != 0 {
            return Err(KeyError::Misaligned);
        }
        self.check(pd, key, addr, 8, Access::REMOTE_ATOMIC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_a_slice_in_order() {
        let mem: Arc<dyn RegionMemory> = VecMemory::zeroed(16);
        let span = |offset, len| Span {
            memory: mem.clone(),
            offset,
            len,
        };
        let one = Spans::One(span(3, 5));
        assert_eq!(format!("{:?}", one.as_slice()), "[Span(3+5)]");
        let many = Spans::Many(vec![span(0, 1), span(8, 2), span(4, 4)]);
        assert_eq!(
            format!("{:?}", many.as_slice()),
            "[Span(0+1), Span(8+2), Span(4+4)]"
        );
    }

    #[test]
    fn checks_bounds_rights_pd_and_alignment() {
        let mut t = MrTable::default();
        let pd = PdHandle(1);
        let mem = VecMemory::zeroed(64);
        let k = t
            .register(
                pd,
                0x1000,
                mem.clone(),
                Access::LOCAL_WRITE | Access::REMOTE_WRITE,
                10,
            )
            .unwrap();
        assert!(t
            .check(pd, k.rkey, 0x1000, 64, Access::REMOTE_WRITE)
            .is_ok());
        assert_eq!(
            t.check(pd, k.rkey, 0x1001, 64, Access::REMOTE_WRITE).err(),
            Some(KeyError::Bounds)
        );
        assert_eq!(
            t.check(pd, k.rkey, 0xFFF, 1, Access::REMOTE_WRITE).err(),
            Some(KeyError::Bounds)
        );
        assert_eq!(
            t.check(pd, k.rkey, 0x1000, 1, Access::REMOTE_READ).err(),
            Some(KeyError::Access)
        );
        assert_eq!(
            t.check(PdHandle(2), k.rkey, 0x1000, 1, Access::NONE).err(),
            Some(KeyError::WrongPd)
        );
        assert_eq!(
            t.check(pd, k.rkey ^ 1, 0x1000, 1, Access::NONE).err(),
            Some(KeyError::UnknownKey)
        );
        assert_eq!(
            t.check_atomic(pd, k.rkey, 0x1004).err(),
            Some(KeyError::Misaligned)
        );
        assert!(t
            .register(pd, 0, mem.clone(), Access::REMOTE_WRITE, 10)
            .is_err());
        // The borrowed check agrees with the owning one and reaches the same bytes.
        let r = t
            .check_ref(pd, k.rkey, 0x1008, 8, Access::REMOTE_WRITE)
            .unwrap();
        r.write(0, &[9; 8]);
        assert_eq!(&mem.to_vec()[8..16], &[9; 8]);
        let mut back = [0; 8];
        r.read(0, &mut back);
        assert_eq!(back, [9; 8]);
        assert_eq!(
            t.check_ref(pd, k.rkey, 0x1001, 64, Access::REMOTE_WRITE)
                .err(),
            Some(KeyError::Bounds)
        );
        assert_eq!(
            t.check_ref(pd, k.rkey, 0x1000, 1, Access::REMOTE_READ)
                .err(),
            Some(KeyError::Access)
        );
        assert_eq!(
            t.check_ref(PdHandle(2), k.rkey, 0x1000, 1, Access::NONE)
                .err(),
            Some(KeyError::WrongPd)
        );
        assert!(t
            .check_ref(pd, 0xDEAD, 0, 0, Access::REMOTE_WRITE)
            .is_ok_and(|r| r.is_empty()));
        t.deregister(k.lkey).unwrap();
        assert_eq!(
            t.check(pd, k.rkey, 0x1000, 1, Access::NONE).err(),
            Some(KeyError::UnknownKey)
        );
    }
}

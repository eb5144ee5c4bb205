//! Zero-copy receive: plans that let a driver have the kernel place a received datagram's
//! payload straight into memory regions, and the checks that keep that sound.
//!
//! A driver peeks at a datagram's first packet (`MSG_PEEK`), asks
//! [`crate::Device::plan_placement`] where the payload of each full-size GRO segment goes, and
//! receives with an iovec per segment: header and ICRC into its own buffer, payload into the
//! [`Piece`]s. [`crate::Device::handle_placed`] then checks every segment as
//! [`crate::Device::handle_datagram`] does, with the ICRC computed over the payload where it
//! lies, and does not copy a payload that already lies where the packet's checks send it.
//!
//! The invariant that makes this sound: a plan is made only for the next expected PSN of a
//! QP whose inbound message (RC WRITE or READ response) is in progress with its
//! destination already checked, and segment `i` of the datagram is planned to the bytes
//! PSN `expected + i` would fill: the part of the message's destination that no accepted
//! packet has written yet. Verbs leave that part undefined until the message completes, so a
//! segment that turns out to be something else (another message, a duplicate, a bad ICRC)
//! only scribbles where the right packet, or go-back-N's resend of it, writes later. Nothing
//! outside the message is ever planned: a WRITE is bounded by its RETH length and a READ
//! response by the READ's length. SENDs are not placed: a SEND's length is unknown until its
//! LAST, so only the receive buffer would bound it, and a full-size LAST followed in the same
//! GRO datagram by the next SEND's FIRST (same size, same QP: one GSO batch) would leave that
//! FIRST's bytes in the receive buffer past the first message's `byte_len`. rxe, NICs and
//! MPI-style users leave or expect those bytes untouched.

use std::sync::Arc;

use uroce_wire::{
    headers::BTH_LEN, IcrcCheck, IcrcContext, IcrcMismatch, Ipv4IdMode, Ipv4IdSolver, Opcode,
    Operation, Psn, ICRC_LEN,
};

use crate::device::Ctx;
use crate::mr::{RegionMemory, Span};
use crate::qp::requester::{runs, scatter};
use crate::qp::{Qp, QpState, QpType};

/// `len` payload bytes of planned segment `segment`, at `offset` bytes into `memory`.
#[derive(Clone)]
pub struct Piece {
    /// The GRO segment (0-based) whose payload this is part of.
    pub segment: usize,
    /// The region; the driver keeps this `Arc` alive until the kernel has written.
    pub memory: Arc<dyn RegionMemory>,
    /// Offset of the first byte within `memory` (within `memory.raw_parts()`).
    pub offset: usize,
    /// Bytes.
    pub len: usize,
}

impl core::fmt::Debug for Piece {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Piece({}: {}+{})", self.segment, self.offset, self.len)
    }
}

/// Where the payloads of a datagram's first `segments` GRO segments go (see the module
/// docs). Reused between datagrams so that planning allocates nothing in steady state.
#[derive(Debug, Default)]
pub struct Placement {
    pub(crate) qpn: u32,
    pub(crate) first_psn: u32,
    /// Bytes before the payload in each planned segment (the BTH).
    pub header_len: usize,
    /// Payload bytes of each planned segment (the path MTU).
    pub payload_len: usize,
    /// Size of every segment but the last (header, payload, ICRC).
    pub segment_size: usize,
    /// Planned segments: 0 means no plan (receive the datagram as a whole).
    pub segments: usize,
    /// The payload pieces, in segment order (a segment may straddle SGEs).
    pub pieces: Vec<Piece>,
}

impl Placement {
    /// Forgets the plan (and the regions it holds).
    pub fn clear(&mut self) {
        self.segments = 0;
        self.pieces.clear();
    }

    /// The QP the plan is for.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// The pieces of segment `i`.
    pub fn segment_pieces(&self, i: usize) -> &[Piece] {
        let start = self.pieces.partition_point(|p| p.segment < i);
        let end = self.pieces.partition_point(|p| p.segment <= i);
        &self.pieces[start..end]
    }

    /// The scatter list a driver receives a datagram under this plan with, into a buffer of
    /// `cap` bytes whose offsets mirror the datagram's: segment 0's header, then per planned
    /// segment its payload pieces and one buffer range from its ICRC through the next
    /// segment's header, the last range through `cap`. Every planned segment is a full one
    /// (`cap / segment_size` of them at most), so each range lies within `cap`. Empty
    /// without a plan.
    pub fn scatter_list(&self, cap: usize) -> impl Iterator<Item = Scatter<'_>> {
        let (h, pl, seg, n) = (
            self.header_len,
            self.payload_len,
            self.segment_size,
            self.segments,
        );
        let header = (n > 0).then_some(Scatter::Buffer { offset: 0, len: h });
        header.into_iter().chain((0..n).flat_map(move |i| {
            let from = i * seg + h + pl;
            let to = if i + 1 < n { from + seg - pl } else { cap };
            self.segment_pieces(i)
                .iter()
                .map(Scatter::Piece)
                .chain(core::iter::once(Scatter::Buffer {
                    offset: from,
                    len: to.saturating_sub(from),
                }))
        }))
    }
}

/// One entry of a [`Placement::scatter_list`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Scatter<'a> {
    /// `len` bytes of the driver's receive buffer, at `offset`.
    Buffer {
        /// Offset in the buffer (the same as in the datagram).
        offset: usize,
        /// Bytes.
        len: usize,
    },
    /// A planned payload piece, in its region.
    Piece(&'a Piece),
}

/// Opcodes whose payload may be placed: the middle and last packets of an RC WRITE and the
/// middle READ responses, whose header is the BTH alone, so the payload starts at the same
/// offset in every segment. FIRST and ONLY carry a RETH; READ response FIRST/LAST carry an
/// AETH and differ in size from MIDDLE, so GRO never merges them with it. SENDs are never
/// placed (module docs).
pub(crate) fn placeable(op: Opcode) -> Option<Operation> {
    match op {
        Opcode::RcWriteMiddle | Opcode::RcWriteLast => Some(Operation::RdmaWrite),
        Opcode::RcReadResponseMiddle => Some(Operation::RdmaReadResponse),
        _ => None,
    }
}

/// Whether every span lies in memory a driver can address.
fn addressable(spans: &[Span]) -> bool {
    spans.iter().all(|s| s.memory().raw_parts().is_some())
}

/// Appends the pieces of `len` bytes at `offset` into the buffer `spans` describe (as
/// `scatter` would write them) for segment `segment`.
fn push_pieces(out: &mut Vec<Piece>, segment: usize, spans: &[Span], offset: usize, len: usize) {
    out.extend(runs(spans, offset, len).map(|(s, at, _, n)| Piece {
        segment,
        memory: s.memory().clone(),
        offset: s.offset() + at,
        len: n,
    }));
}

/// The checked destination of `qp`'s inbound message of kind `op`, if one is in progress: its
/// spans, the bytes accepted so far, its end, and the PSN its next packet must carry. A WRITE
/// is the range its FIRST's RETH named (bounded by the RETH length); a READ response stream is
/// the oldest unfinished WQE if it is a READ under way (bounded by the READ's length; the
/// completer's checks).
fn destination(qp: &Qp, op: Operation) -> Option<(&[Span], usize, usize, Psn)> {
    match op {
        Operation::RdmaWrite => {
            let w = qp.resp.write.as_ref()?;
            (qp.resp.in_msg == Some(op)).then(|| {
                (
                    std::slice::from_ref(&w.span),
                    w.offset as usize,
                    w.dma_len as usize,
                    qp.resp.epsn,
                )
            })
        }
        Operation::RdmaReadResponse => {
            let w = qp.sq.iter().find(|w| !w.done)?;
            if !matches!(w.wr.op, crate::SendOp::RdmaRead { .. }) || !w.started {
                return None;
            }
            let spans = w.data.as_ref()?;
            let next = w.first_psn.add(w.read_done / qp.attrs.mtu.bytes());
            Some((spans.as_slice(), w.read_done as usize, w.len as usize, next))
        }
        _ => None,
    }
}

/// Fills `plan` for `qp`, whose packet with PSN `psn` and opcode `op` heads a datagram of
/// `len` bytes in `segment_size`-byte segments. Returns whether any segment was planned.
pub(crate) fn plan(
    qp: &Qp,
    op: Opcode,
    psn: Psn,
    segment_size: usize,
    len: usize,
    plan: &mut Placement,
) -> bool {
    plan.clear();
    let Some(operation) = placeable(op) else {
        return false;
    };
    if qp.qp_type != QpType::Rc || !matches!(qp.state, QpState::Rtr | QpState::Rts | QpState::Sqd) {
        return false;
    }
    let mtu = qp.attrs.mtu.bytes() as usize;
    if segment_size != BTH_LEN + mtu + ICRC_LEN {
        return false;
    }
    let full = len / segment_size;
    // Only the packet the message expects next: its bytes are the first not yet accepted.
    let Some((spans, done, end, next)) = destination(qp, operation) else {
        return false;
    };
    if psn != next || !addressable(spans) {
        return false;
    }
    for i in 0..full {
        let at = done + i * mtu;
        if at + mtu > end {
            break;
        }
        push_pieces(&mut plan.pieces, i, spans, at, mtu);
        plan.segments = i + 1;
    }
    plan.qpn = qp.qpn;
    plan.first_psn = psn.get();
    plan.header_len = BTH_LEN;
    plan.payload_len = mtu;
    plan.segment_size = segment_size;
    plan.segments > 0
}

/// Plans as [`plan`] for the packet `qp` expects next, as if `max_len` bytes of full-size
/// packets followed.
pub(crate) fn plan_next(qp: &Qp, max_len: usize, out: &mut Placement) -> bool {
    let (op, opcode) = if qp.resp.in_msg == Some(Operation::RdmaWrite) {
        (Operation::RdmaWrite, Opcode::RcWriteMiddle)
    } else {
        (Operation::RdmaReadResponse, Opcode::RcReadResponseMiddle)
    };
    let Some((.., psn)) = destination(qp, op) else {
        return false;
    };
    let seg = BTH_LEN + qp.attrs.mtu.bytes() as usize + ICRC_LEN;
    plan(qp, opcode, psn, seg, max_len / seg * seg, out)
}

/// Copies the planned pieces of segment `i` back into `data` (the whole datagram), as far as
/// the datagram reaches.
pub(crate) fn unplace(plan: &Placement, i: usize, data: &mut [u8]) {
    let start = i * plan.segment_size;
    if let Some(chunk) = data.get_mut(start..) {
        let end = chunk.len().min(plan.segment_size);
        unplace_chunk(plan, i, &mut chunk[..end]);
    }
}

/// Copies the planned pieces of segment `i` back into `chunk` (that segment's bytes), as far
/// as the chunk reaches.
pub(crate) fn unplace_chunk(plan: &Placement, i: usize, chunk: &mut [u8]) {
    let mut at = plan.header_len;
    for p in plan.segment_pieces(i) {
        let n = p.len.min(chunk.len().saturating_sub(at));
        if n > 0 {
            p.memory.read(p.offset, &mut chunk[at..at + n]);
        }
        at += p.len;
    }
}

/// Whether `pieces` are exactly where `scatter(spans, offset, ..)` would put `len` bytes.
pub(crate) fn matches(pieces: &[Piece], spans: &[Span], offset: usize, len: usize) -> bool {
    let mut done = 0;
    let mut it = pieces.iter();
    for (s, at, _, n) in runs(spans, offset, len) {
        let Some(p) = it.next() else { return false };
        if p.len != n
            || p.offset != s.offset() + at
            || !std::ptr::addr_eq(Arc::as_ptr(&p.memory), Arc::as_ptr(s.memory()))
        {
            return false;
        }
        done += n;
    }
    done == len && it.next().is_none()
}

/// Calls `f(at, bytes)` with the first `len` bytes the pieces hold, in order, a chunk at a
/// time (read from the regions into `buf`: a region's bytes are reached only through
/// [`RegionMemory::read`], which tolerates a concurrent writer).
pub(crate) fn read_pieces(
    pieces: &[Piece],
    len: usize,
    buf: &mut [u8],
    mut f: impl FnMut(usize, &[u8]),
) {
    if buf.is_empty() {
        return;
    }
    let mut at = 0;
    for p in pieces {
        let mut off = 0;
        while off < p.len && at < len {
            let n = (p.len - off).min(buf.len()).min(len - at);
            p.memory.read(p.offset + off, &mut buf[..n]);
            f(at, &buf[..n]);
            off += n;
            at += n;
        }
    }
}

/// Verifies the ICRC of a packet whose bytes after its header, up to the ICRC, lie in
/// `pieces` (the bytes of `packet` there are not looked at).
pub(crate) fn verify_placed(
    icrc: &IcrcContext,
    packet: &[u8],
    pieces: &[Piece],
    mode: Ipv4IdMode,
    solver: &mut Ipv4IdSolver,
    buf: &mut [u8],
) -> Result<IcrcCheck, IcrcMismatch> {
    let placed: usize = pieces.iter().map(|p| p.len).sum();
    let bad = IcrcMismatch {
        carried: 0,
        computed: 0,
    };
    let Some(h) = packet.len().checked_sub(ICRC_LEN + placed) else {
        return Err(bad);
    };
    let Some(mut hasher) = icrc.hasher(packet.len(), packet) else {
        return Err(bad);
    };
    if h < BTH_LEN {
        return Err(bad);
    }
    hasher.update(&packet[BTH_LEN..h]);
    read_pieces(pieces, placed, buf, |_, b| hasher.update(b));
    let t = &packet[packet.len() - ICRC_LEN..];
    let carried = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    icrc.check_computed(packet.len(), hasher.finalize(), carried, mode, solver)
}

/// Bytes an inbound message must still have to come for [`inbound`] to report it: placing
/// costs the driver a syscall or two per datagram that the multishot receive does not pay
/// (a peek, and a `recvmsg` for each datagram it cannot place, such as a WRITE's FIRST),
/// which only a large remainder pays back. Measured (pinned A/B, 2026-11-26): with every
/// multi-packet message placed, 64 KiB WRITEs lost 12 % of their rate (server +15 % CPU per
/// byte) and 8 KiB 5 %, while 1 MiB gained.
pub const PLACE_MIN_REMAINING: usize = 256 << 10;

/// The smallest path MTU whose messages [`inbound`] reports. A placing `recvmsg` scatters
/// each GRO segment into three iovec ranges (header, payload, ICRC), and the ICRC is summed
/// piece by piece, so the cost per byte grows as packets shrink. Measured (2026-11-28,
/// alternated, WRITE 1 MiB, thread progress, veth): at path MTU 1024 placing moved 11.7–12.7
/// Gbit/s at 0.41–0.43 server CPU-s/GB against 16.9–17.6 at 0.30–0.31 copying; at 2048
/// 21.5–25.9 against 25.8–27.3; at 4096 the two were level (20–27 Gbit/s either way, the
/// placing server spending less user time).
pub const PLACE_MIN_MTU: u32 = 4096;

/// Whether `qp` has an inbound message in progress, at least [`PLACE_MIN_REMAINING`] bytes
/// of which are still to come, whose next packets could be placed, on a path MTU of at least
/// [`PLACE_MIN_MTU`].
pub(crate) fn inbound(qp: &Qp) -> bool {
    qp.qp_type == QpType::Rc
        && qp.attrs.mtu.bytes() >= PLACE_MIN_MTU
        && [Operation::RdmaWrite, Operation::RdmaReadResponse]
            .into_iter()
            .filter_map(|op| destination(qp, op))
            .any(|(spans, done, end, _)| {
                end.saturating_sub(done) >= PLACE_MIN_REMAINING && addressable(spans)
            })
}

impl Ctx<'_> {
    /// Writes a received payload `data` at `offset` into the buffer `spans` describe, unless
    /// the kernel already placed it exactly there ([`Ctx::placed`]). A placed payload bound
    /// elsewhere is copied from where it lies (the packet's own bytes are not the payload).
    pub(crate) fn put(&mut self, spans: &[Span], offset: usize, data: &[u8]) {
        match self.placed.take() {
            None => scatter(spans, offset, data),
            Some(p) if matches(p, spans, offset, data.len()) => self.counters.rx_placed += 1,
            Some(p) => {
                self.counters.rx_place_misses += 1;
                let mut v = vec![0; data.len()];
                let mut buf = [0u8; 256];
                read_pieces(p, data.len(), &mut buf, |at, b| {
                    v[at..at + b.len()].copy_from_slice(b)
                });
                scatter(spans, offset, &v);
            }
        }
    }
}

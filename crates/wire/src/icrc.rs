//! The invariant CRC (IBTA Annex A17.3.3; rxe's `rxe_icrc.c`).
//!
//! The ICRC is zlib's CRC-32 over a pseudo packet: 8 bytes of 0xFF standing in for the LRH, the IP
//! header with the fields routers may change set to all ones (IPv4 TOS, TTL, header checksum;
//! IPv6 traffic class, flow label, hop limit), the UDP header with its checksum set to all ones,
//! the BTH with its FECN/BECN/reserved byte set to 0xFF, then the rest of the headers, payload and
//! pad. It is written after the pad as little-endian bytes.
//!
//! A driver receiving through a UDP socket knows addresses, ports and lengths but not the IPv4
//! Identification, which the ICRC also covers. [`Ipv4IdMode::Solve`] handles that: CRC-32 is
//! linear, so the 16-bit ID that would make the ICRC valid can be solved for. That accepts a
//! corrupted packet with probability 2^-16 instead of 2^-32, so it is an explicit mode whose
//! outcome ([`IcrcCheck::SolvedIpv4Id`]) callers count.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crc32fast::Hasher;

use crate::headers::BTH_LEN;
use crate::ICRC_LEN;

/// The IP header fields the ICRC covers and a driver can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpFields {
    /// IPv4 without options (RoCEv2 never uses options).
    V4 {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
        /// Identification field.
        identification: u16,
        /// Flags and fragment offset (0x4000 = DF, which rxe and an `IP_PMTUDISC_DO` socket set).
        flags_fragment: u16,
    },
    /// IPv6 without extension headers.
    V6 {
        /// Source address.
        src: Ipv6Addr,
        /// Destination address.
        dst: Ipv6Addr,
    },
}

/// Don't-fragment flag, fragment offset 0.
pub const IPV4_DF: u16 = 0x4000;

impl IpFields {
    /// IPv4 with DF set and the given Identification.
    pub fn v4(src: Ipv4Addr, dst: Ipv4Addr, identification: u16) -> Self {
        IpFields::V4 {
            src,
            dst,
            identification,
            flags_fragment: IPV4_DF,
        }
    }
    /// IPv6.
    pub fn v6(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        IpFields::V6 { src, dst }
    }
}

/// What the ICRC is computed over besides the transport packet: IP fields and UDP ports.
/// Lengths are derived from the transport packet (IP total length and UDP length include the
/// ICRC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcrcContext {
    /// IP header fields.
    pub ip: IpFields,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port (4791).
    pub dst_port: u16,
}

/// How to treat the IPv4 Identification when verifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ipv4IdMode {
    /// The ID in the context is the one on the wire: verify exactly.
    Exact,
    /// The ID is unknown: try the context's ID, else solve for one that makes the ICRC valid.
    Solve,
    /// Like `Solve`, but accept a solved ID only if it differs from the context's ID by less
    /// than this bound (XOR distance). A sender using UDP GSO from an unconnected socket gives
    /// segment `i` the ID `i`, so uroce peers need IDs below the GSO segment count only; the
    /// false-accept chance drops from 2^-16 to bound × 2^-32.
    SolveBelow(u16),
}

/// How a valid ICRC was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IcrcCheck {
    /// The ICRC matched with the context as given (full 32-bit strength).
    Valid,
    /// It matched only with this solved IPv4 Identification (2^-16 false-accept chance).
    SolvedIpv4Id(u16),
}

/// The ICRC did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ICRC mismatch: carried {carried:#010x}, computed {computed:#010x}")]
pub struct IcrcMismatch {
    /// The ICRC in the packet.
    pub carried: u32,
    /// The ICRC computed with the context as given.
    pub computed: u32,
}

/// Longest pseudo header: 8 bytes for the LRH, IPv6 (40), UDP (8), BTH (12).
const PSEUDO_MAX: usize = 68;

/// Transport bytes after the BTH up to which [`IcrcContext::compute`] copies them behind the
/// pseudo header for a single CRC pass; longer packets are hashed in place (the copy would
/// cost more than the second pass saves).
const SMALL_REST: usize = 192;

/// Fills the masked pseudo header for `ctx` and a transport packet of `udp_payload_len` bytes
/// whose first 12 bytes are `bth` into the start of `out`; returns the used length.
fn pseudo_header(ctx: &IcrcContext, udp_payload_len: usize, bth: &[u8], out: &mut [u8]) -> usize {
    let udp_len = (8 + udp_payload_len) as u16;
    out[..8].fill(0xFF);
    let mut n = 8;
    match ctx.ip {
        IpFields::V4 {
            src,
            dst,
            identification,
            flags_fragment,
        } => {
            let total = udp_len.wrapping_add(20);
            out[n] = 0x45;
            out[n + 1] = 0xFF; // TOS
            out[n + 2..n + 4].copy_from_slice(&total.to_be_bytes());
            out[n + 4..n + 6].copy_from_slice(&identification.to_be_bytes());
            out[n + 6..n + 8].copy_from_slice(&flags_fragment.to_be_bytes());
            out[n + 8] = 0xFF; // TTL
            out[n + 9] = 17; // UDP
            out[n + 10..n + 12].fill(0xFF); // header checksum
            out[n + 12..n + 16].copy_from_slice(&src.octets());
            out[n + 16..n + 20].copy_from_slice(&dst.octets());
            n += 20;
        }
        IpFields::V6 { src, dst } => {
            // Version 6, then traffic class and flow label all ones.
            out[n..n + 4].copy_from_slice(&[0x6F, 0xFF, 0xFF, 0xFF]);
            out[n + 4..n + 6].copy_from_slice(&udp_len.to_be_bytes());
            out[n + 6] = 17;
            out[n + 7] = 0xFF; // hop limit
            out[n + 8..n + 24].copy_from_slice(&src.octets());
            out[n + 24..n + 40].copy_from_slice(&dst.octets());
            n += 40;
        }
    }
    out[n..n + 2].copy_from_slice(&ctx.src_port.to_be_bytes());
    out[n + 2..n + 4].copy_from_slice(&ctx.dst_port.to_be_bytes());
    out[n + 4..n + 6].copy_from_slice(&udp_len.to_be_bytes());
    out[n + 6..n + 8].fill(0xFF);
    n += 8;
    out[n..n + BTH_LEN].copy_from_slice(bth);
    out[n + 4] = 0xFF; // FECN, BECN, resv6
    n + BTH_LEN
}

impl IcrcContext {
    /// A context for IPv4 with DF set.
    pub fn v4(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        identification: u16,
        src_port: u16,
        dst_port: u16,
    ) -> Self {
        IcrcContext {
            ip: IpFields::v4(src, dst, identification),
            src_port,
            dst_port,
        }
    }

    /// A context for IPv6.
    pub fn v6(src: Ipv6Addr, dst: Ipv6Addr, src_port: u16, dst_port: u16) -> Self {
        IcrcContext {
            ip: IpFields::v6(src, dst),
            src_port,
            dst_port,
        }
    }

    /// The context of a packet from `src` to `dst` (addresses and UDP ports; IPv4 with DF and
    /// `ipv4_id`). `None` when the two are of different families: no packet travels so.
    #[inline]
    pub fn between(src: SocketAddr, dst: SocketAddr, ipv4_id: u16) -> Option<Self> {
        let ip = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpFields::v4(s, d, ipv4_id),
            (IpAddr::V6(s), IpAddr::V6(d)) => IpFields::v6(s, d),
            _ => return None,
        };
        Some(IcrcContext {
            ip,
            src_port: src.port(),
            dst_port: dst.port(),
        })
    }

    /// The same context with another IPv4 Identification (no change for IPv6).
    pub fn with_ipv4_id(mut self, id: u16) -> Self {
        if let IpFields::V4 { identification, .. } = &mut self.ip {
            *identification = id;
        }
        self
    }

    /// Computes the ICRC of `packet`, the whole UDP payload including its 4 trailing ICRC bytes
    /// (whose content is ignored). Returns `None` if `packet` is shorter than a BTH plus ICRC.
    pub fn compute(&self, packet: &[u8]) -> Option<u32> {
        if packet.len() < BTH_LEN + ICRC_LEN {
            return None;
        }
        let rest = &packet[BTH_LEN..packet.len() - ICRC_LEN];
        if rest.len() <= SMALL_REST {
            // A small packet (a 64-byte WRITE, an ACK): one contiguous pass. Each crc32fast
            // call ends in a Barrett reduction and folds its input one 16-byte block at a time
            // below 128 bytes; one call over pseudo header and rest pays one reduction and
            // reaches the 4-way fold at 128 bytes (a 64-byte WRITE's pseudo packet is 128).
            let mut buf = [0u8; PSEUDO_MAX + SMALL_REST];
            let n = pseudo_header(self, packet.len(), &packet[..BTH_LEN], &mut buf);
            buf[n..n + rest.len()].copy_from_slice(rest);
            let mut h = Hasher::new();
            h.update(&buf[..n + rest.len()]);
            return Some(h.finalize());
        }
        let mut pseudo = [0u8; PSEUDO_MAX];
        let n = pseudo_header(self, packet.len(), &packet[..BTH_LEN], &mut pseudo);
        let mut h = Hasher::new();
        h.update(&pseudo[..n]);
        h.update(rest);
        Some(h.finalize())
    }

    /// Computes the ICRC and writes it into the last 4 bytes of `packet`. A buffer shorter than
    /// a BTH plus ICRC is left untouched.
    pub fn seal(&self, packet: &mut [u8]) {
        if let Some(crc) = self.compute(packet) {
            let n = packet.len();
            packet[n - ICRC_LEN..].copy_from_slice(&crc.to_le_bytes());
        }
    }

    /// Like [`Self::compute`], with the pseudo header's share taken from `cache`: a small
    /// packet then costs one CRC pass over its own bytes, in place (no pseudo header built,
    /// nothing copied). The result is the same.
    pub fn compute_with(&self, packet: &[u8], cache: &mut IcrcCache) -> Option<u32> {
        if packet.len() < BTH_LEN + ICRC_LEN {
            return None;
        }
        let n = packet.len() - ICRC_LEN;
        // Byte 4 of the BTH (FECN, BECN, resv6) counts as 0xFF; the cached constant assumes
        // the 0 that uroce and rxe send without congestion marks.
        if n > CACHED_MAX || packet[4] != 0 {
            return self.compute(packet);
        }
        let k = cache.constant(self, packet.len());
        let mut h = cache.proto.clone();
        h.update(&packet[..n]);
        Some(h.finalize() ^ k)
    }

    /// Like [`Self::seal`], using `cache` as [`Self::compute_with`] does.
    pub fn seal_with(&self, packet: &mut [u8], cache: &mut IcrcCache) {
        if let Some(crc) = self.compute_with(packet, cache) {
            let n = packet.len();
            packet[n - ICRC_LEN..].copy_from_slice(&crc.to_le_bytes());
        }
    }

    /// Verifies the ICRC carried in the last 4 bytes of `packet`.
    pub fn verify(&self, packet: &[u8], mode: Ipv4IdMode) -> Result<IcrcCheck, IcrcMismatch> {
        self.verify_with(packet, mode, &mut Ipv4IdSolver::default())
    }

    /// Like [`Self::verify`], reusing `solver`'s per-length tables: a receiver that solves IDs
    /// for every packet should keep one solver and pass it here.
    pub fn verify_with(
        &self,
        packet: &[u8],
        mode: Ipv4IdMode,
        solver: &mut Ipv4IdSolver,
    ) -> Result<IcrcCheck, IcrcMismatch> {
        let computed = self
            .compute_with(packet, &mut solver.cache)
            .ok_or(IcrcMismatch {
                carried: 0,
                computed: 0,
            })?;
        let t = &packet[packet.len() - ICRC_LEN..];
        let carried = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        self.check_computed(packet.len(), computed, carried, mode, solver)
    }

    /// Starts an ICRC over a packet of `packet_len` bytes (ICRC included) whose bytes do not
    /// lie in one slice (a payload the kernel placed straight into a memory region): the
    /// pseudo header and the masked `bth` are hashed; feed the bytes after the BTH up to the
    /// ICRC with [`IcrcHasher::update`]. `None` if `bth` is shorter than a BTH or the packet
    /// shorter than a BTH plus ICRC.
    pub fn hasher(&self, packet_len: usize, bth: &[u8]) -> Option<IcrcHasher> {
        if packet_len < BTH_LEN + ICRC_LEN || bth.len() < BTH_LEN {
            return None;
        }
        let mut pseudo = [0u8; PSEUDO_MAX];
        let n = pseudo_header(self, packet_len, &bth[..BTH_LEN], &mut pseudo);
        let mut h = Hasher::new();
        h.update(&pseudo[..n]);
        Some(IcrcHasher(h))
    }

    /// Checks a `computed` ICRC (from [`Self::hasher`]) against the `carried` one of a packet
    /// of `packet_len` bytes, solving for the IPv4 Identification as [`Self::verify_with`].
    pub fn check_computed(
        &self,
        packet_len: usize,
        computed: u32,
        carried: u32,
        mode: Ipv4IdMode,
        solver: &mut Ipv4IdSolver,
    ) -> Result<IcrcCheck, IcrcMismatch> {
        if packet_len < BTH_LEN + ICRC_LEN {
            return Err(IcrcMismatch { carried, computed });
        }
        if computed == carried {
            solver.hint = 1;
            return Ok(IcrcCheck::Valid);
        }
        let mismatch = IcrcMismatch { carried, computed };
        let bound = match mode {
            Ipv4IdMode::Solve => u32::from(u16::MAX) + 1,
            Ipv4IdMode::SolveBelow(n) => u32::from(n),
            _ => 0,
        };
        match self.ip {
            IpFields::V4 { identification, .. } if bound > 0 => {
                let trailing = after_ipv4_id(packet_len);
                let diff = computed ^ carried;
                let hint = solver.hint;
                let table = solver.table(trailing);
                // Segment i + 1 of a GSO batch follows segment i: try that ID first (a few
                // XORs) before the elimination. Then the previous packet's own ID: a socket
                // connected to its peer numbers each send from a counter, so the first
                // segment of a send repeats the last segment of a two-segment send before it.
                let prev = hint.wrapping_sub(1);
                let delta = if u32::from(hint) < bound && table.effect(hint) == diff {
                    Some(hint)
                } else if u32::from(prev) < bound && table.effect(prev) == diff {
                    Some(prev)
                } else {
                    solve(&table.basis, diff).filter(|delta| u32::from(*delta) < bound)
                };
                solver.hint = delta.map_or(0, |d| d.wrapping_add(1));
                delta
                    .map(|delta| IcrcCheck::SolvedIpv4Id(identification ^ delta))
                    .ok_or(mismatch)
            }
            _ => Err(mismatch),
        }
    }
}

/// An ICRC being computed piece by piece ([`IcrcContext::hasher`]).
#[derive(Debug, Clone)]
pub struct IcrcHasher(Hasher);

impl IcrcHasher {
    /// Hashes the next bytes of the packet (after the BTH, before the ICRC), in order.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// The ICRC of everything hashed.
    pub fn finalize(self) -> u32 {
        self.0.finalize()
    }
}

/// Bytes of the pseudo packet after the IPv4 Identification, for a UDP payload (transport
/// packet) of `packet_len` bytes: the IP header's last 14, the UDP header, the transport
/// packet without its ICRC. What [`Ipv4IdSolver`]'s table for an ID at that length needs.
const fn after_ipv4_id(packet_len: usize) -> usize {
    20 - 6 + 8 + packet_len - ICRC_LEN
}

/// Row-reduced effect of the 16 IPv4 ID bits on the CRC, for one message length: 32 rows of
/// (CRC bits | ID-bit tag << 32), indexed by pivot bit.
type Basis = [u64; 32];

/// What one message length needs: the CRC change of each ID bit, and those rows reduced.
#[derive(Debug, Clone)]
struct Table {
    /// `low[v]`: the change for an ID difference `v` below 256 (a GSO batch's segment
    /// IDs): one load per packet instead of a loop over its set bits.
    low: [u32; 256],
    /// `high[v]`: the change for an ID difference `v << 8`. A socket connected to its peer
    /// numbers datagrams from a random start, so its IDs use all 16 bits.
    high: [u32; 256],
    basis: Basis,
}

impl Table {
    /// How an ID difference of `delta` changes the CRC (CRC-32 is linear in it): two loads.
    fn effect(&self, delta: u16) -> u32 {
        let [hi, lo] = delta.to_be_bytes();
        self.low[usize::from(lo)] ^ self.high[usize::from(hi)]
    }
}

/// Caches a [`Table`] per packet length, so solving costs one elimination per packet, or a
/// few XORs when the ID is the one after the previous packet's (GSO segments in order). Holds
/// at most 16 lengths.
#[derive(Debug, Clone, Default)]
pub struct Ipv4IdSolver {
    entries: Vec<(usize, Box<Table>)>,
    next: usize,
    /// The ID difference to try first: one more than the last packet's.
    hint: u16,
    /// Pseudo-header constants of the contexts and lengths verified lately.
    cache: IcrcCache,
}

impl Ipv4IdSolver {
    /// Rewrites the ICRC of `packet` (a RoCEv2 UDP payload over IPv4, ICRC included), sealed
    /// for IPv4 Identification `id.0` and UDP source port `src_port.0`, for `id.1` and
    /// `src_port.1`: what a socket connected to the peer sends with (its own ID counter and
    /// port). The ICRC covers both fields (RoCEv2 annex A17: its pseudo header masks neither)
    /// and CRC-32 is linear in them, so each change is one XOR of its effect at this packet
    /// length, with no pass over the packet. A buffer shorter than a BTH plus ICRC is left
    /// untouched.
    pub fn reseal_v4(&mut self, packet: &mut [u8], id: (u16, u16), src_port: (u16, u16)) {
        let n = packet.len();
        if n < BTH_LEN + ICRC_LEN {
            return;
        }
        let mut d = 0;
        if id.0 != id.1 {
            d ^= self.table(after_ipv4_id(n)).effect(id.0 ^ id.1);
        }
        if src_port.0 != src_port.1 {
            // After the source port: the UDP header's last 6 bytes, the transport packet.
            d ^= self
                .table(8 - 2 + n - ICRC_LEN)
                .effect(src_port.0 ^ src_port.1);
        }
        let t = &mut packet[n - ICRC_LEN..];
        let icrc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]) ^ d;
        t.copy_from_slice(&icrc.to_le_bytes());
    }

    fn table(&mut self, trailing: usize) -> &Table {
        if let Some(i) = self.entries.iter().position(|(t, _)| *t == trailing) {
            return &self.entries[i].1;
        }
        let b = Box::new(table(trailing));
        let i = if self.entries.len() < 16 {
            self.entries.push((trailing, b));
            self.entries.len() - 1
        } else {
            let i = self.next % 16;
            self.next += 1;
            self.entries[i] = (trailing, b);
            i
        };
        &self.entries[i].1
    }
}

/// Transport bytes (headers and payload, ICRC excluded) up to which [`IcrcCache`] serves a
/// packet: a small WRITE, SEND or READ response, any ACK.
const CACHED_MAX: usize = 256;

/// Entries of an [`IcrcCache`]: room for a GSO batch's 64 IPv4 IDs at a few lengths.
const CACHE_SLOTS: usize = 256;

/// What a sender or receiver of small packets keeps between packets so that their ICRC costs
/// one CRC pass over the packet as it lies in the buffer ([`IcrcContext::compute_with`]).
///
/// CRC-32 is affine: for a transport packet `M` of `n` bytes whose BTH byte 4 is 0,
/// `ICRC = crc(M) ^ K`, where `K` depends only on the context (addresses, ports, IPv4 ID) and
/// `n`: the pseudo header's CRC moved past `n` bytes, plus the effect of counting byte 4 as
/// 0xFF. `K` is computed once per context and length (four CRCs of at most 256 bytes) and kept
/// in a small direct-mapped table; a sender's GSO batch uses one entry per segment ID.
#[derive(Debug, Clone)]
pub struct IcrcCache {
    slots: Vec<Option<Slot>>,
    /// A hasher made once: `Hasher::new` detects the CPU's features on every call.
    proto: Hasher,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    ctx: IcrcContext,
    len: usize,
    k: u32,
}

impl Default for IcrcCache {
    fn default() -> Self {
        IcrcCache {
            slots: Vec::new(),
            proto: Hasher::new(),
        }
    }
}

impl IcrcCache {
    /// `K` for `ctx` and a UDP payload of `len` bytes (at most `CACHED_MAX` + 4).
    fn constant(&mut self, ctx: &IcrcContext, len: usize) -> u32 {
        if self.slots.is_empty() {
            self.slots = vec![None; CACHE_SLOTS];
        }
        let id = match ctx.ip {
            IpFields::V4 { identification, .. } => usize::from(identification),
            IpFields::V6 { .. } => 0,
        };
        // Consecutive IDs of one length, and one ID at consecutive lengths, take distinct
        // slots.
        let i = (id ^ len.wrapping_mul(67)) % CACHE_SLOTS;
        match self.slots[i] {
            Some(s) if s.len == len && s.ctx == *ctx => s.k,
            _ => {
                let k = constant(ctx, len);
                self.slots[i] = Some(Slot { ctx: *ctx, len, k });
                k
            }
        }
    }
}

/// `K` of [`IcrcCache`]: `ICRC(M) ^ crc(M)` for any transport packet `M` of `len - 4` bytes
/// with BTH byte 4 zero.
fn constant(ctx: &IcrcContext, len: usize) -> u32 {
    let n = len - ICRC_LEN;
    let mut pseudo = [0u8; PSEUDO_MAX];
    let prefix = pseudo_header(ctx, len, &[0; BTH_LEN], &mut pseudo) - BTH_LEN;
    let p = crc32fast::hash(&pseudo[..prefix]);
    let zeros = [0u8; CACHED_MAX];
    let mut masked = [0u8; CACHED_MAX];
    masked[4] = 0xFF;
    let base = crc32fast::hash(&zeros[..n]);
    let mut h = Hasher::new_with_initial(p);
    h.update(&zeros[..n]);
    // Continuing from `p` instead of the initial state changes the CRC by `p` moved past `n`
    // bytes; byte 4 counted as 0xFF changes it by that byte's effect.
    let moved = h.finalize() ^ base;
    let mask = crc32fast::hash(&masked[..n]) ^ base;
    moved ^ mask
}

/// CRC-32's reflected generator polynomial.
const POLY: u32 = 0xEDB8_8320;

/// `a * b mod P` over GF(2), both in CRC-32's reflected bit order (bit 31 is x^0), as zlib's
/// `multmodp`, with masks instead of branches.
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = 32;
    while bit > 0 {
        bit -= 1;
        product ^= b & 0u32.wrapping_sub(a >> bit & 1);
        b = (b >> 1) ^ (POLY & 0u32.wrapping_sub(b & 1));
    }
    product
}

/// `x^(8 * 2^k) mod P` for k = 0..64: feeding 2^k zero bytes through a CRC register.
const ZERO_BYTES_POW2: [u32; 64] = {
    let mut t = [0u32; 64];
    t[0] = 1 << 23; // x^8: one byte
    let mut k = 1;
    while k < 64 {
        t[k] = mul_mod_p(t[k - 1], t[k - 1]);
        k += 1;
    }
    t
};

/// `x^(8 * k) mod P` for k = 0..64, and `x^(8 * 64 * k) mod P` for k = 0..128: together one
/// multiplication gives the operator for any length below 8 KiB (every RoCE packet).
const ZERO_BYTES_LO: [u32; 64] = powers(1 << 23);
const ZERO_BYTES_HI: [u32; 128] = powers(ZERO_BYTES_POW2[6]);

/// `[1, x, x^2, ...]` for the GF(2) element `x`, modulo P.
const fn powers<const N: usize>(x: u32) -> [u32; N] {
    let mut t = [0u32; N];
    t[0] = 1 << 31; // x^0
    let mut k = 1;
    while k < N {
        t[k] = mul_mod_p(t[k - 1], x);
        k += 1;
    }
    t
}

/// `x^(8 * len) mod P`: the operator that feeds a CRC register through `len` zero bytes (zlib's
/// `x2nmodp`): one table multiplication below 8 KiB, else one per set bit of `len`.
fn zero_bytes_op(len: usize) -> u32 {
    if let (Some(&hi), lo) = (ZERO_BYTES_HI.get(len / 64), ZERO_BYTES_LO[len % 64]) {
        return mul_mod_p(hi, lo);
    }
    let mut op = 1 << 31; // x^0
    let mut n = len as u64;
    let mut k = 0;
    while n != 0 {
        if n & 1 == 1 {
            op = mul_mod_p(ZERO_BYTES_POW2[k], op);
        }
        n >>= 1;
        k += 1;
    }
    op
}

/// Multiplies by x modulo P: one step of the CRC register over a zero bit.
const fn times_x(c: u32) -> u32 {
    (c >> 1) ^ (POLY & 0u32.wrapping_sub(c & 1))
}

/// The CRC-32 difference made by XORing the single byte `v` into the last byte of a message
/// (CRC-32 is affine, so a difference depends only on the XOR pattern, not the message).
const fn byte_difference(v: u8) -> u32 {
    let mut c = v as u32;
    let mut i = 0;
    while i < 8 {
        c = times_x(c);
        i += 1;
    }
    c
}

/// The table for a message with `trailing` bytes after the ID: the effect of flipping each ID
/// bit on the final CRC (CRC-32 is affine in the message), and those rows reduced over GF(2).
///
/// The ID is big-endian, and a bit one place earlier in the message is one more multiplication
/// by x: bit 7 (the top of the second ID byte) is the lowest power, then 6..0, then 15..8. So
/// one shift operator and 15 single steps give all 16 rows, cheap enough to build a basis for
/// every packet length a receiver meets (a fuzzer meets a new one almost every input).
fn table(trailing: usize) -> Table {
    let mut diffs = [0u32; 16];
    let mut d = mul_mod_p(zero_bytes_op(trailing), byte_difference(0x80));
    for j in [7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8] {
        diffs[j] = d;
        d = times_x(d);
    }
    let mut basis = [0u64; 32];
    for (j, d) in diffs.into_iter().enumerate() {
        let mut row = u64::from(d) | (1u64 << (32 + j));
        // Reduce by the pivots of the row's set CRC bits, highest first; a row whose CRC bits
        // all cancel is dependent and dropped.
        while row as u32 != 0 {
            let bit = 31 - (row as u32).leading_zeros() as usize;
            if basis[bit] == 0 {
                basis[bit] = row;
                break;
            }
            row ^= basis[bit];
        }
    }
    let (mut low, mut high) = ([0u32; 256], [0u32; 256]);
    for v in 1..256usize {
        // `v` with its lowest set bit cleared is already filled.
        let bit = v.trailing_zeros() as usize;
        low[v] = low[v & (v - 1)] ^ diffs[bit];
        high[v] = high[v & (v - 1)] ^ diffs[8 + bit];
    }
    Table { low, high, basis }
}

/// Finds the 16-bit XOR difference to the ID that changes the CRC by `diff`, if any.
fn solve(basis: &Basis, diff: u32) -> Option<u16> {
    let mut t = u64::from(diff);
    // Each pivot row's highest CRC bit is its pivot, so clearing set bits highest first ends.
    while t as u32 != 0 {
        let bit = 31 - (t as u32).leading_zeros() as usize;
        if basis[bit] == 0 {
            return None;
        }
        t ^= basis[bit];
    }
    Some((t >> 32) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        let mut p: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        p[0] = 0x04;
        p
    }

    // Offset of the IPv4 Identification within the pseudo packet: 8 bytes of 0xFF, then
    // version/IHL, TOS, total length.
    const V4_ID_OFFSET: usize = 8 + 4;

    #[test]
    fn piecewise_hasher_matches_compute_and_solves_ids() {
        let ctx = IcrcContext::v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            0,
            4791,
            4791,
        );
        let mut solver = Ipv4IdSolver::default();
        for len in [16, 100, 4112] {
            let mut p = sample(len);
            ctx.with_ipv4_id(5).seal(&mut p);
            let mut h = ctx.hasher(len, &p[..BTH_LEN]).expect("hasher");
            let body = &p[BTH_LEN..len - ICRC_LEN];
            let (a, b) = body.split_at(body.len() / 3);
            h.update(a);
            h.update(b);
            let computed = h.finalize();
            let carried = u32::from_le_bytes(p[len - 4..].try_into().expect("4"));
            let check = ctx.check_computed(
                len,
                computed,
                carried,
                Ipv4IdMode::SolveBelow(64),
                &mut solver,
            );
            assert_eq!(check, Ok(IcrcCheck::SolvedIpv4Id(5)), "len {len}");
            assert_eq!(check, ctx.verify(&p, Ipv4IdMode::SolveBelow(64)));
            let bad =
                ctx.check_computed(len, computed ^ 1, carried, Ipv4IdMode::Exact, &mut solver);
            assert!(bad.is_err());
        }
        assert!(ctx.hasher(15, &[0; 12]).is_none());
    }

    /// The CRC-32 register after feeding `v` through `len` zero bytes: the linear map that
    /// carries a difference in early bytes to the end of the message (zlib's `crc32_combine`
    /// with crc2 = 0), the way `basis` uses `zero_bytes_op`.
    fn shift(v: u32, len: usize) -> u32 {
        mul_mod_p(zero_bytes_op(len), v)
    }

    /// The reference the fast shift must match: crc32fast's own combine.
    fn shift_by_combine(v: u32, len: usize) -> u32 {
        let mut a = Hasher::new_with_initial(v);
        a.combine(&Hasher::new_with_initial_len(0, len as u64));
        a.finalize()
    }

    /// The reference basis: hash the pseudo-packet prefix with each ID bit set, shift by
    /// combining (the slow way this module used to take).
    fn basis_by_hashing(trailing: usize) -> Basis {
        let base = {
            let mut h = Hasher::new();
            h.update(&[0u8; V4_ID_OFFSET + 2]);
            h.finalize()
        };
        let mut basis = [0u64; 32];
        for j in 0..16 {
            let mut msg = [0u8; V4_ID_OFFSET + 2];
            msg[V4_ID_OFFSET..].copy_from_slice(&(1u16 << j).to_be_bytes());
            let mut h = Hasher::new();
            h.update(&msg);
            let d = shift_by_combine(h.finalize() ^ base, trailing);
            let mut row = u64::from(d) | (1u64 << (32 + j));
            for bit in (0..32).rev() {
                if row >> bit & 1 == 0 {
                    continue;
                }
                if basis[bit] == 0 {
                    basis[bit] = row;
                    break;
                }
                row ^= basis[bit];
            }
        }
        basis
    }

    #[test]
    fn shift_matches_crc32fast_combine() {
        let lens = (0..70).chain([255, 256, 257, 1000, 4096, 4200, 9000, 65_535, 1 << 20]);
        for len in lens {
            for v in [0, 1, 0x8000_0000, 0xDEAD_BEEF, 0xFFFF_FFFF] {
                assert_eq!(
                    shift(v, len),
                    shift_by_combine(v, len),
                    "v {v:#x} len {len}"
                );
            }
        }
    }

    #[test]
    fn basis_matches_the_hashed_reference() {
        for trailing in [0, 1, 2, 21, 22, 38, 100, 1057, 4118, 4222, 9000] {
            assert_eq!(
                table(trailing).basis,
                basis_by_hashing(trailing),
                "trailing {trailing}"
            );
        }
    }

    #[test]
    fn solver_hint_follows_gso_order_and_recovers_from_jumps() {
        // Segments of GSO batches carry IDs 0, 1, 2, ...; the solver guesses the next one, and
        // a guess that fails (a new batch, a lost segment, another length) falls back to the
        // elimination with the same answer.
        let rx = IcrcContext::v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 0, 50000, 4791);
        let mut solver = Ipv4IdSolver::default();
        let ids = [0u16, 1, 2, 3, 7, 8, 0, 1, 63, 5, 6];
        for (k, &id) in ids.iter().enumerate() {
            let len = if k == 9 { 200 } else { 64 };
            let mut p = sample(len);
            rx.with_ipv4_id(id).seal(&mut p);
            let want = if id == 0 {
                IcrcCheck::Valid
            } else {
                IcrcCheck::SolvedIpv4Id(id)
            };
            assert_eq!(
                rx.verify_with(&p, Ipv4IdMode::SolveBelow(64), &mut solver),
                Ok(want),
                "packet {k}, ID {id}"
            );
        }
        // Beyond the bound: refused, and the next packet still verifies.
        let mut p = sample(64);
        rx.with_ipv4_id(64).seal(&mut p);
        assert!(rx
            .verify_with(&p, Ipv4IdMode::SolveBelow(64), &mut solver)
            .is_err());
        rx.with_ipv4_id(9).seal(&mut p);
        assert_eq!(
            rx.verify_with(&p, Ipv4IdMode::SolveBelow(64), &mut solver),
            Ok(IcrcCheck::SolvedIpv4Id(9))
        );
    }

    /// The pseudo packet built byte by byte from the annex's rules, hashed in one piece.
    fn reference(ctx: &IcrcContext, p: &[u8]) -> u32 {
        let udp_len = (8 + p.len()) as u16;
        let mut v = vec![0xFF; 8];
        match ctx.ip {
            IpFields::V4 {
                src,
                dst,
                identification,
                flags_fragment,
            } => {
                v.extend([0x45, 0xFF]);
                v.extend((udp_len + 20).to_be_bytes());
                v.extend(identification.to_be_bytes());
                v.extend(flags_fragment.to_be_bytes());
                v.extend([0xFF, 17, 0xFF, 0xFF]);
                v.extend(src.octets());
                v.extend(dst.octets());
            }
            IpFields::V6 { src, dst } => {
                v.extend([0x6F, 0xFF, 0xFF, 0xFF]);
                v.extend(udp_len.to_be_bytes());
                v.extend([17, 0xFF]);
                v.extend(src.octets());
                v.extend(dst.octets());
            }
        }
        v.extend(ctx.src_port.to_be_bytes());
        v.extend(ctx.dst_port.to_be_bytes());
        v.extend(udp_len.to_be_bytes());
        v.extend([0xFF, 0xFF]);
        let start = v.len();
        v.extend(&p[..p.len() - ICRC_LEN]);
        v[start + 4] = 0xFF;
        crc32fast::hash(&v)
    }

    #[test]
    fn small_and_large_packets_hash_the_same_pseudo_packet() {
        // Both sides of the one-pass threshold, for both families.
        let v4 = IcrcContext::v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 7, 49152, 4791);
        let v6 = IcrcContext::v6(
            "fd66::1".parse().unwrap(),
            "fd66::2".parse().unwrap(),
            49153,
            4791,
        );
        for ctx in [v4, v6] {
            for rest in (0..SMALL_REST + 40).chain([1000, 4096 + 28]) {
                let p = sample(BTH_LEN + rest + ICRC_LEN);
                assert_eq!(ctx.compute(&p), Some(reference(&ctx, &p)), "rest {rest}");
            }
        }
    }

    #[test]
    fn cached_icrc_equals_the_computed_one() {
        let v4 = IcrcContext::v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 0, 49152, 4791);
        let v6 = IcrcContext::v6(
            "fd66::1".parse().unwrap(),
            "fd66::2".parse().unwrap(),
            49153,
            4791,
        );
        let mut cache = IcrcCache::default();
        // Twice over, so the second round is served from the slots the first one filled
        // (and evicted: 64 IDs x many lengths overflow the table).
        for round in 0..2 {
            for ctx in [v4, v6, v4.with_ipv4_id(0x8001)] {
                for id in [0u16, 1, 2, 63] {
                    let ctx = ctx.with_ipv4_id(ctx_id(&ctx) ^ id);
                    for len in (BTH_LEN + ICRC_LEN..CACHED_MAX + 40).step_by(7) {
                        let mut p = sample(len);
                        for byte4 in [0u8, 0x80, 0xFF] {
                            p[4] = byte4;
                            p[len / 2] ^= round as u8;
                            assert_eq!(
                                ctx.compute_with(&p, &mut cache),
                                ctx.compute(&p),
                                "round {round} id {id} len {len} byte4 {byte4:#x} {ctx:?}"
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(v4.compute_with(&[0; 15], &mut cache), None);
        // Sealed with the cache, verified without it.
        let mut p = sample(92 + ICRC_LEN);
        p[4] = 0;
        v4.with_ipv4_id(5).seal_with(&mut p, &mut cache);
        assert_eq!(
            v4.verify(&p, Ipv4IdMode::SolveBelow(64)),
            Ok(IcrcCheck::SolvedIpv4Id(5))
        );
    }

    fn ctx_id(ctx: &IcrcContext) -> u16 {
        match ctx.ip {
            IpFields::V4 { identification, .. } => identification,
            IpFields::V6 { .. } => 0,
        }
    }

    #[test]
    fn seal_then_verify() {
        let ctx = IcrcContext::v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 0, 49152, 4791);
        let mut p = sample(64);
        ctx.seal(&mut p);
        assert_eq!(ctx.verify(&p, Ipv4IdMode::Exact), Ok(IcrcCheck::Valid));
        p[20] ^= 1;
        assert!(ctx.verify(&p, Ipv4IdMode::Exact).is_err());
    }

    #[test]
    fn effect_of_any_id_difference_is_the_xor_of_its_bits() {
        for trailing in [22, 300] {
            let t = table(trailing);
            for delta in 0..=u16::MAX {
                let want = (0..16)
                    .filter(|j| delta >> j & 1 == 1)
                    .fold(0, |d, j| d ^ t.effect(1 << j));
                assert_eq!(
                    t.effect(delta),
                    want,
                    "trailing {trailing} delta {delta:#x}"
                );
            }
        }
    }

    #[test]
    fn solves_every_id_bit_pattern() {
        for (len, id) in [(16, 1u16), (64, 0x1234), (4200, 0xFFFF), (1000, 0x8000)] {
            let sent = IcrcContext::v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), id, 50000, 4791);
            let mut p = sample(len);
            sent.seal(&mut p);
            let rx = sent.with_ipv4_id(0);
            assert!(rx.verify(&p, Ipv4IdMode::Exact).is_err());
            assert_eq!(
                rx.verify(&p, Ipv4IdMode::Solve),
                Ok(IcrcCheck::SolvedIpv4Id(id))
            );
        }
    }

    #[test]
    fn resealing_for_another_id_and_port_equals_sealing_for_them() {
        let mut solver = Ipv4IdSolver::default();
        for (len, id, port) in [
            (16, 1u16, 4792u16),
            (40, 0xBEEF, 50123),
            (60, 0x8000, 4791),
            (4154, 0xFFFF, 1),
        ] {
            let at = |id, port| {
                IcrcContext::v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), id, port, 4791)
            };
            let mut p = sample(len);
            at(0, 4791).seal(&mut p);
            let mut want = p.clone();
            at(id, port).seal(&mut want);
            solver.reseal_v4(&mut p, (0, id), (4791, port));
            assert_eq!(p, want, "{len} bytes, ID {id}, port {port}");
            assert_eq!(
                at(id, port).verify(&p, Ipv4IdMode::Exact),
                Ok(IcrcCheck::Valid)
            );
        }
        // Too short to carry an ICRC: untouched.
        let mut short = vec![1u8; 8];
        solver.reseal_v4(&mut short, (0, 1), (1, 2));
        assert_eq!(short, [1u8; 8]);
    }

    #[test]
    fn bounded_solving_rejects_far_ids() {
        let sent = IcrcContext::v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 5, 50000, 4791);
        let mut p = sample(300);
        sent.seal(&mut p);
        let rx = sent.with_ipv4_id(0);
        assert_eq!(
            rx.verify(&p, Ipv4IdMode::SolveBelow(64)),
            Ok(IcrcCheck::SolvedIpv4Id(5))
        );
        assert!(rx.verify(&p, Ipv4IdMode::SolveBelow(5)).is_err());
    }

    #[test]
    fn cached_solver_agrees_across_lengths() {
        let mut solver = Ipv4IdSolver::default();
        for round in 0..3u16 {
            for len in (16..400).step_by(19) {
                let id = round * 1000 + len as u16;
                let sent = IcrcContext::v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), id, 1, 4791);
                let mut p = sample(len);
                sent.seal(&mut p);
                let rx = sent.with_ipv4_id(0);
                let got = rx.verify_with(&p, Ipv4IdMode::Solve, &mut solver);
                assert_eq!(got, Ok(IcrcCheck::SolvedIpv4Id(id)), "len {len}");
            }
        }
        assert_eq!(solver.entries.len(), 16, "the cache is bounded");
    }

    #[test]
    fn ipv6_has_no_id_to_solve() {
        let ctx = IcrcContext::v6(
            "fd77::2".parse().unwrap(),
            "fd77::3".parse().unwrap(),
            1,
            4791,
        );
        let mut p = sample(100);
        ctx.seal(&mut p);
        p[50] ^= 0x10;
        assert!(ctx.verify(&p, Ipv4IdMode::Solve).is_err());
    }

    #[test]
    fn a_context_between_two_sockets_takes_their_addresses_and_ports() {
        let a4: SocketAddr = "10.0.0.1:49152".parse().unwrap();
        let b4: SocketAddr = "10.0.0.2:4791".parse().unwrap();
        let want = IcrcContext::v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            7,
            49152,
            4791,
        );
        assert_eq!(IcrcContext::between(a4, b4, 7), Some(want));
        let (a6, b6): (SocketAddr, SocketAddr) = (
            "[fd00::1]:4791".parse().unwrap(),
            "[fd00::2]:5000".parse().unwrap(),
        );
        let want6 = IcrcContext::v6(
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            4791,
            5000,
        );
        assert_eq!(IcrcContext::between(a6, b6, 7), Some(want6));
        assert_eq!(IcrcContext::between(a4, b6, 0), None, "mixed families");
    }

    #[test]
    fn short_packet_is_a_mismatch_not_a_panic() {
        let ctx = IcrcContext::v4([1, 1, 1, 1].into(), [2, 2, 2, 2].into(), 0, 1, 4791);
        assert!(ctx.verify(&[0u8; 15], Ipv4IdMode::Solve).is_err());
        assert_eq!(ctx.compute(&[0u8; 3]), None);
    }
}

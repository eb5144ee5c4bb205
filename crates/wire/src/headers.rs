//! Zero-copy views and validated representations of the BTH and the extension headers
//! (IBTA Vol 1 §9.2–§9.5). All fields are big-endian.
//!
//! A view (`Bth<T>`, `Reth<T>`, …) wraps any `AsRef<[u8]>`; `new_checked` verifies the length
//! once, after which accessors cannot go out of bounds. `new_unchecked` skips that check and its
//! accessors panic on a short buffer, so it is only for buffers the caller sized itself.

use crate::{Error, Result};

/// Length of the base transport header.
pub const BTH_LEN: usize = 12;

fn check_len(have: usize, needed: usize) -> Result<()> {
    if have < needed {
        Err(Error::Truncated { needed, have })
    } else {
        Ok(())
    }
}

#[inline]
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
#[inline]
fn get_u24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}
#[inline]
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
#[inline]
fn put_u24(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 3].copy_from_slice(&v.to_be_bytes()[1..]);
}

macro_rules! view {
    ($(#[$m:meta])* $name:ident, $len:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<T> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Length of this header on the wire.
            pub const LEN: usize = $len;

            /// Wraps a buffer without checking its length (accessors panic if it is short).
            pub const fn new_unchecked(buffer: T) -> Self {
                $name { buffer }
            }

            /// Wraps a buffer, checking that it holds the whole header.
            pub fn new_checked(buffer: T) -> Result<Self> {
                check_len(buffer.as_ref().len(), Self::LEN)?;
                Ok($name { buffer })
            }

            /// Returns the wrapped buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            fn b(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            fn bm(&mut self) -> &mut [u8] {
                self.buffer.as_mut()
            }
        }
    };
}

view!(
    /// Base transport header (IBTA §9.2, 12 bytes).
    Bth,
    BTH_LEN
);

impl<T: AsRef<[u8]>> Bth<T> {
    /// Raw opcode byte.
    pub fn opcode(&self) -> u8 {
        self.b()[0]
    }
    /// Solicited event.
    pub fn solicited(&self) -> bool {
        self.b()[1] & 0x80 != 0
    }
    /// Migration request.
    pub fn mig_req(&self) -> bool {
        self.b()[1] & 0x40 != 0
    }
    /// Pad count, 0–3 bytes between payload and ICRC.
    pub fn pad_count(&self) -> u8 {
        (self.b()[1] >> 4) & 0x3
    }
    /// Transport header version (0).
    pub fn tver(&self) -> u8 {
        self.b()[1] & 0x0F
    }
    /// Partition key.
    pub fn pkey(&self) -> u16 {
        get_u16(self.b(), 2)
    }
    /// Forward explicit congestion notification.
    pub fn fecn(&self) -> bool {
        self.b()[4] & 0x80 != 0
    }
    /// Backward explicit congestion notification.
    pub fn becn(&self) -> bool {
        self.b()[4] & 0x40 != 0
    }
    /// The six reserved bits after FECN/BECN.
    pub fn resv6(&self) -> u8 {
        self.b()[4] & 0x3F
    }
    /// Destination queue pair number (24 bits).
    pub fn dest_qp(&self) -> u32 {
        get_u24(self.b(), 5)
    }
    /// Acknowledge request.
    pub fn ack_req(&self) -> bool {
        self.b()[8] & 0x80 != 0
    }
    /// The seven reserved bits after AckReq.
    pub fn resv7(&self) -> u8 {
        self.b()[8] & 0x7F
    }
    /// Packet sequence number (24 bits).
    pub fn psn(&self) -> u32 {
        get_u24(self.b(), 9)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Bth<T> {
    /// Sets the raw opcode byte.
    pub fn set_opcode(&mut self, v: u8) {
        self.bm()[0] = v;
    }
    /// Sets byte 1 from its fields.
    pub fn set_flags(&mut self, solicited: bool, mig_req: bool, pad: u8, tver: u8) {
        self.bm()[1] = (u8::from(solicited) << 7)
            | (u8::from(mig_req) << 6)
            | ((pad & 3) << 4)
            | (tver & 0x0F);
    }
    /// Sets the pad count.
    pub fn set_pad_count(&mut self, pad: u8) {
        let b = self.bm();
        b[1] = (b[1] & !0x30) | ((pad & 3) << 4);
    }
    /// Sets the partition key.
    pub fn set_pkey(&mut self, v: u16) {
        self.bm()[2..4].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the FECN/BECN/reserved byte.
    pub fn set_congestion(&mut self, fecn: bool, becn: bool, resv6: u8) {
        self.bm()[4] = (u8::from(fecn) << 7) | (u8::from(becn) << 6) | (resv6 & 0x3F);
    }
    /// Sets the destination QP (low 24 bits of `v`).
    pub fn set_dest_qp(&mut self, v: u32) {
        put_u24(self.bm(), 5, v);
    }
    /// Sets AckReq and the reserved bits after it.
    pub fn set_ack_req(&mut self, ack_req: bool, resv7: u8) {
        self.bm()[8] = (u8::from(ack_req) << 7) | (resv7 & 0x7F);
    }
    /// Sets the PSN (low 24 bits of `v`).
    pub fn set_psn(&mut self, v: u32) {
        put_u24(self.bm(), 9, v);
    }
}

/// The BTH's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BthRepr {
    /// Opcode.
    pub opcode: crate::Opcode,
    /// Solicited event.
    pub solicited: bool,
    /// Migration request (rxe sends it clear: every golden rxe frame has M=0).
    pub mig_req: bool,
    /// Pad count; [`crate::PacketRepr::emit`] recomputes it from the payload length.
    pub pad_count: u8,
    /// Partition key.
    pub pkey: u16,
    /// FECN.
    pub fecn: bool,
    /// BECN.
    pub becn: bool,
    /// Reserved bits after FECN/BECN, kept so re-emission is byte-exact.
    pub resv6: u8,
    /// Destination QP (24 bits).
    pub dest_qp: u32,
    /// Acknowledge request.
    pub ack_req: bool,
    /// Reserved bits after AckReq, kept so re-emission is byte-exact.
    pub resv7: u8,
    /// PSN (24 bits).
    pub psn: u32,
}

impl BthRepr {
    /// A BTH with rxe's defaults (P_Key 0xFFFF, MigReq clear, reserved bits zero).
    pub fn new(opcode: crate::Opcode, dest_qp: u32, psn: u32) -> Self {
        BthRepr {
            opcode,
            solicited: false,
            mig_req: false,
            pad_count: 0,
            pkey: crate::DEFAULT_PKEY,
            fecn: false,
            becn: false,
            resv6: 0,
            dest_qp,
            ack_req: false,
            resv7: 0,
            psn,
        }
    }

    /// Validates and reads a BTH: the opcode must be known and TVer 0.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(bth: &Bth<T>) -> Result<Self> {
        let opcode = crate::Opcode::try_from(bth.opcode())?;
        if bth.tver() != 0 {
            return Err(Error::BadTver(bth.tver()));
        }
        Ok(BthRepr {
            opcode,
            solicited: bth.solicited(),
            mig_req: bth.mig_req(),
            pad_count: bth.pad_count(),
            pkey: bth.pkey(),
            fecn: bth.fecn(),
            becn: bth.becn(),
            resv6: bth.resv6(),
            dest_qp: bth.dest_qp(),
            ack_req: bth.ack_req(),
            resv7: bth.resv7(),
            psn: bth.psn(),
        })
    }

    /// Writes the BTH. Fails if a field is wider than its wire width.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, bth: &mut Bth<T>) -> Result<()> {
        if self.dest_qp > 0xFF_FFFF {
            return Err(Error::FieldRange("dest_qp"));
        }
        if self.psn > 0xFF_FFFF {
            return Err(Error::FieldRange("psn"));
        }
        if self.pad_count > 3 {
            return Err(Error::FieldRange("pad_count"));
        }
        if self.resv6 > 0x3F || self.resv7 > 0x7F {
            return Err(Error::FieldRange("reserved"));
        }
        // Three big-endian words, one store of 12 bytes (field by field it was a
        // read-modify-write per field, per packet sent).
        let flags = (u32::from(self.solicited) << 7)
            | (u32::from(self.mig_req) << 6)
            | (u32::from(self.pad_count) << 4);
        let congestion =
            (u32::from(self.fecn) << 7) | (u32::from(self.becn) << 6) | u32::from(self.resv6);
        let ack = (u32::from(self.ack_req) << 7) | u32::from(self.resv7);
        let words = [
            u32::from(self.opcode.as_u8()) << 24 | flags << 16 | u32::from(self.pkey),
            congestion << 24 | self.dest_qp,
            ack << 24 | self.psn,
        ];
        let mut b = [0u8; BTH_LEN];
        for (chunk, w) in b.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_be_bytes());
        }
        bth.bm()[..BTH_LEN].copy_from_slice(&b);
        Ok(())
    }
}

view!(
    /// RDMA extended transport header (IBTA §9.3.3, 16 bytes).
    Reth,
    16
);

impl<T: AsRef<[u8]>> Reth<T> {
    /// Remote virtual address.
    pub fn va(&self) -> u64 {
        get_u64(self.b(), 0)
    }
    /// Remote key.
    pub fn rkey(&self) -> u32 {
        get_u32(self.b(), 8)
    }
    /// Length of the whole RDMA operation in bytes.
    pub fn dma_len(&self) -> u32 {
        get_u32(self.b(), 12)
    }
}

/// RETH fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RethRepr {
    /// Remote virtual address.
    pub va: u64,
    /// Remote key.
    pub rkey: u32,
    /// DMA length.
    pub dma_len: u32,
}

impl RethRepr {
    /// Reads a RETH.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(h: &Reth<T>) -> Self {
        RethRepr {
            va: h.va(),
            rkey: h.rkey(),
            dma_len: h.dma_len(),
        }
    }
    /// Writes a RETH.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Reth<T>) {
        let b = h.bm();
        b[0..8].copy_from_slice(&self.va.to_be_bytes());
        b[8..12].copy_from_slice(&self.rkey.to_be_bytes());
        b[12..16].copy_from_slice(&self.dma_len.to_be_bytes());
    }
}

view!(
    /// ACK extended transport header (IBTA §9.3.5, 4 bytes).
    Aeth,
    4
);

impl<T: AsRef<[u8]>> Aeth<T> {
    /// Raw syndrome byte.
    pub fn syndrome(&self) -> u8 {
        self.b()[0]
    }
    /// Message sequence number (24 bits).
    pub fn msn(&self) -> u32 {
        get_u24(self.b(), 1)
    }
}

/// NAK codes (IBTA §9.7.5.2.4, Table 43).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NakCode {
    /// PSN sequence error (0): the responder expected another PSN.
    PsnSequenceError,
    /// Invalid request (1).
    InvalidRequest,
    /// Remote access error (2).
    RemoteAccessError,
    /// Remote operational error (3).
    RemoteOperationalError,
    /// Invalid RD request (4).
    InvalidRdRequest,
    /// A reserved code.
    Reserved(u8),
}

impl NakCode {
    /// The 5-bit code.
    pub fn code(self) -> u8 {
        match self {
            NakCode::PsnSequenceError => 0,
            NakCode::InvalidRequest => 1,
            NakCode::RemoteAccessError => 2,
            NakCode::RemoteOperationalError => 3,
            NakCode::InvalidRdRequest => 4,
            NakCode::Reserved(c) => c & 0x1F,
        }
    }
    fn from_code(c: u8) -> NakCode {
        match c {
            0 => NakCode::PsnSequenceError,
            1 => NakCode::InvalidRequest,
            2 => NakCode::RemoteAccessError,
            3 => NakCode::RemoteOperationalError,
            4 => NakCode::InvalidRdRequest,
            c => NakCode::Reserved(c),
        }
    }
}

/// The decoded AETH syndrome (IBTA §9.7.5.2.4, Table 42): bits 6–5 select ACK / RNR NAK / NAK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AckSyndrome {
    /// Positive ACK with the 5-bit credit count (31 = invalid/unlimited).
    Ack {
        /// Credit count.
        credits: u8,
    },
    /// Receiver not ready, retry after the time named by the 5-bit timer code.
    RnrNak {
        /// RNR timer code (index into the IBA table, e.g. 12 = 0.64 ms).
        timer: u8,
    },
    /// Negative acknowledge.
    Nak(NakCode),
    /// Reserved syndrome class (0b10), or bit 7 set.
    Reserved(u8),
}

impl AckSyndrome {
    /// Decodes a raw syndrome byte.
    pub fn from_byte(b: u8) -> Self {
        if b & 0x80 != 0 {
            return AckSyndrome::Reserved(b);
        }
        let low = b & 0x1F;
        match (b >> 5) & 0x3 {
            0 => AckSyndrome::Ack { credits: low },
            1 => AckSyndrome::RnrNak { timer: low },
            3 => AckSyndrome::Nak(NakCode::from_code(low)),
            _ => AckSyndrome::Reserved(b),
        }
    }
    /// Encodes the syndrome byte.
    pub fn to_byte(self) -> u8 {
        match self {
            AckSyndrome::Ack { credits } => credits & 0x1F,
            AckSyndrome::RnrNak { timer } => 0x20 | (timer & 0x1F),
            AckSyndrome::Nak(code) => 0x60 | code.code(),
            AckSyndrome::Reserved(b) => b,
        }
    }
}

/// AETH fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AethRepr {
    /// Syndrome.
    pub syndrome: AckSyndrome,
    /// MSN (24 bits).
    pub msn: u32,
}

impl AethRepr {
    /// Reads an AETH.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(h: &Aeth<T>) -> Self {
        AethRepr {
            syndrome: AckSyndrome::from_byte(h.syndrome()),
            msn: h.msn(),
        }
    }
    /// Writes an AETH.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Aeth<T>) -> Result<()> {
        if self.msn > 0xFF_FFFF {
            return Err(Error::FieldRange("msn"));
        }
        let b = h.bm();
        b[0] = self.syndrome.to_byte();
        put_u24(b, 1, self.msn);
        Ok(())
    }
}

view!(
    /// Atomic extended transport header (IBTA §9.3.4, 28 bytes).
    AtomicEth,
    28
);

impl<T: AsRef<[u8]>> AtomicEth<T> {
    /// Remote virtual address (8-byte aligned for a valid request).
    pub fn va(&self) -> u64 {
        get_u64(self.b(), 0)
    }
    /// Remote key.
    pub fn rkey(&self) -> u32 {
        get_u32(self.b(), 8)
    }
    /// Swap value (compare-swap) or addend (fetch-add).
    pub fn swap_add(&self) -> u64 {
        get_u64(self.b(), 12)
    }
    /// Compare value (compare-swap only).
    pub fn compare(&self) -> u64 {
        get_u64(self.b(), 20)
    }
}

/// AtomicETH fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtomicEthRepr {
    /// Remote virtual address.
    pub va: u64,
    /// Remote key.
    pub rkey: u32,
    /// Swap value or addend.
    pub swap_add: u64,
    /// Compare value.
    pub compare: u64,
}

impl AtomicEthRepr {
    /// Reads an AtomicETH.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(h: &AtomicEth<T>) -> Self {
        AtomicEthRepr {
            va: h.va(),
            rkey: h.rkey(),
            swap_add: h.swap_add(),
            compare: h.compare(),
        }
    }
    /// Writes an AtomicETH.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut AtomicEth<T>) {
        let b = h.bm();
        b[0..8].copy_from_slice(&self.va.to_be_bytes());
        b[8..12].copy_from_slice(&self.rkey.to_be_bytes());
        b[12..20].copy_from_slice(&self.swap_add.to_be_bytes());
        b[20..28].copy_from_slice(&self.compare.to_be_bytes());
    }
}

view!(
    /// Atomic ACK extended transport header (IBTA §9.5.3, 8 bytes): the original remote data.
    AtomicAckEth,
    8
);

impl<T: AsRef<[u8]>> AtomicAckEth<T> {
    /// The value at the target before the atomic operation.
    pub fn orig(&self) -> u64 {
        get_u64(self.b(), 0)
    }
}

/// AtomicAckETH fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtomicAckEthRepr {
    /// Original remote data.
    pub orig: u64,
}

impl AtomicAckEthRepr {
    /// Reads an AtomicAckETH.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(h: &AtomicAckEth<T>) -> Self {
        AtomicAckEthRepr { orig: h.orig() }
    }
    /// Writes an AtomicAckETH.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut AtomicAckEth<T>) {
        h.bm()[0..8].copy_from_slice(&self.orig.to_be_bytes());
    }
}

view!(
    /// Immediate data extended transport header (IBTA §9.3.6, 4 bytes).
    ImmDt,
    4
);

impl<T: AsRef<[u8]>> ImmDt<T> {
    /// The immediate value, as the 4 bytes on the wire read big-endian.
    pub fn value(&self) -> u32 {
        get_u32(self.b(), 0)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ImmDt<T> {
    /// Sets the immediate value.
    pub fn set_value(&mut self, v: u32) {
        self.bm()[0..4].copy_from_slice(&v.to_be_bytes());
    }
}

view!(
    /// Invalidate extended transport header (IBTA §9.3.7, 4 bytes): the R_Key to invalidate.
    Ieth,
    4
);

impl<T: AsRef<[u8]>> Ieth<T> {
    /// The R_Key to invalidate.
    pub fn rkey(&self) -> u32 {
        get_u32(self.b(), 0)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ieth<T> {
    /// Sets the R_Key to invalidate.
    pub fn set_rkey(&mut self, v: u32) {
        self.bm()[0..4].copy_from_slice(&v.to_be_bytes());
    }
}

view!(
    /// Datagram extended transport header (IBTA §9.3.2, 8 bytes).
    Deth,
    8
);

impl<T: AsRef<[u8]>> Deth<T> {
    /// Queue key.
    pub fn qkey(&self) -> u32 {
        get_u32(self.b(), 0)
    }
    /// The reserved byte before the source QP.
    pub fn resv8(&self) -> u8 {
        self.b()[4]
    }
    /// Source QP (24 bits).
    pub fn src_qp(&self) -> u32 {
        get_u24(self.b(), 5)
    }
}

/// DETH fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DethRepr {
    /// Queue key.
    pub qkey: u32,
    /// Source QP (24 bits).
    pub src_qp: u32,
}

impl DethRepr {
    /// Reads a DETH.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(h: &Deth<T>) -> Self {
        DethRepr {
            qkey: h.qkey(),
            src_qp: h.src_qp(),
        }
    }
    /// Writes a DETH (reserved byte zero).
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Deth<T>) -> Result<()> {
        if self.src_qp > 0xFF_FFFF {
            return Err(Error::FieldRange("src_qp"));
        }
        let b = h.bm();
        b[0..4].copy_from_slice(&self.qkey.to_be_bytes());
        b[4] = 0;
        put_u24(b, 5, self.src_qp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syndrome_round_trips_every_byte() {
        for b in 0..=255u8 {
            assert_eq!(AckSyndrome::from_byte(b).to_byte(), b);
        }
        assert_eq!(
            AckSyndrome::from_byte(0x2C),
            AckSyndrome::RnrNak { timer: 12 }
        );
        assert_eq!(
            AckSyndrome::from_byte(0x60),
            AckSyndrome::Nak(NakCode::PsnSequenceError)
        );
        assert_eq!(
            AckSyndrome::from_byte(0x1F),
            AckSyndrome::Ack { credits: 31 }
        );
    }

    #[test]
    fn short_buffers_are_errors() {
        assert_eq!(
            Bth::new_checked(&[0u8; 11][..]),
            Err(Error::Truncated {
                needed: 12,
                have: 11
            })
        );
        assert!(AtomicEth::new_checked(&[0u8; 27][..]).is_err());
    }
}

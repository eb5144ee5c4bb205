//! A whole RoCEv2 transport packet, i.e. the UDP payload: BTH, the extension headers its opcode
//! calls for, payload, pad and ICRC.

use crate::headers::{
    AethRepr, AtomicAckEthRepr, AtomicEthRepr, BthRepr, DethRepr, RethRepr, BTH_LEN,
};
use crate::opcode::{Header, Operation, Position};
use crate::{
    Aeth, AtomicAckEth, AtomicEth, Bth, Deth, Error, Ieth, ImmDt, Opcode, OpcodeInfo, Result, Reth,
    ICRC_LEN,
};

/// A checked view of a transport packet.
///
/// `new_checked` guarantees: the opcode is in the table, the buffer holds the BTH, every
/// extension header the opcode calls for and the ICRC, the pad count fits in the bytes after the
/// headers, and an opcode without payload has none. Accessors therefore cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T> {
    buffer: T,
    info: &'static OpcodeInfo,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Validates the layout of `buffer` (the whole UDP payload, ICRC included).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        let bth = Bth::new_checked(b)?;
        let opcode = Opcode::try_from(bth.opcode())?;
        let info = opcode.info();
        let min = info.header_len + ICRC_LEN;
        if b.len() < min {
            return Err(Error::Truncated {
                needed: min,
                have: b.len(),
            });
        }
        let after = b.len() - min;
        let pad = bth.pad_count();
        if !info.payload && after != 0 {
            return Err(Error::UnexpectedPayload(opcode.as_u8(), after));
        }
        if usize::from(pad) > after {
            return Err(Error::BadPadCount { pad, len: after });
        }
        Ok(Packet { buffer, info })
    }

    /// The opcode's table entry.
    #[inline]
    pub fn info(&self) -> &'static OpcodeInfo {
        self.info
    }

    /// The opcode.
    pub fn opcode(&self) -> Opcode {
        self.info.opcode
    }

    /// The whole buffer.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The BTH.
    #[inline]
    pub fn bth(&self) -> Bth<&[u8]> {
        Bth::new_unchecked(&self.buffer.as_ref()[..BTH_LEN])
    }

    #[inline]
    fn ext(&self, h: Header) -> Option<&[u8]> {
        let off = self.info.headers.offset(h)?;
        Some(&self.buffer.as_ref()[off..off + h.len()])
    }

    /// The DETH, if the opcode carries one.
    #[inline]
    pub fn deth(&self) -> Option<Deth<&[u8]>> {
        self.ext(Header::Deth).map(Deth::new_unchecked)
    }
    /// The RETH, if the opcode carries one.
    #[inline]
    pub fn reth(&self) -> Option<Reth<&[u8]>> {
        self.ext(Header::Reth).map(Reth::new_unchecked)
    }
    /// The AtomicETH, if the opcode carries one.
    #[inline]
    pub fn atomic_eth(&self) -> Option<AtomicEth<&[u8]>> {
        self.ext(Header::AtomicEth).map(AtomicEth::new_unchecked)
    }
    /// The AETH, if the opcode carries one.
    #[inline]
    pub fn aeth(&self) -> Option<Aeth<&[u8]>> {
        self.ext(Header::Aeth).map(Aeth::new_unchecked)
    }
    /// The AtomicAckETH, if the opcode carries one.
    #[inline]
    pub fn atomic_ack_eth(&self) -> Option<AtomicAckEth<&[u8]>> {
        self.ext(Header::AtomicAckEth)
            .map(AtomicAckEth::new_unchecked)
    }
    /// The immediate data, if the opcode carries it.
    #[inline]
    pub fn imm(&self) -> Option<u32> {
        self.ext(Header::ImmDt)
            .map(|b| ImmDt::new_unchecked(b).value())
    }
    /// The R_Key to invalidate, if the opcode carries an IETH.
    #[inline]
    pub fn ieth(&self) -> Option<u32> {
        self.ext(Header::Ieth)
            .map(|b| Ieth::new_unchecked(b).rkey())
    }

    #[inline]
    fn payload_end(&self) -> usize {
        self.buffer.as_ref().len() - ICRC_LEN - usize::from(self.bth().pad_count())
    }

    /// The payload, without pad.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.info.header_len..self.payload_end()]
    }

    /// The pad bytes (IBTA requires zeros; receivers ignore them).
    pub fn pad(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[self.payload_end()..b.len() - ICRC_LEN]
    }

    /// The ICRC as carried on the wire (little-endian bytes, read as a `u32`).
    pub fn icrc(&self) -> u32 {
        let b = self.buffer.as_ref();
        let t = &b[b.len() - ICRC_LEN..];
        u32::from_le_bytes([t[0], t[1], t[2], t[3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// The payload, mutable, for placing data after [`PacketRepr::emit`].
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.info.header_len, self.payload_end());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// The length of the transport packet at the start of `buf` as its headers state it, for the
/// opcodes whose headers fix it: those without payload (ACKs, READ requests, atomics and
/// their ACKs: the header length plus the ICRC) and RDMA WRITE Only with or without
/// immediate, whose RETH DMA length is the payload's (IBTA §9.4.3: an Only packet carries the
/// whole message). `None` for every other opcode (a SEND's or a READ response's payload
/// length is only the datagram's), for an unknown opcode or short headers, and when the BTH's
/// pad count is not the one the stated payload needs. Reads the headers only; the length may
/// exceed `buf`.
///
/// A receiver that took a UDP GRO batch without its segment size splits it with this: every
/// segment but the last is as long as the first.
pub fn stated_len(buf: &[u8]) -> Option<usize> {
    let bth = Bth::new_checked(buf.get(..BTH_LEN)?).ok()?;
    let info = Opcode::from_u8(bth.opcode())?.info();
    if !info.payload {
        return Some(info.header_len + ICRC_LEN);
    }
    if info.operation != Operation::RdmaWrite || info.position != Position::Only {
        return None;
    }
    let off = info.headers.offset(Header::Reth)?;
    let reth = Reth::new_checked(buf.get(off..off + Header::Reth.len())?).ok()?;
    let dma = usize::try_from(reth.dma_len()).ok()?;
    let pad = dma.wrapping_neg() & 3;
    if pad != usize::from(bth.pad_count()) {
        return None;
    }
    info.header_len
        .checked_add(dma)?
        .checked_add(pad + ICRC_LEN)
}

/// Every header of a transport packet, validated. Absent headers are `None`; which are present
/// is fixed by the opcode ([`PacketRepr::parse`] and [`PacketRepr::emit`] enforce it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketRepr {
    /// The BTH.
    pub bth: BthRepr,
    /// DETH (UD).
    pub deth: Option<DethRepr>,
    /// RETH (WRITE FIRST/ONLY, READ request).
    pub reth: Option<RethRepr>,
    /// AtomicETH (atomic requests).
    pub atomic_eth: Option<AtomicEthRepr>,
    /// AETH (ACK, READ response FIRST/LAST/ONLY, atomic ACK).
    pub aeth: Option<AethRepr>,
    /// AtomicAckETH (atomic ACK).
    pub atomic_ack_eth: Option<AtomicAckEthRepr>,
    /// Immediate data.
    pub imm: Option<u32>,
    /// R_Key to invalidate.
    pub ieth: Option<u32>,
    /// Payload length in bytes, without pad.
    pub payload_len: usize,
}

impl PacketRepr {
    /// A packet of `opcode` with only a BTH filled in; set the extension headers it needs.
    pub fn new(bth: BthRepr, payload_len: usize) -> Self {
        PacketRepr {
            bth,
            deth: None,
            reth: None,
            atomic_eth: None,
            aeth: None,
            atomic_ack_eth: None,
            imm: None,
            ieth: None,
            payload_len,
        }
    }

    /// Reads every header of a checked packet.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Self> {
        Ok(PacketRepr {
            bth: BthRepr::parse(&p.bth())?,
            deth: p.deth().map(|h| DethRepr::parse(&h)),
            reth: p.reth().map(|h| RethRepr::parse(&h)),
            atomic_eth: p.atomic_eth().map(|h| AtomicEthRepr::parse(&h)),
            aeth: p.aeth().map(|h| AethRepr::parse(&h)),
            atomic_ack_eth: p.atomic_ack_eth().map(|h| AtomicAckEthRepr::parse(&h)),
            imm: p.imm(),
            ieth: p.ieth(),
            payload_len: p.payload().len(),
        })
    }

    /// Checks a buffer and reads its headers in one step.
    #[inline]
    pub fn parse_bytes(buf: &[u8]) -> Result<(Self, Packet<&[u8]>)> {
        let p = Packet::new_checked(buf)?;
        Ok((PacketRepr::parse(&p)?, p))
    }

    /// Pad bytes that follow the payload: (−len) mod 4 (IBTA §9.2.3).
    pub fn pad_len(&self) -> usize {
        self.payload_len.wrapping_neg() & 3
    }

    /// Length of BTH plus extension headers.
    pub fn header_len(&self) -> usize {
        self.bth.opcode.info().header_len
    }

    /// Total length of the UDP payload: headers, payload, pad and ICRC.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len + self.pad_len() + ICRC_LEN
    }

    /// Writes the headers and zero pad into the first [`Self::buffer_len`] bytes of `buf`, and
    /// sets the BTH pad count from the payload length. The payload area is left as it is (the
    /// caller copies data there, e.g. straight from a memory region); the ICRC is written by
    /// [`crate::icrc::IcrcContext::seal`] once the payload is in place.
    #[inline]
    pub fn emit<'a>(&self, buf: &'a mut [u8]) -> Result<Packet<&'a mut [u8]>> {
        let info = self.bth.opcode.info();
        let len = self.buffer_len();
        if buf.len() < len {
            return Err(Error::BufferTooSmall {
                needed: len,
                have: buf.len(),
            });
        }
        if !info.payload && self.payload_len != 0 {
            return Err(Error::UnexpectedPayload(
                info.opcode.as_u8(),
                self.payload_len,
            ));
        }
        let h = info.headers;
        let present = |x: Header, is: bool| {
            if h.has(x) == is {
                Ok(())
            } else {
                Err(Error::HeaderMismatch(header_name(x)))
            }
        };
        present(Header::Deth, self.deth.is_some())?;
        present(Header::Reth, self.reth.is_some())?;
        present(Header::AtomicEth, self.atomic_eth.is_some())?;
        present(Header::Aeth, self.aeth.is_some())?;
        present(Header::AtomicAckEth, self.atomic_ack_eth.is_some())?;
        present(Header::ImmDt, self.imm.is_some())?;
        present(Header::Ieth, self.ieth.is_some())?;

        let buf = &mut buf[..len];
        let mut bth = self.bth;
        bth.pad_count = self.pad_len() as u8;
        bth.emit(&mut Bth::new_unchecked(&mut buf[..BTH_LEN]))?;
        let slot = |x: Header| {
            // Presence was checked above, so the offset exists.
            let off = h.offset(x).unwrap_or(BTH_LEN);
            off..off + x.len()
        };
        if let Some(r) = &self.deth {
            r.emit(&mut Deth::new_unchecked(&mut buf[slot(Header::Deth)]))?;
        }
        if let Some(r) = &self.reth {
            r.emit(&mut Reth::new_unchecked(&mut buf[slot(Header::Reth)]));
        }
        if let Some(r) = &self.atomic_eth {
            r.emit(&mut AtomicEth::new_unchecked(
                &mut buf[slot(Header::AtomicEth)],
            ));
        }
        if let Some(r) = &self.aeth {
            r.emit(&mut Aeth::new_unchecked(&mut buf[slot(Header::Aeth)]))?;
        }
        if let Some(r) = &self.atomic_ack_eth {
            r.emit(&mut AtomicAckEth::new_unchecked(
                &mut buf[slot(Header::AtomicAckEth)],
            ));
        }
        if let Some(v) = self.imm {
            ImmDt::new_unchecked(&mut buf[slot(Header::ImmDt)]).set_value(v);
        }
        if let Some(v) = self.ieth {
            Ieth::new_unchecked(&mut buf[slot(Header::Ieth)]).set_rkey(v);
        }
        let pad_start = info.header_len + self.payload_len;
        // Mostly no pad (ACKs, 4-byte multiples): `fill` over an empty range was still a
        // call to memset per packet.
        if pad_start < len - ICRC_LEN {
            buf[pad_start..len - ICRC_LEN].fill(0);
        }
        // What `new_checked` would check holds by construction: the opcode is from the
        // table, `buf` holds its headers, the payload (allowed, checked above), the pad
        // written from the payload length, and the ICRC. Re-parsing it cost a table lookup and
        // a dozen branches per packet sent.
        debug_assert!(Packet::new_checked(&*buf).is_ok());
        Ok(Packet { buffer: buf, info })
    }

    /// Emits headers, copies `payload` in and seals the ICRC: the whole packet in one call.
    pub fn emit_with_payload<'a>(
        &self,
        buf: &'a mut [u8],
        payload: &[u8],
        ctx: &crate::IcrcContext,
    ) -> Result<&'a mut [u8]> {
        if payload.len() != self.payload_len {
            return Err(Error::FieldRange("payload_len"));
        }
        let mut p = self.emit(buf)?;
        p.payload_mut().copy_from_slice(payload);
        let buf = p.into_inner();
        ctx.seal(buf);
        Ok(buf)
    }
}

fn header_name(h: Header) -> &'static str {
    match h {
        Header::Deth => "deth",
        Header::Reth => "reth",
        Header::AtomicEth => "atomic_eth",
        Header::Aeth => "aeth",
        Header::AtomicAckEth => "atomic_ack_eth",
        Header::ImmDt => "imm",
        Header::Ieth => "ieth",
    }
}

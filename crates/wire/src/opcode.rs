//! The opcode table: for every BTH opcode, its transport, operation, position in a message, the
//! extension headers that follow the BTH and whether a payload may follow (IBTA Vol 1 §9.2 Table
//! 35; the same facts rxe keeps in `rxe_opcode.c`). Everything that needs to know the shape of a
//! packet asks this table, so there is exactly one place to get it right.

use core::fmt;

/// Which service an opcode belongs to (the top three bits of the opcode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// Reliable Connected (opcode prefix 000).
    Rc,
    /// Unreliable Connected (prefix 001).
    Uc,
    /// Unreliable Datagram (prefix 011).
    Ud,
}

/// The operation a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// SEND, consuming a receive WQE.
    Send,
    /// RDMA WRITE.
    RdmaWrite,
    /// RDMA READ request.
    RdmaReadRequest,
    /// RDMA READ response.
    RdmaReadResponse,
    /// ACK or NAK.
    Acknowledge,
    /// Response to an atomic request.
    AtomicAcknowledge,
    /// ATOMIC compare and swap.
    CompareSwap,
    /// ATOMIC fetch and add.
    FetchAdd,
}

/// Where a packet sits within its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Position {
    /// First packet of a multi-packet message.
    First,
    /// Middle packet.
    Middle,
    /// Last packet of a multi-packet message.
    Last,
    /// The only packet of a message.
    Only,
}

impl Position {
    /// Whether this packet starts a message.
    pub const fn starts(self) -> bool {
        matches!(self, Position::First | Position::Only)
    }
    /// Whether this packet ends a message.
    pub const fn ends(self) -> bool {
        matches!(self, Position::Last | Position::Only)
    }
}

/// One extension header kind. The discriminant is the bit in [`HeaderSet`] and the order is the
/// order on the wire (IBTA §9.2: DETH, RETH, AtomicETH, AETH, AtomicAckETH, ImmDt, IETH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Header {
    /// Datagram extended transport header, 8 bytes.
    Deth,
    /// RDMA extended transport header, 16 bytes.
    Reth,
    /// Atomic extended transport header, 28 bytes.
    AtomicEth,
    /// ACK extended transport header, 4 bytes.
    Aeth,
    /// Atomic ACK extended transport header, 8 bytes.
    AtomicAckEth,
    /// Immediate data, 4 bytes.
    ImmDt,
    /// Invalidate extended transport header, 4 bytes.
    Ieth,
}

impl Header {
    /// All header kinds, in wire order.
    pub const ALL: [Header; 7] = [
        Header::Deth,
        Header::Reth,
        Header::AtomicEth,
        Header::Aeth,
        Header::AtomicAckEth,
        Header::ImmDt,
        Header::Ieth,
    ];

    /// Length of this header on the wire.
    // A header kind is never empty, so an `is_empty` would be meaningless.
    #[allow(clippy::len_without_is_empty)]
    pub const fn len(self) -> usize {
        match self {
            Header::Deth => 8,
            Header::Reth => 16,
            Header::AtomicEth => 28,
            Header::Aeth => 4,
            Header::AtomicAckEth => 8,
            Header::ImmDt => 4,
            Header::Ieth => 4,
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The set of extension headers an opcode carries after the BTH.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HeaderSet(u8);

impl HeaderSet {
    /// No extension header.
    pub const NONE: HeaderSet = HeaderSet(0);

    /// Builds a set from a list of headers.
    pub const fn of(headers: &[Header]) -> HeaderSet {
        let mut bits = 0;
        let mut i = 0;
        while i < headers.len() {
            bits |= headers[i].bit();
            i += 1;
        }
        HeaderSet(bits)
    }

    /// Whether the set contains `h`.
    #[inline]
    pub const fn has(self, h: Header) -> bool {
        self.0 & h.bit() != 0
    }

    /// Offset of `h` from the start of the BTH, if the set contains it.
    #[inline]
    pub const fn offset(self, h: Header) -> Option<usize> {
        if !self.has(h) {
            return None;
        }
        // Looked up per header of every packet parsed or built: from a table made at compile
        // time rather than summing the lengths before `h` each time.
        Some(OFFSETS[(self.0 & 0x7F) as usize][h as usize] as usize)
    }

    /// `offset` computed: the BTH plus the lengths of the set's headers before `h` in wire
    /// order (`h` need not be in the set).
    const fn offset_slow(self, h: Header) -> usize {
        let mut off = crate::headers::BTH_LEN;
        let mut i = 0;
        while i < h as usize {
            if self.has(Header::ALL[i]) {
                off += Header::ALL[i].len();
            }
            i += 1;
        }
        off
    }

    /// Length of the BTH plus all extension headers in the set.
    pub const fn header_len(self) -> usize {
        let mut len = crate::headers::BTH_LEN;
        let mut i = 0;
        while i < Header::ALL.len() {
            if self.has(Header::ALL[i]) {
                len += Header::ALL[i].len();
            }
            i += 1;
        }
        len
    }
}

/// `OFFSETS[set][h]`: offset of header `h` behind the BTH when the headers `set` (the bits of
/// a [`HeaderSet`]) are present; at most 12 + 8 + 16 + 28 + 4 + 8 + 4 = 80, so a byte holds it.
const OFFSETS: [[u8; 7]; 128] = {
    let mut t = [[0u8; 7]; 128];
    let mut set = 0;
    while set < 128 {
        let mut h = 0;
        while h < 7 {
            t[set][h] = HeaderSet(set as u8).offset_slow(Header::ALL[h]) as u8;
            h += 1;
        }
        set += 1;
    }
    t
};

impl fmt::Debug for HeaderSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(Header::ALL.iter().filter(|h| self.has(**h)))
            .finish()
    }
}

/// Everything the table knows about one opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpcodeInfo {
    /// The opcode.
    pub opcode: Opcode,
    /// Name as wireshark prints it, e.g. `RC RDMA Write First`.
    pub name: &'static str,
    /// Service.
    pub transport: Transport,
    /// Operation.
    pub operation: Operation,
    /// Position in the message.
    pub position: Position,
    /// Extension headers after the BTH.
    pub headers: HeaderSet,
    /// Whether payload bytes may follow the headers.
    pub payload: bool,
    /// Whether the packet carries immediate data (ImmDt).
    pub immediate: bool,
    /// Whether the packet carries an invalidate rkey (IETH).
    pub invalidate: bool,
    /// Offset of the payload (= length of BTH + extension headers).
    pub header_len: usize,
}

macro_rules! opcode_table {
    ($( $variant:ident = $code:literal, $name:literal, $t:ident, $op:ident, $pos:ident,
        [$($h:ident),*], $payload:literal; )*) => {
        /// A BTH opcode known to this implementation: RC 0x00–0x14, 0x16, 0x17; UC 0x20–0x2B;
        /// UD 0x64, 0x65.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        #[repr(u8)]
        pub enum Opcode {
            $(
                #[doc = $name]
                $variant = $code,
            )*
        }

        impl Opcode {
            /// The table entry for this opcode.
            #[inline]
            pub const fn info(self) -> &'static OpcodeInfo {
                match self {
                    $(Opcode::$variant => {
                        const HEADERS: HeaderSet = HeaderSet::of(&[$(Header::$h),*]);
                        const INFO: OpcodeInfo = OpcodeInfo {
                            opcode: Opcode::$variant,
                            name: $name,
                            transport: Transport::$t,
                            operation: Operation::$op,
                            position: Position::$pos,
                            headers: HEADERS,
                            payload: $payload,
                            immediate: HEADERS.has(Header::ImmDt),
                            invalidate: HEADERS.has(Header::Ieth),
                            header_len: HEADERS.header_len(),
                        };
                        &INFO
                    })*
                }
            }
        }

        /// The whole table, in opcode order.
        pub static TABLE: &[OpcodeInfo] = &[$(*Opcode::$variant.info()),*];

        impl Opcode {
            /// Looks up a raw opcode byte.
            #[inline]
            pub const fn from_u8(code: u8) -> Option<Opcode> {
                match code {
                    $($code => Some(Opcode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

opcode_table! {
    RcSendFirst = 0x00, "RC Send First", Rc, Send, First, [], true;
    RcSendMiddle = 0x01, "RC Send Middle", Rc, Send, Middle, [], true;
    RcSendLast = 0x02, "RC Send Last", Rc, Send, Last, [], true;
    RcSendLastImm = 0x03, "RC Send Last Immediate", Rc, Send, Last, [ImmDt], true;
    RcSendOnly = 0x04, "RC Send Only", Rc, Send, Only, [], true;
    RcSendOnlyImm = 0x05, "RC Send Only Immediate", Rc, Send, Only, [ImmDt], true;
    RcWriteFirst = 0x06, "RC RDMA Write First", Rc, RdmaWrite, First, [Reth], true;
    RcWriteMiddle = 0x07, "RC RDMA Write Middle", Rc, RdmaWrite, Middle, [], true;
    RcWriteLast = 0x08, "RC RDMA Write Last", Rc, RdmaWrite, Last, [], true;
    RcWriteLastImm = 0x09, "RC RDMA Write Last Immediate", Rc, RdmaWrite, Last, [ImmDt], true;
    RcWriteOnly = 0x0A, "RC RDMA Write Only", Rc, RdmaWrite, Only, [Reth], true;
    RcWriteOnlyImm = 0x0B, "RC RDMA Write Only Immediate", Rc, RdmaWrite, Only, [Reth, ImmDt], true;
    RcReadRequest = 0x0C, "RC RDMA Read Request", Rc, RdmaReadRequest, Only, [Reth], false;
    RcReadResponseFirst = 0x0D, "RC RDMA Read Response First", Rc, RdmaReadResponse, First, [Aeth], true;
    RcReadResponseMiddle = 0x0E, "RC RDMA Read Response Middle", Rc, RdmaReadResponse, Middle, [], true;
    RcReadResponseLast = 0x0F, "RC RDMA Read Response Last", Rc, RdmaReadResponse, Last, [Aeth], true;
    RcReadResponseOnly = 0x10, "RC RDMA Read Response Only", Rc, RdmaReadResponse, Only, [Aeth], true;
    RcAcknowledge = 0x11, "RC Acknowledge", Rc, Acknowledge, Only, [Aeth], false;
    RcAtomicAcknowledge = 0x12, "RC Atomic Acknowledge", Rc, AtomicAcknowledge, Only, [Aeth, AtomicAckEth], false;
    RcCompareSwap = 0x13, "RC Compare Swap", Rc, CompareSwap, Only, [AtomicEth], false;
    RcFetchAdd = 0x14, "RC Fetch Add", Rc, FetchAdd, Only, [AtomicEth], false;
    RcSendLastInv = 0x16, "RC Send Last Invalidate", Rc, Send, Last, [Ieth], true;
    RcSendOnlyInv = 0x17, "RC Send Only Invalidate", Rc, Send, Only, [Ieth], true;
    UcSendFirst = 0x20, "UC Send First", Uc, Send, First, [], true;
    UcSendMiddle = 0x21, "UC Send Middle", Uc, Send, Middle, [], true;
    UcSendLast = 0x22, "UC Send Last", Uc, Send, Last, [], true;
    UcSendLastImm = 0x23, "UC Send Last Immediate", Uc, Send, Last, [ImmDt], true;
    UcSendOnly = 0x24, "UC Send Only", Uc, Send, Only, [], true;
    UcSendOnlyImm = 0x25, "UC Send Only Immediate", Uc, Send, Only, [ImmDt], true;
    UcWriteFirst = 0x26, "UC RDMA Write First", Uc, RdmaWrite, First, [Reth], true;
    UcWriteMiddle = 0x27, "UC RDMA Write Middle", Uc, RdmaWrite, Middle, [], true;
    UcWriteLast = 0x28, "UC RDMA Write Last", Uc, RdmaWrite, Last, [], true;
    UcWriteLastImm = 0x29, "UC RDMA Write Last Immediate", Uc, RdmaWrite, Last, [ImmDt], true;
    UcWriteOnly = 0x2A, "UC RDMA Write Only", Uc, RdmaWrite, Only, [Reth], true;
    UcWriteOnlyImm = 0x2B, "UC RDMA Write Only Immediate", Uc, RdmaWrite, Only, [Reth, ImmDt], true;
    UdSendOnly = 0x64, "UD Send Only", Ud, Send, Only, [Deth], true;
    UdSendOnlyImm = 0x65, "UD Send Only Immediate", Ud, Send, Only, [Deth, ImmDt], true;
}

impl Opcode {
    /// The raw opcode byte.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Wireshark's name for the opcode.
    pub const fn name(self) -> &'static str {
        self.info().name
    }
}

impl TryFrom<u8> for Opcode {
    type Error = crate::Error;
    #[inline]
    fn try_from(code: u8) -> crate::Result<Opcode> {
        Opcode::from_u8(code).ok_or(crate::Error::UnknownOpcode(code))
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_exactly_the_specified_opcodes() {
        let expected: Vec<u8> = (0x00..=0x14)
            .chain([0x16, 0x17])
            .chain(0x20..=0x2B)
            .chain([0x64, 0x65])
            .collect();
        let known: Vec<u8> = (0..=255u8)
            .filter(|c| Opcode::from_u8(*c).is_some())
            .collect();
        assert_eq!(known, expected);
        for info in TABLE {
            assert_eq!(info.opcode.info(), info);
        }
    }

    #[test]
    fn transport_matches_opcode_prefix() {
        for info in TABLE {
            let want = match info.opcode.as_u8() >> 5 {
                0 => Transport::Rc,
                1 => Transport::Uc,
                3 => Transport::Ud,
                _ => unreachable!("no other prefix in the table"),
            };
            assert_eq!(info.transport, want, "{}", info.name);
        }
    }

    #[test]
    fn offset_table_agrees_with_summing_every_set() {
        for bits in 0..128u8 {
            let set = HeaderSet(bits);
            let mut off = crate::headers::BTH_LEN;
            for h in Header::ALL {
                if set.has(h) {
                    assert_eq!(set.offset(h), Some(off), "{set:?} {h:?}");
                    off += h.len();
                } else {
                    assert_eq!(set.offset(h), None);
                }
            }
            assert_eq!(set.header_len(), off);
        }
    }

    #[test]
    fn offsets_follow_wire_order() {
        let i = Opcode::RcWriteOnlyImm.info();
        assert_eq!(i.headers.offset(Header::Reth), Some(12));
        assert_eq!(i.headers.offset(Header::ImmDt), Some(28));
        assert_eq!(i.header_len, 32);
        let i = Opcode::RcAtomicAcknowledge.info();
        assert_eq!(i.headers.offset(Header::Aeth), Some(12));
        assert_eq!(i.headers.offset(Header::AtomicAckEth), Some(16));
        assert_eq!(i.header_len, 24);
        let i = Opcode::UdSendOnlyImm.info();
        assert_eq!(i.headers.offset(Header::Deth), Some(12));
        assert_eq!(i.headers.offset(Header::ImmDt), Some(20));
        assert_eq!(Opcode::RcCompareSwap.info().header_len, 40);
        assert_eq!(Opcode::RcReadResponseMiddle.info().header_len, 12);
        assert_eq!(
            Opcode::RcReadResponseMiddle
                .info()
                .headers
                .offset(Header::Aeth),
            None
        );
    }
}

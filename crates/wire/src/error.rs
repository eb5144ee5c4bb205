//! Parse and emit errors of the wire layer.

/// Why a buffer is not a valid RoCEv2 transport packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than the headers its opcode requires, plus the ICRC.
    #[error("packet truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the headers and trailer need.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// The BTH opcode is not one this implementation knows (RC, UC or UD).
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// The BTH transport header version is not 0 (IBTA C9-3; rxe drops these).
    #[error("unsupported transport header version {0}")]
    BadTver(u8),
    /// The opcode carries no payload, yet bytes follow its headers.
    #[error("opcode {0:#04x} carries no payload, but {1} bytes follow its headers")]
    UnexpectedPayload(u8, usize),
    /// The pad count exceeds the bytes that follow the headers.
    #[error("pad count {pad} exceeds the {len} bytes after the headers")]
    BadPadCount {
        /// Pad count from the BTH.
        pad: u8,
        /// Bytes between the headers and the ICRC.
        len: usize,
    },
    /// A field value does not fit its wire width (e.g. a QPN above 24 bits) on emit.
    #[error("field {0} out of range")]
    FieldRange(&'static str),
    /// The representation's extension headers do not match what its opcode carries.
    #[error("header {0} present or absent against the opcode table")]
    HeaderMismatch(&'static str),
    /// The buffer given to emit into is too small.
    #[error("emit buffer too small: need {needed} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes required.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Result of wire-layer operations.
pub type Result<T> = core::result::Result<T, Error>;

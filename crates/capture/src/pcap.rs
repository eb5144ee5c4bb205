//! Reading and writing classic pcap files (the libpcap format, microsecond or nanosecond
//! timestamps, either byte order), on top of the `pcap-file` crate.
//!
//! [`PcapReader`] yields [`Frame`]s (index, timestamp, link-layer bytes) from any [`Read`], for
//! the link types of [`LinkType`]. [`PcapWriter`] writes frames to any [`Write`]; by default
//! with `LINKTYPE_RAW` (101), so each record is a bare IPv4 or IPv6 datagram, which wireshark
//! decodes as RoCE (InfiniBand over UDP port 4791) without any setting.
//!
//! Records are read raw and interpreted here rather than through `pcap-file`'s `PcapPacket`,
//! which rejects records whose original length exceeds the snap length, i.e. every record of a
//! capture taken with a small `-s`; an out-of-range timestamp fraction carries into the seconds. pcapng input is recognised and refused with [`PcapError::PcapNg`]: the
//! pcapng parser of `pcap-file` 2 slices unchecked lengths from the file, so it could panic on a
//! malformed file.

use std::io::{self, Chain, Cursor, Read, Write};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, RawPcapPacket};
use pcap_file::{DataLink, Endianness, TsResolution};
use uroce_wire::IcrcContext;

use crate::frame::{build_datagram, encapsulate, BuildError, LinkType};

/// Snap length written in the headers of files this crate writes (tcpdump's default).
pub const SNAPLEN: u32 = 262_144;

const PCAPNG_MAGIC: [u8; 4] = [0x0A, 0x0D, 0x0D, 0x0A];

/// Why a pcap file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PcapError {
    /// The input is a pcapng file, which this reader does not parse.
    #[error("pcapng files are not supported; convert with `editcap -F pcap IN OUT`")]
    PcapNg,
    /// The input does not start with a pcap magic number.
    #[error("not a pcap file (magic {0:02x?})")]
    NotPcap([u8; 4]),
    /// The file's link-layer type is not one this crate decodes.
    #[error("unsupported link type {0}")]
    UnsupportedLinkType(u32),
    /// The file ends in the middle of the header or of a record.
    #[error("pcap file truncated")]
    Truncated,
    /// A header or record field is invalid.
    #[error("invalid pcap data: {0}")]
    Invalid(&'static str),
    /// A frame is longer than the snap length of the file being written.
    #[error("frame of {len} bytes exceeds the snap length {snaplen}")]
    FrameTooLong {
        /// Frame length.
        len: usize,
        /// The file's snap length.
        snaplen: u32,
    },
    /// A datagram could not be framed for writing.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The underlying reader or writer failed.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

impl From<pcap_file::PcapError> for PcapError {
    fn from(e: pcap_file::PcapError) -> Self {
        match e {
            pcap_file::PcapError::IncompleteBuffer => PcapError::Truncated,
            pcap_file::PcapError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                PcapError::Truncated
            }
            pcap_file::PcapError::IoError(e) => PcapError::Io(e),
            pcap_file::PcapError::InvalidField(s) => PcapError::Invalid(s),
            _ => PcapError::Invalid("unexpected pcap library error"),
        }
    }
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Position in the file, from 1 (wireshark's frame number).
    pub index: u64,
    /// Capture time since the Unix epoch.
    pub timestamp: Duration,
    /// Length of the frame on the wire (may exceed `data.len()` for a short snap length).
    pub orig_len: u32,
    /// Link-layer header type of `data`.
    pub link: LinkType,
    /// The captured bytes, starting with the link-layer header.
    pub data: Vec<u8>,
}

/// Reads frames from a pcap file.
///
/// After an error the reader is exhausted: the format has no way to resynchronise.
pub struct PcapReader<R: Read> {
    inner: pcap_file::pcap::PcapReader<Chain<Cursor<[u8; 4]>, R>>,
    header: PcapHeader,
    link: LinkType,
    next_index: u64,
    done: bool,
}

impl<R: Read> core::fmt::Debug for PcapReader<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PcapReader")
            .field("header", &self.header)
            .field("link", &self.link)
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

impl<R: Read> PcapReader<R> {
    /// Reads and checks the file header.
    pub fn new(mut reader: R) -> Result<Self, PcapError> {
        let mut magic = [0u8; 4];
        reader.read_exact(&mut magic).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                PcapError::Truncated
            } else {
                PcapError::Io(e)
            }
        })?;
        if magic == PCAPNG_MAGIC {
            return Err(PcapError::PcapNg);
        }
        let known = [
            0xA1B2_C3D4u32.to_be_bytes(),
            0xA1B2_3C4Du32.to_be_bytes(),
            0xA1B2_C3D4u32.to_le_bytes(),
            0xA1B2_3C4Du32.to_le_bytes(),
        ];
        if !known.contains(&magic) {
            return Err(PcapError::NotPcap(magic));
        }
        let inner = pcap_file::pcap::PcapReader::new(Cursor::new(magic).chain(reader))?;
        let header = inner.header();
        let dlt = u32::from(header.datalink);
        let link = LinkType::from_linktype(dlt).ok_or(PcapError::UnsupportedLinkType(dlt))?;
        Ok(PcapReader {
            inner,
            header,
            link,
            next_index: 1,
            done: false,
        })
    }

    /// The link-layer type of every frame in the file.
    pub fn link_type(&self) -> LinkType {
        self.link
    }

    /// The snap length from the file header.
    pub fn snaplen(&self) -> u32 {
        self.header.snaplen
    }

    /// Reads the next frame; `None` at the end of the file.
    pub fn next_frame(&mut self) -> Option<Result<Frame, PcapError>> {
        if self.done {
            return None;
        }
        let raw = match self.inner.next_raw_packet()? {
            Ok(raw) => raw,
            Err(e) => {
                self.done = true;
                return Some(Err(e.into()));
            }
        };
        let frame = convert(&raw, self.header.ts_resolution, self.link, self.next_index);
        self.next_index += 1;
        Some(Ok(frame))
    }
}

fn convert(raw: &RawPcapPacket<'_>, res: TsResolution, link: LinkType, index: u64) -> Frame {
    let frac_ns = match res {
        TsResolution::MicroSecond => u64::from(raw.ts_frac) * 1000,
        TsResolution::NanoSecond => u64::from(raw.ts_frac),
    };
    // An out-of-range fraction carries into the seconds rather than failing the record.
    let secs = u64::from(raw.ts_sec) + frac_ns / 1_000_000_000;
    let timestamp = Duration::new(secs, (frac_ns % 1_000_000_000) as u32);
    Frame {
        index,
        timestamp,
        orig_len: raw.orig_len,
        link,
        data: raw.data.to_vec(),
    }
}

impl<R: Read> Iterator for PcapReader<R> {
    type Item = Result<Frame, PcapError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame()
    }
}

/// Writes frames to a pcap file (little-endian, nanosecond timestamps, snap length
/// [`SNAPLEN`]). Records go straight to the writer: wrap a file in a `BufWriter` and flush it
/// (via [`PcapWriter::into_inner`]) when done.
pub struct PcapWriter<W: Write> {
    inner: pcap_file::pcap::PcapWriter<W>,
    link: LinkType,
}

impl<W: Write> core::fmt::Debug for PcapWriter<W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PcapWriter")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header for `LINKTYPE_RAW`: each record a bare IP datagram.
    pub fn new(writer: W) -> Result<Self, PcapError> {
        Self::with_link_type(writer, LinkType::Raw)
    }

    /// Writes the file header for the given link type.
    pub fn with_link_type(writer: W, link: LinkType) -> Result<Self, PcapError> {
        let header = PcapHeader {
            version_major: 2,
            version_minor: 4,
            ts_correction: 0,
            ts_accuracy: 0,
            snaplen: SNAPLEN,
            datalink: DataLink::from(link.linktype()),
            ts_resolution: TsResolution::NanoSecond,
            endianness: Endianness::Little,
        };
        let inner = pcap_file::pcap::PcapWriter::with_header(writer, header)?;
        Ok(PcapWriter { inner, link })
    }

    /// The link type of the file.
    pub fn link_type(&self) -> LinkType {
        self.link
    }

    /// Writes one frame, which must already start with this file's link-layer header.
    pub fn write_frame(&mut self, timestamp: Duration, frame: &[u8]) -> Result<(), PcapError> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|n| *n <= SNAPLEN)
            .ok_or(PcapError::FrameTooLong {
                len: frame.len(),
                snaplen: SNAPLEN,
            })?;
        let ts_sec = u32::try_from(timestamp.as_secs())
            .map_err(|_| PcapError::Invalid("timestamp beyond 2106"))?;
        let raw = RawPcapPacket {
            ts_sec,
            ts_frac: timestamp.subsec_nanos(),
            incl_len: len,
            orig_len: len,
            data: frame.into(),
        };
        self.inner.write_raw_packet(&raw)?;
        Ok(())
    }

    /// Writes an IP datagram, adding this file's link-layer header.
    pub fn write_datagram(
        &mut self,
        timestamp: Duration,
        datagram: &[u8],
    ) -> Result<(), PcapError> {
        let frame = encapsulate(self.link, datagram)?;
        self.write_frame(timestamp, &frame)
    }

    /// Writes a RoCEv2 transport packet (ICRC included) as a full IPv4/IPv6 + UDP frame built
    /// from `ctx` by [`build_datagram`].
    pub fn write_roce(
        &mut self,
        timestamp: Duration,
        ctx: &IcrcContext,
        transport: &[u8],
    ) -> Result<(), PcapError> {
        let datagram = build_datagram(ctx, transport)?;
        self.write_datagram(timestamp, &datagram)
    }

    /// Returns the underlying writer.
    pub fn into_inner(self) -> W {
        self.inner.into_writer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_foreign_inputs_are_typed_errors() {
        assert!(matches!(
            PcapReader::new(&[0xD4u8, 0xC3][..]),
            Err(PcapError::Truncated)
        ));
        assert!(matches!(
            PcapReader::new(&[0x0A, 0x0D, 0x0D, 0x0A, 0, 0][..]),
            Err(PcapError::PcapNg)
        ));
        assert!(matches!(
            PcapReader::new(&b"GIF89a...................."[..]),
            Err(PcapError::NotPcap(_))
        ));
        assert!(matches!(
            PcapReader::new(&[0xD4, 0xC3, 0xB2, 0xA1, 2, 0][..]),
            Err(PcapError::Truncated)
        ));
    }

    #[test]
    fn unsupported_link_type_is_refused() {
        let mut file = Vec::new();
        let w = PcapWriter::new(&mut file).unwrap();
        w.into_inner();
        file[20] = 147; // LINKTYPE_USER0
        assert!(matches!(
            PcapReader::new(&file[..]),
            Err(PcapError::UnsupportedLinkType(147))
        ));
    }

    #[test]
    fn truncated_record_ends_iteration_with_an_error() {
        let mut file = Vec::new();
        let mut w = PcapWriter::new(&mut file).unwrap();
        w.write_frame(Duration::new(5, 7), &[0x45; 40]).unwrap();
        w.write_frame(Duration::new(6, 8), &[0x45; 40]).unwrap();
        w.into_inner();
        let cut = file.len() - 3;
        let mut r = PcapReader::new(&file[..cut]).unwrap();
        let f = r.next().unwrap().unwrap();
        assert_eq!((f.index, f.timestamp), (1, Duration::new(5, 7)));
        assert!(matches!(r.next(), Some(Err(PcapError::Truncated))));
        assert!(r.next().is_none());
    }
}

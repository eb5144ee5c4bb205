//! Link layer, IPv4/IPv6 and UDP framing of RoCEv2 packets, both ways.
//!
//! [`decapsulate`] takes a link-layer frame as captured and returns a [`RoceFrame`]: addresses,
//! ports, the [`IcrcContext`] built from the real IP header (IPv4 Identification and flags
//! included, so the ICRC can be verified exactly) and the UDP payload, i.e. the transport
//! packet. Frames that are well formed but not RoCEv2 (not IP, not UDP, not to port 4791) are
//! reported as [`FrameError::NotRoce`] with a [`NotRoce`] reason, distinct from malformed ones.
//!
//! [`emit_datagram`] / [`build_datagram`] go the other way: they wrap a transport packet in an
//! IPv4 header (DF from the context, TTL 64, valid header checksum, the context's
//! Identification) or an IPv6 header (hop limit 64), plus a UDP header with checksum 0 as rxe
//! sends it. [`encapsulate`] adds the link-layer header for a pcap file.
//!
//! Written by hand rather than with `etherparse`: only four fixed-layout headers are involved,
//! the ICRC needs exact control over which IP fields are read and written (the real
//! Identification and flags, TOS/TTL/checksum left out of the verdict, IPv4 header checksum
//! reported but not enforced so that the ICRC is what detects corruption), and keeping the code
//! here makes its no-panic property auditable in one file: every read goes through
//! bounds-checked helpers that return [`FrameError::Truncated`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use uroce_wire::{IcrcContext, IpFields, ROCE_UDP_PORT};

/// Length of an Ethernet II header without VLAN tags.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Length of an 802.1Q / 802.1ad tag.
pub const VLAN_TAG_LEN: usize = 4;
/// Length of a Linux "cooked" (SLL) header.
pub const SLL_HEADER_LEN: usize = 16;
/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// TTL / hop limit of the datagrams built here (rxe uses the stack default, 64).
pub const DEFAULT_TTL: u8 = 64;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;
/// At most this many stacked VLAN tags are skipped (802.1ad outer + 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;

/// The link-layer header type of a captured frame (the pcap `LINKTYPE_*` values this crate
/// understands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinkType {
    /// `LINKTYPE_ETHERNET` (1): Ethernet II, optionally with 802.1Q/802.1ad tags.
    Ethernet,
    /// `LINKTYPE_RAW` (101): a bare IPv4 or IPv6 datagram, told apart by its version.
    Raw,
    /// `LINKTYPE_LINUX_SLL` (113): Linux "cooked" capture header.
    LinuxSll,
    /// `LINKTYPE_IPV4` (228): a bare IPv4 datagram.
    Ipv4,
    /// `LINKTYPE_IPV6` (229): a bare IPv6 datagram.
    Ipv6,
}

impl LinkType {
    /// Every supported link type.
    pub const ALL: [LinkType; 5] = [
        LinkType::Ethernet,
        LinkType::Raw,
        LinkType::LinuxSll,
        LinkType::Ipv4,
        LinkType::Ipv6,
    ];

    /// The link type for a pcap `LINKTYPE_*` number, if supported.
    pub const fn from_linktype(v: u32) -> Option<LinkType> {
        match v {
            1 => Some(LinkType::Ethernet),
            101 => Some(LinkType::Raw),
            113 => Some(LinkType::LinuxSll),
            228 => Some(LinkType::Ipv4),
            229 => Some(LinkType::Ipv6),
            _ => None,
        }
    }

    /// The pcap `LINKTYPE_*` number.
    pub const fn linktype(self) -> u32 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::Raw => 101,
            LinkType::LinuxSll => 113,
            LinkType::Ipv4 => 228,
            LinkType::Ipv6 => 229,
        }
    }
}

/// Why a well-formed frame is not a RoCEv2 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotRoce {
    /// The link layer carries something other than IPv4 or IPv6 (the EtherType or SLL protocol).
    EtherType(u16),
    /// The IP protocol / IPv6 next header is not UDP.
    IpProtocol(u8),
    /// IPv6 with an extension header, which RoCEv2 does not use and this crate does not follow.
    Ipv6ExtensionHeader(u8),
    /// An IPv4 fragment (MF set or a non-zero offset); RoCEv2 never fragments.
    Fragment,
    /// UDP to another destination port than 4791.
    UdpPort(u16),
}

impl core::fmt::Display for NotRoce {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NotRoce::EtherType(t) => write!(f, "EtherType {t:#06x}"),
            NotRoce::IpProtocol(p) => write!(f, "IP protocol {p}"),
            NotRoce::Ipv6ExtensionHeader(h) => write!(f, "IPv6 extension header {h}"),
            NotRoce::Fragment => f.write_str("IPv4 fragment"),
            NotRoce::UdpPort(p) => write!(f, "UDP destination port {p}"),
        }
    }
}

/// The protocol layer an error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layer {
    /// The link-layer header (Ethernet, VLAN tag, SLL).
    Link,
    /// The IPv4 header or datagram.
    Ipv4,
    /// The IPv6 header or datagram.
    Ipv6,
    /// The UDP header or datagram.
    Udp,
}

impl core::fmt::Display for Layer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Layer::Link => "link layer",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Udp => "UDP",
        })
    }
}

/// Why a link-layer frame did not yield a RoCEv2 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame is well formed but carries no RoCEv2 packet.
    #[error("not RoCEv2: {0}")]
    NotRoce(NotRoce),
    /// A header or the length it announces runs past the end of the captured bytes.
    #[error("{layer} truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Layer whose header or datagram is cut short.
        layer: Layer,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// The IP version nibble does not match what the link layer announced.
    #[error(
        "IP version {found} where the link layer carries IPv{}",
        expected.map_or_else(|| "4 or IPv6".to_owned(), |v| v.to_string())
    )]
    IpVersion {
        /// Version the link layer calls for (4 or 6), `None` when either would do.
        expected: Option<u8>,
        /// Version found in the header.
        found: u8,
    },
    /// The IPv4 header length field is below the minimum of 5 words.
    #[error("IPv4 header length {0} words is below 5")]
    Ipv4HeaderLength(u8),
    /// A UDP/4791 datagram whose IPv4 header has options, over which the ICRC is not defined here.
    #[error("IPv4 options ({0} header words) are not supported for RoCEv2")]
    Ipv4Options(u8),
    /// The IP length field is smaller than the headers it must contain.
    #[error("{layer} length {len} is smaller than its headers")]
    IpLength {
        /// IPv4 or IPv6.
        layer: Layer,
        /// IPv4 total length or IPv6 payload length.
        len: u16,
    },
    /// The UDP length is below 8 or beyond the IP payload.
    #[error("UDP length {udp_len} does not fit the {available}-byte IP payload")]
    UdpLength {
        /// UDP length field.
        udp_len: u16,
        /// Bytes of IP payload.
        available: usize,
    },
}

impl FrameError {
    /// Whether the frame was simply not RoCEv2 (as opposed to malformed).
    pub fn is_not_roce(&self) -> bool {
        matches!(self, FrameError::NotRoce(_))
    }
}

/// Why a datagram or frame could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The transport packet does not fit a UDP datagram in one IP packet.
    #[error("transport packet of {0} bytes is too long for one IP datagram")]
    TooLong(usize),
    /// The output buffer is smaller than the datagram.
    #[error("output buffer too small: need {needed} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes required.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The context's IP fields are of a kind this crate cannot frame.
    #[error("unsupported IP fields in the ICRC context")]
    UnsupportedIp,
    /// The datagram's IP version does not match the link type (e.g. IPv6 on `LINKTYPE_IPV4`).
    #[error("IP version {version} cannot be carried by link type {link:?}")]
    LinkMismatch {
        /// The link type asked for.
        link: LinkType,
        /// The datagram's version nibble.
        version: u8,
    },
}

/// A RoCEv2 packet found in a captured frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoceFrame<'a> {
    /// Addresses, IPv4 Identification and flags, and UDP ports, as on the wire: everything the
    /// ICRC covers besides the transport packet.
    pub ctx: IcrcContext,
    /// The UDP payload: the transport packet, ICRC included.
    pub payload: &'a [u8],
    /// IPv4 TOS or IPv6 traffic class (DSCP and ECN).
    pub traffic_class: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// IPv6 flow label (0 for IPv4).
    pub flow_label: u32,
    /// Whether the IPv4 header checksum is right (`None` for IPv6). Not enforced: a wrong one
    /// still yields a frame, whose ICRC then decides.
    pub ipv4_checksum_ok: Option<bool>,
    /// The UDP checksum field (rxe sends 0; it is not verified).
    pub udp_checksum: u16,
    /// The innermost VLAN ID, if the frame was tagged.
    pub vlan: Option<u16>,
}

impl RoceFrame<'_> {
    /// Source address.
    pub fn src(&self) -> IpAddr {
        match self.ctx.ip {
            IpFields::V4 { src, .. } => src.into(),
            IpFields::V6 { src, .. } => src.into(),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// Destination address.
    pub fn dst(&self) -> IpAddr {
        match self.ctx.ip {
            IpFields::V4 { dst, .. } => dst.into(),
            IpFields::V6 { dst, .. } => dst.into(),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// UDP source port.
    pub fn src_port(&self) -> u16 {
        self.ctx.src_port
    }

    /// UDP destination port (always 4791).
    pub fn dst_port(&self) -> u16 {
        self.ctx.dst_port
    }

    /// The IPv4 Identification (`None` for IPv6).
    pub fn ipv4_id(&self) -> Option<u16> {
        match self.ctx.ip {
            IpFields::V4 { identification, .. } => Some(identification),
            _ => None,
        }
    }

    /// The ECN bits of the IP header (3 = congestion experienced).
    pub fn ecn(&self) -> u8 {
        self.traffic_class & 3
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn need(layer: Layer, b: &[u8], needed: usize) -> Result<(), FrameError> {
    if b.len() < needed {
        Err(FrameError::Truncated {
            layer,
            needed,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}

/// Finds the RoCEv2 packet in a link-layer frame of type `link`.
pub fn decapsulate(link: LinkType, frame: &[u8]) -> Result<RoceFrame<'_>, FrameError> {
    match link {
        LinkType::Ethernet => {
            need(Layer::Link, frame, ETHERNET_HEADER_LEN)?;
            ethertype_payload(be16(frame, 12), &frame[ETHERNET_HEADER_LEN..])
        }
        LinkType::LinuxSll => {
            need(Layer::Link, frame, SLL_HEADER_LEN)?;
            ethertype_payload(be16(frame, 14), &frame[SLL_HEADER_LEN..])
        }
        LinkType::Raw => decapsulate_ip(frame, None),
        LinkType::Ipv4 => decapsulate_ip(frame, Some(4)),
        LinkType::Ipv6 => decapsulate_ip(frame, Some(6)),
    }
}

/// Skips VLAN tags after an EtherType and dispatches on the IP version.
fn ethertype_payload(mut ethertype: u16, mut rest: &[u8]) -> Result<RoceFrame<'_>, FrameError> {
    let mut vlan = None;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        need(Layer::Link, rest, VLAN_TAG_LEN)?;
        vlan = Some(be16(rest, 0) & 0x0FFF);
        ethertype = be16(rest, 2);
        rest = &rest[VLAN_TAG_LEN..];
    }
    let version = match ethertype {
        ETHERTYPE_IPV4 => 4,
        ETHERTYPE_IPV6 => 6,
        other => return Err(FrameError::NotRoce(NotRoce::EtherType(other))),
    };
    let mut f = decapsulate_ip(rest, Some(version))?;
    f.vlan = vlan;
    Ok(f)
}

/// Finds the RoCEv2 packet in a bare IP datagram. `version` is the IP version the link layer
/// announced, if any; trailing bytes after the IP datagram (Ethernet padding) are ignored.
pub fn decapsulate_ip(datagram: &[u8], version: Option<u8>) -> Result<RoceFrame<'_>, FrameError> {
    let found = datagram.first().map_or(0, |b| b >> 4);
    match (found, version) {
        (4, None | Some(4)) => ipv4(datagram),
        (6, None | Some(6)) => ipv6(datagram),
        _ if datagram.is_empty() => Err(FrameError::Truncated {
            layer: if version == Some(6) {
                Layer::Ipv6
            } else {
                Layer::Ipv4
            },
            needed: 1,
            have: 0,
        }),
        _ => Err(FrameError::IpVersion {
            expected: version,
            found,
        }),
    }
}

fn ipv4(b: &[u8]) -> Result<RoceFrame<'_>, FrameError> {
    need(Layer::Ipv4, b, IPV4_HEADER_LEN)?;
    let ihl = b[0] & 0x0F;
    if ihl < 5 {
        return Err(FrameError::Ipv4HeaderLength(ihl));
    }
    let protocol = b[9];
    if protocol != IPPROTO_UDP {
        return Err(FrameError::NotRoce(NotRoce::IpProtocol(protocol)));
    }
    let flags_fragment = be16(b, 6);
    if flags_fragment & 0x3FFF != 0 {
        return Err(FrameError::NotRoce(NotRoce::Fragment));
    }
    let header_len = usize::from(ihl) * 4;
    let total = be16(b, 2);
    if usize::from(total) < header_len + UDP_HEADER_LEN {
        return Err(FrameError::IpLength {
            layer: Layer::Ipv4,
            len: total,
        });
    }
    need(Layer::Ipv4, b, usize::from(total))?;
    let udp = &b[header_len..usize::from(total)];
    check_port(udp)?;
    if ihl != 5 {
        return Err(FrameError::Ipv4Options(ihl));
    }
    let (src_port, dst_port, udp_checksum, payload) = udp_payload(udp)?;
    let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    Ok(RoceFrame {
        ctx: IcrcContext {
            ip: IpFields::V4 {
                src,
                dst,
                identification: be16(b, 4),
                flags_fragment,
            },
            src_port,
            dst_port,
        },
        payload,
        traffic_class: b[1],
        hop_limit: b[8],
        flow_label: 0,
        ipv4_checksum_ok: Some(ipv4_checksum(&b[..header_len]) == 0),
        udp_checksum,
        vlan: None,
    })
}

/// IPv6 extension headers that may precede the upper-layer header (RFC 8200 §4, IANA).
fn is_ipv6_extension(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

fn ipv6(b: &[u8]) -> Result<RoceFrame<'_>, FrameError> {
    need(Layer::Ipv6, b, IPV6_HEADER_LEN)?;
    let next = b[6];
    if next != IPPROTO_UDP {
        return Err(FrameError::NotRoce(if is_ipv6_extension(next) {
            NotRoce::Ipv6ExtensionHeader(next)
        } else {
            NotRoce::IpProtocol(next)
        }));
    }
    let payload_len = be16(b, 4);
    if usize::from(payload_len) < UDP_HEADER_LEN {
        return Err(FrameError::IpLength {
            layer: Layer::Ipv6,
            len: payload_len,
        });
    }
    let end = IPV6_HEADER_LEN + usize::from(payload_len);
    need(Layer::Ipv6, b, end)?;
    let udp = &b[IPV6_HEADER_LEN..end];
    check_port(udp)?;
    let (src_port, dst_port, udp_checksum, payload) = udp_payload(udp)?;
    let mut src = [0u8; 16];
    src.copy_from_slice(&b[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&b[24..40]);
    let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok(RoceFrame {
        ctx: IcrcContext::v6(Ipv6Addr::from(src), Ipv6Addr::from(dst), src_port, dst_port),
        payload,
        traffic_class: (first >> 20) as u8,
        hop_limit: b[7],
        flow_label: first & 0xF_FFFF,
        ipv4_checksum_ok: None,
        udp_checksum,
        vlan: None,
    })
}

/// Checks the UDP destination port, which is all that decides whether this is RoCEv2.
fn check_port(udp: &[u8]) -> Result<(), FrameError> {
    need(Layer::Udp, udp, UDP_HEADER_LEN)?;
    let dst_port = be16(udp, 2);
    if dst_port != ROCE_UDP_PORT {
        return Err(FrameError::NotRoce(NotRoce::UdpPort(dst_port)));
    }
    Ok(())
}

/// Splits a UDP datagram (at least 8 bytes, checked by [`check_port`]) into ports, checksum and
/// payload. A UDP length shorter than the IP payload trims it, as Linux does.
fn udp_payload(udp: &[u8]) -> Result<(u16, u16, u16, &[u8]), FrameError> {
    need(Layer::Udp, udp, UDP_HEADER_LEN)?;
    let udp_len = be16(udp, 4);
    if usize::from(udp_len) < UDP_HEADER_LEN || usize::from(udp_len) > udp.len() {
        return Err(FrameError::UdpLength {
            udp_len,
            available: udp.len(),
        });
    }
    Ok((
        be16(udp, 0),
        be16(udp, 2),
        be16(udp, 6),
        &udp[UDP_HEADER_LEN..usize::from(udp_len)],
    ))
}

/// The ones'-complement sum of 16-bit words used by the IPv4 header checksum (RFC 1071). Over a
/// header with a correct checksum it returns 0.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// Length of the IP datagram (IP + UDP headers + transport packet) for a transport packet of
/// `transport_len` bytes.
pub fn datagram_len(ip: &IpFields, transport_len: usize) -> usize {
    let ip_header = match ip {
        IpFields::V6 { .. } => IPV6_HEADER_LEN,
        _ => IPV4_HEADER_LEN,
    };
    ip_header + UDP_HEADER_LEN + transport_len
}

/// Writes an IPv4 or IPv6 + UDP datagram carrying `transport` (a whole transport packet, ICRC
/// included) into the start of `out`, from the addresses, ports and IPv4 Identification/flags
/// in `ctx`: TOS/traffic class 0, TTL/hop limit 64, a valid IPv4 header checksum, UDP checksum
/// 0. Returns the datagram length.
pub fn emit_datagram(
    ctx: &IcrcContext,
    transport: &[u8],
    out: &mut [u8],
) -> Result<usize, BuildError> {
    let len = datagram_len(&ctx.ip, transport.len());
    let udp_len = u16::try_from(UDP_HEADER_LEN + transport.len())
        .map_err(|_| BuildError::TooLong(transport.len()))?;
    if let IpFields::V4 { .. } = ctx.ip {
        u16::try_from(len).map_err(|_| BuildError::TooLong(transport.len()))?;
    }
    if out.len() < len {
        return Err(BuildError::BufferTooSmall {
            needed: len,
            have: out.len(),
        });
    }
    let out = &mut out[..len];
    let ip_len = match ctx.ip {
        IpFields::V6 { src, dst } => {
            out[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
            out[4..6].copy_from_slice(&udp_len.to_be_bytes());
            out[6] = IPPROTO_UDP;
            out[7] = DEFAULT_TTL;
            out[8..24].copy_from_slice(&src.octets());
            out[24..40].copy_from_slice(&dst.octets());
            IPV6_HEADER_LEN
        }
        IpFields::V4 {
            src,
            dst,
            identification,
            flags_fragment,
        } => {
            let h = &mut out[..IPV4_HEADER_LEN];
            h[0] = 0x45;
            h[1] = 0;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            h[4..6].copy_from_slice(&identification.to_be_bytes());
            h[6..8].copy_from_slice(&flags_fragment.to_be_bytes());
            h[8] = DEFAULT_TTL;
            h[9] = IPPROTO_UDP;
            h[10..12].fill(0);
            h[12..16].copy_from_slice(&src.octets());
            h[16..20].copy_from_slice(&dst.octets());
            let sum = ipv4_checksum(h);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            IPV4_HEADER_LEN
        }
        // `IpFields` is non-exhaustive; a future variant cannot be framed here.
        _ => return Err(BuildError::UnsupportedIp),
    };
    let udp = &mut out[ip_len..];
    udp[0..2].copy_from_slice(&ctx.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&ctx.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].fill(0);
    udp[UDP_HEADER_LEN..].copy_from_slice(transport);
    Ok(len)
}

/// [`emit_datagram`] into a new vector.
pub fn build_datagram(ctx: &IcrcContext, transport: &[u8]) -> Result<Vec<u8>, BuildError> {
    let mut out = vec![0u8; datagram_len(&ctx.ip, transport.len())];
    let n = emit_datagram(ctx, transport, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Wraps an IP datagram in the link-layer header of `link`: Ethernet with zero MAC addresses,
/// an SLL header marked as sent by us, or nothing for the raw IP link types.
pub fn encapsulate(link: LinkType, datagram: &[u8]) -> Result<Vec<u8>, BuildError> {
    let version = datagram.first().map_or(0, |b| b >> 4);
    let ethertype = match (version, link) {
        (4, LinkType::Ipv6) | (6, LinkType::Ipv4) => {
            return Err(BuildError::LinkMismatch { link, version })
        }
        (4, _) => ETHERTYPE_IPV4,
        (6, _) => ETHERTYPE_IPV6,
        _ => return Err(BuildError::LinkMismatch { link, version }),
    };
    let mut out = Vec::with_capacity(SLL_HEADER_LEN + datagram.len());
    match link {
        LinkType::Ethernet => {
            out.extend_from_slice(&[0u8; 12]);
            out.extend_from_slice(&ethertype.to_be_bytes());
        }
        LinkType::LinuxSll => {
            // Packet type 4 (sent by us), ARPHRD_ETHER, a zero 6-byte address, protocol.
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&6u16.to_be_bytes());
            out.extend_from_slice(&[0u8; 8]);
            out.extend_from_slice(&ethertype.to_be_bytes());
        }
        LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 => {}
    }
    out.extend_from_slice(datagram);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx4() -> IcrcContext {
        IcrcContext::v4(
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
            0x1234,
            49152,
            4791,
        )
    }

    #[test]
    fn built_ipv4_datagram_decapsulates_to_the_same_context() {
        let transport = [0x04u8; 20];
        let d = build_datagram(&ctx4(), &transport).unwrap();
        assert_eq!(d.len(), 48);
        assert_eq!(ipv4_checksum(&d[..20]), 0);
        assert_eq!(&d[6..8], &[0x40, 0]);
        let f = decapsulate(LinkType::Raw, &d).unwrap();
        assert_eq!(f.ctx, ctx4());
        assert_eq!(f.payload, &transport);
        assert_eq!(f.ipv4_checksum_ok, Some(true));
        assert_eq!(f.hop_limit, 64);
    }

    #[test]
    fn every_link_type_round_trips() {
        let c6 = IcrcContext::v6(
            "fd77::3".parse().unwrap(),
            "fd77::2".parse().unwrap(),
            1,
            4791,
        );
        for ctx in [ctx4(), c6] {
            let d = build_datagram(
                &ctx,
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            )
            .unwrap();
            for link in LinkType::ALL {
                match encapsulate(link, &d) {
                    Ok(frame) => {
                        let f = decapsulate(link, &frame).unwrap();
                        assert_eq!(f.ctx, ctx);
                        assert_eq!(f.payload.len(), 16);
                    }
                    Err(BuildError::LinkMismatch { .. }) => {
                        assert!(matches!(link, LinkType::Ipv4 | LinkType::Ipv6))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    #[test]
    fn vlan_tags_and_padding_are_skipped() {
        let d = build_datagram(&ctx4(), &[0u8; 16]).unwrap();
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x88, 0xA8, 0x00, 0x05, 0x81, 0x00, 0x20, 0x07, 0x08, 0x00]);
        frame.extend_from_slice(&d);
        frame.extend_from_slice(&[0xEE; 6]);
        let f = decapsulate(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(f.vlan, Some(7));
        assert_eq!(f.payload.len(), 16);
    }

    #[test]
    fn non_roce_and_malformed_are_typed() {
        let mut d = build_datagram(&ctx4(), &[0u8; 16]).unwrap();
        d[23] = 53;
        assert_eq!(
            decapsulate(LinkType::Raw, &d),
            Err(FrameError::NotRoce(NotRoce::UdpPort(0x1235)))
        );
        let d = build_datagram(&ctx4(), &[0u8; 16]).unwrap();
        assert!(matches!(
            decapsulate(LinkType::Raw, &d[..30]),
            Err(FrameError::Truncated {
                layer: Layer::Ipv4,
                ..
            })
        ));
        assert!(matches!(
            decapsulate(LinkType::Ipv6, &d),
            Err(FrameError::IpVersion {
                expected: Some(6),
                found: 4
            })
        ));
        assert!(matches!(
            decapsulate(LinkType::Ethernet, &[0u8; 5]),
            Err(FrameError::Truncated {
                layer: Layer::Link,
                ..
            })
        ));
        assert!(decapsulate(LinkType::Raw, &[]).is_err());
        assert_eq!(
            decapsulate(LinkType::Raw, &[0x50; 40])
                .unwrap_err()
                .to_string(),
            "IP version 5 where the link layer carries IPv4 or IPv6"
        );
    }

    #[test]
    fn no_prefix_of_a_frame_panics() {
        let d = build_datagram(&ctx4(), &[0u8; 16]).unwrap();
        for link in LinkType::ALL {
            if let Ok(frame) = encapsulate(link, &d) {
                for n in 0..frame.len() {
                    assert!(decapsulate(link, &frame[..n]).is_err());
                }
            }
        }
    }
}

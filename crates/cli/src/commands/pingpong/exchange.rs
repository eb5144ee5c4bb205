//! The TCP side channel of rdma-core's `ibv_*_pingpong` examples (their `pp_client_exch_dest`
//! and `pp_server_exch_dest`), reimplemented from their observable behaviour:
//!
//! - every QP is described by one fixed-size message, the text `"%04x:%06x:%06x:%s"` of LID,
//!   QPN, PSN and GID followed by a NUL: `sizeof "0000:000000:000000:" + 32 hex digits`, 52
//!   bytes;
//! - the GID is 32 hex digits, four groups of eight, each the big-endian value of one 32-bit
//!   word of the GID (`gid_to_wire_gid` prints `htobe32` of words loaded in host order), which
//!   on any host is simply the 16 GID bytes in order;
//! - the client writes its message(s) first, reads the server's, then writes `"done"` with its
//!   NUL (5 bytes) and closes; the server reads the client's message(s), moves its QPs to RTS,
//!   writes its own message(s) and reads the 5-byte `"done"`;
//! - `ibv_srq_pingpong` always sends 256 messages (`MAX_QP`) whatever `-q` is; the ones past
//!   the QP count are all zero.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr};

/// Bytes of one message: `"0000:000000:000000:"`, 32 hex digits and a NUL.
pub const MSG_LEN: usize = 52;
/// The client's last message, with its NUL.
pub const DONE: &[u8; 5] = b"done\0";
/// Messages `ibv_srq_pingpong` sends each way (`MAX_QP`).
pub const SRQ_MSGS: usize = 256;

/// One side's description of a QP (`struct pingpong_dest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dest {
    /// Local identifier (0 on RoCE).
    pub lid: u32,
    /// QP number.
    pub qpn: u32,
    /// First PSN the QP sends.
    pub psn: u32,
    /// GID, as 16 bytes in network order.
    pub gid: [u8; 16],
}

impl Dest {
    /// The message for this QP.
    pub fn encode(self) -> [u8; MSG_LEN] {
        let text = format!(
            "{:04x}:{:06x}:{:06x}:{}",
            self.lid,
            self.qpn,
            self.psn,
            gid_to_wire(&self.gid)
        );
        let mut msg = [0u8; MSG_LEN];
        let n = text.len().min(MSG_LEN - 1);
        msg[..n].copy_from_slice(&text.as_bytes()[..n]);
        msg
    }

    /// Parses a message as `sscanf("%x:%x:%x:%s")` would.
    pub fn decode(msg: &[u8]) -> Result<Dest, String> {
        let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
        let text =
            std::str::from_utf8(&msg[..end]).map_err(|_| "peer message is not text".to_string())?;
        let bad = || format!("malformed peer message {text:?}");
        let mut parts = text.splitn(4, ':');
        let mut hex = || -> Result<u32, String> {
            u32::from_str_radix(parts.next().ok_or_else(bad)?, 16).map_err(|_| bad())
        };
        let (lid, qpn, psn) = (hex()?, hex()?, hex()?);
        let gid = wire_to_gid(parts.next().ok_or_else(bad)?).ok_or_else(bad)?;
        Ok(Dest { lid, qpn, psn, gid })
    }

    /// The GID as an IPv6 address (what `inet_ntop(AF_INET6)` prints).
    pub fn gid_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.gid)
    }

    /// The IP address the GID stands for, or `None` if its interface ID is zero (the peer sent
    /// no GID; rdma-core then builds no GRH).
    pub fn ip(&self) -> Option<IpAddr> {
        if self.gid[8..].iter().all(|&b| b == 0) {
            return None;
        }
        Some(crate::commands::netif::canonical(IpAddr::V6(
            self.gid_addr(),
        )))
    }
}

/// `gid_to_wire_gid`: the GID bytes as 32 lowercase hex digits.
pub fn gid_to_wire(gid: &[u8; 16]) -> String {
    gid.chunks(4)
        .map(|w| format!("{:08x}", u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .collect()
}

/// `wire_gid_to_gid`: four groups of eight hex digits, each a big-endian 32-bit word.
pub fn wire_to_gid(s: &str) -> Option<[u8; 16]> {
    let s = s.get(..32)?;
    let mut gid = [0u8; 16];
    for (i, w) in gid.chunks_mut(4).enumerate() {
        let v = u32::from_str_radix(s.get(i * 8..i * 8 + 8)?, 16).ok()?;
        w.copy_from_slice(&v.to_be_bytes());
    }
    Some(gid)
}

/// Writes one message per entry of `dests`, each with one `write` call.
pub fn write_dests(w: &mut impl Write, dests: &[Dest]) -> io::Result<()> {
    for d in dests {
        w.write_all(&d.encode())?;
    }
    w.flush()
}

/// Reads `n` messages.
pub fn read_dests(r: &mut impl Read, n: usize) -> Result<Vec<Dest>, String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut msg = [0u8; MSG_LEN];
        r.read_exact(&mut msg)
            .map_err(|e| format!("couldn't read remote address [{i}]: {e}"))?;
        out.push(Dest::decode(&msg)?);
    }
    Ok(out)
}

/// Reads the client's `"done"`.
pub fn read_done(r: &mut impl Read) -> Result<(), String> {
    let mut buf = [0u8; 5];
    r.read_exact(&mut buf)
        .map_err(|e| format!("couldn't read the client's \"done\": {e}"))?;
    if &buf != DONE {
        return Err(format!("expected \"done\" from the client, got {buf:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let d = Dest {
            lid: 0,
            qpn: 0x11,
            psn: 0xabcdef,
            gid: "::ffff:10.66.1.2".parse::<Ipv6Addr>().unwrap().octets(),
        };
        let m = d.encode();
        assert_eq!(m.len(), 52);
        assert_eq!(
            &m[..51],
            b"0000:000011:abcdef:00000000000000000000ffff0a420102"
        );
        assert_eq!(m[51], 0);
        assert_eq!(Dest::decode(&m).unwrap(), d);
        assert_eq!(d.ip(), Some("10.66.1.2".parse().unwrap()));
    }

    #[test]
    fn ipv6_and_zero_gids() {
        let g: Ipv6Addr = "fd66:3::1".parse().unwrap();
        let w = gid_to_wire(&g.octets());
        assert_eq!(w, "fd660003000000000000000000000001");
        assert_eq!(wire_to_gid(&w), Some(g.octets()));
        let zero = Dest::decode(&Dest::default().encode()).unwrap();
        assert_eq!(zero, Dest::default());
        assert_eq!(zero.ip(), None);
        assert_eq!(zero.gid_addr().to_string(), "::");
    }

    #[test]
    fn sscanf_leniency_and_errors() {
        // sscanf's %x takes upper case too.
        let d = Dest::decode(b"0000:00001A:0000FF:fe800000000000000000000000000001\0").unwrap();
        assert_eq!((d.qpn, d.psn), (0x1a, 0xff));
        assert!(Dest::decode(b"0000:000011\0").is_err());
        assert!(Dest::decode(b"zz:1:2:00000000000000000000000000000000\0").is_err());
    }
}

//! perftest's TCP side channel, as perftest 4.5-0.17 (Debian's `perftest 4.5+0.17`, which calls
//! itself version "6.06") speaks it. Reimplemented from its behaviour; the comments name the
//! function of `src/perftest_communication.c` each step follows.
//!
//! Every exchange is `ctx_xchg_data_ethernet` / `ctx_hand_shake`: the client writes its
//! message then reads the server's, the server reads then writes. perftest reads each message
//! with one `read()` of exactly its size and gives up on a short read, so each of ours goes out
//! in one `write()`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv6Addr, TcpStream};
use std::time::{Duration, Instant};

/// The version we announce: perftest 4.5-0.17's `VERSION`. Peers from 6.28 on negotiate a
/// parameter block (`negotiate_params`) only with peers of 6.28 or later, so they skip it.
pub const VERSION: &str = "6.06";
/// `MAX_VERSION`: the version message is 16 bytes, a NUL-terminated string.
pub const VERSION_LEN: usize = 16;
/// Where, after the version string's NUL, a uroce peer marks itself. perftest reads the
/// version with `atof`, which stops at the NUL, so it never sees this.
const UROCE_MARK_AT: usize = 8;
const UROCE_MARK: &[u8] = b"uroce";
/// `check_version_compatibility`: perftest refuses peers older than 5.70.
pub const MIN_PEER_VERSION: f64 = 5.70;

/// `KEY_MSG_SIZE_GID`: `KEY_PRINT_FMT_GID` printed into a 108-byte buffer, all of it sent:
/// "%04x:%04x:%06x:%06x:%08x:%016llx:" (50 characters), 16 x "%02x:" (48), "%08x:" (9),
/// then the NUL. On RoCE perftest always sets a GID index (`check_link`), so this is the
/// only key message it sends there (the 59-byte one without GID is for IB without -x).
pub const KEY_MSG_SIZE_GID: usize = 108;

/// Written after the last handshake by perftest up to 6.2x (`ctx_close_connection`), never
/// read by the other side: `"done"` with its NUL.
pub const DONE: &[u8] = b"done\0";

/// What `srqn` carries in a uroce server's closing handshake to a uroce client (perftest
/// sends it only for XRC/DC and ignores it on RC): the verdict of the server's data check.
pub const VERDICT_OK: u32 = 0x0000_600d;
/// The server's data check failed.
pub const VERDICT_BAD: u32 = 0x0000_0bad;

/// One QP's `struct pingpong_dest` as the key message carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dest {
    /// LID (0 on RoCE).
    pub lid: u32,
    /// Responder resources for READ/atomics (`out_reads`); the peer's `max_rd_atomic`.
    pub out_reads: u32,
    /// QP number.
    pub qpn: u32,
    /// First PSN.
    pub psn: u32,
    /// R_Key of the buffer.
    pub rkey: u32,
    /// Address the peer targets (WRITE/READ/atomics) or where data lands.
    pub vaddr: u64,
    /// GID.
    pub gid: [u8; 16],
    /// SRQ number (XRC/DC; 0 on RC, or a uroce verdict).
    pub srqn: u32,
}

impl Dest {
    /// `ethernet_write_keys` with a GID: `KEY_PRINT_FMT_GID`, NUL-padded to 108 bytes. The
    /// fields are masked to their widths so the text is always 107 characters.
    pub fn encode(&self) -> [u8; KEY_MSG_SIZE_GID] {
        let mut s = format!(
            "{:04x}:{:04x}:{:06x}:{:06x}:{:08x}:{:016x}:",
            self.lid & 0xffff,
            self.out_reads & 0xffff,
            self.qpn & 0xff_ffff,
            self.psn & 0xff_ffff,
            self.rkey,
            self.vaddr
        );
        for b in self.gid {
            s.push_str(&format!("{b:02x}:"));
        }
        s.push_str(&format!("{:08x}:", self.srqn));
        debug_assert_eq!(s.len(), KEY_MSG_SIZE_GID - 1);
        let mut out = [0u8; KEY_MSG_SIZE_GID];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    /// `ethernet_read_keys` with a GID: colon-separated hex fields (perftest parses each with
    /// `strtol`/`strtoull` up to the next colon): LID, out_reads, QPN, PSN, R_Key, VA, 16 GID
    /// bytes, SRQN.
    pub fn decode(msg: &[u8]) -> Result<Dest, String> {
        let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
        let text = std::str::from_utf8(&msg[..end])
            .map_err(|_| "the peer's address message is not text".to_string())?;
        let f: Vec<&str> = text.split(':').collect();
        if f.len() < 23 {
            return Err(format!(
                "couldn't parse the peer's address message <{text}>"
            ));
        }
        let hex = |i: usize| {
            u64::from_str_radix(f[i], 16)
                .map_err(|_| format!("bad field {i} ({:?}) in the peer's address <{text}>", f[i]))
        };
        let mut gid = [0u8; 16];
        for (k, g) in gid.iter_mut().enumerate() {
            *g = hex(6 + k)? as u8;
        }
        Ok(Dest {
            lid: hex(0)? as u32,
            out_reads: hex(1)? as u32,
            qpn: hex(2)? as u32,
            psn: hex(3)? as u32,
            rkey: hex(4)? as u32,
            vaddr: hex(5)?,
            gid,
            srqn: hex(22)? as u32,
        })
    }

    /// The GID as an IPv6 address.
    pub fn gid_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.gid)
    }
}

/// The version message: [`VERSION`], its NUL, and the uroce mark.
pub fn version_message() -> [u8; VERSION_LEN] {
    let mut v = [0u8; VERSION_LEN];
    v[..VERSION.len()].copy_from_slice(VERSION.as_bytes());
    v[UROCE_MARK_AT..UROCE_MARK_AT + UROCE_MARK.len()].copy_from_slice(UROCE_MARK);
    v
}

/// The peer's version as perftest reads it (`atof` of the string) and whether it is uroce.
pub fn parse_version(v: &[u8; VERSION_LEN]) -> (String, f64, bool) {
    let end = v.iter().position(|&b| b == 0).unwrap_or(VERSION_LEN);
    let s = String::from_utf8_lossy(&v[..end]).to_string();
    let num: String = s
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let f = num.parse::<f64>().unwrap_or(0.0);
    let uroce = end < UROCE_MARK_AT && v[UROCE_MARK_AT..].starts_with(UROCE_MARK);
    (s, f, uroce)
}

/// One report of `xchg_bw_reports`: what the client measured, in its report units (MB/s =
/// 2^20 bytes/s, or Gb/s with `--report_gbits`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BwReport {
    /// Message size.
    pub size: u64,
    /// Messages, all QPs together (perftest multiplies by the QP count).
    pub iters: u64,
    /// Peak bandwidth.
    pub bw_peak: f64,
    /// Average bandwidth.
    pub bw_avg: f64,
    /// Messages per second, millions.
    pub msg_rate: f64,
}

/// Progress steps a waiting read runs between two reads of the socket.
const PUMPS_PER_READ: usize = 16;

/// The TCP connection, and what to do while waiting on it.
pub struct Channel<'a> {
    stream: TcpStream,
    client: bool,
    /// Run while a read waits (polled progress: the device must keep answering meanwhile).
    pump: Option<&'a dyn Fn()>,
    timeout: Option<Duration>,
}

impl<'a> Channel<'a> {
    /// Wraps a connected stream; `client` decides who writes first.
    pub fn new(stream: TcpStream, client: bool, timeout: Option<Duration>) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Channel {
            stream,
            client,
            pump: None,
            timeout,
        })
    }

    /// From now on, reads call `pump` while they wait (or not, with `None`).
    pub fn set_pump(&mut self, pump: Option<&'a dyn Fn()>) -> io::Result<()> {
        self.stream.set_nonblocking(pump.is_some())?;
        self.stream
            .set_read_timeout(if pump.is_some() { None } else { self.timeout })?;
        self.pump = pump;
        Ok(())
    }

    fn write_msg(&mut self, msg: &[u8]) -> io::Result<()> {
        // One write() per message; a non-blocking socket with room for a few hundred bytes
        // takes them whole, but retry a full buffer anyway.
        let mut off = 0;
        while off < msg.len() {
            match self.stream.write(&msg[off..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if let Some(p) = self.pump {
                        p();
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read_msg(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let start = Instant::now();
        let mut off = 0;
        let mut idle = 0u32;
        while off < buf.len() {
            match self.stream.read(&mut buf[off..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the peer closed the connection",
                    ))
                }
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if let Some(p) = self.pump {
                        // Several progress steps per look at the socket: a polled bw server
                        // waits here for the whole run, and a TCP read per step took 13 % of
                        // its CPU from the packets. The message is seen a few µs later.
                        for _ in 0..PUMPS_PER_READ {
                            p();
                        }
                        idle = idle.wrapping_add(1);
                        if idle % 1024 == 0 {
                            if let Some(t) = self.timeout {
                                if start.elapsed() >= t {
                                    return Err(ErrorKind::TimedOut.into());
                                }
                            }
                        }
                    } else {
                        // A read timeout on a blocking socket.
                        return Err(ErrorKind::TimedOut.into());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// `ctx_xchg_data_ethernet`: the client writes then reads, the server reads then writes.
    pub fn xchg(&mut self, mine: &[u8], theirs: &mut [u8]) -> io::Result<()> {
        if self.client {
            self.write_msg(mine)?;
            self.read_msg(theirs)
        } else {
            self.read_msg(theirs)?;
            self.write_msg(mine)
        }
    }

    /// `ctx_hand_shake` with `ethernet_write_keys`/`ethernet_read_keys` (GID form).
    pub fn hand_shake(&mut self, mine: &Dest) -> Result<Dest, String> {
        let mut theirs = [0u8; KEY_MSG_SIZE_GID];
        self.xchg(&mine.encode(), &mut theirs)
            .map_err(|e| format!("exchanging QP addresses with the peer: {e}"))?;
        Dest::decode(&theirs)
    }

    /// `exchange_versions`: 16 bytes each way.
    pub fn exchange_versions(&mut self) -> io::Result<[u8; VERSION_LEN]> {
        let mut theirs = [0u8; VERSION_LEN];
        self.xchg(&version_message(), &mut theirs)?;
        Ok(theirs)
    }

    /// `check_sys_data` (peers from 5.32 on): the cycle buffer (page size) then the cache
    /// line size, each a big-endian 32-bit int; both sides take the larger of each.
    pub fn check_sys_data(&mut self, cycle: u32, cache_line: u32) -> io::Result<(u32, u32)> {
        let mut r = [0u8; 4];
        self.xchg(&cycle.to_be_bytes(), &mut r)?;
        let rem_cycle = i32::from_be_bytes(r);
        self.xchg(&cache_line.to_be_bytes(), &mut r)?;
        let rem_cl = i32::from_be_bytes(r);
        let pick = |mine: u32, theirs: i32| {
            u32::try_from(theirs)
                .ok()
                .filter(|&t| t > mine)
                .unwrap_or(mine)
        };
        Ok((pick(cycle, rem_cycle), pick(cache_line, rem_cl)))
    }

    /// `check_mtu` (peers from 5.31 on): the `ibv_mtu` value printed with "%d" into 2 bytes
    /// ("5" and its NUL); both sides take the smaller if the peer's is valid (1..=5).
    pub fn check_mtu(&mut self, mine: u32) -> io::Result<u32> {
        let s = format!("{mine}");
        let mut msg = [0u8; 2];
        msg[..s.len().min(2)].copy_from_slice(&s.as_bytes()[..s.len().min(2)]);
        let mut r = [0u8; 2];
        self.xchg(&msg, &mut r)?;
        let end = r.iter().position(|&b| b == 0).unwrap_or(2);
        let rem: u32 = std::str::from_utf8(&r[..end])
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        Ok(if (1..=5).contains(&rem) && mine > rem {
            rem
        } else {
            mine
        })
    }

    /// `xchg_bw_reports` for peers from 5.33 on: size (8 bytes), iterations (8 bytes), peak,
    /// average and message rate (doubles), each big-endian and exchanged on its own.
    pub fn xchg_bw_reports(&mut self, mine: &BwReport) -> io::Result<BwReport> {
        let mut r = [0u8; 8];
        self.xchg(&mine.size.to_be_bytes(), &mut r)?;
        let size = u64::from_be_bytes(r);
        self.xchg(&mine.iters.to_be_bytes(), &mut r)?;
        let iters = u64::from_be_bytes(r);
        let mut f = |v: f64| -> io::Result<f64> {
            self.xchg(&v.to_bits().to_be_bytes(), &mut r)?;
            Ok(f64::from_bits(u64::from_be_bytes(r)))
        };
        let bw_peak = f(mine.bw_peak)?;
        let bw_avg = f(mine.bw_avg)?;
        let msg_rate = f(mine.msg_rate)?;
        Ok(BwReport {
            size,
            iters,
            bw_peak,
            bw_avg,
            msg_rate,
        })
    }

    /// `ctx_close_connection` of perftest up to 6.2x: a last handshake, then "done" (which
    /// nobody reads; newer perftest no longer sends it and may have closed already).
    pub fn close(&mut self, mine: &Dest) -> Result<Dest, String> {
        let theirs = self.hand_shake(mine)?;
        let _ = self.write_msg(DONE);
        Ok(theirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_message_round_trip() {
        let d = Dest {
            lid: 0,
            out_reads: 0x80,
            qpn: 0x11,
            psn: 0xabcdef,
            rkey: 0x1234_5678,
            vaddr: 0x5555_0000_1000,
            gid: std::net::Ipv4Addr::new(10, 66, 0, 1)
                .to_ipv6_mapped()
                .octets(),
            srqn: 0,
        };
        let m = d.encode();
        let text = std::str::from_utf8(&m[..107]).unwrap();
        assert_eq!(
            text,
            "0000:0080:000011:abcdef:12345678:0000555500001000:\
             00:00:00:00:00:00:00:00:00:00:ff:ff:0a:42:00:01:00000000:"
        );
        assert_eq!(m[107], 0);
        assert_eq!(Dest::decode(&m).unwrap(), d);
        assert_eq!(d.gid_addr().to_string(), "::ffff:10.66.0.1");
    }

    #[test]
    fn versions() {
        let v = version_message();
        assert_eq!(&v[..5], b"6.06\0");
        assert_eq!(parse_version(&v), ("6.06".to_string(), 6.06, true));
        let mut p = [0u8; 16];
        p[..4].copy_from_slice(b"6.29");
        assert_eq!(parse_version(&p), ("6.29".to_string(), 6.29, false));
    }
}

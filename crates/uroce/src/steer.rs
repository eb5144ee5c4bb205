//! QPN-steered receive: several engines (processes, or threads of one) share one IP and UDP
//! port 4791, and the kernel hands each packet to the engine that owns its destination QP.
//!
//! Every engine's socket joins the address's `SO_REUSEPORT` group. A classic BPF program
//! attached with `SO_ATTACH_REUSEPORT_CBPF` (no privilege needed) runs on each received
//! datagram, with the UDP payload at offset 0 (`run_bpf_filter` pulls the UDP header), reads
//! the slot byte of the BTH DestQP (payload byte 5: DestQP is bytes 4..8, low 24 bits, IBTA
//! 9.2) and returns the group index of that slot's socket. QPNs are `slot << 16 | n`, so the
//! QPN names the engine.
//!
//! The kernel's group indices are not stable: when a socket leaves, the last one moves into
//! its place (`reuseport_detach_sock`), and an index the program returns that is out of range
//! falls back to the kernel's hash choice. So the program is a table slot → current index,
//! rebuilt (any member may replace the group's program) whenever membership changes, from the
//! indices engines record in the coordination directory (`coord.rs`). An engine learns its
//! own index from the kernel itself: it sends probes through the program's identity branch
//! (DestQP slot 255: "return index k") for every k and sees which one it receives. Every engine
//! checks its entry every [`CHECK_EVERY`] with a probe through its own slot and repairs the
//! table when that probe goes astray (a process killed with `kill -9` leaves without telling
//! anyone). A graceful leave records the move the kernel is about to make, attaches the table
//! for after it, then detaches its socket synchronously with `connect` (`udp_lib_rehash`).
//!
//! Whatever the table says, an engine hands its engine only packets whose DestQP is in its
//! own slot; others are counted ([`SteerCounters::foreign_drops`]) and dropped, never delivered
//! to a QP of the wrong engine. While the table is being repaired, RC retransmission recovers
//! what was dropped.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::coord::SLOTS;

/// QPN bits below the slot.
pub const SLOT_SHIFT: u32 = 16;
/// The DestQP slot of probes: the program returns the index the probe names.
const PROBE_SLOT: u8 = 0xFF;
/// How often each engine checks that the group's program still sends its slot to it.
/// Short against RC's retry budget (a peer gives up after 7 ACK timeouts, 0.5 s with
/// perftest's and the examples' timeout 14): a member whose socket the kernel moved is
/// unreachable until its next check.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(50);
/// How long a probe may take to come back (loopback: microseconds when not loaded).
pub(crate) const PROBE_WAIT: Duration = Duration::from_millis(50);

/// Probe datagrams: 24 bytes, opcode 0xFF (manufacturer-specific, never an IBTA packet),
/// DestQP where the BTH has it, a nonce, and a magic tail.
const PROBE_LEN: usize = 24;
const PROBE_MAGIC: &[u8; 8] = b"uroceSTR";

/// QPNs of slot `slot`: `slot << 16 | 0x11 ..= slot << 16 | 0xFFFF` (`| 0` is the probes').
pub fn qpn_range(slot: u8) -> (u32, u32) {
    let base = u32::from(slot) << SLOT_SHIFT;
    (base | 0x11, base | 0xFFFF)
}

/// The slot a QPN belongs to.
pub fn slot_of(qpn: u32) -> u8 {
    ((qpn >> SLOT_SHIFT) & 0xFF) as u8
}

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h): BPF_LD (0) | BPF_B | BPF_ABS.
const BPF_LD_B_ABS: u16 = 0x10 | 0x20;
const BPF_JEQ_K: u16 = 0x05 | 0x10;
const BPF_RET_K: u16 = 0x06;
const BPF_RET_A: u16 = 0x06 | 0x10;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The group's program for `table` (slot, current group index). A packet too short for the
/// loads ends the program with 0 (socket 0, which drops it as malformed or foreign).
pub(crate) fn program(table: &[(u8, u32)]) -> Vec<libc::sock_filter> {
    let mut p = vec![
        insn(BPF_LD_B_ABS, 0, 0, 5),
        insn(BPF_JEQ_K, 0, 2, u32::from(PROBE_SLOT)),
        insn(BPF_LD_B_ABS, 0, 0, 7),
        insn(BPF_RET_A, 0, 0, 0),
    ];
    for &(slot, index) in table {
        p.push(insn(BPF_JEQ_K, 0, 1, u32::from(slot)));
        p.push(insn(BPF_RET_K, 0, 0, index));
    }
    // Nobody owns the slot: out of range, so the kernel picks a socket by hash; its engine
    // counts and drops the packet.
    p.push(insn(BPF_RET_K, 0, 0, u32::MAX));
    p
}

/// A probe for DestQP `dest_qp` carrying `nonce`.
pub(crate) fn probe(dest_qp: u32, nonce: u64) -> [u8; PROBE_LEN] {
    let mut b = [0u8; PROBE_LEN];
    b[0] = 0xFF;
    b[4..8].copy_from_slice(&(dest_qp & 0xFF_FFFF).to_be_bytes());
    b[8..16].copy_from_slice(&nonce.to_be_bytes());
    b[16..].copy_from_slice(PROBE_MAGIC);
    b
}

fn parse_probe(b: &[u8]) -> Option<u64> {
    if b.len() != PROBE_LEN || b[0] != 0xFF || &b[16..] != PROBE_MAGIC {
        return None;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[8..16]);
    Some(u64::from_be_bytes(n))
}

/// What steering did on one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SteerCounters {
    /// Packets handed to the engine: their DestQP is in this engine's slot.
    pub own_rx: u64,
    /// Packets for another engine's (or nobody's) QPN that reached this socket, dropped.
    pub foreign_drops: u64,
    /// Probes received (this engine's and others' that the program sent here).
    pub probes_rx: u64,
    /// Times this engine found its group index changed and rebuilt the group's program.
    pub repairs: u64,
}

/// Where an engine sits in its address's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SteerInfo {
    /// Its slot: its QPNs are `slot << 16 | n`.
    pub slot: u8,
    /// Its socket's index in the kernel's reuseport group, as last verified.
    pub index: u32,
    /// First and last QPN it hands out.
    pub qpns: (u32, u32),
    /// Counters.
    pub counters: SteerCounters,
}

/// The receive-side state the progress path shares with the maintenance thread.
#[derive(Debug)]
pub(crate) struct SteerShared {
    pub slot: u8,
    pub index: AtomicU32,
    own_rx: AtomicU64,
    foreign: AtomicU64,
    probes_rx: AtomicU64,
    pub repairs: AtomicU64,
    /// Nonces of probes received since the maintenance thread last looked.
    seen: Mutex<Vec<u64>>,
}

impl SteerShared {
    pub(crate) fn new(slot: u8) -> SteerShared {
        SteerShared {
            slot,
            index: AtomicU32::new(u32::MAX),
            own_rx: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            probes_rx: AtomicU64::new(0),
            repairs: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Whether a received datagram goes to the engine: probes are taken here, a DestQP of
    /// another slot is counted and dropped. Anything too short for a BTH goes on to the engine,
    /// which counts it as malformed.
    pub(crate) fn admit(&self, bytes: &[u8]) -> bool {
        if let Some(nonce) = parse_probe(bytes) {
            self.probes_rx.fetch_add(1, Ordering::Relaxed);
            let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if s.len() < 4096 {
                s.push(nonce);
            }
            return false;
        }
        match bytes.get(5) {
            Some(&slot) if slot != self.slot => {
                self.foreign.fetch_add(1, Ordering::Relaxed);
                false
            }
            _ => {
                self.own_rx.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    /// Takes the nonces received so far.
    pub(crate) fn take_seen(&self) -> Vec<u64> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn counters(&self) -> SteerCounters {
        SteerCounters {
            own_rx: self.own_rx.load(Ordering::Relaxed),
            foreign_drops: self.foreign.load(Ordering::Relaxed),
            probes_rx: self.probes_rx.load(Ordering::Relaxed),
            repairs: self.repairs.load(Ordering::Relaxed),
        }
    }
}

/// Sends probes to the group from an ephemeral socket of the same address.
pub(crate) struct Prober {
    sock: UdpSocket,
    to: SocketAddr,
    round: u64,
    slot: u8,
}

impl Prober {
    pub(crate) fn new(local: SocketAddr, slot: u8) -> std::io::Result<Prober> {
        let any: IpAddr = local.ip();
        let sock = UdpSocket::bind(SocketAddr::new(any, 0))?;
        Ok(Prober {
            sock,
            to: local,
            round: 0,
            slot,
        })
    }

    /// A nonce no other engine's probe carries: slot, round, index.
    fn nonce(&self, k: u32) -> u64 {
        (u64::from(self.slot) << 56) | (self.round << 16) | u64::from(k)
    }

    /// Sends one probe through our own slot's table entry; returns its nonce.
    pub(crate) fn send_self(&mut self) -> std::io::Result<u64> {
        self.round += 1;
        let n = self.nonce(0xFFFF);
        let dq = u32::from(self.slot) << SLOT_SHIFT;
        self.sock.send_to(&probe(dq, n), self.to)?;
        Ok(n)
    }

    /// Sends identity probes "return index k" for `k < upto`; returns the round's nonce base.
    pub(crate) fn send_identity(&mut self, upto: u32) -> std::io::Result<u64> {
        self.round += 1;
        for k in 0..upto.min(u32::from(SLOTS)) {
            let dq = (u32::from(PROBE_SLOT) << SLOT_SHIFT) | k;
            self.sock.send_to(&probe(dq, self.nonce(k)), self.to)?;
        }
        Ok(self.nonce(0))
    }
}

/// Our group index from the identity probes of round `base` that reached us: the smallest k.
/// (A probe whose k is out of range lands on a socket chosen by hash, maybe ours, but its k is
/// at least the group size, so above ours.)
pub(crate) fn index_from(base: u64, seen: &[u64]) -> Option<u32> {
    seen.iter()
        .filter(|&&n| n & !0xFFFF == base)
        .map(|&n| (n & 0xFFFF) as u32)
        .filter(|&k| k < u32::from(SLOTS))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qpn_layout() {
        assert_eq!(qpn_range(3), (0x03_0011, 0x03_FFFF));
        assert_eq!(slot_of(0x03_0011), 3);
        assert_eq!(slot_of(0xFE_FFFF), 0xFE);
    }

    #[test]
    fn probes_parse_and_never_reach_the_engine() {
        let s = SteerShared::new(2);
        assert!(!s.admit(&probe(0x02_0000, 42)));
        assert_eq!(s.take_seen(), [42]);
        // A BTH naming slot 2 goes through; slot 3 is foreign.
        let mut bth = [0u8; 16];
        bth[5] = 2;
        assert!(s.admit(&bth));
        bth[5] = 3;
        assert!(!s.admit(&bth));
        let c = s.counters();
        assert_eq!((c.own_rx, c.foreign_drops, c.probes_rx), (1, 1, 1));
    }

    #[test]
    fn index_is_the_smallest_of_this_round() {
        let p = Prober::new("127.0.0.1:9".parse().expect("addr"), 4).expect("sock");
        let base = p.nonce(0);
        assert_eq!(
            index_from(base, &[base | 5, base | 2, (base + (1 << 16)) | 1]),
            Some(2)
        );
        assert_eq!(index_from(base, &[]), None);
    }

    #[test]
    fn program_shape() {
        let p = program(&[(0, 1), (7, 0)]);
        assert_eq!(p.len(), 4 + 4 + 1);
        assert_eq!((p[5].code, p[5].k), (BPF_RET_K, 1));
        assert_eq!((p[8].code, p[8].k), (BPF_RET_K, u32::MAX));
    }
}

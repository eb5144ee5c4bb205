//! Fault injection on the send path: loss, reordering, duplication and bit corruption of
//! outgoing packets, for tests over real sockets.
//!
//! The kernels these tests run on may lack `tc netem` (this project's CI kernel is built
//! without `CONFIG_NET_SCH_NETEM`), so the driver can impair its own traffic instead:
//! `UROCE_FAULTS="loss=0.02,reorder=0.05,duplicate=0.01,corrupt=0.01,seed=7"`. GSO batches are
//! split so that every packet is impaired on its own; a reordered packet is held back and sent
//! after the next one.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use super::{Backend, DriverFeatures, DriverStats, Sink};

/// Probabilities per outgoing packet.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Drop the packet.
    pub loss: f64,
    /// Hold the packet back and send it after the next one.
    pub reorder: f64,
    /// Send the packet twice.
    pub duplicate: f64,
    /// Flip one random bit.
    pub corrupt: f64,
    /// Seed of the random choices.
    pub seed: u64,
}

impl Faults {
    /// Parses `loss=0.02,reorder=0.05,duplicate=0.01,corrupt=0.01,seed=7` (any subset).
    pub fn parse(s: &str) -> Result<Faults, String> {
        let mut f = Faults {
            seed: 1,
            ..Faults::default()
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=value"))?;
            let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{k}: {e}"));
            match k {
                "loss" => f.loss = num(v)?,
                "reorder" => f.reorder = num(v)?,
                "duplicate" | "dup" => f.duplicate = num(v)?,
                "corrupt" => f.corrupt = num(v)?,
                "seed" => f.seed = v.parse().map_err(|e| format!("seed: {e}"))?,
                _ => return Err(format!("unknown fault '{k}'")),
            }
        }
        for p in [f.loss, f.reorder, f.duplicate, f.corrupt] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("probability {p} outside 0..1"));
            }
        }
        Ok(f)
    }

    /// From `UROCE_FAULTS`, if set.
    pub fn from_env() -> Result<Option<Faults>, String> {
        match std::env::var("UROCE_FAULTS") {
            Ok(s) => Faults::parse(&s).map(Some),
            Err(_) => Ok(None),
        }
    }
}

/// Counts of what was done to outgoing packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultCounters {
    /// Packets dropped.
    pub lost: u64,
    /// Packets sent out of order.
    pub reordered: u64,
    /// Packets sent twice.
    pub duplicated: u64,
    /// Packets with a flipped bit.
    pub corrupted: u64,
}

pub(crate) struct FaultyBackend {
    inner: Box<dyn Backend>,
    faults: Faults,
    rng: u64,
    held: Option<(SocketAddr, Vec<u8>)>,
    counters: FaultCounters,
    /// Where the engine builds the next transmit (faults are applied per packet on a copy).
    txbuf: Vec<u8>,
}

impl FaultyBackend {
    pub(crate) fn new(inner: Box<dyn Backend>, faults: Faults) -> Self {
        FaultyBackend {
            inner,
            rng: faults.seed ^ 0x9E37_79B9_7F4A_7C15,
            faults,
            held: None,
            counters: FaultCounters::default(),
            txbuf: vec![0; super::TX_MAX],
        }
    }

    fn next(&mut self) -> u64 {
        // SplitMix64: small and reproducible.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn one(&mut self, dst: SocketAddr, pkt: &[u8]) -> io::Result<()> {
        if self.chance(self.faults.loss) {
            self.counters.lost += 1;
            return Ok(());
        }
        let mut bytes = pkt.to_vec();
        if self.chance(self.faults.corrupt) && !bytes.is_empty() {
            self.counters.corrupted += 1;
            let bit = self.next() % (bytes.len() as u64 * 8);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        if self.held.is_none() && self.chance(self.faults.reorder) {
            self.counters.reordered += 1;
            self.held = Some((dst, bytes));
            return Ok(());
        }
        self.inner.send(dst, &bytes, None)?;
        if self.chance(self.faults.duplicate) {
            self.counters.duplicated += 1;
            self.inner.send(dst, &bytes, None)?;
        }
        if let Some((d, b)) = self.held.take() {
            self.inner.send(d, &b, None)?;
        }
        Ok(())
    }
}

impl Backend for FaultyBackend {
    fn send(&mut self, dst: SocketAddr, data: &[u8], segment: Option<usize>) -> io::Result<()> {
        let seg = segment.unwrap_or(data.len()).max(1);
        for pkt in data.chunks(seg) {
            self.one(dst, pkt)?;
        }
        Ok(())
    }

    fn tx_buffer(&mut self) -> io::Result<&mut [u8]> {
        Ok(&mut self.txbuf)
    }

    fn send_written(
        &mut self,
        dst: SocketAddr,
        len: usize,
        segment: Option<usize>,
    ) -> io::Result<()> {
        let data = std::mem::take(&mut self.txbuf);
        let r = match data.get(..len) {
            Some(d) => self.send(dst, d, segment),
            None => Err(io::ErrorKind::InvalidInput.into()),
        };
        self.txbuf = data;
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        // A packet held for reordering must not wait forever for a successor.
        if let Some((d, b)) = self.held.take() {
            self.inner.send(d, &b, None)?;
        }
        self.inner.flush()
    }

    fn drain_sends(&mut self, timeout: std::time::Duration) -> io::Result<bool> {
        self.flush()?;
        self.inner.drain_sends(timeout)
    }

    fn recv_ready(&mut self, sink: Sink<'_>) -> io::Result<usize> {
        self.inner.recv_ready(sink)
    }

    fn wait_fd(&self) -> io::Result<OwnedFd> {
        self.inner.wait_fd()
    }

    fn max_segments(&self) -> usize {
        self.inner.max_segments()
    }

    fn rx_pending(&self) -> bool {
        self.inner.rx_pending()
    }

    fn set_busy_poll(&mut self, on: bool) {
        self.inner.set_busy_poll(on);
    }

    fn set_receive_owner(&mut self, owner: Option<std::thread::ThreadId>) {
        self.inner.set_receive_owner(owner);
    }

    fn features(&self) -> DriverFeatures {
        self.inner.features()
    }

    fn stats(&self) -> DriverStats {
        DriverStats {
            faults: self.counters,
            ..self.inner.stats()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let f = Faults::parse("loss=0.02, reorder=0.05,dup=0.01,corrupt=0.5,seed=9").unwrap();
        assert_eq!(
            (f.loss, f.reorder, f.duplicate, f.corrupt, f.seed),
            (0.02, 0.05, 0.01, 0.5, 9)
        );
        assert!(Faults::parse("loss=2").is_err());
        assert!(Faults::parse("jitter=1").is_err());
        assert!(Faults::parse("loss").is_err());
    }
}

//! RC under loss, reordering, duplication and corruption: across many seeds, random transfers
//! complete exactly once, in order, with every byte correct. A failure names its seed.

use std::time::Duration;

use uroce_proto::{Payload, RecvWr, RegionMemory, SendOp, SendWr, Sge, WcOpcode, WcStatus};
use uroce_sim::scenario::{drain, pair, Endpoint, PairOpts};
use uroce_sim::{Link, Rng, Sim};

/// Each operation gets its own slot on both sides: an RDMA application must not let a READ's
/// destination overlap memory an outstanding WRITE or SEND gathers from (a retransmission reads
/// it again), so overlapping random ranges would test the application, not the transport.
const SLOT: usize = (1 << 20) + 4096;
const MAX_OPS: usize = 4;
const MEM: usize = SLOT * MAX_OPS;

fn lossy() -> Link {
    Link {
        loss: 0.05,
        reorder: 0.05,
        duplicate: 0.01,
        corrupt: 0.01,
        ..Link::default()
    }
}

/// Splits `[off, off+len)` of `ep`'s region into 1–3 SGEs.
fn sgl(rng: &mut Rng, ep: &Endpoint, off: u64, len: u64) -> Vec<Sge> {
    let parts = 1 + rng.below(3);
    let mut v = Vec::new();
    let mut start = off;
    for i in 0..parts {
        let rest = off + len - start;
        let n = if i == parts - 1 {
            rest
        } else {
            rng.below(rest + 1)
        };
        v.push(Sge {
            addr: ep.base + start,
            length: n as u32,
            lkey: ep.keys.lkey,
        });
        start += n;
    }
    v
}

fn size(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => 0,
        1..=5 => rng.below(4096),
        6..=8 => rng.below(64 << 10),
        _ => rng.below((1 << 20) + 1),
    }
}

/// One seed: a random mix of WRITE, SEND and READ from A to B; returns an error text.
fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut sim = Sim::new(seed, lossy());
    let opts = PairOpts {
        mem_len: MEM,
        timeout: 8,
        // Both framings of a multi-packet WRITE (WRITE ONLY per packet, or FIRST/MIDDLE/LAST)
        // and of a READ of a few packets (one request per packet, or one request).
        split_writes: seed % 2 == 0,
        split_reads: seed % 4 < 2,
        ..PairOpts::default()
    };
    let (a, b) = pair(&mut sim, &opts);
    let src: Vec<u8> = (0..MEM).map(|_| rng.next_u64() as u8).collect();
    a.mem.write(0, &src);
    b.mem.write(0, &src.iter().map(|x| !x).collect::<Vec<u8>>());
    let n_ops = 1 + rng.below(MAX_OPS as u64) as usize;
    // (wr_id, kind, local offset, remote offset, len)
    let mut ops = Vec::new();
    for i in 0..n_ops {
        let len = size(&mut rng);
        let kind = rng.below(3);
        let loff = (i * SLOT) as u64 + rng.below((SLOT as u64 - len).min(4096));
        let roff = (i * SLOT) as u64 + rng.below((SLOT as u64 - len).min(4096));
        let wr_id = i as u64;
        let wr = match kind {
            0 => SendWr::new(
                wr_id,
                SendOp::RdmaWrite {
                    remote_addr: b.base + roff,
                    rkey: b.keys.rkey,
                },
                Payload::Sgl(sgl(&mut rng, &a, loff, len)),
            ),
            1 => {
                let r = RecvWr {
                    wr_id: 1000 + wr_id,
                    sgl: sgl(&mut rng, &b, roff, len),
                };
                sim.dev(b.host)
                    .post_recv(b.qpn, r)
                    .map_err(|e| e.to_string())?;
                SendWr::new(
                    wr_id,
                    SendOp::Send,
                    Payload::Sgl(sgl(&mut rng, &a, loff, len)),
                )
            }
            _ => SendWr::new(
                wr_id,
                SendOp::RdmaRead {
                    remote_addr: b.base + roff,
                    rkey: b.keys.rkey,
                },
                Payload::Sgl(sgl(&mut rng, &a, loff, len)),
            ),
        };
        // Check expectations against snapshots taken before the transfer.
        ops.push((wr_id, kind, loff as usize, roff as usize, len as usize));
        sim.post_send(a.host, a.qpn, wr)
            .map_err(|e| e.to_string())?;
    }
    // Expected final contents, applying ops in order (READs read B as it is after earlier ops).
    let mut ea = a.mem.to_vec();
    let mut eb = b.mem.to_vec();
    for &(_, kind, lo, ro, len) in &ops {
        if kind == 2 {
            let chunk = eb[ro..ro + len].to_vec();
            ea[lo..lo + len].copy_from_slice(&chunk);
        } else {
            let chunk = ea[lo..lo + len].to_vec();
            eb[ro..ro + len].copy_from_slice(&chunk);
        }
    }
    let mut got = Vec::new();
    let mut recvs = Vec::new();
    let done = sim.run_until(Duration::from_secs(30), |s| {
        got.extend(drain(s, &a));
        recvs.extend(drain(s, &b));
        got.len() >= n_ops
    });
    if !done {
        return Err(format!(
            "timed out: {} of {n_ops} completions: {got:?}",
            got.len()
        ));
    }
    let ids: Vec<u64> = got.iter().map(|c| c.wr_id).collect();
    if ids != (0..n_ops as u64).collect::<Vec<_>>() {
        return Err(format!("completions out of order or repeated: {ids:?}"));
    }
    if let Some(c) = got.iter().find(|c| c.status != WcStatus::Success) {
        return Err(format!("failed completion {c:?}"));
    }
    let sends = ops.iter().filter(|o| o.1 == 1).count();
    // Let any straggling duplicates drain, then check nothing more completes.
    sim.run_until(Duration::from_millis(50), |_| false);
    recvs.extend(drain(&mut sim, &b));
    if recvs.len() != sends
        || recvs
            .iter()
            .any(|c| c.status != WcStatus::Success || c.opcode != WcOpcode::Recv)
    {
        return Err(format!("receive completions {recvs:?}, want {sends}"));
    }
    if !drain(&mut sim, &a).is_empty() {
        return Err("extra send completion".into());
    }
    if a.mem.to_vec() != ea {
        return Err("requester memory differs".into());
    }
    if b.mem.to_vec() != eb {
        return Err("responder memory differs".into());
    }
    Ok(())
}

#[test]
fn rc_exactly_once_under_faults_many_seeds() {
    let seeds: u64 = std::env::var("UROCE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut failures = Vec::new();
    for seed in 0..seeds {
        if let Err(e) = run_seed(seed) {
            failures.push(format!("seed {seed}: {e}"));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

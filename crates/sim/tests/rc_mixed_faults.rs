//! Every RC opcode mixed, under loss, reordering, duplication and corruption, across seeds:
//! signaled WRs complete once and in order, receives complete once and in order with the right
//! immediate and bytes, atomics execute exactly once in order, and no byte is wrong.

use std::time::Duration;

use uroce_proto::{Mtu, Payload, RecvWr, RegionMemory, SendOp, SendWr, WcOpcode, WcStatus};
use uroce_sim::scenario::{drain, drop_new_in_flight, pair, pattern, PairOpts};
use uroce_sim::{Link, Rng, Sim};

const SLOT: u64 = 64 << 10;
const OPS: u64 = 16;
const COUNTER: u64 = OPS * SLOT;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Write,
    WriteImm,
    Send,
    SendImm,
    Read,
    FetchAdd,
    CompareSwap,
}

/// One seed; `back_loss` additionally loses that share of the packets from B to A (ACKs,
/// READ responses, atomic ACKs), which forces duplicates of every request kind.
fn run_seed(seed: u64, link: Link, back_loss: f64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut loss_rng = Rng::new(seed ^ 0x5EED);
    let mut sim = Sim::new(seed, link);
    let mtu = [Mtu::M256, Mtu::M1024, Mtu::M4096][rng.below(3) as usize];
    let o = PairOpts {
        mtu,
        mem_len: (COUNTER + 4096) as usize,
        timeout: 8,
        ..PairOpts::default()
    };
    let (a, b) = pair(&mut sim, &o);
    let total = (OPS * SLOT) as usize;
    a.mem.write(0, &pattern(total, seed as u8));
    b.mem.write(0, &pattern(total, !seed as u8));
    let mut counter = rng.next_u64() >> 8;
    b.mem.write(COUNTER as usize, &counter.to_ne_bytes());
    let (mut ea, mut eb) = (a.mem.to_vec(), b.mem.to_vec());
    let n = 4 + rng.below(OPS - 3);
    let mut signaled = Vec::new();
    let mut recvs = Vec::new();
    for i in 0..n {
        let kind = match rng.below(7) {
            0 => Kind::Write,
            1 => Kind::WriteImm,
            2 => Kind::Send,
            3 => Kind::SendImm,
            4 => Kind::Read,
            5 => Kind::FetchAdd,
            _ => Kind::CompareSwap,
        };
        let len = match rng.below(4) {
            0 => rng.below(64),
            1 => rng.below(4096),
            _ => rng.below(SLOT + 1),
        };
        let off = i * SLOT;
        let (lo, ro, l) = (off as usize, off as usize, len as usize);
        let sgl = Payload::Sgl(vec![a.sge(off, len as u32)]);
        let rkey = b.keys.rkey;
        let op = match kind {
            Kind::Write => SendOp::RdmaWrite {
                remote_addr: b.base + off,
                rkey,
            },
            Kind::WriteImm => SendOp::RdmaWriteWithImm {
                remote_addr: b.base + off,
                rkey,
                imm: i as u32,
            },
            Kind::Send => SendOp::Send,
            Kind::SendImm => SendOp::SendWithImm(i as u32),
            Kind::Read => SendOp::RdmaRead {
                remote_addr: b.base + off,
                rkey,
            },
            Kind::FetchAdd => SendOp::FetchAdd {
                remote_addr: b.base + COUNTER,
                rkey,
                add: i + 1,
            },
            Kind::CompareSwap => SendOp::CompareSwap {
                remote_addr: b.base + COUNTER,
                rkey,
                // Half the time the compare matches.
                compare: if rng.below(2) == 0 {
                    counter
                } else {
                    counter ^ 1
                },
                swap: counter.wrapping_mul(3),
            },
        };
        let payload = match kind {
            Kind::FetchAdd | Kind::CompareSwap => Payload::Sgl(vec![a.sge(off, 8)]),
            Kind::Send | Kind::SendImm if len <= 256 && rng.below(2) == 0 => {
                Payload::Inline(ea[lo..lo + l].to_vec())
            }
            _ => sgl,
        };
        // Expected effects, in order.
        match kind {
            Kind::Write | Kind::WriteImm | Kind::Send | Kind::SendImm => {
                let chunk = ea[lo..lo + l].to_vec();
                eb[ro..ro + l].copy_from_slice(&chunk);
            }
            Kind::Read => {
                let chunk = eb[ro..ro + l].to_vec();
                ea[lo..lo + l].copy_from_slice(&chunk);
            }
            Kind::FetchAdd => {
                ea[lo..lo + 8].copy_from_slice(&counter.to_ne_bytes());
                counter = counter.wrapping_add(i + 1);
            }
            Kind::CompareSwap => {
                ea[lo..lo + 8].copy_from_slice(&counter.to_ne_bytes());
                if let SendOp::CompareSwap { compare, swap, .. } = op {
                    if compare == counter {
                        counter = swap;
                    }
                }
            }
        }
        if matches!(kind, Kind::Send | Kind::SendImm | Kind::WriteImm) {
            let r = RecvWr {
                wr_id: i,
                sgl: vec![b.sge(off, SLOT as u32)],
            };
            sim.dev(b.host)
                .post_recv(b.qpn, r)
                .map_err(|e| e.to_string())?;
            recvs.push((i, kind, len));
        }
        let mut wr = SendWr::new(i, op, payload);
        wr.flags.signaled = i == n - 1 || rng.below(3) != 0;
        wr.flags.solicited = rng.below(2) == 0;
        if wr.flags.signaled {
            signaled.push(i);
        }
        sim.post_send(a.host, a.qpn, wr)
            .map_err(|e| e.to_string())?;
    }
    eb[COUNTER as usize..COUNTER as usize + 8].copy_from_slice(&counter.to_ne_bytes());
    let mut got = Vec::new();
    let mut rgot = Vec::new();
    let a_host = a.host;
    let mut cursor = 0;
    let done = sim.run_until(Duration::from_secs(30), |s| {
        if back_loss > 0.0 {
            drop_new_in_flight(s, &mut cursor, |_, to, _| {
                to == a_host && loss_rng.chance(back_loss)
            });
        }
        got.extend(drain(s, &a));
        rgot.extend(drain(s, &b));
        got.len() >= signaled.len()
    });
    if !done {
        return Err(format!("timed out: {got:?}"));
    }
    sim.run_until(Duration::from_millis(50), |_| false);
    got.extend(drain(&mut sim, &a));
    rgot.extend(drain(&mut sim, &b));
    if let Some(c) = got.iter().find(|c| c.status != WcStatus::Success) {
        return Err(format!("mtu {mtu:?}: failed {c:?}"));
    }
    let ids: Vec<u64> = got.iter().map(|c| c.wr_id).collect();
    if ids != signaled {
        return Err(format!("send completions {ids:?}, want {signaled:?}"));
    }
    let rids: Vec<u64> = rgot.iter().map(|c| c.wr_id).collect();
    let want: Vec<u64> = recvs.iter().map(|r| r.0).collect();
    if rids != want {
        return Err(format!("receive completions {rids:?}, want {want:?}"));
    }
    for (c, &(i, kind, len)) in rgot.iter().zip(&recvs) {
        let imm = matches!(kind, Kind::SendImm | Kind::WriteImm).then_some(i as u32);
        let op = if kind == Kind::WriteImm {
            WcOpcode::RecvRdmaWithImm
        } else {
            WcOpcode::Recv
        };
        if c.status != WcStatus::Success
            || c.imm != imm
            || c.opcode != op
            || u64::from(c.byte_len) != len
        {
            return Err(format!("receive {i} ({kind:?}, {len} B): {c:?}"));
        }
    }
    if a.mem.to_vec() != ea {
        return Err(format!("mtu {mtu:?}: requester memory differs"));
    }
    if b.mem.to_vec() != eb {
        return Err(format!("mtu {mtu:?}: responder memory differs"));
    }
    Ok(())
}

fn seeds(default: u64) -> u64 {
    std::env::var("UROCE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn every_opcode_exactly_once_under_faults() {
    let link = Link {
        loss: 0.05,
        reorder: 0.05,
        duplicate: 0.05,
        corrupt: 0.02,
        ..Link::default()
    };
    let mut failures = Vec::new();
    for seed in 0..seeds(300) {
        if let Err(e) = run_seed(seed, link, 0.0) {
            failures.push(format!("seed {seed}: {e}"));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_opcode_exactly_once_with_heavy_response_loss() {
    let mut failures = Vec::new();
    for seed in 0..seeds(100) {
        if let Err(e) = run_seed(10_000 + seed, Link::default(), 0.3) {
            failures.push(format!("seed {seed}: {e}"));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

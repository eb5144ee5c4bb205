//! The netem run of scripts/rxe/netem.sh in the simulator: `uroce pingpong --rc -s 1048576
//! -m 4096 -n 10` (1 MiB SENDs, each side sends after it received) over a link with 1 ms delay,
//! 5 % loss, 10 % reordering (0.5 ms), 2 % duplication and 1 % corruption, packets impaired one
//! by one (no GSO batches, as the syscall back end sends), rdma-core's ACK timeout 14 and
//! retry_cnt 7. Every seed must finish every iteration with correct data and no error.

use std::net::IpAddr;
use std::time::Duration;

use uroce_proto::{Config, Payload, RecvWr, SendOp, SendWr, WcStatus};
use uroce_sim::scenario::{bring_up, drain, endpoint, PairOpts};
use uroce_sim::{Link, Sim};

const SIZE: u32 = 1 << 20;
const ITERS: usize = 10;

fn run(seed: u64) -> Result<Duration, String> {
    let link = Link {
        latency: Duration::from_millis(1),
        bandwidth_bps: Some(1_000_000_000),
        loss: 0.05,
        reorder: 0.10,
        reorder_delay: Duration::from_micros(500),
        duplicate: 0.02,
        corrupt: 0.01,
        ..Link::default()
    };
    let mut sim = Sim::new(seed, link);
    let o = PairOpts {
        mtu: uroce_proto::Mtu::M4096,
        mem_len: 2 << 20,
        timeout: 14,
        retry_cnt: 7,
        ..PairOpts::default()
    };
    let cfg = |ip: [u8; 4]| {
        let mut c = Config::new(IpAddr::from(ip));
        c.max_segments = 1;
        c
    };
    let h0 = sim.add_host_with(cfg([10, 0, 0, 1]));
    let h1 = sim.add_host_with(cfg([10, 0, 0, 2]));
    let a = endpoint(&mut sim, h0, &o);
    let b = endpoint(&mut sim, h1, &o);
    bring_up(&mut sim, &a, &b, &o);
    bring_up(&mut sim, &b, &a, &o);
    let data = a.fill(0, SIZE as usize, seed as u8);
    b.fill(0, SIZE as usize, seed as u8 ^ 0x5A);
    let start = sim.now;
    for it in 0..ITERS {
        // Client (a) sends, server (b) receives then answers.
        for (tx, rx) in [(&a, &b), (&b, &a)] {
            let recv = RecvWr {
                wr_id: it as u64,
                sgl: vec![rx.sge(SIZE as u64, SIZE)],
            };
            sim.dev(rx.host)
                .post_recv(rx.qpn, recv)
                .map_err(|e| e.to_string())?;
            let wr = SendWr::new(it as u64, SendOp::Send, Payload::Sgl(vec![tx.sge(0, SIZE)]));
            sim.post_send(tx.host, tx.qpn, wr)
                .map_err(|e| e.to_string())?;
            let (mut sent, mut got) = (false, false);
            let mut err = None;
            let ok = sim.run_until(Duration::from_secs(600), |s| {
                for c in drain(s, tx).into_iter().chain(drain(s, rx)) {
                    if c.status != WcStatus::Success {
                        err = Some(format!("{c:?}"));
                    }
                    if c.qp_num == tx.qpn && c.opcode == uroce_proto::WcOpcode::Send {
                        sent = true;
                    } else {
                        got = true;
                    }
                }
                err.is_some() || (sent && got)
            });
            if let Some(e) = err {
                return Err(format!("iteration {it}: {e} at {:?}", sim.now));
            }
            if !ok {
                return Err(format!("iteration {it}: no completion"));
            }
        }
        if b.read(SIZE as usize, SIZE as usize) != data {
            return Err(format!("iteration {it}: data differs"));
        }
    }
    Ok(Duration::from_nanos(sim.now.as_nanos() - start.as_nanos()))
}

#[test]
fn rc_pingpong_under_the_netem_profile_finishes_every_seed() {
    let seeds: u64 = std::env::var("UROCE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut failed = Vec::new();
    for seed in 0..seeds {
        match run(seed) {
            Ok(t) => println!("seed {seed}: 10 iterations in {t:?} of virtual time"),
            Err(e) => {
                println!("seed {seed}: FAILED: {e}");
                failed.push(seed);
            }
        }
    }
    assert!(failed.is_empty(), "failed seeds: {failed:?}");
}

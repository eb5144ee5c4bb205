//! `uroce bench --threads N`: N engines in one process, spread over cores. Each thread opens
//! its own steered device on the same address (its own socket in the address's reuseport
//! group, io_uring and progress thread; `docs/ARCHITECTURE.md`, QPN-steered receive), drives
//! `--qps / N` of the QPs and runs its own perftest session on TCP port `-p + i`, so the
//! kernel hands every packet to the thread owning its QP. The peer runs the same `--threads N`.
//! Each thread's result lines are printed, then the aggregate: the bytes of all threads over
//! the longest thread's time, per message size. A thread's CPU seconds are the whole
//! process's (getrusage over that thread's run), so its own `cpu_s_per_gb` is about N× too
//! high; the aggregate divides the largest of them by all threads' bytes.

use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;

use super::{fail, Args};
use crate::commands::CliError;

/// One thread's result for one size: (size, bytes moved, seconds, process CPU seconds, of
/// them in user space).
fn parse(line: &str) -> Option<(u64, u64, f64, f64, f64)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let size = v.get("size")?.as_u64()?;
    let iters = v.get("iterations")?.as_u64()?;
    let secs = v.get("seconds")?.as_f64()?;
    let cpu = v.get("cpu_s").and_then(Value::as_f64).unwrap_or(0.0);
    let user = v.get("cpu_user_s").and_then(Value::as_f64).unwrap_or(0.0);
    Some((size, size * iters, secs, cpu, user))
}

/// Per size: bytes of all threads, the longest time, the largest process CPU figure (and its
/// user-space part), and each thread's Gb/s.
struct Agg {
    size: u64,
    bytes: u64,
    secs: f64,
    cpu: f64,
    user: f64,
    per: Vec<f64>,
}

/// Runs the threads and prints their lines and the aggregate.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let n = args.threads;
    if args.qps % n != 0 {
        return Err(fail(format!(
            "--qps {} is not a multiple of --threads {n}",
            args.qps
        )));
    }
    let lanes: Vec<Args> = (0..n)
        .map(|i| {
            let mut a = args.clone();
            a.threads = 1;
            a.qps = args.qps / n;
            a.port = args.port + i as u16;
            a.steer = true;
            a.json = true;
            a
        })
        .collect();
    let results: Vec<Result<(ExitCode, Vec<u8>), CliError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = lanes
            .iter()
            .enumerate()
            .map(|(i, a)| {
                std::thread::Builder::new()
                    .name(format!("bench-{i}"))
                    .spawn_scoped(sc, move || {
                        let mut buf = Vec::new();
                        super::run(a, &mut buf).map(|c| (c, buf))
                    })
            })
            .collect();
        hs.into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(fail("a bench thread panicked"))),
                Err(e) => Err(CliError::from(e)),
            })
            .collect()
    });
    let mut code = ExitCode::SUCCESS;
    let mut agg: Vec<Agg> = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        let (c, buf) = r.map_err(|e| fail(format!("thread {i}: {e}")))?;
        if c != ExitCode::SUCCESS {
            code = c;
        }
        for line in String::from_utf8_lossy(&buf).lines() {
            if args.json {
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "thread {i}: {line}")?;
            }
            if let Some((size, bytes, secs, cpu, user)) = parse(line) {
                let gbps = bytes as f64 * 8.0 / secs.max(1e-12) / 1e9;
                match agg.iter_mut().find(|e| e.size == size) {
                    Some(e) => {
                        e.bytes += bytes;
                        e.secs = e.secs.max(secs);
                        if cpu > e.cpu {
                            (e.cpu, e.user) = (cpu, user);
                        }
                        e.per.push(gbps);
                    }
                    None => agg.push(Agg {
                        size,
                        bytes,
                        secs,
                        cpu,
                        user,
                        per: vec![gbps],
                    }),
                }
            }
        }
    }
    for Agg {
        size,
        bytes,
        secs,
        cpu,
        user,
        per,
    } in agg
    {
        let gbps = bytes as f64 * 8.0 / secs.max(1e-12) / 1e9;
        let cpu_per_gb = if bytes == 0 {
            0.0
        } else {
            cpu / (bytes as f64 / 1e9)
        };
        if args.json {
            let v = serde_json::json!({
                "aggregate": true, "threads": n, "qps": args.qps, "size": size,
                "bytes": bytes, "seconds": secs, "gbit_s": gbps, "per_thread_gbit_s": per,
                "cpu_s": cpu, "cpu_user_s": user, "cpu_s_per_gb": cpu_per_gb,
            });
            writeln!(out, "{v}")?;
        } else {
            let per: Vec<String> = per.iter().map(|g| format!("{g:.2}")).collect();
            writeln!(
                out,
                "aggregate: {n} threads, {} QPs, {size} B: {bytes} bytes in {secs:.3} s = \
                 {gbps:.2} Gb/s (threads: {} Gb/s), {cpu_per_gb:.3} CPU-s/GB",
                args.qps,
                per.join(" + ")
            )?;
        }
    }
    Ok(code)
}

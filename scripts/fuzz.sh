#!/usr/bin/env bash
# Runs a cargo-fuzz target for a fixed time and fails on any crash, timeout or OOM.
#
#   scripts/fuzz.sh TARGET SECONDS        e.g. scripts/fuzz.sh parse 60
#   FUZZ_RUNS=10000000 scripts/fuzz.sh engine 0
#                                         a run of 10 M executions, no time limit (0 = none)
#
# Works on a stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer=address,
# sanitizer coverage), which RUSTC_BOOTSTRAP=1 lets stable rustc accept. The sanitizer defaults
# to AddressSanitizer; set FUZZ_SANITIZER=none to run without it.
#
# The committed seeds in fuzz/corpus/TARGET are only read; new inputs libFuzzer finds go to
# fuzz/target/corpus/TARGET (ignored by git) and crash reproducers to fuzz/artifacts/TARGET.
set -euo pipefail

if [[ $# -ne 2 || ! $2 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 TARGET SECONDS" >&2
    exit 2
fi
target=$1
seconds=$2
sanitizer=${FUZZ_SANITIZER:-address}
runs=${FUZZ_RUNS:-}
if [[ -n $runs && ! $runs =~ ^[0-9]+$ ]]; then
    echo "FUZZ_RUNS must be a number of executions" >&2
    exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [[ ! -f fuzz/fuzz_targets/$target.rs ]]; then
    echo "no fuzz target '$target' in fuzz/fuzz_targets" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
seeds=fuzz/corpus/$target
work=fuzz/target/corpus/$target
mkdir -p "$work" "$seeds"

limits=(-max_total_time="$seconds")
if [[ -n $runs ]]; then
    limits+=(-runs="$runs")
fi
echo "fuzzing '$target': ${seconds}s (0: no limit), ${runs:-unlimited} executions" \
    "(sanitizer: $sanitizer, $(rustc --version))" >&2
# cargo-fuzz exits non-zero when libFuzzer reports a crash, a timeout or running out of memory.
cargo fuzz run --sanitizer "$sanitizer" "$target" "$work" "$seeds" -- \
    "${limits[@]}" \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -print_final_stats=1

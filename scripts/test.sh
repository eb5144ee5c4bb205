#!/usr/bin/env bash
# Runs every check and test of uroce: the README's test command, and what CI runs.
#
#   scripts/test.sh
#
# Order: format, lints (clippy -D warnings, missing_docs via the workspace lints), the whole
# test suite, interop against the kernel's rxe in a qemu guest (root), then a bounded fuzz run
# of each cargo-fuzz target. Installs what it needs with
# cargo (cargo-fuzz). Tests that need root (network namespaces, later issues) say so and are
# counted as skipped when not root.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

fuzz_seconds=${UROCE_FUZZ_SECONDS:-60}
soak_seconds=${UROCE_SOAK_SECONDS:-20}

need() {
    if ! "$@" >/dev/null 2>&1; then
        echo "missing: '$*' does not run; this machine's Rust toolchain needs clippy and rustfmt" >&2
        exit 1
    fi
}
need cargo fmt --version
need cargo clippy --version

# System packages some tests use: tshark (wireshark's dissector checks our captures), iproute2
# (network namespaces). Installing needs root; without root those tests report themselves
# skipped.
if [[ $(id -u) -eq 0 ]]; then
    missing=()
    command -v tshark >/dev/null || missing+=(tshark)
    command -v ip >/dev/null || missing+=(iproute2)
    # crates/ibverbs: verbs.h for its layout test, and the verbs programs it runs.
    [[ -e /usr/include/infiniband/verbs.h ]] || missing+=(libibverbs-dev)
    command -v ibv_rc_pingpong >/dev/null || missing+=(ibverbs-utils)
    command -v ib_write_bw >/dev/null || missing+=(perftest)
    command -v cc >/dev/null || missing+=(gcc)
    if ((${#missing[@]})); then
        echo "== apt-get install ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" </dev/null >/dev/null
    fi
else
    echo "== not root: the network-namespace tests (and tshark, if missing) are SKIPPED; they need root" >&2
fi

echo "== rustfmt" >&2
cargo fmt --all -- --check

echo "== clippy (-D warnings, workspace lints incl. missing_docs)" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests" >&2
cargo test --workspace --locked --no-fail-fast

echo "== interop with the kernel's rxe (qemu guest; root)" >&2
rc=0
scripts/rxe/interop.sh || rc=$?
case $rc in
0) ;;
77) echo "interop with rxe: SKIPPED (needs root)" >&2 ;;
*) echo "interop with rxe: FAILED" >&2; exit "$rc" ;;
esac

echo "== unmodified verbs programs on uroce's libibverbs.so.1 against rxe (qemu guest; root)" >&2
rc=0
scripts/rxe/ibverbs.sh || rc=$?
case $rc in
0) ;;
77) echo "ibverbs against rxe: SKIPPED (needs root)" >&2 ;;
*) echo "ibverbs against rxe: FAILED" >&2; exit "$rc" ;;
esac

echo "== interop with rxe while uroce processes share the address (--steer; qemu guest; root)" >&2
rc=0
scripts/rxe/steer-interop.sh || rc=$?
case $rc in
0) ;;
77) echo "steer interop with rxe: SKIPPED (needs root)" >&2 ;;
*) echo "steer interop with rxe: FAILED" >&2; exit "$rc" ;;
esac

echo "== RC under tc netem on veth (inside a qemu guest; root)" >&2
rc=0
scripts/rxe/netem.sh || rc=$?
case $rc in
0) ;;
77) echo "netem: SKIPPED (needs root)" >&2 ;;
*) echo "netem: FAILED" >&2; exit "$rc" ;;
esac

echo "== soak (short: ${soak_seconds}s of RC WRITE; scripts/soak.sh 600 for the full run)" >&2
scripts/soak.sh "$soak_seconds" 5

echo "== fuzz (bounded, ${fuzz_seconds}s per target)" >&2
for t in fuzz/fuzz_targets/*.rs; do
    scripts/fuzz.sh "$(basename "$t" .rs)" "$fuzz_seconds"
done
echo "== all checks passed" >&2

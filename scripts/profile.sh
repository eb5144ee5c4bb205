#!/usr/bin/env bash
# Where the cycles go: `perf record -e cpu-clock -g` (hardware counters do not work in these
# VMs) of both sides of a `uroce bench write bw` run between two namespaces, once per back end,
# then flat profiles (`perf report -n --no-children --sort comm,dso,sym`) summarised by
# uroce-perf into categories (kernel UDP send/receive, copies, ICRC, locking, io_uring, engine,
# ...) with the top symbols, both sides' samples together. Needs root (namespaces).
#
#   scripts/profile.sh [--out DIR] [--size BYTES] [--iters N] [--mtu M] [--netns NAME] [--subnet N]
#
# Writes DIR (default target/profile): BACKEND.{client,server}.{data,txt} (perf data, report),
# BACKEND.json (the client's result line) and summary.md (what docs/PERFORMANCE.md quotes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=target/profile
size=1048576
iters=2000
mtu=4096
netns=prof
subnet=192
while [[ $# -gt 0 ]]; do
    case $1 in
    --out) out=$2; shift ;;
    --size) size=$2; shift ;;
    --iters) iters=$2; shift ;;
    --mtu) mtu=$2; shift ;;
    --netns) netns=$2; shift ;;
    --subnet) subnet=$2; shift ;;
    *) echo "usage: $0 [--out DIR] [--size BYTES] [--iters N] [--mtu M] [--netns NAME] [--subnet N]" >&2; exit 2 ;;
    esac
    shift
done
[[ $(id -u) -eq 0 ]] || { echo "profile.sh needs root (namespaces)" >&2; exit 77; }
perf=${PERF:-$(command -v perf || echo /usr/bin/perf)}
cargo build --release --locked -q -p uroce-cli -p uroce-perf
bin=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release
scripts/netns.sh up "$netns" "$subnet"
trap 'scripts/netns.sh down "$netns"' EXIT
mkdir -p "$out"
: >"$out/summary.md"
for backend in uring syscall; do
    args=(bench write bw --json --timeout 60 --backend "$backend" -s "$size" -n "$iters" -m "$mtu")
    # One recording per side, of that process and its threads only (not -a: other jobs on a
    # shared machine, other uroce processes included, stay out). Softirq work the kernel does
    # in a process's context (veth delivers packets in the sender's) is charged to it.
    "$perf" record -q -e cpu-clock -g -o "$out/$backend.server.data" -- \
        ip netns exec "$netns-a" "$bin/uroce" "${args[@]}" >"$out/$backend.server.json" 2>"$out/$backend.server.err" &
    server=$!
    "$perf" record -q -e cpu-clock -g -o "$out/$backend.client.data" -- \
        ip netns exec "$netns-b" "$bin/uroce" "${args[@]}" --connect-timeout 30 "10.66.$subnet.1" \
        >"$out/$backend.json" 2>"$out/$backend.client.err"
    wait "$server"
    for side in server client; do
        "$perf" report -i "$out/$backend.$side.data" --stdio -n --no-children --sort comm,dso,sym \
            -g none --percent-limit 0.01 >"$out/$backend.$side.txt" 2>/dev/null
    done
    {
        echo "Client: $(cat "$out/$backend.json")"
        echo
        "$bin/uroce-perf" profile-summary --label "uroce bench write bw, $size B, MTU $mtu, $backend back end, both sides" \
            "$out/$backend.client.txt" "$out/$backend.server.txt"
        echo
    } >>"$out/summary.md"
done
cat "$out/summary.md"

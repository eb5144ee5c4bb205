#!/usr/bin/env bash
# The benchmark suite of issue 6, one command: builds uroce and uroce-perf (release), creates
# two network namespaces joined by a veth pair (scripts/netns.sh, MTU 9000), and runs in one
# invocation the raw UDP ceiling probes, iperf3 (kernel TCP), and `uroce bench` with both back
# ends over sizes, path MTUs 4096 and 1024, latency, message rate and QP scaling. Writes
# target/bench/ (results.json, CSVs, raw outputs), docs/perf/*.svg, and the generated section
# of docs/PERFORMANCE.md. Needs root (namespaces; apt-get for iperf3).
#
#   scripts/bench.sh [--quick] [--out DIR] [--plots DIR] [--doc FILE] [--netns NAME] [--subnet N]
#
# --quick: a smoke run (seconds per part, three sizes): checks the machinery, measures nothing.
# Do not run it under `nice`: the suite measures CPU cost and latency.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
quick=()
out=target/bench
plots=docs/perf
doc=docs/PERFORMANCE.md
netns=bench
subnet=190
while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) quick=(--quick) ;;
    --out) out=$2; shift ;;
    --plots) plots=$2; shift ;;
    --doc) doc=$2; shift ;;
    --netns) netns=$2; shift ;;
    --subnet) subnet=$2; shift ;;
    *) echo "usage: $0 [--quick] [--out DIR] [--plots DIR] [--doc FILE] [--netns NAME] [--subnet N]" >&2; exit 2 ;;
    esac
    shift
done
[[ $(id -u) -eq 0 ]] || { echo "bench.sh needs root (network namespaces)" >&2; exit 77; }
if ! command -v iperf3 >/dev/null; then
    echo "bench.sh: installing iperf3" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 >/dev/null; }
fi
cargo build --release --locked -q -p uroce-cli -p uroce-perf
bin=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release
scripts/netns.sh up "$netns" "$subnet"
trap 'scripts/netns.sh down "$netns"' EXIT
# The plots are linked from the markdown relative to its directory.
link=$(realpath -m --relative-to="$(dirname "$doc")" "$plots")
"$bin/uroce-perf" suite "${quick[@]}" --uroce "$bin/uroce" --netns "$netns" \
    --server-ip "10.66.$subnet.1" --client-ip "10.66.$subnet.2" --out "$out" --plots "$plots" --doc "$doc" --plots-link "$link"

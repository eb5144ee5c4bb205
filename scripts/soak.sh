#!/usr/bin/env bash
# Soak: RC RDMA WRITE at full rate between two uroce processes (127.79.0.1 <-> 127.79.0.2, no
# root) for SECONDS, sampling both processes' resident memory every SAMPLE seconds.
#
#   scripts/soak.sh [SECONDS [SAMPLE]]        default 600 s, a sample every 10 s
#
# Fails when either side exits non-zero (uroce bench stops at the first completion with an error
# status, so "no error completions" is the exit status), or when a side's RSS at the end exceeds
# its RSS after the warm-up (the first sample) by more than SOAK_RSS_GROWTH_KB (default 8192):
# buffers, rings and MRs are all allocated at start-up, so steady traffic must not grow memory.
# UROCE_BIN selects the binary (default: build target/release/uroce).
set -euo pipefail

secs=${1:-600}
sample=${2:-10}
bound_kb=${SOAK_RSS_GROWTH_KB:-8192}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${UROCE_BIN:-} ]]; then
    (cd "$root" && cargo build --release --locked -q -p uroce-cli)
    UROCE_BIN=$root/target/release/uroce
fi
out=$(mktemp -d)
trap 'kill $spid $cpid 2>/dev/null || true; rm -rf "$out"' EXIT

port=18790
common=(bench write bw -D "$secs" -s 65536 -q 2 -p "$port" --timeout 60)
"$UROCE_BIN" "${common[@]}" --dev-ip 127.79.0.1 >"$out/server" 2>&1 &
spid=$!
"$UROCE_BIN" "${common[@]}" --dev-ip 127.79.0.2 --connect-timeout 30 127.79.0.1 >"$out/client" 2>&1 &
cpid=$!

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
first_s=0 first_c=0 last_s=0 last_c=0 max_s=0 max_c=0
echo "soak: ${secs}s of RC WRITE 64 KiB x 2 QPs; RSS in KiB every ${sample}s (bound +${bound_kb} KiB)"
start=$SECONDS
# Sample until the run's end, stopping early only if a process died.
while (( SECONDS - start < secs - 1 )) && kill -0 $spid 2>/dev/null && kill -0 $cpid 2>/dev/null; do
    sleep "$sample"
    s=$(rss $spid) c=$(rss $cpid)
    [[ $s == 0 || $c == 0 ]] && break
    if (( first_s == 0 )); then first_s=$s first_c=$c; fi
    last_s=$s last_c=$c
    (( s > max_s )) && max_s=$s
    (( c > max_c )) && max_c=$c
    echo "t=$((SECONDS - start))s server_rss=$s client_rss=$c"
done
rc=0
wait $spid || rc=$?
wait $cpid || rc=$?
echo "--- server"; cat "$out/server"; echo "--- client"; cat "$out/client"
if (( rc != 0 )); then
    echo "soak: FAILED: a side exited with status $rc (an error completion or a hang)" >&2
    exit 1
fi
if (( first_s == 0 )); then
    echo "soak: FAILED: no RSS sample taken" >&2
    exit 1
fi
grow_s=$((last_s - first_s)) grow_c=$((last_c - first_c))
echo "soak: RSS growth after warm-up: server ${grow_s} KiB (max $max_s), client ${grow_c} KiB (max $max_c)"
if (( grow_s > bound_kb || grow_c > bound_kb )); then
    echo "soak: FAILED: memory grew beyond ${bound_kb} KiB" >&2
    exit 1
fi
echo "soak: OK"

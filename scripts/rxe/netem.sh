#!/usr/bin/env bash
# RC between two uroce processes in two network namespaces over veth with real `tc netem`
# (delay 1 ms ± 500 µs, loss 5 %, reorder 10 %, duplicate 2 %, corrupt 1 %; the syscall back
# end a lighter profile for now, see netem-guest.sh), both back ends,
# every byte validated (-c), and both sides must have retransmitted; corrupted packets are
# counted (kernel UDP checksum errors and uroce's ICRC drops are printed). The host kernel has no netem, so this runs inside a guest
# of scripts/rxe/guest.sh (Debian's kernel, which has sch_netem); the guest sees the host's
# files, so it runs the host's release build. Needs root (exit 77 = skipped otherwise).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
G=$here/guest.sh
[[ $(id -u) -eq 0 ]] || { echo "netem.sh needs root (qemu guest): skipped" >&2; exit 77; }
cd "$root"
cargo build --release --locked -p uroce-cli >&2
trap '"$G" stop nm1 >/dev/null 2>&1 || true' EXIT
"$G" setup >&2
"$G" start nm1 10.77.0.9 > /dev/null
# The guest sees the host's / but mounts its own /tmp: hand it the files through its share.
share=$("$G" dir nm1)/share
mkdir -p "$share/netem"
cp target/release/uroce scripts/netns.sh scripts/rxe/netem-guest.sh "$share/netem/"
rc=0
out=$("$G" run nm1 -t 600 "bash /uroce-share/netem/netem-guest.sh /uroce-share/netem") || rc=$?
echo "$out"
((rc == 0)) || { echo "netem: FAILED" >&2; exit 1; }
# Every side of every run retransmitted.
n=$(grep -cE ' [1-9][0-9]* retransmitted' <<< "$out" || true)
if ((n != 4)); then
    echo "netem: expected retransmissions on all 4 sides, saw $n" >&2
    exit 1
fi
echo "netem: RC under tc netem completed with correct data on both back ends; all sides retransmitted"

#!/usr/bin/env bash
# RC between two uroce processes in two network namespaces over veth with real `tc netem`
# (delay 1 ms ± 500 µs, loss 5 %, reorder 10 %, duplicate 2 %, corrupt 1 %) on both back ends,
# every byte validated (-c), and both sides must have retransmitted; corrupted packets are
# counted (kernel UDP checksum errors and uroce's ICRC drops are printed). The host kernel has
# no netem, so this runs inside a guest of scripts/rxe/guest.sh (Debian's kernel, which has
# sch_netem); the guest sees the host's files, so it runs the host's release build. Needs root
# (exit 77 = skipped otherwise). NETEM (the profile) and NETEM_BACKENDS (default "uring
# syscall") are passed on to netem-guest.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
G=$here/guest.sh
[[ $(id -u) -eq 0 ]] || { echo "netem.sh needs root (qemu guest): skipped" >&2; exit 77; }
cd "$root"
cargo build --release --locked -p uroce-cli >&2
# NETEM_GUEST names the guest (so parallel checkouts with their own UROCE_RXE_DIR/NETNS can
# tell theirs apart in logs).
guest=${NETEM_GUEST:-nm1}
trap '"$G" stop "$guest" >/dev/null 2>&1 || true' EXIT
"$G" setup >&2
"$G" start "$guest" 10.77.0.9 > /dev/null
# The guest sees the host's / but mounts its own /tmp: hand it the files through its share.
share=$("$G" dir "$guest")/share
mkdir -p "$share/netem"
cp target/release/uroce scripts/netns.sh scripts/rxe/netem-guest.sh "$share/netem/"
rc=0
backends=${NETEM_BACKENDS:-uring syscall}
env=$(printf 'NETEM_BACKENDS=%q' "$backends")
[[ -n ${NETEM:-} ]] && env+=$(printf ' NETEM=%q' "$NETEM")
out=$("$G" run "$guest" -t 900 "$env bash /uroce-share/netem/netem-guest.sh /uroce-share/netem") ||
    rc=$?
echo "$out"
((rc == 0)) || { echo "netem: FAILED" >&2; exit 1; }
# Every side of every run retransmitted.
n=$(grep -cE ' [1-9][0-9]* retransmitted' <<< "$out" || true)
read -ra bs <<< "$backends"
if ((n != 2 * ${#bs[@]})); then
    echo "netem: expected retransmissions on all $((2 * ${#bs[@]})) sides, saw $n" >&2
    exit 1
fi
echo "netem: RC under tc netem completed with correct data on $backends; all sides retransmitted"

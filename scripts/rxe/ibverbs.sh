#!/usr/bin/env bash
# Debian's unmodified verbs programs on uroce's libibverbs.so.1 (crates/ibverbs) against the
# same programs on the kernel's rxe in a qemu guest, both directions: ibv_{rc,uc,ud,srq}_pingpong
# -c, ib_{write,read,send,atomic}_bw, ib_{write,send}_lat. The uroce side runs in the guest's
# network namespace as the unprivileged user nobody, with LD_LIBRARY_PATH and
# UROCE_DEVICES=uroce0=10.77.0.1; the rxe side is the guest's real rdma-core. Both ends of
# every run must exit 0.
#
#   scripts/rxe/ibverbs.sh
#
# Needs root for the guest (exit 77 = skipped otherwise). Honours UROCE_RXE_NETNS and
# UROCE_RXE_DIR (scripts/rxe/guest.sh). Outputs go to $UROCE_RXE_DIR/ibverbs/.
# UROCE_IBV_CASES=REGEX runs only the cases whose "to_rxe|from_rxe PROGRAM" matches, and
# UROCE_IBV_REPEAT=N runs each N times (to chase a flake: UROCE_IBV_CASES='to_rxe ib_write_lat'
# UROCE_IBV_REPEAT=20). UROCE_IBV_PCAP=1 captures the uroce side of each run to $n.pcap.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
G=$here/guest.sh
[[ $(id -u) -eq 0 ]] || { echo "ibverbs.sh needs root (netns, taps, qemu): skipped" >&2; exit 77; }
NS=${UROCE_RXE_NETNS:-uroce-rxe}
art=${UROCE_RXE_DIR:-$root/target/rxe}/ibverbs
mkdir -p "$art"
GUEST=${UROCE_IBV_GUEST:-ibv1} G4=10.77.0.2 H4=10.77.0.1

cd "$root"
cargo build --release --locked -p uroce-ibverbs >&2
lib=$root/target/release/ibverbs-ld
mkdir -p "$lib"
ln -sf ../libibverbs.so "$lib/libibverbs.so.1"
# What runs on the uroce side: in the guest's netns, as nobody, on our library.
U="ip netns exec $NS setpriv --reuid nobody --regid nogroup --clear-groups env LD_LIBRARY_PATH=$lib UROCE_DEVICES=uroce0=$H4"
[[ ${UROCE_IBV_PCAP:-0} == 1 ]] && chmod 777 "$art"
pcap() { [[ ${UROCE_IBV_PCAP:-0} == 1 ]] && echo "UROCE_PCAP=$art/$n.pcap"; return 0; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    "$G" stop "$GUEST" 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT INT TERM
"$G" setup >&2
"$G" start "$GUEST" "$G4" > "$art/guest-start.txt"

pass=0 fail=0 n=0
record() { # name ok
    if [[ $2 == 1 ]]; then pass=$((pass + 1)); echo "ok   $1"; else fail=$((fail + 1)); echo "FAIL $1 (see $art/$n.*)"; fi
}

# uroce is the client, rxe the server.
to_rxe() { # program args...
    n=$((n + 1))
    local id u=0 g=0
    id=$("$G" submit "$GUEST" -t 150 "$*")
    "$G" wait-port "$GUEST" 18515 >/dev/null
    # shellcheck disable=SC2086
    timeout 120 $U $(pcap) "$@" "$G4" > "$art/$n.uroce" 2>&1 || u=$?
    "$G" wait "$GUEST" "$id" > "$art/$n.rxe" 2>&1 || g=$?
    record "uroce client -> rxe server: $*" "$([[ $u == 0 && $g == 0 ]] && echo 1 || echo 0)"
}

# rxe is the client, uroce the server.
from_rxe() {
    n=$((n + 1))
    local u=0 g=0
    # shellcheck disable=SC2086
    timeout 120 $U $(pcap) "$@" > "$art/$n.uroce" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + 30))
    until ip netns exec "$NS" ss -Hltn 'sport = :18515' | grep -q .; do
        ((SECONDS < deadline)) && kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    "$G" run "$GUEST" -t 100 "$* $H4" > "$art/$n.rxe" 2>&1 || g=$?
    wait "$pid" || u=$?
    record "rxe client -> uroce server: $*" "$([[ $u == 0 && $g == 0 ]] && echo 1 || echo 0)"
}

CASES=${UROCE_IBV_CASES:-.} REPEAT=${UROCE_IBV_REPEAT:-1}
case_() { # dir program args...
    [[ "$1 $2" =~ $CASES ]] || return 0
    local i
    for ((i = 0; i < REPEAT; i++)); do "$@"; done
}

t0=$SECONDS
for d in to_rxe from_rxe; do
    dir="case_ $d"
    $dir ibv_rc_pingpong -g 1 -c -n 100
    $dir ibv_uc_pingpong -g 1 -c -n 100
    $dir ibv_ud_pingpong -g 1 -c -n 100 -s 2048
    $dir ibv_srq_pingpong -g 1 -c -n 100
    # -F: the TCG guest's cycle counter fails perftest's CPU frequency check. -t 8: at the
    # default 128 outstanding 64 KiB messages the rxe in the TCG guest falls so far behind
    # that uroce's RC requester (uroce bench alike) runs out of retries on this host.
    # -u 17: both ends' local ACK timeout 4.096 us * 2^17 = 0.54 s instead of 67 ms, so the
    # retry budget (retry_cnt 7: 8 tries) is 4.3 s instead of 0.54 s. The TCG guest, on a
    # loaded 2-core host where the uroce side busy-polls, can stall longer than 0.54 s: an
    # ib_write_lat run then failed RETRY_EXC_ERR on the uroce client (scnt=37, ccnt=36),
    # and when it is rxe's requester that gives up, the rxe server exits and the uroce client,
    # which waits for the server's WRITE by spinning on its buffer and never polls the CQ,
    # hangs to the 120 s limit. A longer timeout costs nothing unless a packet is lost.
    $dir ib_write_bw -x 1 -F -n 300 -t 8 -u 17
    $dir ib_read_bw -x 1 -F -n 300 -t 8 -u 17
    $dir ib_send_bw -x 1 -F -n 300 -t 8 -u 17
    $dir ib_atomic_bw -x 1 -F -n 300 -u 17
    $dir ib_write_lat -x 1 -F -n 200 -u 17
    $dir ib_send_lat -x 1 -F -n 200 -u 17
done
echo "ibverbs: $((SECONDS - t0)) s"
echo "$pass passed, $fail failed"
((fail == 0))

#!/usr/bin/env bash
# uroce against the kernel's Soft-RoCE (rdma_rxe) driven by rdma-core's own example programs:
# ibv_{rc,uc,ud,srq}_pingpong -c and perftest (ib_{write,read,send,atomic}_bw, ib_write_lat)
# in a qemu guest against `uroce pingpong` / `uroce bench` in the host netns
# (bridge address 10.77.0.1 / fd77::1), in both directions (uroce client ↔ rxe server, rxe
# client ↔ uroce server), RC at 1 B, 4000 B and 1 MiB, path MTU 1024 and 4096, IPv4 and IPv6.
# Every run validates the data (-c) on both sides; every one must exit 0 on both sides.
# Last, an RC transfer over a lossy path (netem in the guest, injected loss in uroce) must
# complete with both sides retransmitting.
#
#   scripts/rxe/interop.sh [--quick]
#
# Needs root (exit 77 = skipped otherwise). Builds the release CLI, boots one guest (ix1,
# 10.77.0.2 / fd77::2), stops it at the end. Prints "N passed, N failed" and exits 1 on any
# failure; outputs go to target/rxe/interop/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
G=$here/guest.sh
[[ $(id -u) -eq 0 ]] || { echo "interop.sh needs root (netns, taps, qemu): skipped" >&2; exit 77; }
quick=0
[[ ${1:-} == --quick ]] && quick=1
art=$root/target/rxe/interop
mkdir -p "$art"
# The netns guest.sh boots the guest in (its UROCE_RXE_NETNS): a hard-coded name ran uroce in
# another checkout's netns, same bridge addresses but no guest there ("No route to host").
NS=${UROCE_RXE_NETNS:-uroce-rxe}
GUEST=ix1 G4=10.77.0.2 G6=fd77::2 H4=10.77.0.1 H6=fd77::1

cd "$root"
cargo build --release --locked -p uroce-cli >&2
U=$root/target/release/uroce

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    "$G" stop "$GUEST" 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT INT TERM
"$G" setup >&2
"$G" start "$GUEST" "$G4" "$G6" > "$art/guest-start.txt"

pass=0 fail=0
n=0
record() { # name status...
    local name=$1 ok=$2
    if [[ $ok == 1 ]]; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name (see $art/$n.*)"; fi
}

# uroce is the client, rxe the server.
to_rxe() { # mode ip-version args...
    local mode=$1 v=$2; shift 2
    local gidx=1 dev=$H4 peer=$G4
    [[ $v == 6 ]] && { gidx=2; dev=$H6; }
    n=$((n + 1))
    local id
    id=$("$G" submit "$GUEST" "ibv_${mode}_pingpong -g $gidx -c $*")
    "$G" wait-port "$GUEST" 18515 >/dev/null
    local u=0 g=0
    timeout 120 ip netns exec "$NS" "$U" pingpong "--$mode" -g "$gidx" -c "$@" --dev-ip "$dev" --counters \
        --timeout 90 "$peer" > "$art/$n.uroce" 2>&1 || u=$?
    "$G" wait "$GUEST" "$id" > "$art/$n.rxe" 2>&1 || g=$?
    record "uroce client -> rxe server: $mode IPv$v $*" "$([[ $u == 0 && $g == 0 ]] && echo 1 || echo 0)"
}

# rxe is the client, uroce the server.
from_rxe() {
    local mode=$1 v=$2; shift 2
    local gidx=1 dev=$H4
    [[ $v == 6 ]] && { gidx=2; dev=$H6; }
    n=$((n + 1))
    local u=0 g=0
    timeout 120 ip netns exec "$NS" "$U" pingpong "--$mode" -g "$gidx" -c "$@" --dev-ip "$dev" --counters \
        --timeout 90 > "$art/$n.uroce" 2>&1 &
    local pid=$!
    # The server prints "listening" on stderr once its TCP port is open.
    local deadline=$((SECONDS + 30))
    until grep -q listening "$art/$n.uroce" 2>/dev/null; do
        ((SECONDS < deadline)) && kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    "$G" run "$GUEST" -t 100 "ibv_${mode}_pingpong -g $gidx -c $* $H4" > "$art/$n.rxe" 2>&1 || g=$?
    wait "$pid" || u=$?
    record "rxe client -> uroce server: $mode IPv$v $*" "$([[ $u == 0 && $g == 0 ]] && echo 1 || echo 0)"
}

# perftest: uroce bench is the client, perftest on rxe the server.
bench_to_rxe() { # test kind perftest-binary args...
    local test=$1 kind=$2 bin=$3; shift 3
    n=$((n + 1))
    local id u=0 g=0
    # gx, hdev: the GID index on both sides and uroce's device address (IPv4 unless set; the
    # side channel stays on IPv4).
    id=$("$G" submit "$GUEST" "$bin -x ${gx:-1} -F $*")
    "$G" wait-port "$GUEST" 18515 >/dev/null
    # shellcheck disable=SC2086 # uextra: options for uroce only, split on purpose
    timeout 180 ip netns exec "$NS" "$U" bench "$test" "$kind" -x "${gx:-1}" -F "$@" ${uextra:-} \
        --dev-ip "${hdev:-$H4}" --timeout 150 "$G4" > "$art/$n.uroce" 2>&1 || u=$?
    "$G" wait "$GUEST" "$id" > "$art/$n.rxe" 2>&1 || g=$?
    record "uroce bench $test $kind -> $bin on rxe: $*" "$([[ $u == 0 && $g == 0 ]] && echo 1 || echo 0)"
}

# perftest on rxe is the client, uroce bench the server.
bench_from_rxe() {
    local test=$1 kind=$2 bin=$3; shift 3
    n=$((n + 1))
    local u=0 g=0
    timeout 180 ip netns exec "$NS" "$U" bench "$test" "$kind" -x 1 -F "$@" --dev-ip "$H4" --timeout 150 \
        > "$art/$n.uroce" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + 30))
    until grep -q listening "$art/$n.uroce" 2>/dev/null; do
        ((SECONDS < deadline)) && kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    "$G" run "$GUEST" -t 170 "$bin -x 1 -F $* $H4" > "$art/$n.rxe" 2>&1 || g=$?
    wait "$pid" || u=$?
    record "$bin on rxe -> uroce bench $test $kind: $*" "$([[ $u == 0 && $g == 0 ]] && echo 1 || echo 0)"
}

t0=$SECONDS
for dir in bench_to_rxe bench_from_rxe; do
    $dir write bw ib_write_bw -n 200 -s 65536
    $dir read bw ib_read_bw -n 200 -s 65536
    # 16 KiB: four packets, which uroce asks for with one READ request each (split_reads).
    $dir read bw ib_read_bw -n 200 -s 16384
    $dir send bw ib_send_bw -n 200 -s 65536
    $dir atomic bw ib_atomic_bw -n 200 -A FETCH_AND_ADD
    $dir atomic bw ib_atomic_bw -n 200 -A CMP_AND_SWAP
    $dir write lat ib_write_lat -n 200 -s 8
    ((quick)) && break
done

# uroce's connected send path (DeviceConfig::connected_tx): a busy-polled client sending from a
# socket connected to rxe (bound beside the device's socket, to its address and port), each
# packet's ICRC resealed for the IPv4 ID the socket's counter gives it (segment i of a GSO
# send: that ID + i). rxe drops a packet whose ICRC is wrong, so finishing is the check; the
# uroce side says how many sends went out that way. rxe answers from source ports of its own,
# not 4791, so its packets reach the device's socket, not the connected one.
connected() { grep -o 'connected sends: [0-9]*' "$art/$n.uroce" | grep -o '[0-9]*$' || echo 0; }
UROCE_CONNECTED_TX=1 uextra="--progress polled" bench_to_rxe write lat ib_write_lat -n 200 -s 8
c_lat=$(connected)
UROCE_CONNECTED_TX=1 uextra="--progress polled" bench_to_rxe write bw ib_write_bw -n 200 -s 65536
c_bw=$(connected)
record "connected sends to rxe: write lat ${c_lat:-0}, write bw ${c_bw:-0}" \
    "$([[ ${c_lat:-0} -gt 0 && ${c_bw:-0} -gt 0 ]] && echo 1 || echo 0)"
# The same over IPv6 (GID index 2 on both sides): no ID there, the packets leave as sealed.
UROCE_CONNECTED_TX=1 uextra="--progress polled" gx=2 hdev=$H6 \
    bench_to_rxe write lat ib_write_lat -n 200 -s 8
c6=$(connected)
record "connected sends to rxe over IPv6: write lat ${c6:-0}" "$([[ ${c6:-0} -gt 0 ]] && echo 1 || echo 0)"

# Messages large enough for zero-copy receive (>= 256 KiB of a message to come): rxe's WRITE
# packets and READ responses (non-zero IPv4 IDs, solved for in the ICRC over the payload where
# the kernel placed it) land straight in uroce's regions.
# Packets the last case's uroce side placed, from its `zero-copy receive: N` line (0 if none).
placed() { grep -o 'zero-copy receive: [0-9]*' "$art/$n.uroce" | grep -o '[0-9]*$' || echo 0; }
if ((!quick)); then
    bench_from_rxe write bw ib_write_bw -n 40 -s 1048576
    placed_w=$(placed)
    bench_to_rxe read bw ib_read_bw -n 40 -s 1048576
    placed_r=$(placed)
    record "zero-copy receive of rxe's packets: WRITE ${placed_w:-0}, READ responses ${placed_r:-0} placed" \
        "$([[ ${placed_w:-0} -gt 0 && ${placed_r:-0} -gt 0 ]] && echo 1 || echo 0)"
fi

for v in 4 6; do
    for mtu in 1024 4096; do
        sizes="1 4000 1048576"
        ((quick)) && sizes="4000"
        for s in $sizes; do
            iters=20
            [[ $s == 1048576 ]] && iters=5
            to_rxe rc "$v" -n "$iters" -s "$s" -m "$mtu"
            from_rxe rc "$v" -n "$iters" -s "$s" -m "$mtu"
        done
        ((quick)) && [[ $v == 6 || $mtu == 1024 ]] && continue
        to_rxe uc "$v" -n 20 -s 4000 -m "$mtu"
        from_rxe uc "$v" -n 20 -s 4000 -m "$mtu"
        to_rxe srq "$v" -n 20 -s 4000 -m "$mtu"
        from_rxe srq "$v" -n 20 -s 4000 -m "$mtu"
    done
    # UD has no -m: the port MTU (4096 with the 9000-byte link) bounds the size.
    to_rxe ud "$v" -n 20 -s 2048
    from_rxe ud "$v" -n 20 -s 4096
done
# RC over a lossy path: netem loss 1 % on the guest's eth0 (rxe → uroce) and 1 % loss injected
# on uroce's own sends (the host kernel has no netem). Both sides must retransmit and the data
# must arrive intact (-c).
lossy() {
    n=$((n + 1))
    local stats='rdma statistic show link rxe0/1 | tr " " "\n" | grep -A1 -x completer_retry_err | tail -1'
    "$G" run "$GUEST" "modprobe sch_netem && tc qdisc replace dev eth0 root netem loss 1%" > "$art/$n.netem" 2>&1
    local before after id u=0 g=0
    before=$("$G" run "$GUEST" "$stats")
    id=$("$G" submit "$GUEST" "ibv_rc_pingpong -g 1 -c -n 5 -s 1048576 -m 4096")
    "$G" wait-port "$GUEST" 18515 >/dev/null
    UROCE_FAULTS=loss=0.01,seed=11 timeout 200 ip netns exec "$NS" "$U" pingpong --rc -g 1 -c -n 5 -s 1048576 \
        -m 4096 --dev-ip "$H4" --counters --timeout 150 "$G4" > "$art/$n.uroce" 2>&1 || u=$?
    "$G" wait "$GUEST" "$id" > "$art/$n.rxe" 2>&1 || g=$?
    after=$("$G" run "$GUEST" "$stats")
    "$G" run "$GUEST" "tc qdisc del dev eth0 root" >/dev/null 2>&1 || true
    local ours
    ours=$(grep -o '[0-9]* retransmitted' "$art/$n.uroce" | cut -d' ' -f1)
    echo "lossy run: uroce retransmitted ${ours:-?} packets; rxe completer_retry_err $before -> $after" >&2
    record "RC 1 MiB x 5 with 1 % loss both ways (netem in the guest, injected in uroce)" \
        "$([[ $u == 0 && $g == 0 && ${ours:-0} -gt 0 && $after -gt $before ]] && echo 1 || echo 0)"
}
lossy

echo "interop: $((SECONDS - t0)) s"
echo "$pass passed, $fail failed"
((fail == 0))

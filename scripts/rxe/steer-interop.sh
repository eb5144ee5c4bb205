#!/usr/bin/env bash
# Interop with the kernel's rxe while uroce shares its address (QPN-steered receive,
# `--steer`; docs/ARCHITECTURE.md): rxe peers in a qemu guest see one address and port 4791.
#   1. two steered `uroce pingpong` servers on the host address, two rdma-core
#      ibv_rc_pingpong -c clients on rxe at once (IPv4, then IPv6);
#   2. a steered `uroce bench` server, perftest's ib_write_bw on rxe as the client, while a
#      second steered uroce process holds the same address;
#   3. a steered `uroce pingpong` client against an rxe server.
# Every run checks data (-c, perftest verdict by uroce) and every steered uroce must report
# "foreign drops 0".
#
#   scripts/rxe/steer-interop.sh
#
# Needs root (exit 77 = skipped otherwise). Honours UROCE_RXE_NETNS / UROCE_RXE_DIR as
# guest.sh does. Outputs go to target/rxe/steer-interop/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
G=$here/guest.sh
[[ $(id -u) -eq 0 ]] || { echo "steer-interop.sh needs root (netns, taps, qemu): skipped" >&2; exit 77; }
art=$root/target/rxe/steer-interop
rm -rf "$art"
mkdir -p "$art"
NS=${UROCE_RXE_NETNS:-uroce-rxe}
GUEST=sx1 G4=10.77.0.2 G6=fd77::2 H4=10.77.0.1 H6=fd77::1

cd "$root"
cargo build --release --locked -p uroce-cli >&2
U=$root/target/release/uroce

pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    "$G" stop "$GUEST" 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT INT TERM
"$G" setup >&2
"$G" start "$GUEST" "$G4" "$G6" > "$art/guest-start.txt"

pass=0 fail=0
record() { # name ok
    if [[ $2 == 1 ]]; then pass=$((pass + 1)); echo "ok   $1"; else fail=$((fail + 1)); echo "FAIL $1 (see $art)"; fi
}
# The server prints "listening" on stderr once its TCP port is open.
await_listening() { # file pid
    local deadline=$((SECONDS + 30))
    until grep -q listening "$1" 2>/dev/null; do
        ((SECONDS < deadline)) && kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
}
# Steered, every byte right, no packet at the wrong process.
clean() { # file
    grep -q "^steer: slot" "$1" && ! grep "^steer: slot" "$1" | grep -vq "foreign drops 0,"
}

# 1. Two steered servers, two rxe clients at once. The servers sleep on CQ events (-e): two
# busy-polling processes would starve the TCG guest, and rxe in it, on a small machine.
two_servers() { # ip-version
    local v=$1 gidx=1 dev=$H4 peer=$H4
    # The rxe client's side channel goes to the IPv4 address; -g picks the GID's family.
    [[ $v == 6 ]] && { gidx=2; dev=$H6; }
    local a=$art/two-v$v
    local p1 p2
    timeout 150 ip netns exec "$NS" "$U" pingpong --rc --steer -e -g "$gidx" -c -n 200 -s 4000 -m 1024 \
        -p 18601 --dev-ip "$dev" --counters --timeout 90 > "$a.u1" 2>&1 &
    p1=$!
    timeout 150 ip netns exec "$NS" "$U" pingpong --rc --steer -e -g "$gidx" -c -n 200 -s 4000 -m 1024 \
        -p 18602 --dev-ip "$dev" --counters --timeout 90 > "$a.u2" 2>&1 &
    p2=$!
    pids+=("$p1" "$p2")
    local ok=1 u1=0 u2=0 g1=0 g2=0
    await_listening "$a.u1" "$p1" && await_listening "$a.u2" "$p2" || ok=0
    local id1 id2
    id1=$("$G" submit "$GUEST" -t 120 "ibv_rc_pingpong -g $gidx -c -n 200 -s 4000 -m 1024 -p 18601 $peer")
    id2=$("$G" submit "$GUEST" -t 120 "ibv_rc_pingpong -g $gidx -c -n 200 -s 4000 -m 1024 -p 18602 $peer")
    "$G" wait "$GUEST" "$id1" > "$a.r1" 2>&1 || g1=$?
    "$G" wait "$GUEST" "$id2" > "$a.r2" 2>&1 || g2=$?
    wait "$p1" || u1=$?
    wait "$p2" || u2=$?
    [[ $u1 == 0 && $u2 == 0 && $g1 == 0 && $g2 == 0 ]] || ok=0
    clean "$a.u1" && clean "$a.u2" || ok=0
    # Two processes, two slots: their QPNs differ in the slot bits.
    [[ $(grep -m1 -o 'slot [0-9]*' "$a.u1") != $(grep -m1 -o 'slot [0-9]*' "$a.u2") ]] || ok=0
    record "two steered uroce servers on one IPv$v address <- two rxe ibv_rc_pingpong -c at once" "$ok"
}
two_servers 4
two_servers 6

# 2. perftest on rxe -> a steered uroce bench server, another steered process on the address.
bench_shared() {
    local a=$art/bench ok=1 u=0 g=0 h=0
    timeout 150 ip netns exec "$NS" "$U" pingpong --rc --steer -p 18603 --dev-ip "$H4" \
        --timeout 90 > "$a.holder" 2>&1 &
    local holder=$!
    pids+=("$holder")
    await_listening "$a.holder" "$holder" || ok=0
    timeout 180 ip netns exec "$NS" "$U" bench write bw --steer -x 1 -F -n 200 -s 65536 \
        --dev-ip "$H4" --timeout 150 > "$a.u" 2>&1 &
    local p=$!
    pids+=("$p")
    await_listening "$a.u" "$p" || ok=0
    "$G" run "$GUEST" -t 170 "ib_write_bw -x 1 -F -n 200 -s 65536 $H4" > "$a.r" 2>&1 || g=$?
    wait "$p" || u=$?
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || h=$?
    [[ $u == 0 && $g == 0 ]] || ok=0
    clean "$a.u" || ok=0
    record "ib_write_bw on rxe -> steered uroce bench, a second steered process on the address" "$ok"
}
bench_shared

# 3. A steered client against an rxe server.
client_to_rxe() {
    local a=$art/client ok=1 u=0 g=0 id
    id=$("$G" submit "$GUEST" "ibv_rc_pingpong -g 1 -c -n 200 -s 4000 -m 1024")
    "$G" wait-port "$GUEST" 18515 >/dev/null
    timeout 120 ip netns exec "$NS" "$U" pingpong --rc --steer -g 1 -c -n 200 -s 4000 -m 1024 \
        --dev-ip "$H4" --counters --timeout 90 "$G4" > "$a.u" 2>&1 || u=$?
    "$G" wait "$GUEST" "$id" > "$a.r" 2>&1 || g=$?
    [[ $u == 0 && $g == 0 ]] || ok=0
    clean "$a.u" || ok=0
    record "steered uroce pingpong client -> rxe ibv_rc_pingpong -c server" "$ok"
}
client_to_rxe

echo "$pass passed, $fail failed"
((fail == 0))

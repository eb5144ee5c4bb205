#!/usr/bin/env bash
# Self-test of the rxe harness: kernel Soft-RoCE against kernel Soft-RoCE, then host -> rxe.
#
#   scripts/rxe/selftest.sh
#
# 1. setup (packages, initramfs, netns), boots guests st1 (10.77.0.201, fd77::c9) and st2
#    (10.77.0.202, fd77::ca) in parallel;
# 2. captures RoCEv2 (UDP 4791) on st1's tap with tcpdump;
# 3. ibv_rc_pingpong -g 1 -c -n 10 -s 4000: server in st1, client in st2;
# 4. ib_write_bw -x 1 -n 100 -s 65536 (-F -u 18, see below): server in st1, client in st2;
# 5. checks the capture holds RoCEv2 packets in both directions;
# 6. stops st2 and runs probe.sh st1: packets from the bridge address reach rxe in st1;
# 7. stops st1 (also on failure or interrupt). The netns stays (guest.sh teardown removes it).
# Exits 0 on success. Artifacts (outputs, capture, consoles) in target/rxe/selftest/.
# Needs root (without it: exit 77, skipped). Takes about 1 minute on 2 busy cores (see
# docs/INTEROP.md).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
G=$here/guest.sh
[[ $(id -u) -eq 0 ]] || { echo "selftest.sh needs root (netns, taps, qemu): skipped" >&2; exit 77; }
state=${UROCE_RXE_DIR:-$(cd "$here/../.." && pwd)/target/rxe}
art=$state/selftest
A4=10.77.0.201 A6=fd77::c9
B4=10.77.0.202 B6=fd77::ca

t_all=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { echo "== selftest: $*" >&2; }
fail() {
    echo "selftest: FAILED: $*" >&2
    exit 1
}

cap_pid=
p1='' p2=''
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # guest.sh start still booting: TERM makes it kill its guest.
    for p in $p1 $p2; do
        if kill -TERM "$p" 2>/dev/null; then wait "$p" 2>/dev/null || true; fi
    done
    if [[ -n $cap_pid ]]; then
        kill -INT "$cap_pid" 2>/dev/null || true
        wait "$cap_pid" 2>/dev/null || true
    fi
    for g in st1 st2; do
        if [[ $rc -ne 0 && -e $("$G" dir "$g")/console.log ]]; then
            cp "$("$G" dir "$g")/console.log" "$art/$g.console.log" 2>/dev/null || true
        fi
        "$G" stop "$g" 2>/dev/null || true
    done
    if [[ $rc -eq 0 ]]; then
        echo "selftest: OK in $(since "$t_all") s" >&2
    else
        echo "selftest: failed (exit $rc) after $(since "$t_all") s; artifacts in $art" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$art"
mkdir -p "$art"
# Guests of a self-test killed without its cleanup power off after 15 minutes at most.
export UROCE_RXE_LIFETIME=${UROCE_RXE_LIFETIME:-900}

step "setup"
"$G" setup
ns=$("$G" netns)

# Left over from an earlier run that could not clean up: start afresh.
"$G" stop st1
"$G" stop st2

step "booting st1 ($A4) and st2 ($B4)"
t=$(date +%s.%N)
"$G" start st1 "$A4" "$A6" >"$art/st1.info" 2>"$art/st1.start" &
p1=$!
"$G" start st2 "$B4" "$B6" >"$art/st2.info" 2>"$art/st2.start" &
p2=$!
r1=0 r2=0
wait "$p1" || r1=$?
wait "$p2" || r2=$?
p1='' p2=''
cat "$art/st1.start" "$art/st2.start" >&2
((r1 == 0 && r2 == 0)) || fail "boot (st1: $r1, st2: $r2)"
t_boot=$(since "$t")
grep -E '^(link rxe0|[0-9] [0-9a-f:]{39} )' "$art/st1.info" "$art/st2.info" >&2

step "capturing UDP 4791 on st1's tap"
pcap=$art/roce.pcap
ip netns exec "$ns" tcpdump -i urxe-st1 -n -U -s 128 -w "$pcap" 'udp dst port 4791' \
    2>"$art/tcpdump.err" &
cap_pid=$!
end=$(($(date +%s) + 30))
until grep -q "listening on" "$art/tcpdump.err"; do
    kill -0 "$cap_pid" 2>/dev/null || fail "tcpdump: $(cat "$art/tcpdump.err")"
    (($(date +%s) < end)) || fail "tcpdump did not start in 30 s"
    sleep 0.1
done

# pair_once WHAT CMD CHECK: server `CMD` in st1, client `CMD st1's address` in st2; both must
# exit 0 and both outputs match the regex CHECK.
pair_once() {
    local what=$1 cmd=$2 check=$3 id r=0 rs=0
    # The server records its pid so that a failed attempt can end it (by pid) in the guest.
    id=$("$G" submit st1 -t 240 "echo \$\$ >/tmp/server.pid; exec $cmd")
    if "$G" wait-port st1 18515 120; then
        "$G" run st2 -t 240 "$cmd $A4" >"$art/$what.client.out" 2>&1 || r=$?
    else
        r=1
    fi
    if ((r != 0)); then
        # shellcheck disable=SC2016 # expands in the guest
        "$G" run st1 -t 30 'kill "$(cat /tmp/server.pid)" 2>/dev/null; true' || true
    fi
    "$G" wait st1 "$id" >"$art/$what.server.out" 2>&1 || rs=$?
    echo "-- $what client (st2):" >&2
    cat "$art/$what.client.out" >&2
    if ((r != 0 || rs != 0)) || ! grep -qE "$check" "$art/$what.client.out" ||
        ! grep -qE "$check" "$art/$what.server.out"; then
        echo "-- $what server (st1):" >&2
        cat "$art/$what.server.out" >&2
        echo "selftest: $what failed: client exit $r, server exit $rs" >&2
        return 1
    fi
}

# pair WHAT CMD CHECK: pair_once, tried a second time if the first fails (TCG guests on busy
# cores can stall past rxe's retransmission limits); a second failure fails the test.
pair() {
    local what=$1 t
    step "$what: $2"
    t=$(date +%s.%N)
    if ! pair_once "$@"; then
        echo "selftest: $what: attempt 1 failed, trying once more" >&2
        retries+=("$what")
        pair_once "$@" || fail "$what failed twice"
    fi
    echo "$what took $(since "$t") s" >&2
}
retries=()

t=$(date +%s.%N)
pair pingpong "ibv_rc_pingpong -d rxe0 -g 1 -c -n 10 -s 4000" "10 iters in"
t_pp=$(since "$t")

t=$(date +%s.%N)
# -F: perftest samples the CPU clock and, when TCG on busy cores spoils the sample
# ("Correlation coefficient r^2 < 0.9"), exits with "Can't produce a report" unless -F is given
# (the bandwidth it prints is then 0). -u 18: QP ACK timeout ~1 s instead of ~67 ms.
pair write_bw "ib_write_bw -d rxe0 -x 1 -n 100 -s 65536 -F -u 18 --report_gbits" '^ *65536 +100 '
t_bw=$(since "$t")

kill -INT "$cap_pid"
wait "$cap_pid" || true
cap_pid=
cat "$art/tcpdump.err" >&2
to_a=$(tcpdump -r "$pcap" -n "src host $B4 and dst host $A4" 2>/dev/null | wc -l)
to_b=$(tcpdump -r "$pcap" -n "src host $A4 and dst host $B4" 2>/dev/null | wc -l)
echo "capture on urxe-st1: $to_a RoCEv2 packets st2 -> st1, $to_b st1 -> st2 (UDP dst port 4791)" >&2
if command -v tshark >/dev/null; then
    echo "BTH opcodes in the capture (tshark), count and opcode:" >&2
    tshark -r "$pcap" -T fields -e infiniband.bth.opcode 2>/dev/null | sort | uniq -c >&2 || true
fi
((to_a > 0 && to_b > 0)) || fail "the capture lacks RoCEv2 packets in one direction"

step "host -> rxe: stopping st2, probing st1 from the bridge address"
"$G" stop st2
t=$(date +%s.%N)
"$here/probe.sh" st1 >"$art/probe.out" 2>&1 || {
    cat "$art/probe.out" >&2
    fail "probe"
}
cat "$art/probe.out" >&2
t_probe=$(since "$t")

echo "selftest timings: boot (2 guests in parallel) ${t_boot} s, pingpong ${t_pp} s," \
    "ib_write_bw ${t_bw} s, probe ${t_probe} s; retried: ${retries[*]:-none}" >&2

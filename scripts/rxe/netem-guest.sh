#!/usr/bin/env bash
# Runs INSIDE a guest of scripts/rxe/guest.sh (whose Debian kernel has sch_netem; the host
# kernel does not): two network namespaces joined by veth with `tc netem delay 1ms 500us
# loss 5% reorder 10% duplicate 2% corrupt 1%` on both ends, and an RC `uroce pingpong -c`
# (every byte of every message checked) between them with both back ends. Prints each side's
# counters line and, per namespace, the kernel's UDP checksum drops (netem's bit flips that
# the UDP checksum caught before uroce's ICRC check saw them); exits non-zero if a run fails.
#
#   netem-guest.sh DIR    DIR holds `uroce` and `netns.sh` (netem.sh copies them to the guest's
#                         share, since the host's /tmp, where a checkout may live, is not
#                         visible in the guest)
set -euo pipefail
dir=${1:?usage: netem-guest.sh DIR}
U=$dir/uroce
cd "$dir"
modprobe sch_netem 2>/dev/null || true
out=$(mktemp -d)
trap 'bash "$dir"/netns.sh down gn >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
bash $dir/netns.sh up gn 5
# NETEM overrides the profile; NETEM_BACKENDS the back ends run (default both).
NETEM=${NETEM:-delay 1ms 500us loss 5% reorder 10% duplicate 2% corrupt 1%}
for backend in ${NETEM_BACKENDS:-uring syscall}; do
    # shellcheck disable=SC2086
    bash $dir/netns.sh netem gn $NETEM
    ip netns exec gn-a tc qdisc show dev eth0 | sed "s/^/$backend: /"
    # -u 17: a 537 ms ACK timeout, not ibv_rc_pingpong's 67 ms. The guest is TCG-emulated and
    # its syscall back end drains a 1 MiB window so slowly that, after a loss, the resent packet
    # can wait behind the rest of the window for longer than 8 × 67 ms: go-back-N then gives up
    # with "retry counter exceeded" although the peer is alive (seen in CI, stop 17). rxe would
    # not, as it never counts down retry_cnt 7.
    args=(pingpong --rc -c --counters --timeout 200 -u 17 --backend "$backend" -s 1048576 -m 4096 -n 10)
    # NETEM_PCAP=DIR: each side writes what uroce sent and received to DIR/BACKEND-SIDE.pcap.
    senv=() cenv=()
    if [[ -n ${NETEM_PCAP:-} ]]; then
        senv=("UROCE_PCAP=$NETEM_PCAP/$backend-server.pcap")
        cenv=("UROCE_PCAP=$NETEM_PCAP/$backend-client.pcap")
    fi
    ip netns exec gn-a env "${senv[@]}" "$U" "${args[@]}" > "$out/server" 2>&1 &
    pid=$!
    deadline=$((SECONDS + 60))
    until grep -q listening "$out/server" 2>/dev/null; do
        ((SECONDS < deadline)) && kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    rc=0
    ip netns exec gn-b env "${cenv[@]}" "$U" "${args[@]}" 10.66.5.1 > "$out/client" 2>&1 || rc=$?
    wait "$pid" || rc=$?
    for side in server client; do
        echo "$backend $side: $(grep -E '^counters:' "$out/$side" | cut -c1-400)"
        grep -E ' (bytes|iters) in ' "$out/$side" | sed "s/^/$backend $side: /" || true
    done
    if ((rc != 0)); then
        cat "$out/server" "$out/client"
        exit 1
    fi
done
for ns in gn-a gn-b; do
    # /proc/net/snmp "Udp:" rows: names, then values; InCsumErrors is a column.
    ip netns exec "$ns" awk '/^Udp:/ {if (!h) {for (i = 1; i <= NF; i++) c[$i] = i; h = 1}
        else print "'"$ns"' kernel UDP: InDatagrams " $c["InDatagrams"] ", InCsumErrors " $c["InCsumErrors"] ", InErrors " $c["InErrors"]}' /proc/net/snmp
done

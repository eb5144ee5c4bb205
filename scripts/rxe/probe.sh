#!/usr/bin/env bash
# Shows that RoCEv2 packets from the host side of the harness' netns (the bridge addresses,
# where uroce runs) reach rxe in a running guest:
#
#   scripts/rxe/probe.sh NAME
#
# Starts tcpdump on the guest's eth0, sends from 10.77.0.1 (and fd77::1 if the guest has IPv6)
# one UD SEND to QP1 with a valid ICRC each (roce_probe.py), plus one IPv4 one with a wrong
# ICRC, and checks that tcpdump saw them all and that rxe counted exactly the valid ones
# (`rdma statistic`: rcvd_pkts and rdma_recvs). Exits 0 when so.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
G=$here/guest.sh
name=${1:-}
[[ -n $name ]] || { echo "usage: $0 NAME" >&2; exit 2; }
fail() { echo "probe.sh: FAILED: $*" >&2; exit 1; }

line=$("$G" status "$name")
read -r _ state ready ip4 ip6 <<<"$line"
[[ $state == running && $ready == ready ]] || fail "guest $name is not running and ready: $line"
ns=$("$G" netns)
d=$("$G" dir "$name")
n=1 # valid probes
[[ -n ${ip6:-} ]] && n=2

counter() { # counter NAME < `rdma statistic` line
    awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }'
}
before=$("$G" run "$name" -t 60 'rdma statistic show link rxe0/1')
echo "before: $before"

# tcpdump in the guest: wait for "listening on" in its stderr, on the control share.
id=$("$G" submit "$name" -t 120 "tcpdump -i eth0 -n -l -c $((n + 1)) 'udp dst port 4791 and (src host 10.77.0.1 or src host fd77::1)'")
end=$(($(date +%s) + 60))
until grep -q "listening on" "$d/share/out/$id.err" 2>/dev/null; do
    (($(date +%s) < end)) || fail "tcpdump in the guest did not start in 60 s"
    [[ ! -e $d/share/out/$id.rc ]] || { "$G" wait "$name" "$id" || true; fail "tcpdump in the guest ended"; }
    sleep 0.1
done

args=(--bad-icrc --src4 10.77.0.1 --dst4 "$ip4")
[[ -n ${ip6:-} ]] && args+=(--src6 fd77::1 --dst6 "$ip6")
ip netns exec "$ns" python3 "$here/roce_probe.py" "${args[@]}"

echo "tcpdump in guest $name:"
"$G" wait "$name" "$id" || fail "tcpdump in the guest did not see $((n + 1)) probes"
after=$("$G" run "$name" -t 60 'rdma statistic show link rxe0/1; dmesg | grep -i "MAD received" | tail -n 2')
echo "after: $after"
for k in rcvd_pkts rdma_recvs; do
    b=$(counter "$k" <<<"$before")
    a=$(counter "$k" <<<"$after")
    echo "rxe0 $k: $b -> $a"
    ((a - b == n)) || fail "rxe0 $k rose by $((a - b)), expected $n (the valid probes)"
done
echo "probe.sh: OK: $n valid RoCEv2 probe(s) from the bridge address reached rxe0 in $name" \
    "and were counted; the one with a wrong ICRC arrived and was not"

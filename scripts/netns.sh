#!/usr/bin/env bash
# Two network namespaces joined by a veth pair, for tests between two "hosts" on one machine.
# Needs root. Addresses exist only inside the namespaces.
#
#   scripts/netns.sh up NAME [N]     creates NAME-a (10.66.N.1, fd66:N::1) and NAME-b
#                                    (10.66.N.2, fd66:N::2), MTU 9000; N defaults to 0
#   scripts/netns.sh down NAME       removes both namespaces
#   scripts/netns.sh netem NAME ARGS applies `tc qdisc replace ... netem ARGS` to both ends
set -euo pipefail
cmd=${1:-}
name=${2:-}
[[ -n $cmd && -n $name ]] || { echo "usage: $0 up|down|netem NAME [N|netem args]" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "netns.sh needs root" >&2; exit 77; }
a=$name-a
b=$name-b
case $cmd in
up)
    n=${3:-0}
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    ip netns add "$a"
    ip netns add "$b"
    ip link add "${name:0:10}-va" netns "$a" type veth peer name "${name:0:10}-vb" netns "$b"
    ip -n "$a" link set "${name:0:10}-va" name eth0
    ip -n "$b" link set "${name:0:10}-vb" name eth0
    for ns in "$a" "$b"; do
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 mtu 9000 up
    done
    ip -n "$a" addr add "10.66.$n.1/24" dev eth0
    ip -n "$b" addr add "10.66.$n.2/24" dev eth0
    ip -n "$a" addr add "fd66:$n::1/64" dev eth0 nodad
    ip -n "$b" addr add "fd66:$n::2/64" dev eth0 nodad
    ;;
down)
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    ;;
netem)
    shift 2
    for ns in "$a" "$b"; do
        ip netns exec "$ns" tc qdisc replace dev eth0 root netem "$@"
    done
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac

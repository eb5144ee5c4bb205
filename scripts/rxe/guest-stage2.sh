#!/bin/sh
# uroce rxe guest, stage 2: PID 1 after switch_root into the overlay of the host's root.
#
# Runs with the host's own userland (dash, kmod, iproute2, rdma-core, perftest). Mounts the
# control share (9p tag "uroce", read-write) at /uroce-share, reads config.sh from it (NAME,
# IP4, P4, IP6, P6, MTU, LIFETIME), loads virtio_net and rdma_rxe, addresses eth0, adds rxe0,
# waits until its port is ACTIVE with the expected GIDs, writes info.txt and then `ready`, and
# serves commands: the host drops cmd/ID.sh (after cmd/ID.timeout); this loop claims it (mv to
# run/), runs it in the background with bash under `timeout`, stdout/stderr to out/ID.out and
# out/ID.err, the exit code to out/ID.rc (renamed into place last). The file `stop`, or the
# lifetime running out, powers the guest off.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
export PATH HOME
S=/uroce-share

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
exec </dev/null >/dev/console 2>&1

say() { echo "uroce-rxe stage2: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
halt() {
    sync
    busybox poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 60
}
fail() {
    say "FAILED: $*"
    if [ -d "$S/state" ]; then
        { echo "$*"; dmesg | tail -n 40; } >"$S/state/failed.tmp"
        mv "$S/state/failed.tmp" "$S/state/failed"
    fi
    halt
}
# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_for() {
    _limit=$1; _what=$2; shift 2
    _end=$(($(date +%s) + _limit))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$_end" ] || fail "timed out after ${_limit}s waiting for $_what"
        sleep 0.1
    done
}

say "up at $(uptime_s)s"
mkdir -p "$S"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 uroce "$S" || fail "mount control share"
mkdir -p "$S/state" "$S/cmd" "$S/run" "$S/out"
[ -r "$S/config.sh" ] || fail "no config.sh on the control share"
# shellcheck disable=SC1091 # written by guest.sh start
. "$S/config.sh"
hostname "$NAME"

modprobe -a virtio_net rdma_rxe || fail "modprobe virtio_net rdma_rxe"
wait_for 60 eth0 test -e /sys/class/net/eth0
ip link set lo up
ip link set eth0 mtu "$MTU" || fail "mtu $MTU on eth0"
ip addr add "$IP4/$P4" dev eth0 || fail "address $IP4"
if [ -n "$IP6" ]; then
    ip addr add "$IP6/$P6" dev eth0 nodad || fail "address $IP6"
fi
ip link set eth0 up || fail "eth0 up"
# The addresses are set before rxe0 exists so that ib_core enumerates them in order: GID 0 is
# the MAC-derived link-local one, 1 the IPv4-mapped address, 2 the IPv6 address.
rdma link add rxe0 type rxe netdev eth0 || fail "rdma link add rxe0"

port_active() { rdma link show rxe0/1 | grep -q 'state ACTIVE'; }
gid_set() { g=$(cat "/sys/class/infiniband/rxe0/ports/1/gids/$1") && [ "$g" != "0000:0000:0000:0000:0000:0000:0000:0000" ]; }
wait_for 60 "rxe0 port ACTIVE" port_active
wait_for 60 "GID 1 (IPv4)" gid_set 1
if [ -n "$IP6" ]; then
    wait_for 60 "GID 2 (IPv6)" gid_set 2
fi

{
    echo "== $NAME: uname -r"; uname -r
    echo "== ip addr show eth0"; ip addr show eth0
    echo "== rdma link"; rdma link
    echo "== ibv_devices"; ibv_devices
    echo "== ibv_devinfo -d rxe0"; ibv_devinfo -d rxe0
    echo "== GID table of rxe0 port 1 (index gid type netdev)"
    for i in 0 1 2 3; do
        g=$(cat "/sys/class/infiniband/rxe0/ports/1/gids/$i" 2>/dev/null) || continue
        [ "$g" = "0000:0000:0000:0000:0000:0000:0000:0000" ] && continue
        t=$(cat "/sys/class/infiniband/rxe0/ports/1/gid_attrs/types/$i" 2>/dev/null)
        n=$(cat "/sys/class/infiniband/rxe0/ports/1/gid_attrs/ndevs/$i" 2>/dev/null)
        echo "$i $g $t $n"
    done
    echo "== ready at uptime $(uptime_s)s"
} >"$S/state/info.txt" 2>&1
touch "$S/state/ready"
say "rxe0 ready at $(uptime_s)s"

while :; do
    if [ -e "$S/stop" ]; then
        say "stop requested"
        halt
    fi
    up=$(cut -d. -f1 /proc/uptime)
    if [ "$up" -ge "$LIFETIME" ]; then
        say "lifetime of ${LIFETIME}s over"
        halt
    fi
    for f in "$S"/cmd/*.sh; do
        [ -e "$f" ] || continue
        id=${f##*/}
        id=${id%.sh}
        mv "$f" "$S/run/$id.sh" || continue
        t=$(cat "$S/cmd/$id.timeout" 2>/dev/null) || t=600
        rm -f "$S/cmd/$id.timeout"
        (
            cd /root || cd /
            timeout -k 10 "$t" bash "$S/run/$id.sh" >"$S/out/$id.out" 2>"$S/out/$id.err"
            echo $? >"$S/out/$id.rc.tmp"
            mv "$S/out/$id.rc.tmp" "$S/out/$id.rc"
        ) &
    done
    sleep 0.2
done

#!/bin/busybox sh
# shellcheck shell=dash disable=SC2013
# uroce rxe guest, stage 1: the /init of the busybox initramfs that scripts/rxe/guest.sh builds.
#
# Loads the virtio, 9p and overlay modules shipped in the initramfs (in the order of
# /modules.list), mounts the host's / read-only over 9p (tag "hostroot") as the lower layer of
# an overlay whose upper layer is a tmpfs, and switch_roots into that overlay, where the host's
# own /bin/sh runs /uroce-stage2.sh (copied from the initramfs). Any failure powers the guest
# off, which ends qemu (-no-reboot).
/bin/busybox mkdir -p /bin /proc /sys /dev /lower /upper /newroot
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "uroce-rxe init: FAILED: $*"
    dmesg | tail -n 30
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "uroce-rxe init: stage 1 on $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime)s"

for m in $(cat /modules.list); do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done

mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144 hostroot /lower || fail "mount 9p hostroot"
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "mount tmpfs upper"
mkdir -p /upper/up /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/up,workdir=/upper/work overlay /newroot ||
    fail "mount overlay"
cp /stage2.sh /newroot/uroce-stage2.sh || fail "copy stage 2"
[ -x /newroot/bin/sh ] || fail "no /bin/sh in the host root"

echo "uroce-rxe init: switch_root, uptime $(cut -d' ' -f1 /proc/uptime)s"
umount /proc /sys /dev
# shellcheck disable=SC2093 # fail runs only if exec itself fails
exec switch_root /newroot /bin/sh /uroce-stage2.sh
fail "switch_root"

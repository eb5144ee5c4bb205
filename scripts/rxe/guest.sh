#!/usr/bin/env bash
# Boots qemu guests that run the Linux kernel's Soft-RoCE (rdma_rxe), and runs commands in them.
#
# The host kernel has no RDMA, so rxe runs in a TCG qemu guest: the Debian kernel from /boot,
# a small busybox initramfs, and the host's own / (read-only, over 9p, under a tmpfs overlay)
# as its root, so the guest has the host's rdma-core, perftest and iproute2. Every guest has one
# tap in the network namespace $NS (default uroce-rxe) on the bridge $BR, which holds the host
# side's addresses 10.77.0.1/24 and fd77::1/64 (uroce runs there: `ip netns exec uroce-rxe ...`).
# See docs/INTEROP.md.
#
#   guest.sh setup                   install missing packages, build the initramfs, create the
#                                    netns and bridge (idempotent; start does it too)
#   guest.sh start NAME IP4 [IP6]    boot guest NAME (1-10 of [a-z0-9]) at IP4 (10.77.0.2-254)
#                                    and IP6 (fd77::/64), wait until rxe0 is ACTIVE; prints
#                                    the guest's info.txt (rdma link, ibv_devices, GIDs)
#   guest.sh run NAME [-t SECS] CMD  runs CMD with bash in the guest; prints its stdout and
#                                    stderr, exits with its exit code (124: timed out)
#   guest.sh submit NAME [-t SECS] CMD   same, in the background: prints a job id
#   guest.sh wait NAME ID            waits for a submitted job: its output and exit code
#   guest.sh wait-port NAME PORT [SECS]  waits until a TCP port listens in the guest
#   guest.sh status [NAME]           lists guests and whether they run
#   guest.sh stop NAME               powers the guest off (kills qemu if it does not stop)
#   guest.sh teardown                stops every guest, deletes the netns
#   guest.sh dir NAME                prints the guest's state directory (console.log, share/)
#
# Exit codes: run and wait return the command's; any harness failure is 125.
#
# Environment: UROCE_RXE_DIR (state and cache, default <repo>/target/rxe), UROCE_RXE_NETNS,
# UROCE_RXE_KVER (guest kernel), UROCE_RXE_ACCEL (default tcg: KVM hangs in early boot here),
# UROCE_RXE_CPU (qemu -cpu, default qemu's), UROCE_RXE_MEM (MiB, 1024), UROCE_RXE_BOOT_TIMEOUT (s, 600), UROCE_RXE_LIFETIME (s, 7200: a
# guest powers itself off, and qemu is killed, after that long).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
STATE=${UROCE_RXE_DIR:-$repo/target/rxe}
NS=${UROCE_RXE_NETNS:-uroce-rxe}
BR=urxebr0
BR4=10.77.0.1
BR6=fd77::1
MTU=9000
ACCEL=${UROCE_RXE_ACCEL:-tcg}
MEM=${UROCE_RXE_MEM:-1024}
CPU=${UROCE_RXE_CPU:-}
BOOT_TIMEOUT=${UROCE_RXE_BOOT_TIMEOUT:-600}
LIFETIME=${UROCE_RXE_LIFETIME:-7200}
PACKAGES=(qemu-system-x86 linux-image-amd64 rdma-core ibverbs-utils ibverbs-providers perftest
    busybox-static cpio iproute2 kmod tcpdump)
# insmod order of the initramfs (dependencies first).
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache
    9pnet 9pnet_virtio 9p overlay)

die() {
    echo "guest.sh: error: $*" >&2
    exit 125
}
log() { echo "guest.sh: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[[ $(id -u) -eq 0 ]] || die "needs root (netns, taps, packages)"

# ---------------------------------------------------------------- packages, kernel, initramfs

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
            missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
}

# The guest kernel: UROCE_RXE_KVER, else the newest /boot/vmlinuz-* whose modules have rdma_rxe.
kver() {
    if [[ -n ${UROCE_RXE_KVER:-} ]]; then
        echo "$UROCE_RXE_KVER"
        return
    fi
    local v k best=
    for v in /boot/vmlinuz-*; do
        [[ -e $v ]] || continue
        k=${v#/boot/vmlinuz-}
        compgen -G "/lib/modules/$k/kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko*" >/dev/null ||
            continue
        best=$(printf '%s\n%s\n' "$best" "$k" | sed '/^$/d' | sort -V | tail -n1)
    done
    [[ -n $best ]] || die "no /boot/vmlinuz-* with rdma_rxe in /lib/modules (package linux-image-amd64)"
    echo "$best"
}

# Prints the module's file, or nothing when it is built into the kernel.
module_file() {
    local k=$1 m=$2 f
    f=$(modinfo -k "$k" -n "$m" 2>/dev/null) || die "module $m not found for kernel $k"
    case $f in
    "(builtin)" | "") ;;
    *) echo "$f" ;;
    esac
}

initramfs_path() { echo "$STATE/initramfs-$(kver).cpio"; }

# Builds the initramfs when missing or when any input (scripts, busybox, modules) changed.
build_initramfs() {
    local k out sum build m f mods=() files=()
    k=$(kver)
    out=$STATE/initramfs-$k.cpio
    for m in "${MODULES[@]}"; do
        f=$(module_file "$k" "$m")
        [[ -n $f ]] || continue
        mods+=("$m")
        files+=("$f")
    done
    sum=$({
        echo "$k ${mods[*]}"
        sha256sum "$here/guest-init.sh" "$here/guest-stage2.sh" /bin/busybox "${files[@]}"
    } | sha256sum | cut -d' ' -f1)
    if [[ -f $out && $(cat "$out.sum" 2>/dev/null) == "$sum" ]]; then
        return 0
    fi
    if ldd /bin/busybox >/dev/null 2>&1; then
        die "/bin/busybox is dynamically linked: the initramfs needs busybox-static"
    fi
    log "building $out"
    mkdir -p "$STATE"
    build=$(mktemp -d "$STATE/initramfs-build.XXXXXX")
    mkdir -p "$build"/{bin,dev,proc,sys,lower,upper,newroot,lib/modules}
    mknod "$build/dev/console" c 5 1
    cp /bin/busybox "$build/bin/busybox"
    install -m 0755 "$here/guest-init.sh" "$build/init"
    install -m 0755 "$here/guest-stage2.sh" "$build/stage2.sh"
    local i
    for i in "${!mods[@]}"; do
        m=${mods[$i]}
        f=${files[$i]}
        # busybox insmod loads plain ELF only: decompress here.
        case $f in
        *.ko) cp "$f" "$build/lib/modules/$m.ko" ;;
        *.ko.xz) xz -dc "$f" >"$build/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$build/lib/modules/$m.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$build/lib/modules/$m.ko" ;;
        *) die "unknown module file $f" ;;
        esac
    done
    printf '%s\n' "${mods[@]}" >"$build/modules.list"
    (cd "$build" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc --quiet) >"$out.tmp"
    rm -rf "$build"
    mv "$out.tmp" "$out"
    echo "$sum" >"$out.sum"
}

# Setup steps under one lock, so that guests started in parallel do not race on them.
setup_locked() {
    mkdir -p "$STATE"
    (
        flock -w 900 9 || die "could not lock $STATE/setup.lock in 900 s"
        install_packages
        build_initramfs
        netns_up
    ) 9>"$STATE/setup.lock"
}

# ---------------------------------------------------------------- network namespace

netns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$NS"; }

netns_up() {
    if ! netns_exists; then
        ip netns add "$NS"
    fi
    ip -n "$NS" link set lo up
    if ! ip -n "$NS" link show "$BR" >/dev/null 2>&1; then
        ip -n "$NS" link add "$BR" type bridge
    fi
    ip -n "$NS" link set "$BR" mtu "$MTU" up
    ip -n "$NS" addr replace "$BR4/24" dev "$BR"
    ip -n "$NS" addr replace "$BR6/64" dev "$BR" nodad
}

netns_down() {
    if netns_exists; then
        ip netns del "$NS"
        log "netns $NS removed"
    fi
}

# ---------------------------------------------------------------- guests

# Per netns: guests of the same name in two netns (two checkouts' or helpers' runs sharing
# one state directory) are two guests, not one "already running".
gdir() { echo "$STATE/guests/$NS/$1"; }
tap_of() { echo "urxe-$1"; }

check_name() {
    [[ $1 =~ ^[a-z0-9]{1,10}$ ]] || die "guest name '$1': use 1 to 10 of [a-z0-9]"
}

# Prints the pids of NAME's processes that are still alive: the process-group leader (timeout)
# and qemu, each checked to be ours by its command line.
guest_pids() {
    local d pid
    d=$(gdir "$1")
    # shellcheck disable=SC2013 # one pid per file
    for pid in $(cat "$d/pgid" "$d/qemu.pid" 2>/dev/null); do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "-name uroce-rxe-$1 " &&
            echo "$pid"
    done
    return 0
}
alive() { [[ -n $(guest_pids "$1") ]]; }

console_tail() {
    local d
    d=$(gdir "$1")
    echo "---- $d/console.log (tail)" >&2
    tail -n 40 "$d/console.log" >&2 2>/dev/null || true
    if [[ -s $d/qemu.log ]]; then
        echo "---- $d/qemu.log" >&2
        tail -n 20 "$d/qemu.log" >&2
    fi
    if [[ -s $d/share/state/failed ]]; then
        echo "---- guest reported failure" >&2
        cat "$d/share/state/failed" >&2
    fi
}

ensure_ready() {
    local d
    d=$(gdir "$1")
    alive "$1" || {
        console_tail "$1"
        die "guest $1 is not running (guest.sh start $1 ...)"
    }
    [[ -e $d/share/state/ready ]] || die "guest $1 is not ready"
}

drop_tap() {
    if netns_exists; then
        ip -n "$NS" link del "$(tap_of "$1")" 2>/dev/null || true
    fi
}

# Kills NAME's qemu (TERM, then KILL after 10 s) and removes its tap.
kill_guest() {
    local name=$1 d pgid pids end
    d=$(gdir "$name")
    pids=$(guest_pids "$name")
    if [[ -z $pids ]]; then
        drop_tap "$name"
        return 0
    fi
    pgid=$(cat "$d/pgid" 2>/dev/null || true)
    if [[ -n $pgid ]] && grep -qx "$pgid" <<<"$pids"; then
        kill -TERM -- "-$pgid" 2>/dev/null || true
    fi
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    end=$(($(date +%s) + 10))
    while alive "$name" && (($(date +%s) < end)); do sleep 0.1; done
    pids=$(guest_pids "$name")
    if [[ -n $pids ]]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        if [[ -n $pgid ]]; then kill -KILL -- "-$pgid" 2>/dev/null || true; fi
    fi
    drop_tap "$name"
}

cmd_stop() {
    local name=$1 d end
    check_name "$name"
    d=$(gdir "$name")
    if alive "$name" && [[ ! -e $d/share/state/ready ]]; then
        # Still booting: its command loop is not there yet to see `stop`.
        kill_guest "$name"
        log "killed $name (it was still booting)"
    elif alive "$name"; then
        touch "$d/share/stop"
        end=$(($(date +%s) + 60))
        while alive "$name" && (($(date +%s) < end)); do sleep 0.2; done
        if alive "$name"; then
            log "guest $name did not power off in 60 s: killing qemu"
            kill_guest "$name"
        fi
        log "stopped $name"
    fi
    drop_tap "$name"
    rm -f "$d/pgid" "$d/qemu.pid"
}

cmd_start() {
    local name=$1 ip4=$2 ip6=${3:-} d tap mac k initrd t0 end other
    check_name "$name"
    # shellcheck disable=SC2015 # die unless both hold
    [[ $ip4 =~ ^10\.77\.0\.([1-9][0-9]{0,2})$ ]] && ((BASH_REMATCH[1] >= 2 && BASH_REMATCH[1] <= 254)) ||
        die "IPv4 '$ip4': use 10.77.0.2 to 10.77.0.254 (the netns' subnet; .1 is the bridge)"
    local last=${BASH_REMATCH[1]}
    if [[ -n $ip6 ]]; then
        [[ $ip6 =~ ^fd77::[0-9a-f]{1,4}$ && $ip6 != "$BR6" ]] ||
            die "IPv6 '$ip6': use fd77::2 to fd77::ffff (fd77::1 is the bridge)"
    fi
    d=$(gdir "$name")
    if alive "$name"; then
        if [[ -e $d/share/state/ready && $(cat "$d/ip4") == "$ip4" && $(cat "$d/ip6") == "$ip6" ]]; then
            log "guest $name is already running at $ip4 ${ip6}"
            cat "$d/share/state/info.txt"
            return 0
        fi
        die "guest $name is running with other addresses or not ready: guest.sh stop $name first"
    fi
    for other in "$STATE/guests/$NS"/*; do
        [[ -d $other && ${other##*/} != "$name" ]] || continue
        alive "${other##*/}" || continue
        if [[ $(cat "$other/ip4") == "$ip4" || (-n $ip6 && $(cat "$other/ip6") == "$ip6") ]]; then
            die "address $ip4 ${ip6} is taken by running guest ${other##*/}"
        fi
    done

    setup_locked
    k=$(kver)
    initrd=$(initramfs_path)

    rm -rf "$d"
    mkdir -p "$d/share"
    echo "$ip4" >"$d/ip4"
    echo "$ip6" >"$d/ip6"
    cat >"$d/share/config.sh" <<EOF
NAME=$name
IP4=$ip4
P4=24
IP6=$ip6
P6=64
MTU=$MTU
LIFETIME=$LIFETIME
EOF
    tap=$(tap_of "$name")
    ip -n "$NS" link del "$tap" 2>/dev/null || true
    ip -n "$NS" tuntap add dev "$tap" mode tap
    ip -n "$NS" link set "$tap" mtu "$MTU" master "$BR" up
    mac=$(printf '52:54:00:77:00:%02x' "$last")

    t0=$(now)
    # setsid: qemu gets its own process group (the id saved in pgid), which stop kills.
    # timeout -s KILL: no guest outlives its lifetime, whatever happens to this script.
    setsid timeout -s KILL "$((LIFETIME + 60))" \
        ip netns exec "$NS" qemu-system-x86_64 \
        -name "uroce-rxe-$name" \
        -accel "$ACCEL" ${CPU:+-cpu "$CPU"} -m "$MEM" -smp 1 \
        -nodefaults -no-user-config -display none -monitor none -no-reboot \
        -serial "file:$d/console.log" \
        -kernel "/boot/vmlinuz-$k" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=-1" \
        -netdev "tap,id=net0,ifname=$tap,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=net0,mac=$mac,romfile=" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap,id=hostroot \
        -virtfs "local,path=$d/share,mount_tag=uroce,security_model=none,id=uroce" \
        -pidfile "$d/qemu.pid" \
        </dev/null >"$d/qemu.log" 2>&1 &
    echo $! >"$d/pgid"
    # Interrupted while booting: the guest goes too.
    trap 'kill_guest "$name"; log "interrupted: killed guest $name"; exit 130' INT TERM
    log "booting $name ($ip4 ${ip6}) with $ACCEL, kernel $k; console: $d/console.log"

    end=$(($(date +%s) + BOOT_TIMEOUT))
    while [[ ! -e $d/share/state/ready ]]; do
        if [[ -e $d/share/state/failed ]] || ! kill -0 "$(cat "$d/pgid")" 2>/dev/null; then
            console_tail "$name"
            kill_guest "$name"
            die "guest $name failed to boot"
        fi
        if (($(date +%s) >= end)); then
            console_tail "$name"
            kill_guest "$name"
            die "guest $name not ready after ${BOOT_TIMEOUT}s (UROCE_RXE_BOOT_TIMEOUT)"
        fi
        sleep 0.2
    done
    trap - INT TERM
    log "guest $name ready in $(since "$t0") s"
    cat "$d/share/state/info.txt"
}

# submit NAME TIMEOUT CMD: prints the job id.
submit() {
    local name=$1 t=$2 cmd=$3 d id
    d=$(gdir "$name")
    ensure_ready "$name"
    id=$(date +%s%N).$$.$RANDOM
    mkdir -p "$d/jobs"
    echo "$t" >"$d/jobs/$id.timeout"
    echo "$t" >"$d/share/cmd/$id.timeout"
    printf '%s\n' "$cmd" >"$d/share/cmd/.$id.tmp"
    mv "$d/share/cmd/.$id.tmp" "$d/share/cmd/$id.sh"
    echo "$id"
}

# wait_job NAME ID: prints the job's stdout and stderr, returns its exit code.
wait_job() {
    local name=$1 id=$2 d t end rc
    d=$(gdir "$name")
    [[ $id =~ ^[0-9.]+$ && -e $d/jobs/$id.timeout ]] || die "no job $id on guest $name"
    t=$(cat "$d/jobs/$id.timeout")
    # The guest kills the command after t s (+10 s for SIGKILL); past that, the guest is stuck.
    end=$(($(date +%s) + t + 60))
    while [[ ! -e $d/share/out/$id.rc ]]; do
        if ! alive "$name"; then
            console_tail "$name"
            die "guest $name died while running job $id"
        fi
        if (($(date +%s) >= end)); then
            die "guest $name did not finish job $id in $((t + 60)) s"
        fi
        sleep 0.1
    done
    cat "$d/share/out/$id.out" 2>/dev/null || true
    cat "$d/share/out/$id.err" >&2 2>/dev/null || true
    rc=$(cat "$d/share/out/$id.rc")
    rm -f "$d/jobs/$id.timeout"
    return "$rc"
}

# parse_run NAME [-t SECS] CMD... -> globals r_name r_t r_cmd
parse_run() {
    r_name=${1:-}
    shift || true
    r_t=600
    if [[ ${1:-} == -t ]]; then
        [[ ${2:-} =~ ^[0-9]+$ ]] || die "-t needs seconds"
        r_t=$2
        shift 2
    fi
    [[ ${1:-} == -- ]] && shift
    [[ -n $r_name && $# -gt 0 ]] || die "usage: guest.sh run|submit NAME [-t SECS] COMMAND"
    check_name "$r_name"
    r_cmd="$*"
}

cmd_status() {
    local g n
    for g in "$STATE/guests/$NS"/*; do
        [[ -d $g ]] || continue
        n=${g##*/}
        [[ -z ${1:-} || $1 == "$n" ]] || continue
        if alive "$n"; then
            if [[ -e $g/share/state/ready ]]; then
                echo "$n running ready $(cat "$g/ip4") $(cat "$g/ip6")"
            else
                echo "$n running booting $(cat "$g/ip4") $(cat "$g/ip6")"
            fi
        else
            echo "$n stopped"
        fi
    done
}

cmd_teardown() {
    local g
    for g in "$STATE/guests/$NS"/*; do
        [[ -d $g ]] || continue
        cmd_stop "${g##*/}"
    done
    netns_down
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
    setup)
        setup_locked
        log "ready: kernel $(kver), initramfs $(initramfs_path), netns $NS bridge $BR $BR4 $BR6"
        ;;
    start)
        (($# == 2 || $# == 3)) || die "usage: guest.sh start NAME IP4 [IP6]"
        cmd_start "$@"
        ;;
    run)
        parse_run "$@"
        local id
        id=$(submit "$r_name" "$r_t" "$r_cmd") || exit 125
        wait_job "$r_name" "$id"
        ;;
    submit)
        parse_run "$@"
        submit "$r_name" "$r_t" "$r_cmd"
        ;;
    wait)
        (($# == 2)) || die "usage: guest.sh wait NAME ID"
        check_name "$1"
        wait_job "$1" "$2"
        ;;
    wait-port)
        (($# == 2 || $# == 3)) || die "usage: guest.sh wait-port NAME PORT [SECS]"
        [[ $2 =~ ^[0-9]+$ ]] || die "port '$2'"
        local secs=${3:-60}
        check_name "$1"
        main run "$1" -t "$((secs + 5))" "end=\$((\$(date +%s) + $secs))
            until ss -Hltn 'sport = :$2' | grep -q .; do
                [ \$(date +%s) -lt \$end ] || { echo 'port $2 not listening after ${secs}s' >&2; exit 1; }
                sleep 0.1
            done" || die "port $2 does not listen in guest $1"
        ;;
    stop)
        (($# == 1)) || die "usage: guest.sh stop NAME"
        cmd_stop "$1"
        ;;
    status) cmd_status "${1:-}" ;;
    teardown) cmd_teardown ;;
    dir)
        check_name "${1:-}"
        gdir "$1"
        ;;
    netns) echo "$NS" ;;
    *)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
        exit 2
        ;;
    esac
}

main "$@"

#!/usr/bin/env bash
# uroce against the kernel's Soft-RoCE (rdma_rxe) on the same machine, side by side.
#
# The host kernel has no RDMA, so the only rxe that runs here is in a TCG qemu guest
# (docs/INTEROP.md). Both run there: two guests (cmpa 10.77.0.11, cmpb 10.77.0.12; one vCPU
# each, virtio-net taps on one bridge, MTU 9000, path MTU 4096), the server in cmpa and the
# client in cmpb. In each of N rounds, the two implementations in alternating order:
#   - kernel TCP: iperf3, one stream, 5 s (the link's reference);
#   - rxe: perftest's ib_write_bw (1 MiB) and ib_write_lat (8 B) on rxe0 in both guests, with
#     rxe's own counters (`rdma statistic`) read before and after each run;
#   - uroce: `uroce bench write bw` (1 MiB; polled and thread progress) and `write lat` (8 B,
#     polled), over UDP port 4792 since rxe holds 4791 in the guests.
# Under TCG every guest instruction is emulated: absolute numbers are far below the host's,
# and the ratios compare the two implementations' work under the same emulation, not their
# speed on hardware. The TCG link loses packets under load, and both implementations resend:
# every run that finished with its data checked counts, its resends noted (uroce: its
# retransmits and timeouts; rxe: its counters). Prints a markdown table (medians of the
# rounds, ratios to rxe and to TCP); raw outputs in target/rxe/compare/ (or $COMPARE_OUT).
#
#   scripts/rxe/compare.sh [--rounds N] [--iters N]
#   scripts/rxe/compare.sh --report [--rounds N] [--iters N]   the table again, from the outputs
#
# Needs root (exit 77 = skipped otherwise; --report does not): netns, taps, qemu. Takes about
# 2 minutes a round.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
G=$here/guest.sh
rounds=3
iters=300
report_only=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --rounds) rounds=$2; shift ;;
    --iters) iters=$2; shift ;;
    --report) report_only=1 ;;
    *) echo "usage: $0 [--report] [--rounds N] [--iters N]" >&2; exit 2 ;;
    esac
    shift
done
art=${COMPARE_OUT:-$root/target/rxe/compare}
if ((!report_only)) && [[ $(id -u) -ne 0 ]]; then
    echo "compare.sh needs root (netns, taps, qemu): skipped" >&2
    exit 77
fi
run_all() {
    rm -rf "$art"
    mkdir -p "$art"
    A=cmpa A4=10.77.0.11 B=cmpb B4=10.77.0.12
    UPORT=4792

    cd "$root"
    cargo build --release --locked -q -p uroce-cli >&2
    U=$root/target/release/uroce
    if ! command -v iperf3 >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 >/dev/null
    fi

    cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        "$G" stop "$A" 2>/dev/null || true
        "$G" stop "$B" 2>/dev/null || true
        exit "$rc"
    }
    trap cleanup EXIT INT TERM
    "$G" setup >&2
    "$G" start "$A" "$A4" > "$art/guest-$A.txt"
    "$G" start "$B" "$B4" > "$art/guest-$B.txt"

    # pair NAME SERVER-CMD CLIENT-CMD: the server in A, the client in B after the server's side
    # channel listens; both outputs kept, the client's on stdout.
    pair() {
        local name=$1 srv=$2 cli=$3 id rc=0
        id=$("$G" submit "$A" -t 300 "$srv")
        "$G" wait-port "$A" 18515 >/dev/null
        "$G" run "$B" -t 300 "$cli" > "$art/$name.client" 2>&1 || rc=$?
        "$G" wait "$A" "$id" > "$art/$name.server" 2>&1 || rc=$((rc ? rc : $?))
        [[ $rc == 0 ]] || echo "compare.sh: $name exited $rc (see $art/$name.*)" >&2
    }
    stats() { # NAME: rxe's counters in both guests
        "$G" run "$A" 'rdma statistic show link rxe0/1' > "$art/$1.stats-$A" 2>&1 || true
        "$G" run "$B" 'rdma statistic show link rxe0/1' > "$art/$1.stats-$B" 2>&1 || true
    }
    rxe() { # ROUND
        stats "r$1-rxe-bw.before"
        pair "r$1-rxe-bw" "ib_write_bw -d rxe0 -x 1 -s 1048576 -n $iters -F --report_gbits" \
            "ib_write_bw -d rxe0 -x 1 -s 1048576 -n $iters -F --report_gbits $A4"
        stats "r$1-rxe-bw.after"
        stats "r$1-rxe-lat.before"
        pair "r$1-rxe-lat" "ib_write_lat -d rxe0 -x 1 -s 8 -n 2000 -F" \
            "ib_write_lat -d rxe0 -x 1 -s 8 -n 2000 -F $A4"
        stats "r$1-rxe-lat.after"
    }
    uroce() { # ROUND
        local b="$U bench write bw -s 1048576 -n $iters --udp-port $UPORT --json --timeout 240"
        pair "r$1-uroce-bw-polled" "$b --progress polled" "$b --progress polled $A4"
        pair "r$1-uroce-bw-thread" "$b" "$b $A4"
        local l="$U bench write lat -s 8 -n 2000 --udp-port $UPORT --json --timeout 240 --progress polled"
        pair "r$1-uroce-lat" "$l" "$l $A4"
    }
    for r in $(seq 1 "$rounds"); do
        echo "compare.sh: round $r of $rounds" >&2
        id=$("$G" submit "$A" -t 60 "iperf3 -s -1")
        "$G" wait-port "$A" 5201 >/dev/null
        "$G" run "$B" -t 60 "iperf3 -J -c $A4 -t 5" > "$art/r$r-tcp.client" 2>&1 || true
        "$G" wait "$A" "$id" > "$art/r$r-tcp.server" 2>&1 || true
        if ((r % 2)); then rxe "$r"; uroce "$r"; else uroce "$r"; rxe "$r"; fi
    done
}
((report_only)) || run_all
python3 - "$art" "$rounds" "$iters" <<'PY'
import json, re, statistics, sys
art, rounds, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def text(name):
    try:
        return open(f"{art}/{name}").read()
    except OSError:
        return ""
def first_json(name):
    for line in text(name).splitlines():
        if line.startswith("{"):
            return json.loads(line)
    return None
def perftest_row(name, first):
    # The result row: the first field is the message size.
    for line in text(name).splitlines():
        f = line.split()
        if f and f[0] == first and len(f) > 4:
            return [float(x) for x in f[1:6]]
    return None
def counters(name):
    c = {}
    for host in ("cmpa", "cmpb"):
        for k, v in re.findall(r"(\w+) (\d+)", text(f"{name}.stats-{host}")):
            c[k] = c.get(k, 0) + int(v)
    return c
RESENT = ("completer_retry_err", "duplicate_request", "out_of_seq_request", "rcvd_seq_err",
          "rcvd_rnr_err", "retry_exceeded_err")
def rxe_resends(name):
    b, a = counters(f"{name}.before"), counters(f"{name}.after")
    return {k: a.get(k, 0) - b.get(k, 0) for k in RESENT if a.get(k, 0) - b.get(k, 0)}
rows = {k: [] for k in ("tcp", "rxe_bw", "u_polled", "u_thread", "rxe_lat", "u_lat")}
notes = {k: [] for k in rows}
# The TCG link loses packets under load (qemu's taps), and both implementations resend: every
# run that finished with its data checked counts, with its resends beside it, the same rule
# for both (uroce's own suite on veth calls a run with any resend INVALID; here loss is the
# link's).
def rxe_run(key, name, first, col, r):
    row = perftest_row(f"{name}.client", first)
    if not row:
        notes[key].append(f"round {r}: no result")
        return
    d = rxe_resends(name)
    rows[key].append(row[col])
    notes[key].append(f"round {r}: " + (", ".join(f"{k} {v}" for k, v in d.items()) or "no resends"))
for r in range(1, rounds + 1):
    try:
        t = json.loads(text(f"r{r}-tcp.client"))
        rows["tcp"].append(t["end"]["sum_received"]["bits_per_second"] / 1e9)
    except (ValueError, KeyError):
        notes["tcp"].append(f"round {r}: no result")
    rxe_run("rxe_bw", f"r{r}-rxe-bw", "1048576", 2, r)  # BW average [Gb/sec]
    rxe_run("rxe_lat", f"r{r}-rxe-lat", "8", 3, r)  # t_typical: half round trips, as uroce's
    for key, name, field in (("u_polled", "bw-polled", "gbit_s"), ("u_thread", "bw-thread", "gbit_s"),
                             ("u_lat", "lat", "t_median_us")):
        j = first_json(f"r{r}-uroce-{name}.client")
        if not j or not str(j.get("data", "")).startswith("verified"):
            notes[key].append(f"round {r}: no result")
            continue
        h = j.get("health", {})
        rows[key].append(j[field])
        notes[key].append(f"round {r}: retransmits {h.get('retransmits')}, timeouts {h.get('timeouts')}")
med = {k: statistics.median(v) if v else None for k, v in rows.items()}
def cell(v, unit):
    return "no result" if v is None else f"{v:.3f} {unit}" if unit == "Gbit/s" else f"{v:.0f} {unit}"
def ratio(a, b):
    return "" if a is None or b is None else f"{a / b:.2f}"
print(f"uroce against the kernel's rxe, both in TCG qemu guests (one vCPU each), {rounds} rounds, "
      f"WRITE 1 MiB × {iters}, latency 8 B × 2000; medians of the rounds; every run finished with its data checked counts, resends beside it\n")
print("| run | result | vs rxe | vs TCP | rounds | notes |")
print("|---|---|---|---|---|---|")
def line(label, key, unit, base=None, tcp=False):
    v = med[key]
    vals = ", ".join(f"{x:.3g}" for x in rows[key])
    print(f"| {label} | {cell(v, unit)} | {ratio(v, med[base]) if base else ''} | "
          f"{ratio(v, med['tcp']) if tcp else ''} | {vals} | {'; '.join(notes[key])} |")
line("kernel TCP, iperf3, one stream", "tcp", "Gbit/s")
line("rxe, ib_write_bw 1 MiB", "rxe_bw", "Gbit/s", tcp=True)
line("uroce, bench write bw 1 MiB, polled progress", "u_polled", "Gbit/s", "rxe_bw", True)
line("uroce, bench write bw 1 MiB, thread progress", "u_thread", "Gbit/s", "rxe_bw", True)
line("rxe, ib_write_lat 8 B (t_typical, half round trips)", "rxe_lat", "µs")
line("uroce, bench write lat 8 B, polled (median, half round trips)", "u_lat", "µs", "rxe_lat")
PY

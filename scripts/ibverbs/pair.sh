#!/usr/bin/env bash
# Runs one verbs program as a server/client pair and reports whether both ends completed.
#
#   pair.sh NAME SERVER_PREFIX CLIENT_PREFIX SERVER_ADDR -- PROGRAM ARGS...
#
# SERVER_PREFIX / CLIENT_PREFIX are command prefixes (e.g. `env UROCE_DEVICES=uroce0=127.0.0.1
# LD_LIBRARY_PATH=...` or `ip netns exec ns`), each a single shell word list in quotes. The
# client connects to SERVER_ADDR. Prints `PASS NAME` or `FAIL NAME` with both logs; exit
# status 0 only if both ends exited 0. The client retries its connect while the server is
# still starting (the programs give up at once when nobody listens).
set -uo pipefail
name=$1 sp=$2 cp=$3 addr=$4
shift 5
timeout_s=${PAIR_TIMEOUT:-60}
logdir=${PAIR_LOGDIR:-$(mktemp -d)}
mkdir -p "$logdir"
slog="$logdir/$name.server.log" clog="$logdir/$name.client.log"
# shellcheck disable=SC2086
timeout "$timeout_s" $sp "$@" >"$slog" 2>&1 &
spid=$!
crc=1
deadline=$((SECONDS + 20))
while :; do
  # shellcheck disable=SC2086
  timeout "$timeout_s" $cp "$@" "$addr" >"$clog" 2>&1
  crc=$?
  # Connection refused at start: the server is not listening yet; try again.
  if [ $crc -ne 0 ] && grep -qiE "couldn't connect|Couldn't connect|Unable to open file descriptor" "$clog" \
     && kill -0 "$spid" 2>/dev/null && [ $SECONDS -lt $deadline ]; then
    sleep 0.5
    continue
  fi
  break
done
wait "$spid"
src=$?
if [ $src -eq 0 ] && [ $crc -eq 0 ]; then
  echo "PASS $name"
  exit 0
fi
echo "FAIL $name (server rc=$src, client rc=$crc)"
echo "--- server ($slog)"; tail -20 "$slog"
echo "--- client ($clog)"; tail -20 "$clog"
exit 1

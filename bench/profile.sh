#!/usr/bin/env bash
# perf profile of one side of a clearskies sync, to find where the time goes.
#
# usage: bench/profile.sh DATASET_DIR [a-scan|b-sync]
#   a-scan  A's daemon from start until it listens (its first scan of the share)
#   b-sync  B's `sync --once` fetching the whole share from A
# env:   CLEARSKIES, SHARED_BENCH, BASE_DIR as for clearskies_pair.sh; FREQ=499 (Hz);
#        TIMEOUT_S=600. Writes perf.data and a flat + caller report next to it, under
#        $BASE_DIR/profile-<ts>/; needs `perf` (apt-get install linux-perf).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}
# shellcheck source=/dev/null
source "$SHARED_BENCH/lib.sh"
[[ $# -ge 1 && -d $1 ]] || die "usage: $0 DATASET_DIR [a-scan|b-sync]"
DATASET=$(realpath "$1"); WHAT=${2:-a-scan}
CS=$(realpath "${CLEARSKIES:-$REPO/target/release/clearskies}")
FREQ=${FREQ:-499} TIMEOUT_S=${TIMEOUT_S:-600}
command -v perf >/dev/null || die "perf missing (apt-get install linux-perf)"
OUT=$BASE_DIR/profile-$(date -u +%Y%m%dT%H%M%SZ)-$WHAT
mkdir -p "$OUT"
W=$(mktemp -d "$BASE_DIR/runs/prof.XXXXXX")
PID_A=""
cleanup() {
  [[ -n $PID_A ]] && stop_pid "$PID_A" "$W/homeA" 15
  rm -rf "$W"
}
trap cleanup EXIT
read -r PORT < <(free_ports 1)
clone_tree "$DATASET" "$W/srcA"
"$CS" --home "$W/homeA" init >/dev/null; "$CS" --home "$W/homeB" init >/dev/null
CODE=$("$CS" --home "$W/homeA" share "$W/srcA" | tail -1)
warm_cache "$W/srcA"
a_cmd=("$CS" --home "$W/homeA" run --listen "127.0.0.1:$PORT" --rescan 3600)
wait_listening() {
  local end=$(( $(date +%s) + TIMEOUT_S ))
  until grep -q "listening on" "$W/A.log"; do (( $(date +%s) < end )) || die "A never listened"; sleep 0.05; done
}
if [[ $WHAT == a-scan ]]; then
  perf record -F "$FREQ" -g -o "$OUT/perf.data" -- "${a_cmd[@]}" >"$W/A.log" 2>&1 &
  PID_A=$!   # perf; it forwards SIGTERM to the daemon and writes perf.data on exit
  wait_listening
  log "A listening; stopping"
  kill -TERM "$PID_A"; wait_pid_exit "$PID_A" 60 || true; wait "$PID_A" 2>/dev/null || true; PID_A=""
else
  "${a_cmd[@]}" >"$W/A.log" 2>&1 &
  PID_A=$!
  wait_listening
  "$CS" --home "$W/homeB" join "$CODE" "$W/dstB" --peer "127.0.0.1:$PORT" >/dev/null
  timeout "$TIMEOUT_S" perf record -F "$FREQ" -g -o "$OUT/perf.data" -- \
    "$CS" --home "$W/homeB" sync --once --peer "127.0.0.1:$PORT" --timeout "$TIMEOUT_S" 2>"$OUT/b.err" || log "sync --once rc=$?"
fi
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v '^$' | head -80 >"$OUT/flat.txt"
perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null | grep -v '^$' | head -120 >"$OUT/children.txt"
log "profile in $OUT (flat.txt: self time; children.txt: inclusive time)"
head -40 "$OUT/flat.txt"

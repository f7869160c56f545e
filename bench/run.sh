#!/usr/bin/env bash
# Side-by-side suite: clearskies (TCP, and QUIC when the binary supports it) against
# Syncthing, an rsync daemon and cp, interleaved, RUNS times; prints ONE Markdown table.
# The Syncthing/rsync/cp drivers, dataset generator and helpers are the shared harness's
# ($SHARED_BENCH, default ../shared/bench from the repo root); they are called, not copied.
#
# usage: bench/run.sh [RUNS=3]
# env:   QUICK=1            one run, datasets small + mixed only, changes on mixed's largest
#                           file, idle check-in on small (10,000 files): a few minutes
#        SETS="large small mixed"   initial-sync datasets
#        CHANGES=1          change scenarios (mod1pct + insert1b on large_001/002 or, QUICK,
#                           on mixed's largest file; rename of 1,000 files; idle check-in)
#        MANY=100000        files in the idle check-in share (the check-in is repeated RUNS times)
#        TOOLS="clearskies syncthing rsync cp"
#        CS_DAEMON_SETS="$SETS"  sets whose initial sync also runs with B as a daemon (B_MODE=daemon);
#                           the idle check-in's first sync always does
#        SETTLE_S           idle seconds after `sync` before the suite and between runs
#                           (ext4-without-journal quirk, see the shared README); 65 (QUICK: 5)
#        SHARED_BENCH, CLEARSKIES, BASE_DIR (default ${TMPDIR:-/tmp}/clearskies-baseline)
#        CS_TRANSPORTS="tcp quic"  override the QUIC detection
#        CS_BUILD=<text>    note stored with clearskies results (e.g. a patch a custom binary carries)
#        QUIET_MAX_S=20     bound on the wait for an idle machine before each timed window
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}
[[ -f $SHARED_BENCH/lib.sh ]] || { echo "shared harness not found at $SHARED_BENCH (set SHARED_BENCH)" >&2; exit 1; }
SHARED_BENCH=$(cd "$SHARED_BENCH" && pwd)
# shellcheck source=/dev/null
source "$SHARED_BENCH/lib.sh"
export BASE_DIR

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then RUNS=${1:-1}; SETS=${SETS:-small mixed}; MANY=${MANY:-0}; SETTLE_S=${SETTLE_S:-5}
else RUNS=${1:-3}; SETS=${SETS:-large small mixed}; MANY=${MANY:-100000}; SETTLE_S=${SETTLE_S:-65}; fi
CHANGES=${CHANGES:-1}
TOOLS=${TOOLS:-clearskies syncthing rsync cp}
CS_DAEMON_SETS=${CS_DAEMON_SETS:-$SETS}
DATA=$BASE_DIR/data
TS=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$BASE_DIR/results/cs-$TS
RESULTS=$OUT/results.jsonl
export TRASH_DIR=$BASE_DIR/runs/trash-cs-$TS
export TIMEOUT_S=${TIMEOUT_S:-900}
# other jobs share this machine: wait at most this long for a quiet one before each window
export QUIET_MAX_S=${QUIET_MAX_S:-20}
mkdir -p "$OUT" "$BASE_DIR/runs"
SHADOW=""
on_exit() {
  [[ -d $TRASH_DIR ]] && rm -rf "$TRASH_DIR"
  [[ -n $SHADOW && -d $SHADOW ]] && rm -rf "$SHADOW"
  return 0
}
trap on_exit EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------ tools
need=()
command -v syncthing >/dev/null || need+=(syncthing)
command -v rsync >/dev/null || need+=(rsync)
[[ -x /usr/bin/time ]] || need+=(time)
command -v jq >/dev/null || need+=(jq)
command -v nft >/dev/null || need+=(nftables)
if (( ${#need[@]} )); then
  if [[ $(id -u) == 0 ]]; then
    log "installing ${need[*]}"
    timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "${need[@]}" >&2
  else die "missing ${need[*]}: apt-get install -y ${need[*]}"; fi
fi
CS=${CLEARSKIES:-$REPO/target/release/clearskies}
if [[ ! -x $CS ]]; then
  log "building clearskies (release)"
  (cd "$REPO" && cargo build --release -p clearskies -j 2) >&2
fi
export CLEARSKIES=$CS

# QUIC when the binary has --transport and actually serves QUIC (a build may list the
# option and still refuse it): a probe daemon that stays up for 3 s counts as support.
detect_transports() {
  "$CS" run --help 2>&1 | grep -q -- '--transport' || { echo tcp; return; }
  local h rc=0 port
  h=$(mktemp -d "$BASE_DIR/runs/probe.XXXXXX")
  "$CS" --home "$h/home" init >/dev/null 2>&1
  read -r port < <(free_ports 1)
  timeout 3 "$CS" --home "$h/home" run --listen "127.0.0.1:$port" --transport quic >"$h/log" 2>&1 || rc=$?
  rm -rf "$h"
  if [[ $rc == 124 ]]; then echo "tcp quic"; else echo tcp; fi
}
CS_TRANSPORTS=${CS_TRANSPORTS:-$(detect_transports)}
log "clearskies transports: $CS_TRANSPORTS"

# ------------------------------------------------------------------ datasets
for s in $SETS; do
  [[ -d $DATA/$s ]] || "$SHARED_BENCH/gen.sh" "$DATA" --sets "$s" >&2
done
if [[ $CHANGES == 1 ]]; then
  [[ $QUICK == 1 || -d $DATA/large ]] || "$SHARED_BENCH/gen.sh" "$DATA" --sets large >&2
  [[ $QUICK == 1 && ! -d $DATA/mixed ]] && "$SHARED_BENCH/gen.sh" "$DATA" --sets mixed >&2
  "$PY" "$HERE/gen_extra.py" "$DATA" --sets rename >&2
  (( MANY > 0 )) && "$PY" "$HERE/gen_extra.py" "$DATA" --sets many --many "$MANY" >&2
fi
if [[ $QUICK == 1 ]]; then CH_SET=mixed; CH_MOD=vendor/ven_01/file_0308.mp3; CH_INS=assets/ass_00/file_0912.tar
else CH_SET=large; CH_MOD=large_001.bin; CH_INS=large_002.bin; fi

# The shared drivers take their change from "$HERE/modify.py": a directory of links to them
# plus our insert_byte.py under that name runs them on the insert-one-byte scenario.
SHADOW=$(mktemp -d "$BASE_DIR/runs/shadow.XXXXXX")
for f in lib.sh stctl.py syncthing_pair.sh rsync_pair.sh cp_local.sh; do ln -s "$SHARED_BENCH/$f" "$SHADOW/$f"; done
ln -s "$HERE/insert_byte.py" "$SHADOW/modify.py"

{
  echo "date: $(date -u +%FT%TZ)"; echo "command: $([[ $QUICK == 1 ]] && echo "QUICK=1 ")bench/run.sh $RUNS"; uname -sr
  echo "nproc: $(nproc)"; grep -m1 'model name' /proc/cpuinfo; free -m | sed -n 2p
  echo "clearskies $(git -C "$REPO" rev-parse --short HEAD) ${CS_BUILD:-} binary $(basename "$CS") transports: $CS_TRANSPORTS"
  syncthing --version; rsync --version | sed -n 1p; cp --version | sed -n 1p
} > "$OUT/env.txt"
cat "$OUT/env.txt" >&2

# job RUN NAME [RELABEL_FROM RELABEL_TO DROP_INITIAL] -- ENV... -- COMMAND...
# runs one driver, keeps its RESULT lines (tagged with the run number) in $RESULTS
job() {
  local run=$1 name=$2 from=${3:-} to=${4:-} drop=${5:-0} logf
  shift 5
  logf="$OUT/$name-$run.log"
  log "run $run/$RUNS: $name"
  if ! env RESULTS_FILE="$OUT/scratch.jsonl" "$@" >"$logf" 2>&1; then
    log "FAILED: $name run $run (see $logf)"; tail -5 "$logf" >&2
  fi
  grep '^RESULT ' "$logf" | cut -c8- | jq -c --argjson run "$run" --arg from "$from" --arg to "$to" --argjson drop "$drop" '
      select(($drop == 0) or (.phase != "initial"))
      | .run = $run | if $from != "" then .scenario |= sub($from; $to) else . end' >>"$RESULTS" || true
  grep '^RESULT ' "$logf" | cut -c8- | jq -c '{tool, transport, scenario, wall_s, mb_per_s: (.mb_per_s|floor), wire_bytes}' >&2 || true
}

log "settling ${SETTLE_S}s after sync (fresh inodes; see the shared README)"
sync; sleep "$SETTLE_S"
T_START=$(date +%s)
for i in $(seq "$RUNS"); do
  for s in $SETS; do
    mf="" inf=""
    [[ $CHANGES == 1 && $s == "$CH_SET" ]] && { mf=$CH_MOD inf=$CH_INS; }
    for t in $TOOLS; do
      case $t in
        clearskies)
          for tr in $CS_TRANSPORTS; do
            job "$i" "clearskies-$tr-$s" "" "" 0 env LABEL="$s" MODIFY_FILE="$mf" INSERT_FILE="$inf" TRANSPORT="$tr" \
              "$HERE/clearskies_pair.sh" "$DATA/$s"
            if [[ " $CS_DAEMON_SETS " == *" $s "* ]]; then
              job "$i" "clearskies-$tr-$s-bdaemon" "" "" 0 env LABEL="$s" B_MODE=daemon TRANSPORT="$tr" \
                "$HERE/clearskies_pair.sh" "$DATA/$s"
            fi
          done ;;
        syncthing|rsync|cp)
          script=$t; [[ $t == cp ]] && script=cp_local.sh || script=${t}_pair.sh
          job "$i" "$t-$s" "" "" 0 env LABEL="$s" MODIFY_FILE="$mf" "$SHARED_BENCH/$script" "$DATA/$s"
          if [[ -n $inf && $t != cp ]]; then
            job "$i" "$t-$s-insert" "^mod[0-9.]*pct-" "insert1b-" 1 env LABEL="$s" MODIFY_FILE="$inf" "$SHADOW/$script" "$DATA/$s"
          fi ;;
        *) die "unknown tool $t" ;;
      esac
    done
  done
  if [[ $CHANGES == 1 && " $TOOLS " == *" clearskies "* ]]; then
    for tr in $CS_TRANSPORTS; do
      job "$i" "clearskies-$tr-rename" "" "" 1 env LABEL=album1000 RENAME_DIR=album TRANSPORT="$tr" \
        "$HERE/clearskies_pair.sh" "$DATA/rename"
    done
  fi
  # between runs: free the copies, then let the freed inodes age (see the shared README)
  if (( i < RUNS )); then rm -rf "$TRASH_DIR"; sync; sleep "$SETTLE_S"; fi
done
# idle check-in: one initial sync of the big share, then RUNS check-ins
if [[ $CHANGES == 1 && " $TOOLS " == *" clearskies "* ]]; then
  idle_set=many$MANY; idle_label=many$MANY
  (( MANY > 0 )) || { idle_set=small; idle_label=small.idle; }
  for tr in $CS_TRANSPORTS; do
    job 1 "clearskies-$tr-idle" "" "" 0 env LABEL="$idle_label" IDLE="$RUNS" B_MODE=daemon TRANSPORT="$tr" \
      "$HERE/clearskies_pair.sh" "$DATA/$idle_set"
  done
fi
log "suite took $(( $(date +%s) - T_START ))s"
"$PY" "$HERE/summarize.py" "$RESULTS" | tee "$OUT/summary.md"
log "results: $RESULTS; summary: $OUT/summary.md; env: $OUT/env.txt; logs: $OUT"

#!/usr/bin/env bash
# Two clearskies devices on loopback, each with its own temporary home: A shares a copy of
# DATASET and runs the daemon, B joins and checks in with `sync --once`. Same interface and
# RESULT JSON fields as the shared harness's syncthing_pair.sh (it reuses that harness's
# lib.sh and modify.py from $SHARED_BENCH; nothing of it is copied here).
#
# What is timed (see bench/README.md, "How clearskies is measured"):
#   initial: from the start of A's daemon (cold: its first scan hashes the whole dataset,
#            as Syncthing's does) until B's `sync --once` exits 0, which it does only once
#            B holds every file and A agrees. B's `join` (pairing) is inside the window.
#   changes: A's daemon is stopped, the change is applied to A's folder, then the window
#            runs from A's restart (its startup scan finds the change, like the REST rescan
#            in syncthing_pair.sh) until B's next `sync --once` exits 0.
#   idle:    A's daemon up and idle, B already in sync: just B's `sync --once`.
# Wire bytes: nftables counters on the loopback output path for A's port (TCP and UDP),
# both directions, whole IP packets (headers included); wire_payload_bytes subtracts
# 52 bytes per packet (IPv4 + TCP with timestamps).
#
# usage: clearskies_pair.sh DATASET_DIR
# env:   LABEL=<name>            scenario label (default: basename of DATASET_DIR)
#        MODIFY_FILE=<relpath>   phase "mod<PCT>pct": overwrite MODIFY_PCT % in the middle
#        MODIFY_PCT=1            (shared modify.py)
#        INSERT_FILE=<relpath>   phase "insert1b": insert one byte at the start of the file
#        RENAME_DIR=<relpath>    phase "rename": rename that folder to <relpath>.renamed
#        IDLE=N                  phase "idle": B checks in again, N times, with nothing changed
#        IDLE_VIA=process|daemon  idle check-in by a cold `sync --once` process (default), or by
#                                `sync --once` asking B's running, connected daemon
#        B_MODE=once|daemon      initial phase: B's `sync --once` (default) or B's daemon + polling
#        TRANSPORT=tcp|quic      passed as --transport when the binary supports the option
#        DISCOVERY=0|1           LAN discovery (default off, like the Syncthing pair's)
#        CLEARSKIES=<path>       binary (default: target/release/clearskies of this repo)
#        CS_BUILD=<text>         recorded as "build" (e.g. which patch a custom binary carries)
#        SHARED_BENCH=<dir>      shared harness (default: ../shared/bench from the repo root)
#        RESCAN_S=3600           A's --rescan (changes are picked up by the restart scan)
#        RESULTS_FILE, TIMEOUT_S=1800, KEEP=0, TRASH_DIR, QUIET_MAX_S, QUIET_THRESH (as shared)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}
[[ -f $SHARED_BENCH/lib.sh ]] || { echo "shared harness not found at $SHARED_BENCH (set SHARED_BENCH)" >&2; exit 1; }
SHARED_BENCH=$(cd "$SHARED_BENCH" && pwd)
# shellcheck source=/dev/null
source "$SHARED_BENCH/lib.sh"

[[ $# -eq 1 && -d $1 ]] || die "usage: $0 DATASET_DIR"
DATASET=$(realpath "$1")
LABEL=${LABEL:-$(basename "$DATASET")}
MODIFY_FILE=${MODIFY_FILE:-}
MODIFY_PCT=${MODIFY_PCT:-1}
INSERT_FILE=${INSERT_FILE:-}
RENAME_DIR=${RENAME_DIR:-}
IDLE=${IDLE:-0}
TRANSPORT=${TRANSPORT:-tcp}
DISCOVERY=${DISCOVERY:-0}
IDLE_VIA=${IDLE_VIA:-process}
B_MODE=${B_MODE:-once}
RESCAN_S=${RESCAN_S:-3600}
RESULTS_FILE=${RESULTS_FILE:-$BASE_DIR/results/results.jsonl}
TIMEOUT_S=${TIMEOUT_S:-1800}
KEEP=${KEEP:-0}
CS=${CLEARSKIES:-$REPO/target/release/clearskies}
[[ -x $CS ]] || die "no clearskies binary at $CS (cargo build --release -p clearskies, or set CLEARSKIES)"
CS=$(realpath "$CS")
TIME=/usr/bin/time
[[ -x $TIME ]] || die "/usr/bin/time missing (apt-get install time)"
CS_VERSION=$("$CS" --version 2>/dev/null | awk '{print $NF}' || echo unknown)
CS_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
CS_BUILD=${CS_BUILD:-}
for f in "$MODIFY_FILE" "$INSERT_FILE"; do
  [[ -z $f || -f $DATASET/$f ]] || die "$f not in dataset"
done
[[ -z $RENAME_DIR || -d $DATASET/$RENAME_DIR ]] || die "RENAME_DIR $RENAME_DIR not in dataset"
TR_ARGS=()
if "$CS" run --help 2>&1 | grep -q -- '--transport'; then TR_ARGS=(--transport "$TRANSPORT")
elif [[ $TRANSPORT != tcp ]]; then die "this clearskies build has no --transport option"; fi

mkdir -p "$BASE_DIR/runs"
WORK=$(mktemp -d "$BASE_DIR/runs/cs.XXXXXX")
NFT_TABLE="csbench_$$"
NFT=false
PID_A="" PID_B=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $PID_A ]] && stop_pid "$PID_A" "$WORK/homeA" 15
  [[ -n $PID_B ]] && stop_pid "$PID_B" "$WORK/homeB" 15
  [[ $NFT == true ]] && nft delete table inet "$NFT_TABLE" 2>/dev/null
  dispose_work "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

cs() { local h=$1; shift; "$CS" --home "$WORK/home$h" "$@"; }

# ------------------------------------------------------------------ wire-byte counters
read -r PORT < <(free_ports 1)
if command -v nft >/dev/null && nft -f - 2>/dev/null <<EOF
table inet $NFT_TABLE {
  counter to_a { }
  counter to_b { }
  chain out {
    type filter hook output priority 0; policy accept;
    oifname "lo" tcp dport $PORT counter name "to_a"
    oifname "lo" tcp sport $PORT counter name "to_b"
    oifname "lo" udp dport $PORT counter name "to_a"
    oifname "lo" udp sport $PORT counter name "to_b"
  }
}
EOF
then NFT=true
else log "warn: no nftables (needs root and the nftables package): wire bytes will be null"
fi
# wire_snap -> "bytes_to_a packets_to_a bytes_to_b packets_to_b"
wire_snap() {
  if [[ $NFT != true ]]; then echo "0 0 0 0"; return; fi
  nft -j list counters table inet "$NFT_TABLE" | jq -r '
    [.nftables[] | select(.counter) | .counter | {(.name): .}] | add
    | "\(.to_a.bytes) \(.to_a.packets) \(.to_b.bytes) \(.to_b.packets)"'
}
# wire_delta "SNAP0" "SNAP1" -> sets WIRE WIRE_TO_B WIRE_TO_A WIRE_PAYLOAD (null without nft)
wire_delta() {
  local a0 pa0 b0 pb0 a1 pa1 b1 pb1
  read -r a0 pa0 b0 pb0 <<<"$1"; read -r a1 pa1 b1 pb1 <<<"$2"
  if [[ $NFT != true ]]; then WIRE=null WIRE_TO_B=null WIRE_TO_A=null WIRE_PAYLOAD=null; return; fi
  WIRE_TO_A=$((a1 - a0)) WIRE_TO_B=$((b1 - b0))
  WIRE=$((WIRE_TO_A + WIRE_TO_B))
  WIRE_PAYLOAD=$((WIRE - 52 * (pa1 - pa0 + pb1 - pb0)))
}

# ------------------------------------------------------------------ devices
clone_tree "$DATASET" "$WORK/srcA" "$MODIFY_FILE"
read -r FILES DIRS BYTES < <(ds_stats "$WORK/srcA")
log "work dir $WORK; A listens on 127.0.0.1:$PORT (${TR_ARGS[*]:-tcp, no --transport option}); dataset files=$FILES dirs=$DIRS bytes=$BYTES"
cs A init --name benchA >/dev/null
cs B init --name benchB >/dev/null
# LAN discovery off, as for the Syncthing pair (static addresses only): with it, a device may
# also reach the other over a LAN address, which the loopback counters below do not see.
if [[ $DISCOVERY != 1 ]]; then
  for h in A B; do echo '{"discovery": false}' > "$WORK/home$h/config.json"; done
fi
CODE=$(cs A share "$WORK/srcA" | tail -1)
[[ -n $CODE ]] || die "share printed no access code"

# start_a: A's daemon; returns once it listens (its folder scan is done before that)
start_a() {
  # a simple command (not the cs function), so that $! is the daemon itself
  "$CS" --home "$WORK/homeA" run --listen "127.0.0.1:$PORT" --rescan "$RESCAN_S" "${TR_ARGS[@]}" >>"$WORK/A.log" 2>&1 &
  PID_A=$!
  local end=$(( $(date +%s) + TIMEOUT_S ))
  until grep -q "listening on" "$WORK/A.log" 2>/dev/null; do
    kill -0 "$PID_A" 2>/dev/null || { tail -20 "$WORK/A.log" >&2; die "A's daemon exited"; }
    (( $(date +%s) < end )) || die "A's daemon did not listen within ${TIMEOUT_S}s"
    sleep 0.02
  done
}
# stop_a: sets CPU_A (s) and RSS_A (peak KiB) of the daemon's whole life, then stops it
stop_a() {
  CPU_A=$(proc_cpu "$PID_A"); RSS_A=$(proc_hwm "$PID_A")
  stop_pid "$PID_A" "$WORK/homeA" 15
  PID_A=""
  cat "$WORK/A.log" >> "$WORK/A.all.log"; : > "$WORK/A.log"
}
# timed_b NAME ARGS...: run a B command under /usr/bin/time; adds to CPU_B, maxes RSS_B
timed_b() {
  local name=$1 rc=0 u s m; shift
  "$TIME" -f '%e %U %S %M' -o "$WORK/$name.time" timeout "$TIMEOUT_S" \
    "$CS" --home "$WORK/homeB" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
  if [[ $rc != 0 ]]; then
    tail -5 "$WORK/$name.err" >&2
    [[ ${SOFT_FAIL:-0} == 1 && $rc != 124 ]] || { log "A's log:"; tail -20 "$WORK/A.log" >&2; die "B: clearskies $1 failed rc=$rc (124 = timeout)"; }
  fi
  read -r _ u s m < <(tail -1 "$WORK/$name.time")
  CPU_B=$(awk -v c="$CPU_B" -v u="$u" -v s="$s" 'BEGIN{printf "%.2f", c+u+s}')
  (( m > RSS_B )) && RSS_B=$m
  return "$rc"
}
# cheap tree fingerprint: paths, types, sizes, whole-second mtimes (the tool syncs mtimes; it
# keeps its own state in `.clearskies`, which is not content). Cost: ~0.1 s per 20,000 files.
tree_fp() {
  (cd "$1" && find . -path ./.clearskies -prune -o \( -type f -printf 'f %P %s %Ts\n' \) \
     -o \( -type d -printf 'd %P\n' \) -o \( -type l -printf 'l %P %l\n' \) | LC_ALL=C sort | sha256sum | cut -c1-64)
}
# b_sync NAME: B's `sync --once` until B's tree matches A's. The contract says one exit 0 means
# B holds everything; this build sometimes exits 0 early (see README), so a wrong exit is
# counted (SYNC_RUNS > 1 in the results) and B checks in again, inside the timed window.
b_sync() {
  local want=$WANT_FP
  SYNC_RUNS=0 SYNC_FAILS=0
  local rc
  while :; do
    SYNC_RUNS=$((SYNC_RUNS + 1))
    rc=0
    SOFT_FAIL=1 timed_b "$1-$SYNC_RUNS" sync --once --peer "127.0.0.1:$PORT" "${TR_ARGS[@]}" --timeout "$TIMEOUT_S" || rc=$?
    if [[ $rc != 0 ]]; then
      SYNC_FAILS=$((SYNC_FAILS + 1))
      log "warn: sync --once failed rc=$rc (check-in $SYNC_RUNS); checking in again"
    elif [[ $(tree_fp "$WORK/dstB") == "$want" ]]; then return 0
    else log "warn: sync --once exited 0 but B's tree differs from A's (check-in $SYNC_RUNS)"; fi
    (( SYNC_RUNS < ${MAX_CHECKINS:-30} )) || die "B still incomplete after $SYNC_RUNS check-ins"
  done
}

# B_MODE=daemon (initial phase only): B runs `clearskies run --peer A` like Syncthing's B, and
# the window ends when B's tree matches A's (polled every 0.2 s: file count and bytes, then
# the fingerprint). B's CPU and peak RSS are its daemon's, added to its join's.
# start_b_daemon: B's `clearskies run --peer A` in the background (PID_B)
start_b_daemon() {
  read -r PORT_B < <(free_ports 1)
  "$CS" --home "$WORK/homeB" run --listen "127.0.0.1:$PORT_B" --peer "127.0.0.1:$PORT" --rescan "$RESCAN_S" "${TR_ARGS[@]}" >"$WORK/B.log" 2>&1 &
  PID_B=$!
}
b_daemon_until_complete() {
  local want_n want_b n b end pid_b
  read -r want_n want_b < <(find "$WORK/srcA" -path "$WORK/srcA/.clearskies" -prune -o -type f -printf '%s\n' | awk '{n++; b+=$1} END{printf "%d %d\n", n, b}')
  start_b_daemon
  end=$(( $(date +%s) + TIMEOUT_S ))
  while :; do
    kill -0 "$PID_B" 2>/dev/null || { tail -20 "$WORK/B.log" >&2; die "B's daemon exited"; }
    (( $(date +%s) < end )) || die "B incomplete after ${TIMEOUT_S}s"
    read -r n b < <(find "$WORK/dstB" -path "$WORK/dstB/.clearskies" -prune -o -type f -printf '%s\n' | awk '{n++; b+=$1} END{printf "%d %d\n", n, b}')
    if [[ $n == "$want_n" && $b == "$want_b" && $(tree_fp "$WORK/dstB") == "$WANT_FP" ]]; then break; fi
    sleep 0.2
  done
  local c m
  c=$(proc_cpu "$PID_B"); m=$(proc_hwm "$PID_B")
  CPU_B=$(awk -v a="$CPU_B" -v b="$c" 'BEGIN{printf "%.2f", a+b}')
  (( m > RSS_B )) && RSS_B=$m
  stop_pid "$PID_B" "$WORK/homeB" 15
  PID_B=""
  SYNC_RUNS=0 SYNC_FAILS=0
}

verify() {  # like lib.sh's verify_same, but the tool's own `.clearskies` entry is not content
  local out
  if out=$(diff -rq --no-dereference -x .clearskies "$WORK/srcA" "$WORK/dstB" 2>&1); then
    log "verify OK (diff -rq: identical trees)"; VERIFIED=true
  else
    log "verify FAILED:"; head -20 <<<"$out" >&2; VERIFIED=false
  fi
}

# emit PHASE SCENARIO BYTES FILES EXTRA_JSON
emit() {
  emit_result "$(jq -cn --arg tool clearskies --arg ver "$CS_VERSION" --arg commit "$CS_COMMIT" \
    --arg build "$CS_BUILD" --arg transport "$TRANSPORT" --arg bmode "$B_MODE" --arg scen "$2" --arg phase "$1" --arg ds "$DATASET" \
    --argjson files "$4" --argjson bytes "$3" --argjson wall "$WALL" \
    --argjson cpua "$CPU_A" --argjson cpub "$CPU_B" --argjson rssa "$RSS_A" --argjson rssb "$RSS_B" \
    --argjson wire "$WIRE" --argjson wb "$WIRE_TO_B" --argjson wa "$WIRE_TO_A" --argjson wp "$WIRE_PAYLOAD" \
    --argjson ok "$VERIFIED" --argjson runs "$SYNC_RUNS" --argjson fails "$SYNC_FAILS" --argjson busy "$SYS_BUSY" --argjson quiet "$QUIET" --argjson extra "$5" \
    '{tool:$tool, version:$ver, commit:$commit, build:$build, transport:$transport, b_mode:$bmode, scenario:$scen, phase:$phase,
      dataset:$ds, files:$files, bytes:$bytes, wall_s:$wall, mb_per_s:($bytes/1e6/$wall),
      cpu_s_a:$cpua, cpu_s_b:$cpub, cpu_s_total:($cpua+$cpub), rss_kib_a:$rssa, rss_kib_b:$rssb,
      wire_bytes:$wire, wire_bytes_to_b:$wb, wire_bytes_to_a:$wa, wire_payload_bytes:$wp,
      verified:$ok, sync_once_runs:$runs, sync_once_failures:$fails, sys_busy_cpu_s:$busy, quiet_at_start:$quiet, ts:(now|todate)} + $extra')"
  [[ $VERIFIED == true ]] || die "verification failed"
}

# ------------------------------------------------------------------ phase 1: initial sync
warm_cache "$WORK/srcA"
sync
wait_quiet
CPU_B=0 RSS_B=0
WANT_FP=$(tree_fp "$WORK/srcA")
W0=$(wire_snap); S0=$(cpu_snap); T0=$(now)
start_a
T_LISTEN=$(fsub "$(now)" "$T0")
timed_b join join "$CODE" "$WORK/dstB" --peer "127.0.0.1:$PORT" "${TR_ARGS[@]}"
T_JOINED=$(fsub "$(now)" "$T0")
if [[ $B_MODE == daemon ]]; then
  b_daemon_until_complete
else
  b_sync sync0
fi
T1=$(now)
S1=$(cpu_snap); SYS_BUSY=$(snap_busy_s "$S0" "$S1"); W1=$(wire_snap)
WALL=$(fsub "$T1" "$T0")
stop_a
wire_delta "$W0" "$W1"
log "initial sync ${WALL}s (A scanned+listening @${T_LISTEN}s, joined @${T_JOINED}s); cpu A=${CPU_A}s B=${CPU_B}s; peak RSS A=${RSS_A}KiB B=${RSS_B}KiB; wire ${WIRE}B (to B ${WIRE_TO_B}B)"
verify
emit initial "$LABEL" "$BYTES" "$FILES" \
  "$(jq -cn --argjson d "$DIRS" --argjson l "$T_LISTEN" --argjson j "$T_JOINED" '{dirs:$d, t_a_scanned:$l, t_joined:$j}')"

# ------------------------------------------------------------------ change phases
# change_phase SCENARIO BYTES FILES EXTRA_JSON  (the change is already applied to srcA)
change_phase() {
  sync
  wait_quiet
  CPU_B=0 RSS_B=0
  WANT_FP=$(tree_fp "$WORK/srcA")
  local w0 w1 s0 s1 t0 t1 tl
  w0=$(wire_snap); s0=$(cpu_snap); t0=$(now)
  start_a
  tl=$(fsub "$(now)" "$t0")
  b_sync "sync-$1"
  t1=$(now)
  s1=$(cpu_snap); SYS_BUSY=$(snap_busy_s "$s0" "$s1"); w1=$(wire_snap)
  WALL=$(fsub "$t1" "$t0")
  stop_a
  wire_delta "$w0" "$w1"
  log "$1: ${WALL}s (A restart scan ${tl}s); cpu A=${CPU_A}s B=${CPU_B}s; peak RSS A=${RSS_A}KiB B=${RSS_B}KiB; wire ${WIRE}B (to B ${WIRE_TO_B}B)"
  verify
  emit change "$1" "$2" "$3" "$(jq -c --argjson l "$tl" '. + {t_a_scanned:$l}' <<<"$4")"
}

if [[ -n $MODIFY_FILE ]]; then
  MOD=$("$PY" "$SHARED_BENCH/modify.py" "$WORK/srcA/$MODIFY_FILE" --pct "$MODIFY_PCT")
  log "modified: $MOD"
  change_phase "mod${MODIFY_PCT}pct-$LABEL" "$(jq .size <<<"$MOD")" 1 \
    "$(jq -c --arg f "$MODIFY_FILE" '{file:$f, changed_bytes:.length}' <<<"$MOD")"
fi
if [[ -n $INSERT_FILE ]]; then
  [[ $INSERT_FILE != "$MODIFY_FILE" ]] || log "note: INSERT_FILE is MODIFY_FILE"
  MOD=$("$PY" "$HERE/insert_byte.py" "$WORK/srcA/$INSERT_FILE")
  log "inserted: $MOD"
  change_phase "insert1b-$LABEL" "$(jq .size <<<"$MOD")" 1 \
    "$(jq -c --arg f "$INSERT_FILE" '{file:$f, changed_bytes:1}' <<<"$MOD")"
fi
if [[ -n $RENAME_DIR ]]; then
  read -r RF _ RB < <(ds_stats "$WORK/srcA/$RENAME_DIR")
  mv "$WORK/srcA/$RENAME_DIR" "$WORK/srcA/$RENAME_DIR.renamed"
  log "renamed $RENAME_DIR ($RF files, $RB bytes) to $RENAME_DIR.renamed"
  change_phase "rename-$LABEL" "$RB" "$RF" "$(jq -cn --arg d "$RENAME_DIR" '{renamed_dir:$d, changed_bytes:0}')"
fi
if (( IDLE > 0 )); then
  start_a
  IDLE_NAME=idle-$LABEL
  if [[ $IDLE_VIA == daemon ]]; then
    # B's daemon runs and is connected; each `sync --once` asks it to check in.
    IDLE_NAME=idle-via-daemon-$LABEL
    start_b_daemon
    end=$(( $(date +%s) + TIMEOUT_S ))
    until grep -q "connected to" "$WORK/B.log" 2>/dev/null; do
      kill -0 "$PID_B" 2>/dev/null || { tail -20 "$WORK/B.log" >&2; die "B's daemon exited"; }
      (( $(date +%s) < end )) || die "B's daemon did not connect within ${TIMEOUT_S}s"
      sleep 0.05
    done
  fi
  for k in $(seq "$IDLE"); do
    sync
    wait_quiet
    CPU_B=0 RSS_B=0
    WANT_FP=$(tree_fp "$WORK/srcA")
    C0A=$(proc_cpu "$PID_A")
    [[ -n $PID_B ]] && C0B=$(proc_cpu "$PID_B")
    W0=$(wire_snap); S0=$(cpu_snap); T0=$(now)
    b_sync "sync-idle-$k"
    T1=$(now)
    S1=$(cpu_snap); SYS_BUSY=$(snap_busy_s "$S0" "$S1"); W1=$(wire_snap)
    WALL=$(fsub "$T1" "$T0")
    CPU_A=$(fsub "$(proc_cpu "$PID_A")" "$C0A"); RSS_A=$(proc_hwm "$PID_A")
    if [[ -n $PID_B ]]; then
      CPU_B=$(awk -v c="$CPU_B" -v d="$(fsub "$(proc_cpu "$PID_B")" "$C0B")" 'BEGIN{printf "%.2f", c+d}')
      m=$(proc_hwm "$PID_B"); (( m > RSS_B )) && RSS_B=$m
    fi
    wire_delta "$W0" "$W1"
    log "idle check-in $k/$IDLE${PID_B:+ (through the daemon of B)}: ${WALL}s; cpu A=${CPU_A}s B=${CPU_B}s; wire ${WIRE}B (payload ~${WIRE_PAYLOAD}B)"
    verify
    emit idle "$IDLE_NAME" 0 "$FILES" '{"changed_bytes":0}'
  done
  if [[ -n $PID_B ]]; then stop_pid "$PID_B" "$WORK/homeB" 15; PID_B=""; fi
  stop_a
fi
log "done"

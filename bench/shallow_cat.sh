#!/usr/bin/env bash
# Shallow replica reads against a full sync, over QUIC on loopback (issue: shallow replicas).
# One NAS shares a SIZE_MIB file; a shallow phone reads it with `cat` (time to first byte, and
# throughput for the whole file and for a 1 MiB range in the middle); a full replica fetches it
# with `sync --once`. Everything under a temporary directory, removed at the end.
#   bench/shallow_cat.sh            # SIZE_MIB=256
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-256}
cargo build --release -q -p clearskies
cs="$PWD/target/release/clearskies"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$work/music"
python3 - "$work/music/big.flac" "$SIZE_MIB" <<'PY'
import hashlib, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    block = b""
    for i in range(mib * 1024 * 1024 // 32):
        block += hashlib.sha256(i.to_bytes(8, "big")).digest()
        if len(block) >= 1 << 20:
            f.write(block); block = b""
    f.write(block)
PY
for d in nas phone full; do "$cs" --home "$work/$d" init --name "$d" >/dev/null; done
pn=$(port); pp=$(port)
code=$("$cs" --home "$work/nas" share "$work/music" | tail -n 1)
"$cs" --home "$work/nas" run --listen "127.0.0.1:$pn" --transport quic 2>"$work/nas.log" & pids+=($!)
sleep 1
"$cs" --home "$work/phone" join "$code" "$work/phone-music" --peer "127.0.0.1:$pn" --transport quic --shallow >/dev/null
"$cs" --home "$work/phone" run --listen "127.0.0.1:$pp" --transport quic --peer "127.0.0.1:$pn" 2>"$work/phone.log" & pids+=($!)
for _ in $(seq 100); do "$cs" --home "$work/phone" ls 2>/dev/null | grep -q big.flac && break; sleep 0.2; done
python3 - "$cs" "$work/phone" "$SIZE_MIB" <<'PY'
import subprocess, sys, time
cs, home, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = mib * 1024 * 1024
def timed(args):
    t0 = time.monotonic()
    p = subprocess.Popen([cs, "--home", home, "cat", "big.flac"] + args, stdout=subprocess.PIPE)
    first = p.stdout.read(1)
    ttfb = time.monotonic() - t0
    n = len(first)
    while True:
        b = p.stdout.read(1 << 20)
        if not b: break
        n += len(b)
    p.wait()
    return ttfb, time.monotonic() - t0, n
mid = size // 2
ttfb, total, n = timed(["--range", f"{mid}-{mid + (1 << 20) - 1}"])
print(f"cat 1 MiB range (cold): first byte {ttfb*1000:.0f} ms, all {total*1000:.0f} ms, {n} bytes")
ttfb, total, n = timed([])
print(f"cat whole file (cold):  first byte {ttfb*1000:.0f} ms, {total:.2f} s, {n/total/1e6:.0f} MB/s")
PY
start=$(date +%s.%N)
code2=$("$cs" --home "$work/nas" invite "$work/music" | tail -n 1)
"$cs" --home "$work/full" join "$code2" "$work/full-music" --peer "127.0.0.1:$pn" --transport quic >/dev/null
"$cs" --home "$work/full" sync --once --peer "127.0.0.1:$pn" --transport quic --timeout 600 2>/dev/null
end=$(date +%s.%N)
python3 -c "t=$end-$start; print(f'full sync (join + sync --once): {t:.2f} s, {$SIZE_MIB*1048576/t/1e6:.0f} MB/s')"
cmp "$work/music/big.flac" "$work/full-music/big.flac" && echo "full copy verified"

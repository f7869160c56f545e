#!/usr/bin/env python3
"""One Markdown table from the RESULT lines collected by bench/run.sh.

usage: summarize.py RESULTS.jsonl [...]
Rows: scenario x tool (clearskies per transport). Medians over runs. "x Syncthing" /
"x rsync" = that tool's median wall time / this row's median wall time in the same suite
(> 1: this row is faster). MB = 10^6 bytes, MiB = 2^20 bytes.
"""
import json
import statistics as st
import sys
from collections import defaultdict

TOOLS = ["clearskies-tcp", "clearskies-tcp (B daemon)", "clearskies-quic", "clearskies-quic (B daemon)", "syncthing", "rsync", "cp"]
SCEN_BASE = ["large", "small", "mixed"]
KIND = ["", "mod1pct", "insert1b", "rename", "idle"]


def tool_of(r):
    if r["tool"] != "clearskies":
        return r["tool"]
    t = f"clearskies-{r.get('transport', 'tcp')}"
    # B_MODE only changes how the initial sync is done; later phases are `sync --once`
    return t + " (B daemon)" if r.get("b_mode") == "daemon" and r.get("phase") == "initial" else t


def med(xs):
    xs = [x for x in xs if x is not None]
    return st.median(xs) if xs else None


def fmt(x, f="{:.2f}"):
    return "–" if x is None else f.format(x)


def skey(k):
    scen, tool = k
    kind, _, base = scen.partition("-") if "-" in scen else ("", "", scen)
    return (KIND.index(kind) if kind in KIND else 9,
            SCEN_BASE.index(base) if base in SCEN_BASE else 9, base,
            TOOLS.index(tool) if tool in TOOLS else 9)


def wire_str(b):
    if b is None:
        return "–"
    if b < 100_000:
        return f"{b:,.0f} B"
    return f"{b / 1e6:,.1f} MB"


def main():
    rows = []
    for p in sys.argv[1:]:
        with open(p) as fh:
            rows += [json.loads(l) for l in fh if l.strip()]
    g = defaultdict(list)
    for r in rows:
        g[(r["scenario"], tool_of(r))].append(r)
    wall = {k: med([r["wall_s"] for r in v]) for k, v in g.items()}

    print("| scenario | tool | runs | wall s median (min–max) | MB/s | CPU s A / B | peak RSS MiB A / B "
          "| wire | × Syncthing | × rsync | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in sorted(g, key=skey):
        rs = g[k]
        scen, tool = k
        w = wall[k]
        walls = [r["wall_s"] for r in rs]
        b = rs[0]["bytes"]
        mbps = b / 1e6 / w if w and b else None
        ca, cb = med([r.get("cpu_s_a") for r in rs]), med([r.get("cpu_s_b") for r in rs])
        ra, rb = med([r.get("rss_kib_a") for r in rs]), med([r.get("rss_kib_b") for r in rs])
        wire = med([r.get("wire_bytes") for r in rs])
        ratios = []
        for other in ("syncthing", "rsync"):
            ow = wall.get((scen, other))
            ratios.append(fmt(ow / w if ow and w and tool != other else None, "{:.2f}×"))
        notes = []
        if tool.startswith("clearskies"):
            if rs[0]["phase"] == "initial":
                notes.append(f"A scanned+listening {fmt(med([r.get('t_a_scanned') for r in rs]))} s")
            elif rs[0]["phase"] == "change":
                notes.append(f"A restart+scan {fmt(med([r.get('t_a_scanned') for r in rs]))} s")
            p = med([r.get("wire_payload_bytes") for r in rs])
            if p is not None and rs[0]["phase"] != "initial":
                notes.append(f"payload ≈{p:,.0f} B")
        if tool.startswith("clearskies"):
            extra = [(r.get("sync_once_runs") or 1) - 1 for r in rs]
            fails = [r.get("sync_once_failures") or 0 for r in rs]
            if any(extra):
                notes.append(f"**B needed {sum(extra)} extra check-in(s) over {len(rs)} run(s): "
                             f"{sum(fails)} sync --once failed, {sum(extra) - sum(fails)} exited 0 incomplete**")
        if tool == "syncthing":
            notes.append("wire = B's received bytes (REST)")
            if rs[0]["phase"] == "initial":
                notes.append(f"connected {fmt(med([r.get('t_connected') for r in rs]))} s")
        if tool == "cp":
            notes.append(f"cp+sync {fmt(med([r.get('wall_s_with_sync') for r in rs]))} s")
        if rs[0]["phase"] in ("modify", "change") and b and wire is not None and rs[0].get("changed_bytes") is not None:
            notes.append(f"wire = {100 * wire / b:.2f} % of the file")
        foreign = [r["sys_busy_cpu_s"] - r["cpu_s_total"] for r in rs
                   if r.get("sys_busy_cpu_s") is not None and r.get("cpu_s_total") is not None]
        if foreign and max(foreign) > max(0.5, 0.1 * (med([r["cpu_s_total"] for r in rs]) or 0)):
            notes.append(f"other CPU in window ≤{max(foreign):.1f} s")
        if not all(r.get("verified") for r in rs):
            notes.append("**VERIFY FAILED**")
        print(f"| {scen} | {tool} | {len(rs)} | {fmt(w, '{:.3f}')} ({min(walls):.3f}–{max(walls):.3f}) "
              f"| {fmt(mbps, '{:.0f}')} | {fmt(ca)} / {fmt(cb)} "
              f"| {fmt(ra / 1024 if ra else None, '{:.0f}')} / {fmt(rb / 1024 if rb else None, '{:.0f}')} "
              f"| {wire_str(wire)} | {ratios[0]} | {ratios[1]} | {'; '.join(notes)} |")


if __name__ == "__main__":
    main()

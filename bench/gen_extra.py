#!/usr/bin/env python3
"""Datasets for the change scenarios that the shared generator does not make.

  rename/    album/ with 1,000 files of 16-64 KiB (~40 MB): the folder-rename scenario
  many/      N files (default 100,000) of 0-512 B in N/100 folders: the idle check-in

usage: gen_extra.py OUTDIR [--sets rename,many] [--many N] [--force]
Deterministic (seeded), like the shared gen.py; existing sets are kept unless --force.
"""
import argparse
import os
import random
import shutil

KiB = 1 << 10
MTIME = 1_700_000_000


def write(path, n, r):
    with open(path, "wb") as f:
        f.write(r.randbytes(n))
    os.utime(path, (MTIME, MTIME))


def gen_rename(root):
    r = random.Random("clearskies-bench/rename")
    d = os.path.join(root, "album")
    os.makedirs(d)
    for i in range(1000):
        write(os.path.join(d, f"img_{i:04d}.jpg"), r.randint(16 * KiB, 64 * KiB), r)


def gen_many(root, n):
    r = random.Random(f"clearskies-bench/many/{n}")
    per = 100
    for i in range(n):
        d = os.path.join(root, f"d{i // per:04d}")
        if i % per == 0:
            os.makedirs(d)
        write(os.path.join(d, f"f{i:06d}.txt"), r.randint(0, 512), r)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--sets", default="rename,many")
    ap.add_argument("--many", type=int, default=100_000)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    for s in a.sets.split(","):
        name = s if s != "many" else f"many{a.many}"
        root = os.path.join(a.outdir, name)
        if os.path.isdir(root):
            if not a.force:
                print(f"{name}: exists, kept")
                continue
            shutil.rmtree(root)
        os.makedirs(root)
        if s == "rename":
            gen_rename(root)
        elif s == "many":
            gen_many(root, a.many)
        else:
            raise SystemExit(f"unknown set {s!r}")
        print(f"{name}: generated in {root}")


if __name__ == "__main__":
    main()

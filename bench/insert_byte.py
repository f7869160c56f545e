#!/usr/bin/env python3
"""Insert one byte at the start of FILE (every later byte shifts by one).

Same calling convention and output as the shared harness's modify.py, so it can stand in
for it: `insert_byte.py FILE [--pct ignored]` prints one JSON line
{file, offset, length, size} (size = the new size). The file's mtime becomes "now".
"""
import argparse
import json
import os


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--pct", type=float, default=1.0, help="ignored (modify.py compatibility)")
    ap.add_argument("--byte", type=lambda s: int(s, 0), default=0x5A)
    a = ap.parse_args()
    tmp = a.file + ".insert.tmp"
    with open(a.file, "rb") as src, open(tmp, "wb") as dst:
        dst.write(bytes([a.byte]))
        while True:
            b = src.read(4 << 20)
            if not b:
                break
            dst.write(b)
        dst.flush()
        os.fsync(dst.fileno())
    st = os.stat(a.file)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.replace(tmp, a.file)
    print(json.dumps({"file": a.file, "offset": 0, "length": 1, "size": os.path.getsize(a.file)}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generates the folder-sync vectors of spec/files.md: chunking.json and paths.json.

    python3 spec/vectors/generate_files.py

Standard library only. Everything is written from spec/files.md, independently of the Rust
implementation: the gear table and the chunking loop of § Chunking, the path rules of § Paths,
and conflict-copy names (the UTC date from Python's datetime, not from the civil-date
arithmetic the Rust code uses).

The input bytes of every chunking case are not stored: they are SHA-256 in counter mode,
    bytes = SHA-256(seed ‖ u64be(0)) ‖ SHA-256(seed ‖ u64be(1)) ‖ ...   truncated to `len`,
with `seed` the case's seed text in UTF-8 (or all zero bytes where a case says "zeros"), so a
test regenerates them. The output is deterministic: a diff after a run means the vectors
changed. The format of each file is described in spec/files.md § Test vectors.
"""

import datetime
import base64
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- constants, mirrored from spec/files.md ---------------------------------------------------

GEAR_SEED = b"clearskies/gear/v1"
MIN_BITS, AVG_BITS, MAX_BITS, NORMALIZATION = 14, 16, 18, 2
M64 = (1 << 64) - 1
MAX_KEY_LEN = 1024
MAX_PATH_LEN = MAX_KEY_LEN - 1
MAX_COMPONENT_LEN = 255

GEAR = [
    int.from_bytes(hashlib.sha256(GEAR_SEED + bytes([i])).digest()[:8], "little")
    for i in range(256)
]


def top_mask(bits):
    return (M64 << (64 - bits)) & M64


def params(k):
    return {
        "min": 1 << (MIN_BITS + k),
        "avg": 1 << (AVG_BITS + k),
        "max": 1 << (MAX_BITS + k),
        "mask_small": top_mask(AVG_BITS + k + NORMALIZATION),
        "mask_large": top_mask(AVG_BITS + k - NORMALIZATION),
    }


def chunk_lengths(data, k):
    """spec/files.md § Chunking, step by step."""
    p = params(k)
    out = []
    start = 0
    n = len(data)
    while start < n:
        remaining = n - start
        end = min(p["max"], remaining)
        cut = None
        fp = 0
        # Candidate lengths L = min ..= end; the byte that makes the chunk L long is hashed.
        for length in range(p["min"], end + 1):
            fp = ((fp << 1) + GEAR[data[start + length - 1]]) & M64
            mask = p["mask_small"] if length < p["avg"] else p["mask_large"]
            if fp & mask == 0:
                cut = length
                break
        if cut is None:
            cut = end  # the maximum, or the end of the data
        out.append(cut)
        start += cut
    return out


def counter_bytes(seed, length):
    out = bytearray()
    i = 0
    while len(out) < length:
        out += hashlib.sha256(seed.encode() + struct.pack(">Q", i)).digest()
        i += 1
    return bytes(out[:length])


def chunking():
    cases = []

    def case(name, description, seed, length, k, prefix=b""):
        data = prefix + (bytes(length) if seed == "zeros" else counter_bytes(seed, length))
        lengths = chunk_lengths(data, k)
        hashes = []
        at = 0
        for n in lengths:
            hashes.append(hashlib.sha256(data[at : at + n]).hexdigest())
            at += n
        assert at == len(data)
        entry = {
            "name": name,
            "meaning": description,
            "seed": seed,
            "len": length,
            "class": k,
            "lengths": lengths,
            "chunk_sha256": hashes,
        }
        if prefix:
            entry["prefix_hex"] = prefix.hex()
        cases.append(entry)

    case("empty", "No data: no chunks.", "zeros", 0, 0)
    case("below-min", "Shorter than the minimum: one chunk.", "clearskies/vectors/a", 10_000, 0)
    case("zeros", "Constant bytes never match a mask: cuts at the maximum.", "zeros", 600_000, 0)
    case(
        "random-3m",
        "3 MiB of counter-mode bytes, class 0.",
        "clearskies/vectors/chunking/1",
        3 << 20,
        0,
    )
    case(
        "random-3m-inserted",
        "The same 3 MiB after inserting one byte at the start: the boundaries resynchronise.",
        "clearskies/vectors/chunking/1",
        3 << 20,
        0,
        prefix=b"!",
    )
    case(
        "random-3m-class1",
        "The same 3 MiB, class 1.",
        "clearskies/vectors/chunking/1",
        3 << 20,
        1,
    )
    case(
        "random-1m-class1",
        "Other bytes, class 1.",
        "clearskies/vectors/chunking/2",
        1 << 20,
        1,
    )

    classes = []
    for size in [0, 1, 8192 << 16, (8192 << 16) + 1, 8192 << 17, (8192 << 17) + 1, 1 << 40]:
        k = 0
        while k < 13 and size > 8192 * (1 << (AVG_BITS + k)):
            k += 1
        classes.append({"size": size, "class": k})

    return {
        "description": "Content-defined chunking, spec/files.md § Chunking.",
        "gear": [format(g, "016x") for g in GEAR],
        "params": [
            {
                "class": k,
                **{
                    key: (format(v, "016x") if key.startswith("mask") else v)
                    for key, v in params(k).items()
                },
            }
            for k in (0, 1)
        ],
        "class_for": classes,
        "cases": cases,
    }


# ---- paths ------------------------------------------------------------------------------------


def validate(path):
    """spec/files.md § Paths: the first rule broken, or None."""
    if path == "":
        return "empty-path"
    if "\0" in path:
        return "nul-byte"
    if "\\" in path:
        return "backslash"
    if path.startswith("/"):
        return "absolute-path"
    if path.endswith("/"):
        return "trailing-slash"
    if len(path.encode()) > MAX_PATH_LEN:
        return "path-too-long"
    for c in path.split("/"):
        if c == "":
            return "empty-component"
        if c == ".":
            return "dot-component"
        if c == "..":
            return "dot-dot-component"
        if len(c.encode()) > MAX_COMPONENT_LEN:
            return "component-too-long"
    if path.split("/")[0].encode().lower() == b".clearskies":
        return "reserved-name"
    return None


WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {
    f"LPT{i}" for i in range(1, 10)
}


def windows_problem(path):
    for name in path.split("/"):
        if any(c in '<>:"\\|?*' or ord(c) < 32 for c in name):
            return True
        if name.endswith(".") or name.endswith(" "):
            return True
        if name.split(".")[0].rstrip(" ").upper() in WINDOWS_RESERVED:
            return True
    return False


def device_text_prefix(device_id):
    """The first 7 characters of a device ID's text form: its first 7 base32 symbols."""
    return base64.b32encode(device_id).decode()[:7]


def conflict_name(path, device_id, wall_micros):
    d, _, name = path.rpartition("/")
    d = d + "/" if _ else ""
    i = name.rfind(".")
    if 0 < i < len(name) - 1:
        stem, ext = name[:i], name[i:]
    else:
        stem, ext = name, ""
    when = datetime.datetime.fromtimestamp(wall_micros // 1_000_000, tz=datetime.timezone.utc)
    tag = f".sync-conflict-{device_text_prefix(device_id)}-{when:%Y%m%d-%H%M%S}"
    room = max(0, MAX_COMPONENT_LEN - len(tag.encode()) - len(ext.encode()))
    s = stem.encode()[:room].decode("utf-8", errors="ignore")
    return f"{d}{s}{tag}{ext}"


def paths():
    long_ok = "/".join(["c" * 255] * 4)[:MAX_PATH_LEN]
    inputs = [
        ("a", "a plain name"),
        ("a/b/c.txt", "nested"),
        ("é/ü ñ.txt", "non-ASCII"),
        ("..a/b..", "dots inside names are fine"),
        ("a/.clearskies", ".clearskies below the root is an ordinary name"),
        (".clearskiesignore", "the ignore file is synced"),
        ("", "empty"),
        ("a\0b", "NUL"),
        ("a\\b", "backslash"),
        ("C:\\x", "a Windows absolute path"),
        ("/etc/passwd", "absolute"),
        ("a/", "trailing slash"),
        ("a//b", "empty component"),
        ("./a", "dot"),
        ("a/./b", "dot inside"),
        ("..", "parent"),
        ("../x", "traversal"),
        ("a/../../x", "traversal inside"),
        (".clearskies", "reserved"),
        (".clearskies/tmp/x", "reserved, nested"),
        (".CLEARSKIES", "reserved in any case"),
        ("x" * 255, "longest component"),
        ("x" * 256, "component too long"),
        ("é" * 128, "component too long in bytes (256)"),
        (long_ok, "longest path"),
        (long_ok + "c", "path too long"),
        ("CON", "valid, but not on Windows"),
        ("a/nul.tar.gz", "valid, reserved on Windows whatever the extension"),
        ("a/COM10", "not reserved"),
        ("what?", "valid, a character Windows forbids"),
        ("dir./x", "valid, a trailing dot"),
        ("tab\tname", "valid, a control character"),
        ("Straße/ÀB.TXT", "case fold"),
    ]
    validate_cases = []
    for path, description in inputs:
        error = validate(path)
        entry = {"path": path, "meaning": description, "error": error}
        if error is None:
            entry["windows_problem"] = windows_problem(path)
            entry["case_fold_key"] = "".join(c.lower() for c in path)
        validate_cases.append(entry)

    device = hashlib.sha256(b"clearskies/vectors/device").digest()
    t = 1_700_000_000_123_456
    conflict_cases = []
    for path, micros in [
        ("a/b.txt", t),
        ("b.txt", t),
        ("dir/archive.tar.gz", t),
        (".bashrc", t),
        ("dir/.config.bak", t),
        ("noext", 0),
        ("trailing.", 951_782_400_000_000),
        ("x/y/z", 4_107_542_399_999_999),
        ("é" * 120 + ".txt", t),
    ]:
        conflict_cases.append(
            {
                "path": path,
                "device_id_hex": device.hex(),
                "wall_micros": micros,
                "expected": conflict_name(path, device, micros),
            }
        )
    return {
        "description": "Share paths, spec/files.md § Paths.",
        "validate": validate_cases,
        "conflict_name": conflict_cases,
    }


def write(name, doc):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    write("chunking.json", chunking())
    write("paths.json", paths())

#!/usr/bin/env python3
"""Generates spec/vectors/files_messages.json: the chunk-transfer messages and file documents
of spec/files.md (§ 3 Model, § 8 Chunk transfer).

    pip install cbor2
    python3 spec/vectors/generate_files_messages.py

Written from spec/files.md, independently of the Rust implementation: the CBOR comes from
cbor2 (insertion-ordered dicts, definite lengths, shortest integers: the encoding of
spec/wire.md § Encoding when the dicts list keys in the order of the spec's tables). Bytes
cbor2 would not produce are written by hand. Deterministic: rerunning must not change the file.

Format: {"messages": [case], "documents": [case]}; a case is
{"name", "hex", "valid": bool, "fields": {...} (valid cases), "error": "<why>" (invalid)}.
A message case with "unknown": true decodes to nothing (an unknown type, ignored).
"""

import hashlib
import json
import os

import cbor2

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_PIECE = 262144


def h(label):
    return hashlib.sha256(label.encode()).digest()


def msg(kind, body):
    return cbor2.dumps([kind, body])


messages = []


def valid(name, kind, body, fields):
    messages.append({"name": name, "hex": msg(kind, body).hex(), "valid": True,
                     "type": kind, "fields": fields})


def invalid(name, raw, error):
    messages.append({"name": name, "hex": raw.hex(), "valid": False, "error": error})


chunk = h("chunk")
valid("get", 0, {"s": 0x0102030405060708, "i": 7, "h": chunk, "o": 0, "n": 65536},
      {"share": 0x0102030405060708, "id": 7, "hash": chunk.hex(), "offset": 0, "len": 65536})
valid("get-last-piece", 0, {"s": 1, "i": 4294967295, "h": chunk, "o": 262144, "n": MAX_PIECE},
      {"share": 1, "id": 4294967295, "hash": chunk.hex(), "offset": 262144, "len": MAX_PIECE})
valid("get-unknown-key-ignored", 0, {"s": 1, "i": 1, "h": chunk, "o": 0, "n": 1, "x": "later"},
      {"share": 1, "id": 1, "hash": chunk.hex(), "offset": 0, "len": 1})
valid("data", 1, {"i": 7, "d": b"hello"}, {"id": 7, "data": b"hello".hex()})
valid("data-empty", 1, {"i": 0, "d": b""}, {"id": 0, "data": ""})
valid("missing", 2, {"i": 9}, {"id": 9})
valid("progress", 3, {"s": 42, "p": 0}, {"share": 42, "pending": 0})
valid("progress-many", 3, {"s": 42, "p": 100000}, {"share": 42, "pending": 100000})
messages.append({"name": "unknown-type", "hex": msg(99, {"z": 1}).hex(), "valid": True,
                 "unknown": True})
invalid("get-zero-length", msg(0, {"s": 1, "i": 1, "h": chunk, "o": 0, "n": 0}), "length 0")
invalid("get-piece-too-long", msg(0, {"s": 1, "i": 1, "h": chunk, "o": 0, "n": MAX_PIECE + 1}),
        "longer than MAX_PIECE")
invalid("get-short-hash", msg(0, {"s": 1, "i": 1, "h": chunk[:31], "o": 0, "n": 1}),
        "hash of 31 bytes")
invalid("get-missing-field", msg(0, {"s": 1, "i": 1, "h": chunk, "o": 0}), "no length")
invalid("not-an-array", cbor2.dumps({"i": 1}), "not [type, body]")
invalid("trailing-bytes", msg(2, {"i": 1}) + b"\x00", "trailing bytes")
invalid("truncated", msg(1, {"i": 1, "d": b"abcdef"})[:-2], "truncated")

documents = []


def doc(name, body, fields=None, error=None):
    case = {"name": name, "hex": cbor2.dumps(body).hex(), "valid": error is None}
    if error is None:
        case["fields"] = fields
    else:
        case["error"] = error
    documents.append(case)


c1, c2 = h("c1"), h("c2")
doc("file", {"k": 0, "m": 0o644, "t": 1700000000123456789, "s": 70000,
             "c": [[c1, 65536], [c2, 4464]]},
    {"kind": "file", "mode": 0o644, "mtime_ns": 1700000000123456789, "size": 70000,
     "chunks": [[c1.hex(), 65536], [c2.hex(), 4464]]})
doc("empty-file", {"k": 0, "m": 0o400, "t": 0, "s": 0},
    {"kind": "file", "mode": 0o400, "mtime_ns": 0, "size": 0, "chunks": []})
doc("dir", {"k": 1, "m": 0o755, "t": -1, "s": 0},
    {"kind": "dir", "mode": 0o755, "mtime_ns": -1, "size": 0, "chunks": []})
doc("symlink-outside", {"k": 2, "m": 0o777, "t": 5, "s": 9, "l": "../../etc"},
    {"kind": "symlink", "mode": 0o777, "mtime_ns": 5, "size": 9, "chunks": [],
     "target": "../../etc"})
doc("conflict-copy", {"k": 0, "m": 0o644, "t": 1, "s": 4464, "c": [[c2, 4464]],
                      "o": "notes/todo.txt"},
    {"kind": "file", "mode": 0o644, "mtime_ns": 1, "size": 4464,
     "chunks": [[c2.hex(), 4464]], "conflict_of": "notes/todo.txt"})
doc("sizes-do-not-add-up", {"k": 0, "m": 0o644, "t": 1, "s": 5, "c": [[c1, 4]]},
    error="chunk lengths do not add up to the size")
doc("empty-chunk", {"k": 0, "m": 0o644, "t": 1, "s": 0, "c": [[c1, 0]]}, error="empty chunk")
doc("dir-with-content", {"k": 1, "m": 0o755, "t": 1, "s": 3, "c": [[c1, 3]]},
    error="a directory has no content")
doc("symlink-without-target", {"k": 2, "m": 0o777, "t": 1, "s": 0},
    error="a symlink needs a target")
doc("mode-beyond-permissions", {"k": 0, "m": 0o100644, "t": 1, "s": 0},
    error="mode has bits beyond 0o7777")
doc("unknown-kind", {"k": 7, "m": 0, "t": 1, "s": 0}, error="unknown file kind")

with open(os.path.join(HERE, "files_messages.json"), "w") as f:
    json.dump({"messages": messages, "documents": documents}, f, indent=1)
    f.write("\n")

#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target from spec/vectors/ (deterministic).

    python3 fuzz/seed_corpus.py        # creates fuzz/corpus/<target>/vector-<name>

Each target's input format is described in its source under fuzz/fuzz_targets/.
"""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTORS = os.path.join(ROOT, "spec", "vectors")
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
PREFACE = b"CSKY\x00\x01"


def cases(name):
    with open(os.path.join(VECTORS, name), encoding="utf-8") as f:
        return json.load(f)["cases"]


def unhex(s):
    return bytes.fromhex("".join(s.split()))


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vector-" + name), "wb") as f:
        f.write(data)


def session_steps(data, piece=31):
    """The session target's format: a control byte (low 5 bits: piece length) then the piece."""
    out = bytearray()
    for i in range(0, len(data), piece):
        chunk = data[i:i + piece]
        out.append(len(chunk))
        out += chunk
    return bytes(out)


def main():
    count = 0
    for c in cases("frames.json"):
        # First byte: the piece size the target pushes the rest in.
        write("frame_decoder", c["name"], bytes([7]) + PREFACE + unhex(c["hex"]))
        count += 1
    for c in cases("messages.json"):
        write("message_decode", c["name"], unhex(c["hex"]))
        count += 1
    for c in cases("sessions.json"):
        data = unhex(c["hex"])
        write("session", c["name"], session_steps(data))
        write("frame_decoder", "session-" + c["name"], bytes([255]) + data)
        count += 2
    # The access_code target parses its whole input (UTF-8) as an access code and a device ID.
    for c in cases("access_codes.json"):
        write("access_code", "code-" + c["name"], c["input"].encode("utf-8"))
        count += 1
    for c in cases("device_ids.json"):
        write("access_code", "id-" + c["name"], c["input"].encode("utf-8"))
        count += 1
    # The db_message target decodes its whole input as an org.clearskies.db payload.
    for c in cases("db_messages.json"):
        write("db_message", c["name"], unhex(c["hex"]))
        count += 1
    # The files_message target decodes its input as a chunk-transfer payload and as a file
    # document.
    with open(os.path.join(VECTORS, "files_messages.json"), encoding="utf-8") as f:
        files = json.load(f)
    for c in files["messages"] + files["documents"]:
        write("files_message", c["name"], unhex(c["hex"]))
        count += 1
    # The pair_message target: mode byte 0 then one payload (decode), or mode byte 1 then
    # payloads framed with a 2-byte big-endian length (state machines).
    with open(os.path.join(VECTORS, "pairing.json"), encoding="utf-8") as f:
        pairing = json.load(f)
    for m in pairing["messages"]:
        write("pair_message", m["name"], b"\x00" + unhex(m["hex"]))
        count += 1
    for ex in pairing["exchanges"]:
        framed = {"joiner": b"", "inviter": b""}
        for i, m in enumerate(ex["messages"]):
            data = unhex(m["hex"])
            write("pair_message", f"{ex['name']}-{i}", b"\x00" + data)
            framed[m["from"]] += len(data).to_bytes(2, "big") + data
            count += 1
        # What each side sent, replayed into the target's machines.
        for sender, data in framed.items():
            write("pair_message", f"{ex['name']}-{sender}-sequence", b"\x01" + data)
            count += 1
    # The discovery target: 8 bytes of receiver wall time (big-endian), then one datagram.
    with open(os.path.join(VECTORS, "discovery.json"), encoding="utf-8") as f:
        discovery = json.load(f)
    for c in discovery["cases"]:
        write("discovery", c["name"], c["wall"].to_bytes(8, "big") + unhex(c["hex"]))
        count += 1
    for p in discovery["packets"]:
        write("discovery", "packet-" + p["name"], p["time"].to_bytes(8, "big") + unhex(p["hex"]))
        count += 1
    print(f"wrote {count} seed inputs under {os.path.relpath(CORPUS, ROOT)}/")


if __name__ == "__main__":
    main()

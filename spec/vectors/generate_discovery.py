#!/usr/bin/env python3
"""Generates discovery.json: the keys, rotating IDs, packets and receiver verdicts of
spec/discovery.md.

    python3 spec/vectors/generate_discovery.py

Written from the spec alone with hashlib and hmac (no Rust code involved), so the Rust
implementation is checked against an independent one (proto/tests/discovery_vectors.rs).
The output is deterministic: running the script twice gives identical files.
"""

import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- constants, mirrored from spec/discovery.md ------------------------------------------------

MAGIC = b"CSKD"
VERSION = 1
FLAG_HELLO = 0x01
KEY_INFO = b"clearskies/discovery/v1"
ID_LABEL = b"id"
MAC_LABEL = b"mac"
EPOCH_MICROS = 3600 * 1_000_000
TIME_WINDOW_MICROS = 300 * 1_000_000
MAX_ENTRIES = 12


def hkdf_sha256(ikm, info, length, salt=b""):
    """RFC 5869 with an absent salt (HashLen zero bytes)."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def discovery_key(share):
    return hkdf_sha256(share, KEY_INFO, 32)


def epoch(wall):
    return wall // EPOCH_MICROS


def discovery_id(key, ep):
    return hmac.new(key, ID_LABEL + struct.pack(">Q", ep), hashlib.sha256).digest()[:16]


def mac_header(flags, port, time, nonce):
    return MAGIC + bytes([VERSION, flags]) + struct.pack(">HQ", port, time) + nonce


def entry_mac(key, header, ident):
    return hmac.new(key, MAC_LABEL + header + ident, hashlib.sha256).digest()[:16]


def seal(shares, flags, port, time, nonce):
    header = mac_header(flags, port, time, nonce)
    out = header + bytes([len(shares)])
    for share in shares:
        key = discovery_key(share)
        ident = discovery_id(key, epoch(time))
        out += ident + entry_mac(key, header, ident)
    return out


# ---- the cases ----------------------------------------------------------------------------------

SHARE_A = bytes([1] * 32)
SHARE_B = bytes([2] * 32)
SHARE_C = bytes(range(32))
WALL = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
NONCE = bytes.fromhex("0001020304050607")


def keys():
    out = []
    for name, share in [("ones", SHARE_A), ("twos", SHARE_B), ("counting", SHARE_C)]:
        key = discovery_key(share)
        out.append({
            "name": name,
            "share_id": share.hex(),
            "discovery_key": key.hex(),
            "ids": [
                {"epoch": ep, "id": discovery_id(key, ep).hex()}
                for ep in [0, epoch(WALL), epoch(WALL) + 1]
            ],
        })
    return out


def packets():
    specs = [
        ("one-share-hello", [SHARE_A], FLAG_HELLO, 4000, WALL, NONCE),
        ("two-shares", [SHARE_A, SHARE_B], 0, 65535, WALL + 1, bytes(8)),
        ("max-entries", [bytes([i] * 32) for i in range(MAX_ENTRIES)], 0, 1, WALL, b"\xff" * 8),
    ]
    out = []
    for name, shares, flags, port, time, nonce in specs:
        out.append({
            "name": name,
            "shares": [s.hex() for s in shares],
            "flags": flags,
            "port": port,
            "time": time,
            "nonce": nonce.hex(),
            "hex": seal(shares, flags, port, time, nonce).hex(),
        })
    return out


def receiver_cases():
    """A receiver holding SHARE_A (and SHARE_C) at wall time WALL gets a packet from
    192.0.2.7:27183: what it concludes."""
    good = seal([SHARE_A], FLAG_HELLO, 4000, WALL, NONCE)
    cases = []

    def case(name, packet, expect, wall=WALL, found=None, port=None):
        c = {"name": name, "hex": packet.hex(), "wall": wall, "expect": expect}
        if expect == "found":
            c["found_shares"] = [s.hex() for s in found]
            c["found_port"] = port
        cases.append(c)

    case("member", good, "found", found=[SHARE_A], port=4000)
    case("two-in-common", seal([SHARE_C, SHARE_B, SHARE_A], 0, 9, WALL, NONCE), "found",
         found=sorted([SHARE_A, SHARE_C]), port=9)
    case("stranger", seal([SHARE_B], 0, 4000, WALL, NONCE), "unknown-id")
    case("too-short", good[:24], "too-short")
    case("bad-magic", b"CSKX" + good[4:], "bad-magic")
    case("version-2", good[:4] + b"\x02" + good[5:], "unsupported-version")
    case("count-zero", good[:24] + b"\x00", "bad-count")
    case("count-13", good[:24] + b"\x0d" + good[25:], "bad-count")
    case("trailing-byte", good + b"\x00", "bad-length")
    case("truncated-entry", good[:-1], "bad-length")
    zero_port = mac_header(0, 0, WALL, NONCE) + good[24:]
    case("zero-port", zero_port, "zero-port")
    case("tampered-port", good[:7] + bytes([good[7] ^ 1]) + good[8:], "bad-mac")
    case("tampered-mac", good[:-1] + bytes([good[-1] ^ 0x80]), "bad-mac")
    case("flags-changed", good[:5] + b"\x00" + good[6:], "bad-mac")
    case("old", seal([SHARE_A], 0, 4000, WALL - TIME_WINDOW_MICROS - 1, NONCE), "stale")
    case("future", seal([SHARE_A], 0, 4000, WALL + TIME_WINDOW_MICROS + 1, NONCE), "stale")
    case("edge-of-window", seal([SHARE_A], 0, 4000, WALL - TIME_WINDOW_MICROS, NONCE), "found",
         found=[SHARE_A], port=4000)
    # An ID of another epoch than the packet's time says: not an ID of ours at that time.
    header = mac_header(0, 4000, WALL, NONCE)
    key = discovery_key(SHARE_A)
    wrong_epoch = discovery_id(key, epoch(WALL) - 1)
    case("id-of-wrong-epoch", header + b"\x01" + wrong_epoch + entry_mac(key, header, wrong_epoch),
         "unknown-id")
    # Across an epoch boundary: sender already in the next hour, receiver not yet.
    boundary = (epoch(WALL) + 1) * EPOCH_MICROS
    case("next-epoch", seal([SHARE_A], 0, 4000, boundary + 1_000_000, NONCE), "found",
         wall=boundary - 1_000_000, found=[SHARE_A], port=4000)
    return cases


def main():
    doc = {
        "description": "spec/discovery.md vectors; generated by generate_discovery.py",
        "receiver": {
            "shares": [SHARE_A.hex(), SHARE_C.hex()],
            "from": "192.0.2.7:27183",
        },
        "keys": keys(),
        "packets": packets(),
        "cases": receiver_cases(),
    }
    with open(os.path.join(HERE, "discovery.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generates transport.json: the key encodings of spec/transport.md § Keys.

    pip install cryptography
    python3 spec/vectors/generate_transport.py

The encodings come from the `cryptography` package (OpenSSL), an implementation independent of
the Rust code: for each seed, the Ed25519 public key, its DER SubjectPublicKeyInfo (the raw
public key a device presents in TLS) and the PKCS#8 v1 DER private key. The script checks that
every encoding has the fixed prefix spec/transport.md states, then writes the file. A second
list gives byte strings that are not an Ed25519 SubjectPublicKeyInfo and must be refused.

The output is deterministic: running the script twice gives identical files.
"""

import hashlib
import json
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, x25519

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- constants, mirrored from spec/transport.md § Keys ----------------------------------------

SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")

SEEDS = [
    (
        "rfc8032-test-1",
        "The secret key of RFC 8032 section 7.1 TEST 1.",
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
    ),
    ("zero", "The all-zero seed.", bytes(32)),
    ("counting", "The seed 00 01 .. 1f.", bytes(range(32))),
]


def key_case(name, meaning, seed):
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert spki == SPKI_PREFIX + public, name
    assert pkcs8 == PKCS8_PREFIX + seed, name
    return {
        "name": name,
        "meaning": meaning,
        "seed": seed.hex(),
        "public_key": public.hex(),
        "spki": spki.hex(),
        "pkcs8": pkcs8.hex(),
        "device_id": hashlib.sha256(public).hexdigest(),
    }


def not_ed25519():
    seed = bytes(range(32))
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
    spki = ed.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    x = x25519.X25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    e448 = ed448.Ed448PrivateKey.from_private_bytes(bytes(57)).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # DER requires the shortest length form; 0x81 0x2a is the long form of the same length.
    long_form = bytes([0x30, 0x81, 0x2A]) + spki[2:]
    return [
        {"name": "x25519", "meaning": "An X25519 key (OID 1.3.101.110).", "spki": x.hex()},
        {"name": "ed448", "meaning": "An Ed448 key (OID 1.3.101.113).", "spki": e448.hex()},
        {"name": "short", "meaning": "An Ed25519 SPKI without its last byte.", "spki": spki[:-1].hex()},
        {"name": "trailing", "meaning": "An Ed25519 SPKI and one more byte.", "spki": (spki + b"\0").hex()},
        {"name": "long-length", "meaning": "An Ed25519 SPKI whose outer length is not minimal.", "spki": long_form.hex()},
        {"name": "empty", "meaning": "No bytes.", "spki": ""},
    ]


def main():
    out = {
        "description": "Key encodings (spec/transport.md § Keys). `keys`: for each 32-byte Ed25519 "
        "seed, the public key, the DER SubjectPublicKeyInfo a device presents as its RFC 7250 raw "
        "public key, the PKCS#8 v1 DER private key, and the device ID bytes (SHA-256 of the "
        "public key). `not_ed25519`: byte strings a verifier must refuse as a peer's raw public "
        "key.",
        "keys": [key_case(*case) for case in SEEDS],
        "not_ed25519": not_ed25519(),
    }
    with open(os.path.join(HERE, "transport.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Re-derives every value of spec/vectors/pairing.json from its inputs, independently of the
Rust code: its own Ed25519 point arithmetic (RFC 8032 formulas), SPAKE2 as spec/pairing.md § 4
states it, ChaCha20 for the seeded scalar (the `cryptography` package), HKDF and HMAC from the
standard library, and a small CBOR encoder.

    python3 spec/vectors/check_pairing.py      # exits non-zero on the first mismatch
"""
import hashlib
import hmac
import json
import os
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

HERE = os.path.dirname(os.path.abspath(__file__))

# --- Ed25519 group (affine twisted Edwards, -x^2 + y^2 = 1 + d x^2 y^2) ----------------------
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def add(a, b):
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return (x3, y3)


def mul(k, pt):
    acc = (0, 1)
    while k:
        if k & 1:
            acc = add(acc, pt)
        pt = add(pt, pt)
        k >>= 1
    return acc


def neg(pt):
    return ((-pt[0]) % P, pt[1])


def decompress(b):
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    u = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(u, (P + 3) // 8, P)
    if x * x % P != u:
        x = x * SQRT_M1 % P
    assert x * x % P == u, "not a point"
    if x & 1 != sign:
        x = P - x
    return (x, y)


def compress(pt):
    x, y = pt
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


B = decompress((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))
# The SPAKE2 constants of the spake2 crate and python-spake2 (spec/pairing.md § 4).
M = decompress(bytes.fromhex("15cfd18e385952982b6a8f8c7854963b58e34388c8e6dae891db756481a02312"))
N = decompress(bytes.fromhex("f04f2e7eb734b2a8f8b472eaf9c3c632576ac64aea650b496a8a20ff00e583c3"))


def ed25519_public(seed):
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return compress(mul(a, B))


# --- HKDF / HMAC -----------------------------------------------------------------------------
def hkdf(salt, ikm, info, length):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
    return out[:length]


def sha(b):
    return hashlib.sha256(b).digest()


# --- SPAKE2 ----------------------------------------------------------------------------------
ID_INVITER = b"clearskies/pair/v1/inviter"
ID_JOINER = b"clearskies/pair/v1/joiner"


def seeded_scalar(seed):
    """The first 64 bytes of the ChaCha20 keystream (key = seed, nonce 0, counter 0), as a
    little-endian integer mod L."""
    enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return int.from_bytes(enc.update(bytes(64)), "little") % L


def password_scalar(pw):
    return int.from_bytes(hkdf(b"", pw, b"SPAKE2 pw", 48), "big") % L


def spake_start(side, pw, seed):
    x = seeded_scalar(seed)
    blind = M if side == b"A" else N
    return x, side + compress(add(mul(x, B), mul(password_scalar(pw), blind)))


def spake_finish(side, pw, x, own_msg, peer_msg):
    unblind = N if side == b"A" else M
    k = mul(x, add(decompress(peer_msg[1:]), neg(mul(password_scalar(pw), unblind))))
    msg_a, msg_b = (own_msg, peer_msg) if side == b"A" else (peer_msg, own_msg)
    return sha(sha(pw) + sha(ID_INVITER) + sha(ID_JOINER) + msg_a[1:] + msg_b[1:] + compress(k))


# --- The key schedule (spec/pairing.md § 5) --------------------------------------------------
def transcript(locator_id, binding, inviter_pk, joiner_pk, msg_a, msg_b):
    return sha(b"clearskies/pair/v1/transcript\0" + locator_id + binding + inviter_pk
               + joiner_pk + msg_a + msg_b)


def schedule(k, t):
    ki = hkdf(t, k, b"clearskies/pair/v1/confirm/inviter", 32)
    kj = hkdf(t, k, b"clearskies/pair/v1/confirm/joiner", 32)
    return {
        "spake_key": k.hex(),
        "transcript": t.hex(),
        "inviter_confirm_key": ki.hex(),
        "joiner_confirm_key": kj.hex(),
        "inviter_mac": hmac.new(ki, t, hashlib.sha256).digest().hex(),
        "joiner_mac": hmac.new(kj, t, hashlib.sha256).digest().hex(),
    }


# --- CBOR (definite lengths, shortest forms) -------------------------------------------------
def head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
    raise ValueError(n)


def cbor(v):
    if isinstance(v, int):
        return head(0, v)
    if isinstance(v, bytes):
        return head(2, len(v)) + v
    if isinstance(v, str):
        return head(3, len(v.encode())) + v.encode()
    if isinstance(v, list):
        return head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict):
        return head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(v)


ACCESS = {"ReadOnly": 0, "ReadWrite": 1}


def check(what, want, got):
    if want != got:
        sys.exit(f"MISMATCH {what}:\n  file {want}\n  here {got}")


def main():
    with open(os.path.join(HERE, "pairing.json"), encoding="utf-8") as f:
        doc = json.load(f)
    checked = 0
    for ex in doc["exchanges"]:
        name, i = ex["name"], ex["inputs"]
        u = {k: bytes.fromhex(v) for k, v in i.items() if k.endswith(("key", "binding", "seed", "code", "_id"))}
        check(f"{name} inviter key", u["inviter_public_key"], ed25519_public(u["inviter_secret_key"]))
        check(f"{name} joiner key", u["joiner_public_key"], ed25519_public(u["joiner_secret_key"]))
        locator_id = sha(b"clearskies access code locator v1" + u["code"][:8])
        check(f"{name} locator", u["locator_id"], locator_id)
        pw_i, pw_j = u["code"][8:], u["joiner_code"][8:]
        x, msg_a = spake_start(b"A", pw_i, u["inviter_seed"])
        y, msg_b = spake_start(b"B", pw_j, u["joiner_seed"])
        check(f"{name} inviter msg", ex["inviter_spake_msg"], msg_a.hex())
        check(f"{name} joiner msg", ex["joiner_spake_msg"], msg_b.hex())
        k_i = spake_finish(b"A", pw_i, x, msg_a, msg_b)
        k_j = spake_finish(b"B", pw_j, y, msg_b, msg_a)
        args = (locator_id, None, u["inviter_public_key"], u["joiner_public_key"], msg_a, msg_b)
        view_i = schedule(k_i, transcript(*args[:1], u["inviter_channel_binding"], *args[2:]))
        view_j = schedule(k_j, transcript(*args[:1], u["joiner_channel_binding"], *args[2:]))
        check(f"{name} inviter view", ex["inviter_view"], view_i)
        check(f"{name} joiner view", ex["joiner_view"], view_j)
        # The messages, in order.
        want = [
            ("joiner", cbor([0, {"l": locator_id, "m": msg_b}])),
            ("inviter", cbor([1, {"m": msg_a}])),
            ("joiner", cbor([2, {"c": bytes.fromhex(view_j["joiner_mac"])}])),
        ]
        paired = view_i["joiner_mac"] == view_j["joiner_mac"]
        if paired:
            members = sorted(
                [(u["joiner_public_key"], ACCESS[i["access"]])]
                + [(bytes.fromhex(m["public_key"]), ACCESS[m["access"]]) for m in i["granted_members"]]
            )
            want += [
                ("inviter", cbor([2, {"c": bytes.fromhex(view_i["inviter_mac"])}])),
                ("inviter", cbor([3, {"s": bytes([0x5A] * 32), "a": ACCESS[i["access"]],
                                      "m": [[k, a] for k, a in members]}])),
            ]
        else:
            want.append(("inviter", cbor([4, {"r": "wrong-secret"}])))
        got = [(m["from"], bytes.fromhex(m["hex"])) for m in ex["messages"]]
        check(f"{name} messages", [(f, w.hex()) for f, w in want], [(f, g.hex()) for f, g in got])
        checked += 1
    for m in doc["messages"]:
        name = m["name"]
        if name == "confirm":
            want = cbor([2, {"c": bytes(range(0xC0, 0xE0))}])
        elif name == "grant-read-only":
            want = cbor([3, {"s": bytes([0x5A] * 32), "a": 0,
                             "m": [[bytes([1] * 32), 1], [bytes([2] * 32), 0]]}])
        else:
            want = cbor([4, {"r": name[len("refuse-"):]}])
        check(name, m["hex"], want.hex())
        checked += 1
    print(f"{checked} passed, 0 failed")


if __name__ == "__main__":
    main()

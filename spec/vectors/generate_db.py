#!/usr/bin/env python3
"""Generates the ClearSkies database test vectors in this directory.

    pip install cbor2 cryptography
    python3 spec/vectors/generate_db.py

Writes db_records.json and db_messages.json next to this script. The output is deterministic
(Ed25519 signatures are deterministic, RFC 8032): running the script twice gives identical
files, so a diff after a run means the vectors changed.

Everything here is written from spec/database.md, independently of the Rust implementation:
the CBOR comes from cbor2 (which keeps a dict's insertion order, writes definite lengths and
shortest-form integers: the encoding of spec/wire.md § Encoding when the dicts list keys in the
order of the spec's tables), the signatures from the `cryptography` package (OpenSSL), and the
expected verification results from the checks of spec/database.md § Receiving a record,
re-implemented below. Bytes cbor2 would not produce (indefinite lengths, duplicate keys,
truncation, trailing bytes) are written out by hand.

The format of each file is described in spec/database.md § Test vectors.
"""

import hashlib
import json
import os
import struct

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- constants, mirrored from spec/database.md § Limits ---------------------------------------

MAX_KEY_LEN = 1024
MAX_VALUE_LEN = 512 * 1024
MAX_VERSION_ENTRIES = 256
RECORD_SIGNATURE_CONTEXT = b"clearskies/db/record/v1\x00"
DB_EXTENSION = "org.clearskies.db"

SYNC_REQUEST, RECORDS, CAUGHT_UP, REFUSED, FORGOTTEN, MEMBERS_MSG = 0, 1, 2, 3, 4, 5

SHARE = bytes([9]) * 32
OTHER_SHARE = bytes([8]) * 32
HLC = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z in microseconds

# ---- keys -------------------------------------------------------------------------------------


class Key:
    def __init__(self, name, n):
        self.name = name
        self.secret = bytes([n]) * 32
        self.private = Ed25519PrivateKey.from_private_bytes(self.secret)
        self.public = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.id = hashlib.sha256(self.public).digest()

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


D1 = Key("device-1", 1)
D2 = Key("device-2", 2)
D3 = Key("device-3", 3)
D4 = Key("device-4", 4)
KEYS = [D1, D2, D3, D4]
# The member list the "accept" expectation is computed against. device-4 is not a member.
MEMBERS = {D1.id: "read-write", D2.id: "read-write", D3.id: "read-only"}


def key_by_id(device_id: bytes):
    return next((k for k in KEYS if k.id == device_id), None)


# ---- records ----------------------------------------------------------------------------------


def u32(n):
    return struct.pack(">I", n)


def u64(n):
    return struct.pack(">Q", n)


class Record:
    def __init__(self, key, value, version, dot, hlc, signature=b""):
        self.key = key              # str
        self.value = value          # bytes or None (tombstone)
        self.version = dict(sorted(version.items()))  # device id bytes -> counter, in id order
        self.dot = dot              # (writer id bytes, counter)
        self.hlc = hlc
        self.signature = signature

    def signed_bytes(self, share: bytes) -> bytes:
        kb = self.key.encode("utf-8")
        out = RECORD_SIGNATURE_CONTEXT + share + u32(len(kb)) + kb
        if self.value is None:
            out += b"\x00"
        else:
            out += b"\x01" + u32(len(self.value)) + self.value
        out += u32(len(self.version))
        for writer, counter in self.version.items():
            out += writer + u64(counter)
        out += self.dot[0] + u64(self.dot[1]) + u64(self.hlc)
        return out

    def cbor_item(self):
        # Key order: the order of the Record table in spec/database.md.
        return {
            "k": self.key,
            "v": self.value,
            "vv": dict(self.version),
            "d": [self.dot[0], self.dot[1]],
            "t": self.hlc,
            "s": self.signature,
        }

    def cbor(self) -> bytes:
        return cbor2.dumps(self.cbor_item())

    def json(self):
        return {
            "key": self.key,
            "value": None if self.value is None else self.value.hex(),
            "version": [[w.hex(), c] for w, c in self.version.items()],
            "dot": {"writer": self.dot[0].hex(), "counter": self.dot[1]},
            "hlc": self.hlc,
        }

    def copy(self):
        return Record(self.key, self.value, dict(self.version), self.dot, self.hlc,
                      self.signature)


def signed(key, value, version, dot, hlc, signer: Key, share=SHARE) -> Record:
    """A record signed by `signer` over `share`. `version` and `dot` use Key objects."""
    r = Record(key, value, {k.id if isinstance(k, Key) else k: c for k, c in version.items()},
               (dot[0].id, dot[1]), hlc)
    r.signature = signer.sign(r.signed_bytes(share))
    return r


def check_shape(r: Record):
    kb = r.key.encode("utf-8")
    if len(kb) == 0 or len(kb) > MAX_KEY_LEN:
        return "bad-key"
    if r.value is not None and len(r.value) > MAX_VALUE_LEN:
        return "value-too-large"
    if (len(r.version) > MAX_VERSION_ENTRIES or 0 in r.version.values() or r.dot[1] == 0
            or r.version.get(r.dot[0], 0) != r.dot[1]):
        return "bad-version"
    return None


def verify(r: Record, public_key: bytes, share=SHARE):
    """Record verification against the writer's public key (spec § Signatures)."""
    err = check_shape(r)
    if err:
        return err
    if hashlib.sha256(public_key).digest() != r.dot[0]:
        return "bad-signature"
    try:
        # OpenSSL refuses S >= L, as strict verification does; the keys here are not small-order.
        Ed25519PublicKey.from_public_bytes(public_key).verify(r.signature, r.signed_bytes(share))
    except InvalidSignature:
        return "bad-signature"
    return "ok"


def accept(r: Record, share=SHARE):
    """The full check of a received record against MEMBERS (spec § Receiving a record)."""
    err = check_shape(r)
    if err:
        return err
    access = MEMBERS.get(r.dot[0])
    if access is None:
        return "unknown-writer"
    if access != "read-write":
        return "read-only-writer"
    return verify(r, key_by_id(r.dot[0]).public, share)


def doc(value) -> bytes:
    """A document: any CBOR item."""
    return cbor2.dumps(value)


# ---- helpers ----------------------------------------------------------------------------------


def check_unique(cases):
    names = [c["name"] for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"duplicate case names: {dupes}"


def write(filename: str, doc_: dict):
    check_unique(doc_["cases"])
    path = os.path.join(HERE, filename)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(doc_, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"{filename}: {len(doc_['cases'])} cases")


# ---- db_records.json --------------------------------------------------------------------------


def records():
    cases = []
    named = {}

    def case(name, meaning, r: Record, want_verify, want_accept, signed_over=None):
        got_verify = verify(r, key_by_id(r.dot[0]).public)
        got_accept = accept(r)
        assert got_verify == want_verify, f"{name}: verify gives {got_verify}"
        assert got_accept == want_accept, f"{name}: accept gives {got_accept}"
        c = {
            "name": name,
            "meaning": meaning,
            "record": r.json(),
            "signed_bytes": r.signed_bytes(SHARE).hex(),
            "signature": r.signature.hex(),
            "cbor": r.cbor().hex(),
            "expect": {"verify": want_verify, "accept": want_accept},
        }
        if signed_over is not None:
            c["signed_over_share"] = signed_over.hex()
        cases.append(c)
        named[name] = r
        return r

    # -- valid records
    first = case(
        "first-write", "device-1's first write: a small CBOR map under notes/1; its version "
        "vector holds only its own dot.",
        signed("notes/1", doc({"title": "Groceries", "done": False}), {D1: 1}, (D1, 1), HLC, D1),
        "ok", "ok")
    second = case(
        "second-write-same-writer", "device-1 overwrites notes/1: counter 2 supersedes its "
        "counter 1, so the vector is {device-1: 2}.",
        signed("notes/1", doc({"title": "Groceries", "done": True}), {D1: 2}, (D1, 2),
               HLC + 1_000_000, D1),
        "ok", "ok")
    case(
        "write-after-other-writer", "device-2 writes notes/1 after receiving device-1's counter "
        "2: two entries, written in device-ID byte order.",
        signed("notes/1", doc({"title": "Groceries", "done": True, "by": "phone"}),
               {D1: 2, D2: 1}, (D2, 1), HLC + 2_000_000, D2),
        "ok", "ok")
    case(
        "tombstone", "device-2 deletes notes/1: a tombstone (value null, value flag 0 in the "
        "signed bytes) superseding both writers.",
        signed("notes/1", None, {D1: 2, D2: 2}, (D2, 2), HLC + 3_000_000, D2),
        "ok", "ok")
    case(
        "empty-document", "A present but empty value (flag 1, length 0) is not a tombstone.",
        signed("notes/empty", b"", {D1: 3}, (D1, 3), HLC + 4_000_000, D1),
        "ok", "ok")
    case(
        "utf8-key", "Keys are UTF-8; the signed length counts bytes (12 characters, 16 bytes).",
        signed("ordner/grüße/ß", doc("Hallo"), {D2: 3}, (D2, 3), HLC, D2),
        "ok", "ok")
    case(
        "key-at-limit", f"A key of exactly MAX_KEY_LEN ({MAX_KEY_LEN}) bytes is accepted.",
        signed("k" * MAX_KEY_LEN, doc(1), {D1: 4}, (D1, 4), HLC, D1),
        "ok", "ok")
    case(
        "resolves-conflict", "device-1 writes after seeing the concurrent siblings {device-1: 6} "
        "and {device-1: 5, device-2: 5}: the merge of their vectors plus its new dot 7.",
        signed("shared", doc("merged"), {D1: 7, D2: 5}, (D1, 7), HLC + 9_000_000, D1),
        "ok", "ok")
    case(
        "large-numbers", "Counters and the hybrid time are u64, big-endian in the signed bytes "
        "(counter 2^32 + 1, hlc 2^63).",
        signed("big", doc(None), {D2: 2**32 + 1}, (D2, 2**32 + 1), 2**63, D2),
        "ok", "ok")
    case(
        "zero-hlc", "The hybrid time only breaks ties: 0 is a valid value.",
        signed("early", doc([]), {D1: 5}, (D1, 5), 0, D1),
        "ok", "ok")

    # -- refused by the signature check
    t = first.copy()
    t.value = doc({"title": "Groceries", "done": True})
    case("tampered-value", "first-write with its document changed after signing.", t,
         "bad-signature", "bad-signature")
    t = first.copy()
    t.hlc += 1
    case("tampered-hlc", "first-write with its hybrid time changed after signing: the time "
         "is signed too.", t, "bad-signature", "bad-signature")
    t = second.copy()
    t.key = "notes/2"
    case("tampered-key", "second-write-same-writer moved to another key after signing.", t,
         "bad-signature", "bad-signature")
    t = first.copy()
    t.version[D2.id] = 1
    t.version = dict(sorted(t.version.items()))
    case("tampered-version", "first-write with an entry added to its version vector after "
         "signing (still well-formed).", t, "bad-signature", "bad-signature")
    t = first.copy()
    t.value = None
    case("tampered-into-tombstone", "first-write turned into a deletion by a relay.", t,
         "bad-signature", "bad-signature")
    case("wrong-share", "Signed over another share's ID (08 × 32); verified for share 09 × 32.",
         signed("notes/1", doc({"title": "Groceries", "done": False}), {D1: 1}, (D1, 1), HLC,
                D1, share=OTHER_SHARE),
         "bad-signature", "bad-signature", signed_over=OTHER_SHARE)
    case("signed-by-another-member", "Claims device-1 as writer but is signed with device-2's "
         "key.", signed("notes/1", doc("forged"), {D1: 9}, (D1, 9), HLC, D2),
         "bad-signature", "bad-signature")
    t = first.copy()
    s = int.from_bytes(t.signature[32:], "little") + (2**252 + 27742317777372353535851937790883648493)
    assert s < 2**256
    t.signature = t.signature[:32] + s.to_bytes(32, "little")
    case("malleated-signature", "first-write's signature with S replaced by S + L: the "
         "verification equation still holds, but a non-canonical S is refused.", t,
         "bad-signature", "bad-signature")

    # -- refused by the shape check (before membership and signature)
    case("counter-mismatch", "The vector's entry for the writer (2) is not the dot's counter "
         "(1).", signed("notes/1", doc("x"), {D1: 2}, (D1, 1), HLC, D1),
         "bad-version", "bad-version")
    case("dot-missing-from-vector", "The writer has no entry in the vector.",
         signed("notes/1", doc("x"), {D2: 1}, (D1, 1), HLC, D1),
         "bad-version", "bad-version")
    case("zero-entry-in-vector", "A vector entry with counter 0 (device-2 here) is not "
         "canonical: writers never produce one.",
         signed("zeros", doc("z"), {D1: 6, D2: 0}, (D1, 6), HLC, D1),
         "bad-version", "bad-version")
    case("dot-counter-zero", "Counters start at 1: a dot with counter 0 is malformed even "
         "when the vector agrees.", signed("notes/1", doc("x"), {D1: 0}, (D1, 0), HLC, D1),
         "bad-version", "bad-version")
    many = {hashlib.sha256(b"filler %d" % i).digest(): 1 for i in range(MAX_VERSION_ENTRIES)}
    many[D1.id] = 1
    case("too-many-writers", f"A vector naming MAX_VERSION_ENTRIES + 1 "
         f"({MAX_VERSION_ENTRIES + 1}) writers.",
         signed("crowded", doc("x"), many, (D1, 1), HLC, D1),
         "bad-version", "bad-version")
    case("key-too-long", f"A key of MAX_KEY_LEN + 1 ({MAX_KEY_LEN + 1}) bytes.",
         signed("k" * (MAX_KEY_LEN + 1), doc(1), {D1: 1}, (D1, 1), HLC, D1),
         "bad-key", "bad-key")
    case("empty-key", "The empty key.", signed("", doc(1), {D1: 1}, (D1, 1), HLC, D1),
         "bad-key", "bad-key")

    # -- refused by membership
    case("unknown-writer", "Correctly signed by device-4, which is not a member: verification "
         "alone passes, the membership check refuses it.",
         signed("notes/1", doc("hello"), {D4: 1}, (D4, 1), HLC, D4),
         "ok", "unknown-writer")
    case("read-only-writer", "Correctly signed by device-3, a read-only member.",
         signed("notes/1", doc("hello"), {D3: 1}, (D3, 1), HLC, D3),
         "ok", "read-only-writer")

    # -- order of the checks
    case("shape-before-membership", "An empty key from a non-member: the shape error wins.",
         signed("", doc(1), {D4: 1}, (D4, 1), HLC, D4), "bad-key", "bad-key")
    t = named["read-only-writer"].copy()
    t.value = doc("changed")
    case("membership-before-signature", "A tampered record from a read-only member: the "
         "membership error wins over the bad signature.", t, "bad-signature",
         "read-only-writer")

    return {
        "description": "Signed database records (spec/database.md § Records, § Signatures, "
                       "§ Receiving a record). 'signed_bytes' are the bytes a verifier computes "
                       "for the record as given, with share_id; 'cbor' is the record's "
                       "canonical encoding; 'verify' is the result of the shape and signature "
                       "checks against the writer's own public key, 'accept' the result of the "
                       "full check against 'members'.",
        "share_id": SHARE.hex(),
        "signature_context": RECORD_SIGNATURE_CONTEXT.hex(),
        "keys": [
            {"name": k.name, "secret": k.secret.hex(), "public_key": k.public.hex(),
             "device_id": k.id.hex()}
            for k in KEYS
        ],
        "members": [
            {"device_id": d.hex(), "name": key_by_id(d).name, "access": a}
            for d, a in MEMBERS.items()
        ],
        "cases": cases,
    }, named


# ---- db_messages.json -------------------------------------------------------------------------

TAG = int.from_bytes(SHARE[:8], "big")


PLACEHOLDER = "\u2603 raw CBOR goes here \u2603"


def splice(item, raw: bytes) -> bytes:
    """Encodes `item` with the encoding of PLACEHOLDER replaced by the raw bytes `raw`."""
    data = cbor2.dumps(item)
    mark = cbor2.dumps(PLACEHOLDER)
    assert data.count(mark) == 1
    return data.replace(mark, raw)


def messages(named):
    cases = []

    def ok(name, meaning, data: bytes, message, canonical=True):
        cases.append({"name": name, "meaning": meaning, "hex": data.hex(),
                      "canonical": canonical, "expect": {"message": message}})

    def ignored(name, meaning, data: bytes):
        cases.append({"name": name, "meaning": meaning, "hex": data.hex(),
                      "expect": {"ignored": True}})

    def err(name, meaning, data: bytes):
        cases.append({"name": name, "meaning": meaning, "hex": data.hex(),
                      "expect": {"error": "malformed-message"}})

    def sync_request(share, index, after):
        return {"type": "SyncRequest", "share": share, "index": index, "after": after}

    def records_msg(share, index, recs):
        return {"type": "Records", "share": share, "index": index,
                "records": [{"seq": s, "record": r.cbor().hex()} for s, r in recs]}

    def caught_up(share, index, seq):
        return {"type": "CaughtUp", "share": share, "index": index, "seq": seq}

    index = 0x5EED_1DE5_0000_0001

    # -- SyncRequest
    ok("sync-request-first-contact", "The first SyncRequest to a peer never synced: index 0, "
       "after 0. The share tag is the first 8 bytes of share 09 × 32.",
       cbor2.dumps([SYNC_REQUEST, {"s": TAG, "i": 0, "a": 0}]), sync_request(TAG, 0, 0))
    ok("sync-request-resume", "Resuming from a cursor: the peer's index ID and the last of its "
       "sequence numbers this side holds.",
       cbor2.dumps([SYNC_REQUEST, {"s": TAG, "i": index, "a": 1500}]),
       sync_request(TAG, index, 1500))
    ok("sync-request-small-tag", "A share whose ID starts with 7 zero bytes has a one-byte tag.",
       cbor2.dumps([SYNC_REQUEST, {"s": 1, "i": 1001, "a": 1000}]),
       sync_request(1, 1001, 1000))

    # -- Records
    ok("records-one", "One record (db_records.json first-write) at the sender's sequence 1.",
       cbor2.dumps([RECORDS, {"s": TAG, "i": index, "r": [[1, named["first-write"].cbor_item()]]}]),
       records_msg(TAG, index, [(1, named["first-write"])]))
    recs = [(3, named["write-after-other-writer"]), (4, named["empty-document"]),
            (9, named["tombstone"])]
    ok("records-several", "Three records in ascending sequence order, with gaps where "
       "superseded records left the sender's feed; one is a tombstone.",
       cbor2.dumps([RECORDS, {"s": TAG, "i": index,
                              "r": [[s, r.cbor_item()] for s, r in recs]}]),
       records_msg(TAG, index, recs))
    ok("records-empty", "An empty batch decodes (a conforming sender never sends one).",
       cbor2.dumps([RECORDS, {"s": TAG, "i": index, "r": []}]), records_msg(TAG, index, []))
    ok("records-invalid-record-decodes", "A record that fails the shape check (key-too-long) "
       "still decodes: checks run when the record is received, not in the decoder.",
       cbor2.dumps([RECORDS, {"s": TAG, "i": index, "r": [[2, named["key-too-long"].cbor_item()]]}]),
       records_msg(TAG, index, [(2, named["key-too-long"])]))

    # -- CaughtUp
    ok("caught-up", "The sender has sent (or skipped as the receiver's own) everything up to "
       "its sequence 1500.",
       cbor2.dumps([CAUGHT_UP, {"s": TAG, "i": index, "q": 1500}]), caught_up(TAG, index, 1500))
    ok("caught-up-empty-feed", "A replica with no records catches its peer up to sequence 0.",
       cbor2.dumps([CAUGHT_UP, {"s": TAG, "i": 77, "q": 0}]), caught_up(TAG, 77, 0))

    # -- Refused
    ok("refused", "The receiver refused device-1's record 3 of key notes/1: bad-signature.",
       cbor2.dumps([REFUSED, {"s": TAG, "k": "notes/1",
                              "d": [D1.id, 3], "e": "bad-signature"}]),
       {"type": "Refused", "share": TAG, "key": "notes/1",
        "dot": {"writer": D1.id.hex(), "counter": 3}, "error": "bad-signature"})
    ok("refused-unknown-code", "The error is free text to the receiver: a code this version "
       "does not define is carried as is.",
       cbor2.dumps([REFUSED, {"s": TAG, "k": "k", "d": [D4.id, 1],
                              "e": "some-future-code"}]),
       {"type": "Refused", "share": TAG, "key": "k",
        "dot": {"writer": D4.id.hex(), "counter": 1}, "error": "some-future-code"})

    # -- Forgotten (a reset follows)
    def forgotten(share, index, vector):
        return {"type": "Forgotten", "share": share, "index": index,
                "forgotten": [[w.hex(), c] for w, c in sorted(vector.items())]}

    fv = {D1.id: 7, D2.id: 3}
    ok("forgotten", "A reset starts: the sender has forgotten versions up to device-1's "
       "counter 7 and device-2's counter 3 (the merge of the vectors of the tombstones it "
       "collected); its whole feed and a CaughtUp follow.",
       cbor2.dumps([FORGOTTEN, {"s": TAG, "i": index, "f": dict(sorted(fv.items()))}]),
       forgotten(TAG, index, fv))
    ok("forgotten-empty-vector", "An empty forgotten vector decodes (a reset that makes the "
       "receiver drop nothing).",
       cbor2.dumps([FORGOTTEN, {"s": TAG, "i": 77, "f": {}}]), forgotten(TAG, 77, {}))

    # -- Members (membership records ahead of the feed)
    ok("members", "Membership records sent before the feed (spec 6.1): here one record, "
       "db_records.json first-write, standing in for a membership record (the decoder does "
       "not look inside records).",
       cbor2.dumps([MEMBERS_MSG, {"s": TAG, "r": [named["first-write"].cbor_item()]}]),
       {"type": "Members", "share": TAG,
        "records": [named["first-write"].cbor().hex()]})
    ok("members-empty", "An empty Members message decodes (a conforming sender never sends one).",
       cbor2.dumps([MEMBERS_MSG, {"s": TAG, "r": []}]),
       {"type": "Members", "share": TAG, "records": []})
    err("members-missing-records", "A Members message without its 'r' field.",
        cbor2.dumps([MEMBERS_MSG, {"s": TAG}]))

    # -- lenient decoding (not canonical)
    ok("sync-request-keys-reordered-and-unknown", "Map keys in another order and an unknown "
       "key are accepted; the unknown key is ignored.",
       cbor2.dumps([SYNC_REQUEST, {"a": 5, "x": "from the future", "i": 7, "s": TAG}]),
       sync_request(TAG, 7, 5), canonical=False)
    # [_ 0, {_ "s": TAG, "i": 7, "a": 5}] with indefinite-length array and map.
    indefinite = (bytes([0x9F, 0x00, 0xBF]) + cbor2.dumps("s") + cbor2.dumps(TAG)
                  + cbor2.dumps("i") + cbor2.dumps(7) + cbor2.dumps("a") + cbor2.dumps(5)
                  + bytes([0xFF, 0xFF]))
    ok("sync-request-indefinite-lengths", "Indefinite-length array and map are accepted.",
       indefinite, sync_request(TAG, 7, 5), canonical=False)
    # [2, {"s": TAG, "i": 77, "q": 5}] with q as an 8-byte integer.
    long_int = (bytes([0x82, 0x02, 0xA3]) + cbor2.dumps("s") + cbor2.dumps(TAG)
                + cbor2.dumps("i") + cbor2.dumps(77) + cbor2.dumps("q")
                + bytes([0x1B]) + u64(5))
    ok("caught-up-non-shortest-integer", "An integer in a longer form than needed is accepted.",
       long_int, caught_up(TAG, 77, 5), canonical=False)

    # -- unknown types: ignored
    ignored("unknown-type-9", "Type 9 is not defined by this version: the message is ignored, "
            "whatever its body.", cbor2.dumps([9, {"z": 1}]))
    ignored("unknown-type-9-text-body", "An unknown type's body may be any CBOR item.",
            cbor2.dumps([9, "anything"]))
    ignored("unknown-type-256", "Type 256 is unknown too (types are unsigned integers of any "
            "size, not bytes).", cbor2.dumps([256, {}]))
    ignored("unknown-type-max", "The largest type, 2^64 - 1, is unknown.",
            cbor2.dumps([2**64 - 1, {}]))

    # -- malformed
    sync = cbor2.dumps([SYNC_REQUEST, {"s": TAG, "i": 0, "a": 0}])
    err("empty", "Zero bytes are not a CBOR item.", b"")
    err("not-an-array", "The payload is a map, not a [type, body] array.",
        cbor2.dumps({"s": TAG, "i": 0, "a": 0}))
    err("array-of-one", "The body is missing.", cbor2.dumps([SYNC_REQUEST]))
    err("array-of-three", "A third array item is refused (unlike core messages, whose extra "
        "items are ignored).", cbor2.dumps([SYNC_REQUEST, {"s": TAG, "i": 0, "a": 0}, 1]))
    err("unknown-type-array-of-three", "The [type, body] shape is checked before the type: "
        "even an unknown type with a third item is refused.", cbor2.dumps([9, {}, 1]))
    err("truncated", "sync-request-first-contact cut one byte short.", sync[:-1])
    err("trailing-byte", "A valid SyncRequest followed by one more byte.", sync + b"\x00")
    err("negative-type", "The type is a negative integer.", cbor2.dumps([-1, {}]))
    err("text-type", "The type is a text string (extension names live one level up).",
        cbor2.dumps(["records", {}]))
    err("missing-field", "A SyncRequest without its 'a' field.",
        cbor2.dumps([SYNC_REQUEST, {"s": TAG, "i": 0}]))
    err("wrong-field-type", "A SyncRequest whose share tag is text.",
        cbor2.dumps([SYNC_REQUEST, {"s": "share", "i": 0, "a": 0}]))
    err("negative-seq", "A CaughtUp whose sequence number is negative.",
        cbor2.dumps([CAUGHT_UP, {"s": TAG, "i": 1, "q": -1}]))
    err("tag-too-large", "A share tag of 2^64 does not fit in 64 bits.",
        cbor2.dumps([SYNC_REQUEST, {"s": 2**64, "i": 0, "a": 0}]))
    dup = (bytes([0x82, 0x00, 0xA4]) + cbor2.dumps("s") + cbor2.dumps(TAG)
           + cbor2.dumps("s") + cbor2.dumps(TAG) + cbor2.dumps("i") + cbor2.dumps(0)
           + cbor2.dumps("a") + cbor2.dumps(0))
    err("duplicate-field", "A map with the key 's' twice.", dup)
    item = named["first-write"].cbor_item()
    short_sig = dict(item, s=item["s"][:63])
    err("records-short-signature", "A record whose signature is 63 bytes.",
        cbor2.dumps([RECORDS, {"s": TAG, "i": 1, "r": [[1, short_sig]]}]))
    short_id = dict(item, vv={D1.id[:31]: 1})
    err("records-short-device-id", "A version-vector key of 31 bytes is not a device ID.",
        cbor2.dumps([RECORDS, {"s": TAG, "i": 1, "r": [[1, short_id]]}]))
    text_id = dict(item, d=[D1.id.hex(), 1])
    err("records-text-device-id", "A dot whose writer is 64 hex characters of text, not 32 "
        "bytes.", cbor2.dumps([RECORDS, {"s": TAG, "i": 1, "r": [[1, text_id]]}]))
    old_dot = dict(item, d={"writer": D1.id, "counter": 1})
    err("records-dot-as-map", "A dot in the map form of drafts before compact dots "
        "({\"writer\": ..., \"counter\": ...}): a dot is a two-item array.",
        cbor2.dumps([RECORDS, {"s": TAG, "i": 1, "r": [[1, old_dot]]}]))
    long_dot = dict(item, d=[D1.id, 1, 0])
    err("records-dot-of-three", "A dot array with a third item.",
        cbor2.dumps([RECORDS, {"s": TAG, "i": 1, "r": [[1, long_dot]]}]))
    short_dot = dict(item, d=[D1.id])
    err("records-dot-of-one", "A dot array without its counter.",
        cbor2.dumps([RECORDS, {"s": TAG, "i": 1, "r": [[1, short_dot]]}]))
    no_value = {k: v for k, v in item.items() if k != "v"}
    err("records-missing-value", "A record without its 'v' key: a tombstone writes null, "
        "never omits the key.", cbor2.dumps([RECORDS, {"s": TAG, "i": 1, "r": [[1, no_value]]}]))
    err("records-pair-without-record", "A records entry that is [seq] instead of "
        "[seq, record].", cbor2.dumps([RECORDS, {"s": TAG, "i": 1, "r": [[1]]}]))
    # A version vector with the writer's key twice, the first with another counter: the
    # reference decoder keeps the last, giving back first-write exactly.
    vv_once = b"\xa1\x58\x20" + D1.id + b"\x01"
    vv_twice = b"\xa2\x58\x20" + D1.id + b"\x05\x58\x20" + D1.id + b"\x01"
    raw = named["first-write"].cbor()
    assert raw.count(vv_once) == 1
    ok("records-duplicate-vector-key-last-wins", "A version vector naming the same writer "
       "twice decodes with the last entry (informative: the reference decoder's behaviour).",
       splice([RECORDS, {"s": TAG, "i": 1, "r": [[1, PLACEHOLDER]]}],
              raw.replace(vv_once, vv_twice)),
       records_msg(TAG, 1, [(1, named["first-write"])]), canonical=False)
    err("forgotten-missing-vector", "A Forgotten without its 'f' field.",
        cbor2.dumps([FORGOTTEN, {"s": TAG, "i": 1}]))
    err("forgotten-vector-as-array", "A forgotten vector written as an array of pairs, not a "
        "map.", cbor2.dumps([FORGOTTEN, {"s": TAG, "i": 1, "f": [[D1.id, 7]]}]))
    err("refused-missing-error", "A Refused without its 'e' field.",
        cbor2.dumps([REFUSED, {"s": TAG, "k": "k", "d": [D1.id, 1]}]))

    first = cases[0]
    assert first["name"] == "sync-request-first-contact"
    return {
        "description": "Payloads of the org.clearskies.db session extension (spec/database.md "
                       "§ Messages). 'canonical' is true when encoding the expected message "
                       "reproduces the hex exactly. Records are given as the hex of their CBOR "
                       "encoding (see db_records.json). 'ignored' means a well-formed message "
                       "of a type this version does not define. Errors name a code of "
                       "spec/wire.md § Errors.",
        "share_id": SHARE.hex(),
        "extension_envelope": {
            "payload_case": "sync-request-first-contact",
            "meaning": "The complete session message carrying that payload: the extension "
                       "message [\"org.clearskies.db\", payload] of spec/wire.md § Extension "
                       "messages.",
            "hex": cbor2.dumps([DB_EXTENSION, bytes.fromhex(first["hex"])]).hex(),
        },
        "cases": cases,
    }


def main():
    recs, named = records()
    write("db_records.json", recs)
    write("db_messages.json", messages(named))


if __name__ == "__main__":
    main()

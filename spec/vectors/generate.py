#!/usr/bin/env python3
"""Generates the ClearSkies wire test vectors in this directory.

    pip install cbor2
    python3 spec/vectors/generate.py

Writes frames.json, messages.json and sessions.json next to this script. The output is
deterministic: running the script twice gives identical files, so a diff after a run means the
vectors changed.

The CBOR here is produced by cbor2, an encoder independent of the Rust implementation. cbor2
writes definite lengths and shortest-form integers and keeps a dict's insertion order, which is
exactly the canonical encoding of spec/wire.md § Encoding when the dicts below list keys in the
declaration order of the spec's message tables. Where a vector needs bytes cbor2 would not
produce (indefinite lengths, non-shortest integers, truncation, trailing bytes), they are
written out by hand and the case is marked non-canonical.

The format of each file is described in spec/wire.md § Test vectors.
"""

import json
import os
import struct

import cbor2

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- constants, mirrored from spec/wire.md § Limits -------------------------------------------

PREFACE_MAGIC = b"CSKY"
FRAMING_VERSION = 1
MAX_FRAME_PAYLOAD = 16 * 1024
MAX_VERSIONS = 16
MAX_EXTENSIONS = 32
MAX_EXTENSION_NAME = 128
MAX_NAME_LEN = 64
MAX_REASON_LEN = 256

KIND_MESSAGE = 0x01
KIND_SEGMENT = 0x02
FLAG_FIN = 0x01

HELLO, PING, CLOSE = 0, 1, 2

# ---- helpers ----------------------------------------------------------------------------------


def hx(data: bytes) -> str:
    return data.hex()


def preface(version: int = FRAMING_VERSION) -> str:
    """The 6-byte preface, as hex: magic, then the framing version."""
    return hx(PREFACE_MAGIC) + " " + hx(struct.pack(">H", version))


def frame(kind: int, payload: bytes = b"", flags: int = 0, stream: int = 0, length=None) -> str:
    """One frame as hex, its header fields separated by spaces for readability.

    `length` overrides the length field (for frames whose payload is deliberately absent).
    """
    if length is None:
        length = len(payload)
    parts = [
        hx(struct.pack(">I", length)),
        hx(struct.pack(">B", kind)),
        hx(struct.pack(">B", flags)),
        hx(struct.pack(">H", stream)),
    ]
    if payload:
        parts.append(hx(payload))
    return " ".join(parts)


def message_frame(body: bytes) -> str:
    return frame(KIND_MESSAGE, body)


def hello_body(versions, extensions, name, software, keepalive) -> dict:
    # Key order = declaration order of the HELLO table in spec/wire.md.
    return {
        "versions": versions,
        "extensions": extensions,
        "name": name,
        "software": software,
        "keepalive": keepalive,
    }


def hello(versions=(1,), extensions=("com.example.chat",), name="laptop",
          software="clearskies/0.1.0", keepalive=30) -> bytes:
    return cbor2.dumps([HELLO, hello_body(list(versions), list(extensions), name, software,
                                          keepalive)])


def ping() -> bytes:
    return cbor2.dumps([PING, {}])


def close(code: int, reason: str) -> bytes:
    return cbor2.dumps([CLOSE, {"code": code, "reason": reason}])


def ext(name: str, payload: bytes) -> bytes:
    return cbor2.dumps([name, payload])


def expect_hello(versions=(1,), extensions=("com.example.chat",), name="laptop",
                 software="clearskies/0.1.0", keepalive=30) -> dict:
    return {
        "message": {
            "type": "HELLO",
            "versions": list(versions),
            "extensions": list(extensions),
            "name": name,
            "software": software,
            "keepalive": keepalive,
        }
    }


def expect_close(code: int, reason: str) -> dict:
    return {"message": {"type": "CLOSE", "code": code, "reason": reason}}


def expect_ext(name: str, payload: bytes) -> dict:
    return {"message": {"type": "EXTENSION", "name": name, "payload": hx(payload)}}


EXPECT_PING = {"message": {"type": "PING"}}


def check_unique(cases):
    names = [c["name"] for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"duplicate case names: {dupes}"


def write(filename: str, doc: dict):
    check_unique(doc["cases"])
    path = os.path.join(HERE, filename)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"{filename}: {len(doc['cases'])} cases")


# ---- frames.json ------------------------------------------------------------------------------


def frames():
    cases = []

    def ok(name, meaning, kind, payload=b"", flags=0, stream=0, kind_name=None):
        fin = kind == KIND_SEGMENT and bool(flags & FLAG_FIN)
        if kind_name is None:
            kind_name = {KIND_MESSAGE: "message", KIND_SEGMENT: "segment"}.get(kind, "ignorable")
        cases.append({
            "name": name,
            "meaning": meaning,
            "hex": frame(kind, payload, flags, stream),
            "expect": {
                "kind": kind_name,
                "kind_byte": kind,
                "fin": fin,
                "stream": stream,
                "payload": hx(payload),
            },
        })

    def err(name, meaning, hexstr, code):
        cases.append({"name": name, "meaning": meaning, "hex": hexstr, "expect": {"error": code}})

    # Valid frames.
    ok("message-empty", "A MESSAGE frame with an empty payload is well-formed framing.",
       KIND_MESSAGE)
    ok("message-with-payload", "A MESSAGE frame on stream 0 carrying a 3-byte PING body.",
       KIND_MESSAGE, ping())
    ok("segment-not-fin", "A SEGMENT frame on stream 1 without FIN: a piece of a larger message.",
       KIND_SEGMENT, b"hi", 0, 1)
    ok("segment-fin", "A SEGMENT frame on stream 1 with FIN: the last piece of its message.",
       KIND_SEGMENT, b"hi", FLAG_FIN, 1)
    ok("segment-empty-fin", "An empty SEGMENT frame is allowed when it carries FIN.",
       KIND_SEGMENT, b"", FLAG_FIN, 7)
    ok("segment-max-stream", "Stream 65535 is a valid SEGMENT stream.",
       KIND_SEGMENT, b"\x00", FLAG_FIN, 0xFFFF)
    ok("ignorable-0x80-with-payload", "Kind 0x80 is ignorable; its payload is read and skipped.",
       0x80, b"\x00\x00\x00\x00")
    ok("ignorable-0xff-empty", "Kind 0xff, the highest ignorable kind, with no payload.", 0xFF)
    ok("ignorable-any-flags-and-stream",
       "Flags and stream of an ignorable frame belong to its future kind: any value is skipped.",
       0x9A, b"\x01\x02", flags=0xFF, stream=0x1234)

    # Errors. Header errors are detected from the 8 header bytes alone, so payloads that would
    # follow are left out where they would be large.
    err("frame-too-large", "A length of MAX_FRAME_PAYLOAD + 1 (0x4001) is refused from the header.",
        frame(KIND_MESSAGE, length=MAX_FRAME_PAYLOAD + 1), "frame-too-large")
    err("frame-too-large-max-u32", "A length of 0xffffffff is refused without waiting for payload.",
        frame(KIND_SEGMENT, flags=FLAG_FIN, stream=1, length=0xFFFFFFFF), "frame-too-large")
    err("unknown-frame-kind-0x03", "Kind 0x03 is critical (high bit clear) and undefined.",
        frame(0x03), "unknown-frame-kind")
    err("unknown-frame-kind-0x7f", "Kind 0x7f, the highest critical kind, is undefined.",
        frame(0x7F), "unknown-frame-kind")
    err("unknown-frame-kind-0x00", "Kind 0x00 is critical and undefined.",
        frame(0x00), "unknown-frame-kind")
    err("reserved-flags-on-message", "MESSAGE frames have no flags; bit 0x01 is reserved there.",
        frame(KIND_MESSAGE, ping(), flags=0x01), "reserved-flags")
    err("reserved-flags-0x02-on-segment", "On SEGMENT only FIN (0x01) is defined; 0x02 is reserved.",
        frame(KIND_SEGMENT, b"hi", flags=0x02, stream=1), "reserved-flags")
    err("reserved-flags-fin-plus-0x80-on-segment", "FIN together with a reserved bit is refused.",
        frame(KIND_SEGMENT, b"hi", flags=0x81, stream=1), "reserved-flags")
    err("bad-stream-message-nonzero", "A MESSAGE frame must be on stream 0; stream 5 is refused.",
        frame(KIND_MESSAGE, ping(), stream=5), "bad-stream")
    err("bad-stream-segment-zero", "A SEGMENT frame must not be on stream 0.",
        frame(KIND_SEGMENT, b"hi", flags=FLAG_FIN, stream=0), "bad-stream")
    err("empty-segment", "An empty SEGMENT frame without FIN is refused.",
        frame(KIND_SEGMENT, stream=1), "empty-segment")
    # Order of checks: length, kind, flags, stream, empty segment.
    err("order-length-before-kind", "Length is checked before kind: kind 0x03 with length 0x4001.",
        frame(0x03, length=MAX_FRAME_PAYLOAD + 1), "frame-too-large")
    err("order-kind-before-flags", "Kind is checked before flags: kind 0x03 with flags 0xff.",
        frame(0x03, flags=0xFF), "unknown-frame-kind")
    err("order-flags-before-stream", "Flags are checked before stream: MESSAGE, flags 0x01, stream 5.",
        frame(KIND_MESSAGE, flags=0x01, stream=5), "reserved-flags")
    err("order-stream-before-empty", "Stream is checked before emptiness: empty non-FIN SEGMENT on stream 0.",
        frame(KIND_SEGMENT, stream=0), "bad-stream")

    return {
        "description": (
            "Single frames without preface (spec/wire.md § Frames). Each hex is exactly one frame "
            "(for header errors, possibly only its 8-byte header). Valid cases give the decoded "
            "header and payload; re-encoding that header and payload reproduces the hex. Error "
            "cases give the error code of spec/wire.md § Errors."
        ),
        "cases": cases,
    }


# ---- messages.json ----------------------------------------------------------------------------


def messages():
    cases = []

    def ok(name, meaning, body: bytes, expect: dict, canonical: bool):
        cases.append({"name": name, "meaning": meaning, "hex": hx(body), "canonical": canonical,
                      "expect": expect})

    def ignored(name, meaning, body: bytes):
        cases.append({"name": name, "meaning": meaning, "hex": hx(body),
                      "expect": {"ignored": True}})

    def err(name, meaning, body: bytes, code: str):
        cases.append({"name": name, "meaning": meaning, "hex": hx(body),
                      "expect": {"error": code}})

    canonical_hello = hello()

    # ---- canonical encodings
    ok("hello-canonical",
       "The canonical HELLO: a 2-array of type 0 and a map with the five keys in declaration order.",
       canonical_hello, expect_hello(), True)
    ok("hello-empty-lists-and-strings",
       "A canonical HELLO with no extensions, empty name and software and keep-alive 0.",
       hello(versions=[1, 2], extensions=[], name="", software="", keepalive=0),
       expect_hello(versions=[1, 2], extensions=[], name="", software="", keepalive=0), True)
    limits_versions = list(range(1, MAX_VERSIONS + 1))
    limits_exts = [f"org.example.e{i}" for i in range(MAX_EXTENSIONS)]
    ok("hello-at-limits",
       "A HELLO exactly at every limit: 16 versions, 32 extensions, 64-byte name and software.",
       hello(versions=limits_versions, extensions=limits_exts, name="n" * MAX_NAME_LEN,
             software="s" * MAX_NAME_LEN, keepalive=86400),
       expect_hello(versions=limits_versions, extensions=limits_exts, name="n" * MAX_NAME_LEN,
                    software="s" * MAX_NAME_LEN, keepalive=86400), True)
    ok("hello-utf8-name",
       "Name is UTF-8 text; its limit counts bytes (this 6-character name is 7 bytes).",
       hello(name="Jörg's"), expect_hello(name="Jörg's"), True)
    ok("hello-max-keepalive-u32",
       "keepalive is a u32 of seconds; 4294967295 decodes (negotiation clamps it later).",
       hello(keepalive=0xFFFFFFFF), expect_hello(keepalive=0xFFFFFFFF), True)
    ok("ping-canonical", "The canonical PING: [1, {}].", ping(), EXPECT_PING, True)
    ok("close-canonical", "The canonical CLOSE: [2, {code: 4, reason: \"bye\"}].",
       close(4, "bye"), expect_close(4, "bye"), True)
    ok("close-empty-reason", "The canonical CLOSE always writes reason, even when empty.",
       close(0, ""), expect_close(0, ""), True)
    ok("close-application-code", "Close code 0x1000, the first application code, as a 2-byte int.",
       close(0x1000, "app"), expect_close(0x1000, "app"), True)
    ok("close-reason-at-limit", "A reason of exactly MAX_REASON_LEN (256) bytes is accepted.",
       close(1, "r" * MAX_REASON_LEN), expect_close(1, "r" * MAX_REASON_LEN), True)
    ok("extension-canonical",
       "The canonical extension message: [name as text, payload as byte string].",
       ext("com.example.chat", b"hi"), expect_ext("com.example.chat", b"hi"), True)
    ok("extension-empty-payload", "An extension message may carry an empty payload.",
       ext("com.example.chat", b""), expect_ext("com.example.chat", b""), True)
    ok("extension-versioned-name", "Extension names may carry a /suffix such as a version.",
       ext("com.example.chat/2", b"\x01"), expect_ext("com.example.chat/2", b"\x01"), True)
    name128 = "a." + "b" * (MAX_EXTENSION_NAME - 2)
    ok("extension-name-at-limit", "An extension name of exactly 128 bytes is valid.",
       ext(name128, b"\x00"), expect_ext(name128, b"\x00"), True)

    # ---- lenient decoding (non-canonical)
    ok("hello-unknown-keys",
       "Unknown HELLO keys are ignored, whatever their values.",
       cbor2.dumps([HELLO, {"versions": [1], "color": "blue", "extensions": ["com.example.chat"],
                            "name": "laptop", "software": "clearskies/0.1.0", "keepalive": 30,
                            "future": [1, {"x": b"\x00"}]}]),
       expect_hello(), False)
    ok("hello-keys-reordered",
       "HELLO keys may come in any order.",
       cbor2.dumps([HELLO, {"keepalive": 30, "software": "clearskies/0.1.0", "name": "laptop",
                            "extensions": ["com.example.chat"], "versions": [1]}]),
       expect_hello(), False)
    ok("hello-missing-optional-keys",
       "extensions, name and software default to empty when absent.",
       cbor2.dumps([HELLO, {"versions": [1], "keepalive": 30}]),
       expect_hello(extensions=[], name="", software=""), False)
    ok("hello-extra-array-item",
       "Array items after the body are ignored (room for later versions).",
       cbor2.dumps([HELLO, hello_body([1], ["com.example.chat"], "laptop", "clearskies/0.1.0", 30),
                    "appended-by-a-later-version"]),
       expect_hello(), False)
    ok("ping-extra-array-items", "A PING with two appended items decodes as PING.",
       cbor2.dumps([PING, {}, 7, [1, 2]]), EXPECT_PING, False)
    ok("ping-body-with-keys", "Keys in a PING body are ignored.",
       cbor2.dumps([PING, {"x": 1}]), EXPECT_PING, False)
    ok("ping-indefinite-lengths", "Indefinite-length arrays and maps are accepted on input.",
       bytes.fromhex("9f 01 bf ff ff".replace(" ", "")), EXPECT_PING, False)
    ok("ping-non-shortest-type", "A non-shortest integer encoding of the type is accepted on input.",
       bytes.fromhex("82 18 01 a0".replace(" ", "")), EXPECT_PING, False)
    ok("close-without-reason", "A CLOSE without reason decodes with an empty reason.",
       cbor2.dumps([CLOSE, {"code": 0}]), expect_close(0, ""), False)
    ok("close-undefined-code", "Close codes not defined by the spec still decode.",
       cbor2.dumps([CLOSE, {"code": 77, "reason": ""}]), expect_close(77, ""), True)

    # ---- ignored
    ignored("unknown-core-type-99", "A core type this version does not define is ignored.",
            cbor2.dumps([99, {}]))
    ignored("unknown-core-type-3-any-body", "An unknown core type's body may be any CBOR item.",
            cbor2.dumps([3, ["anything", 1]]))
    ignored("unknown-core-type-max-u64", "The largest CBOR unsigned integer as type is ignored.",
            cbor2.dumps([0xFFFFFFFFFFFFFFFF, {}]))

    # ---- errors
    err("empty-body", "Zero bytes are not a CBOR item.", b"", "malformed-message")
    err("not-an-array-map", "A message must be an array; a map is refused.",
        cbor2.dumps({"type": 1}), "malformed-message")
    err("not-an-array-int", "A message must be an array; a bare integer is refused.",
        cbor2.dumps(1), "malformed-message")
    err("empty-array", "An empty array has no type.", cbor2.dumps([]), "malformed-message")
    err("type-without-body", "The body item is required, even for PING.",
        cbor2.dumps([PING]), "malformed-message")
    err("unknown-type-without-body", "The body item is required even for an unknown core type.",
        cbor2.dumps([99]), "malformed-message")
    err("type-negative-int", "A negative integer is not a message type.",
        cbor2.dumps([-1, {}]), "malformed-message")
    err("type-float", "A float is not a message type.",
        bytes.fromhex("82 fb 3ff0000000000000 a0".replace(" ", "")), "malformed-message")
    err("type-bytes", "A byte string is not a message type (extension names are text).",
        cbor2.dumps([b"com.example.chat", b"hi"]), "malformed-message")
    err("hello-missing-versions", "versions is required in HELLO.",
        cbor2.dumps([HELLO, {"extensions": [], "name": "", "software": "", "keepalive": 30}]),
        "malformed-message")
    err("hello-missing-keepalive", "keepalive is required in HELLO.",
        cbor2.dumps([HELLO, {"versions": [1], "extensions": [], "name": "", "software": ""}]),
        "malformed-message")
    err("hello-body-not-map", "A HELLO body must be a map; text is refused.",
        cbor2.dumps([HELLO, "hello"]), "malformed-message")
    err("hello-version-wrong-type", "Versions are unsigned integers; text is refused.",
        cbor2.dumps([HELLO, {"versions": ["1"], "keepalive": 30}]), "malformed-message")
    err("hello-keepalive-over-u32", "keepalive must fit in 32 bits.",
        cbor2.dumps([HELLO, {"versions": [1], "keepalive": 0x100000000}]), "malformed-message")
    err("hello-duplicate-key", "A key that appears twice in a HELLO map is refused.",
        bytes.fromhex(
            "8200a3" + cbor2.dumps("versions").hex() + "8101"
            + cbor2.dumps("versions").hex() + "8102"
            + cbor2.dumps("keepalive").hex() + "181e"),
        "malformed-message")
    err("hello-17-versions", "A HELLO may list at most MAX_VERSIONS (16) versions.",
        hello(versions=list(range(1, MAX_VERSIONS + 2))), "field-too-long")
    err("hello-33-extensions", "A HELLO may list at most MAX_EXTENSIONS (32) extensions.",
        hello(extensions=[f"org.example.e{i}" for i in range(MAX_EXTENSIONS + 1)]),
        "field-too-long")
    err("hello-name-65-bytes", "The device name is limited to MAX_NAME_LEN (64) bytes.",
        hello(name="n" * (MAX_NAME_LEN + 1)), "field-too-long")
    err("hello-name-65-bytes-utf8", "The name limit counts bytes: 33 two-byte characters are 66 bytes.",
        hello(name="é" * 33), "field-too-long")
    err("hello-software-65-bytes", "The software string is limited to MAX_NAME_LEN (64) bytes.",
        hello(software="s" * (MAX_NAME_LEN + 1)), "field-too-long")
    err("hello-bad-extension-name", "Each extension in HELLO must be a valid extension name.",
        hello(extensions=["com.example.chat", "chat"]), "bad-extension-name")
    err("hello-uppercase-extension-name", "Extension names are lowercase.",
        hello(extensions=["Com.Example.Chat"]), "bad-extension-name")
    err("extension-bad-name", "An extension message named \"Chat\" is refused.",
        ext("Chat", b"hi"), "bad-extension-name")
    err("extension-single-label", "An extension name needs at least two dot-separated labels.",
        ext("chat", b"hi"), "bad-extension-name")
    err("extension-empty-name", "An empty text type is an invalid extension name.",
        ext("", b"hi"), "bad-extension-name")
    err("extension-name-129-bytes", "An extension name longer than 128 bytes is refused.",
        ext("a." + "b" * (MAX_EXTENSION_NAME - 1), b"\x00"), "bad-extension-name")
    err("extension-without-payload", "An extension message needs its payload item.",
        cbor2.dumps(["com.example.chat"]), "malformed-message")
    err("close-reason-257-bytes", "A CLOSE reason is limited to MAX_REASON_LEN (256) bytes.",
        close(1, "r" * (MAX_REASON_LEN + 1)), "field-too-long")
    err("close-missing-code", "code is required in CLOSE.",
        cbor2.dumps([CLOSE, {"reason": "bye"}]), "malformed-message")
    err("close-code-over-u16", "A close code must fit in 16 bits.",
        cbor2.dumps([CLOSE, {"code": 0x10000, "reason": ""}]), "malformed-message")
    err("trailing-byte", "A byte after the message array is refused.",
        ping() + b"\x00", "malformed-message")
    err("trailing-second-message", "Two messages in one body are refused.",
        ping() + ping(), "malformed-message")
    err("truncated-hello", "A HELLO cut one byte short is refused.",
        canonical_hello[:-1], "malformed-message")
    err("truncated-array-header", "An array announcing two items but holding one is refused.",
        bytes.fromhex("8201"), "malformed-message")

    return {
        "description": (
            "Message bodies: the payload of a MESSAGE frame or a reassembled segmented message "
            "(spec/wire.md § Encoding and § Messages). 'canonical' is true when encoding the "
            "expected message reproduces the hex exactly. 'ignored' means a well-formed message "
            "the receiver skips. Errors name a code of spec/wire.md § Errors."
        ),
        "cases": cases,
    }


# ---- sessions.json ----------------------------------------------------------------------------


def sessions():
    cases = []

    # The peer's HELLO, compatible with the session's config.
    peer_hello = hello(name="peer")
    handshake = preface() + " " + message_frame(peer_hello)

    def case(name, meaning, hexstr, events, close_code):
        cases.append({"name": name, "meaning": meaning, "hex": hexstr,
                      "expect": {"events": events, "close_code": close_code}})

    def frames_after_handshake(*frames_hex):
        return " ".join((handshake,) + frames_hex)

    chat_hi = ext("com.example.chat", b"hi")

    case("valid-handshake", "Preface and a compatible HELLO establish the session.",
         handshake, ["established"], None)
    case("extension-message", "A message of a negotiated extension is delivered.",
         frames_after_handshake(message_frame(chat_hi)),
         ["established", "message:com.example.chat:6869"], None)
    split = 5
    case("segmented-extension-message",
         "A message split over two SEGMENT frames on stream 1 is reassembled at FIN.",
         frames_after_handshake(frame(KIND_SEGMENT, chat_hi[:split], 0, 1),
                                frame(KIND_SEGMENT, chat_hi[split:], FLAG_FIN, 1)),
         ["established", "message:com.example.chat:6869"], None)
    case("one-segment-message", "A single SEGMENT frame with FIN is a whole message.",
         frames_after_handshake(frame(KIND_SEGMENT, chat_hi, FLAG_FIN, 9)),
         ["established", "message:com.example.chat:6869"], None)
    chat_a = ext("com.example.chat", b"a")
    chat_b = ext("com.example.chat", b"b")
    chat_c = ext("com.example.chat", b"c")
    case("interleaved-streams",
         "Two segmented messages interleave with a MESSAGE frame; each is delivered when complete.",
         frames_after_handshake(frame(KIND_SEGMENT, chat_a[:4], 0, 1),
                                frame(KIND_SEGMENT, chat_b[:4], 0, 2),
                                message_frame(chat_c),
                                frame(KIND_SEGMENT, chat_b[4:], FLAG_FIN, 2),
                                frame(KIND_SEGMENT, chat_a[4:], FLAG_FIN, 1)),
         ["established", "message:com.example.chat:63", "message:com.example.chat:62",
          "message:com.example.chat:61"], None)
    case("stream-id-reuse", "A stream id may be used again once its message has finished.",
         frames_after_handshake(frame(KIND_SEGMENT, chat_a[:4], 0, 1),
                                frame(KIND_SEGMENT, chat_a[4:], FLAG_FIN, 1),
                                frame(KIND_SEGMENT, chat_b[:4], 0, 1),
                                frame(KIND_SEGMENT, chat_b[4:], FLAG_FIN, 1)),
         ["established", "message:com.example.chat:61", "message:com.example.chat:62"], None)
    case("empty-fin-segment-ends-message", "An empty SEGMENT with FIN completes its stream's message.",
         frames_after_handshake(frame(KIND_SEGMENT, chat_hi, 0, 3),
                                frame(KIND_SEGMENT, b"", FLAG_FIN, 3)),
         ["established", "message:com.example.chat:6869"], None)
    case("non-negotiated-extension", "A message of an extension that was not negotiated is ignored.",
         frames_after_handshake(message_frame(ext("org.other.x", b"hi"))), ["established"], None)
    case("extension-not-offered-by-peer",
         "An extension only this side offered is not negotiated, so its messages are ignored.",
         preface() + " " + message_frame(hello(name="peer", extensions=[])) + " "
         + message_frame(chat_hi),
         ["established"], None)
    case("unknown-core-type", "A message of an unknown core type is ignored.",
         frames_after_handshake(message_frame(cbor2.dumps([99, {}]))), ["established"], None)
    case("unknown-core-type-before-hello", "Unknown core types are ignored even before HELLO.",
         preface() + " " + message_frame(cbor2.dumps([99, {}])) + " " + message_frame(peer_hello),
         ["established"], None)
    case("ping-is-not-answered", "A PING is accepted once established and needs no reply.",
         frames_after_handshake(message_frame(ping())), ["established"], None)
    case("peer-close", "A CLOSE from the peer ends the session; no CLOSE is sent back.",
         frames_after_handshake(message_frame(close(4, "bye"))),
         ["established", "closed:peer:4"], None)
    case("peer-close-before-hello", "CLOSE is accepted in HANDSHAKING too.",
         preface() + " " + message_frame(close(2, "no common version")),
         ["closed:peer:2"], None)
    case("bytes-after-close-are-dropped", "Anything after the peer's CLOSE, even garbage, is ignored.",
         frames_after_handshake(message_frame(close(0, "")), "ffffffff ffff ffff"),
         ["established", "closed:peer:0"], None)
    case("ignorable-frame-before-hello", "Ignorable frames are skipped in any state.",
         preface() + " " + frame(0x80, b"\x00\x00") + " " + message_frame(peer_hello),
         ["established"], None)
    case("hello-as-one-segment", "HELLO may arrive as a single FIN segment.",
         preface() + " " + frame(KIND_SEGMENT, peer_hello, FLAG_FIN, 1), ["established"], None)
    case("peer-keepalive-out-of-range", "Out-of-range keep-alive requests are clamped, not refused.",
         preface() + " " + message_frame(hello(name="peer", keepalive=0)), ["established"], None)

    # Errors.
    case("bad-preface", "A stranger speaking HTTP is refused at the first byte.",
         hx(b"GET / HTTP/1.1\r\n"), ["closed:error:bad-preface"], 1)
    case("bad-preface-magic-last-byte", "The magic is checked byte by byte; the 4th is wrong here.",
         hx(b"CSKZ") + " 0001 " + message_frame(peer_hello), ["closed:error:bad-preface"], 1)
    case("framing-version-2", "A preface naming framing version 2 is incompatible.",
         preface(2) + " " + message_frame(peer_hello), ["closed:error:framing-version"], 2)
    case("no-common-version", "A HELLO offering only version 7 shares no version with us.",
         preface() + " " + message_frame(hello(name="peer", versions=[7])),
         ["closed:error:no-common-version"], 2)
    case("ping-before-hello", "The first message must be HELLO; PING in HANDSHAKING is refused.",
         preface() + " " + message_frame(ping()), ["closed:error:unexpected-message"], 1)
    case("extension-before-hello", "Extension messages are refused in HANDSHAKING.",
         preface() + " " + message_frame(chat_hi), ["closed:error:unexpected-message"], 1)
    case("second-hello", "A second HELLO after the session is established is refused.",
         frames_after_handshake(message_frame(peer_hello)),
         ["established", "closed:error:unexpected-message"], 1)
    case("frame-too-large-after-hello", "A frame header announcing 0x4001 bytes ends the session.",
         frames_after_handshake(frame(KIND_MESSAGE, length=MAX_FRAME_PAYLOAD + 1)),
         ["established", "closed:error:frame-too-large"], 1)
    case("reserved-flags-after-hello", "A MESSAGE frame with a flag set ends the session.",
         frames_after_handshake(frame(KIND_MESSAGE, ping(), flags=0x01)),
         ["established", "closed:error:reserved-flags"], 1)
    case("unknown-frame-kind-after-hello", "A critical unknown frame kind ends the session.",
         frames_after_handshake(frame(0x03, b"\x00")),
         ["established", "closed:error:unknown-frame-kind"], 1)
    case("too-many-streams", "A third segmented message open at once is refused.",
         frames_after_handshake(frame(KIND_SEGMENT, chat_a[:4], 0, 1),
                                frame(KIND_SEGMENT, chat_b[:4], 0, 2),
                                frame(KIND_SEGMENT, chat_c[:4], 0, 3)),
         ["established", "closed:error:too-many-streams"], 1)
    case("malformed-message-after-hello", "A MESSAGE frame whose body is not a message array.",
         frames_after_handshake(message_frame(cbor2.dumps(1))),
         ["established", "closed:error:malformed-message"], 1)
    case("empty-message-after-hello", "An empty MESSAGE frame is valid framing but no message.",
         frames_after_handshake(frame(KIND_MESSAGE)),
         ["established", "closed:error:malformed-message"], 1)
    case("bad-extension-name-after-hello", "An extension message with an invalid name is refused.",
         frames_after_handshake(message_frame(ext("Chat", b"hi"))),
         ["established", "closed:error:bad-extension-name"], 1)
    case("hello-field-too-long", "A HELLO with a 65-byte name is refused before negotiation.",
         preface() + " " + message_frame(hello(name="n" * (MAX_NAME_LEN + 1))),
         ["closed:error:field-too-long"], 1)

    return {
        "description": (
            "Byte streams a peer sends to a fresh session (spec/wire.md § Session). The session "
            "under test is configured by 'config' and fed the hex at time 0, all at once or one "
            "byte at a time with the same result. 'events' lists what it reports; 'close_code' is "
            "the code of the CLOSE it sends in response, null if it sends none."
        ),
        "config": {"extensions": ["com.example.chat"], "keepalive_secs": 30, "versions": [1]},
        "cases": cases,
    }


def main():
    write("frames.json", frames())
    write("messages.json", messages())
    write("sessions.json", sessions())


if __name__ == "__main__":
    main()

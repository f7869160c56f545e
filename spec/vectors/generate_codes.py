#!/usr/bin/env python3
"""Generates the identity test vectors in this directory: access_codes.json and device_ids.json.

    python3 spec/vectors/generate_codes.py

Standard library only. Base32 comes from base64.b32encode and hashes from hashlib, so the
vectors do not depend on the Rust implementation. The Luhn mod 32 check and a reference parser
are written out below, straight from spec/identity.md; every case's expected result is checked
against that parser before it is written, so a case whose meaning and expectation disagree
fails here rather than in the Rust tests.

The output is deterministic: running the script twice gives identical files. The format of
each file is described in spec/identity.md § Test vectors.
"""

import base64
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- constants, mirrored from spec/identity.md ------------------------------------------------

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MAGIC = bytes.fromhex("961a2ff3")
PREFIX = "SYNC"
CODE_LEN = 33
SCHEME = "clearskies:"
LOCATOR_ID_CONTEXT = b"clearskies access code locator v1"
GROUPS, GROUP_SYMBOLS, BLOCK = 4, 13, 7
ID_CHARS = GROUPS * (GROUP_SYMBOLS + 1)
# Separators are Unicode White_Space and "-". Python's str.isspace() also counts U+001C..U+001F,
# which Rust's char::is_whitespace does not; no vector uses them.

# ---- the algorithms ---------------------------------------------------------------------------


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=")


def unb32(text: str) -> bytes:
    """Strict decode: canonical trailing bits only (raises ValueError otherwise)."""
    data = base64.b32decode(text + "=" * (-len(text) % 8))
    if b32(data) != text:
        raise ValueError("non-canonical")
    return data


def luhn32(text: str) -> str:
    """Luhn mod 32: from the right, factors 2, 1, 2, ...; fold a // 32 + a % 32."""
    total, factor = 0, 2
    for c in reversed(text):
        addend = factor * ALPHABET.index(c)
        total += addend // 32 + addend % 32
        factor = 3 - factor
    return ALPHABET[(32 - total % 32) % 32]


class ParseError(Exception):
    def __init__(self, code, **detail):
        super().__init__(code)
        self.code = code
        self.detail = detail


def normalize(text: str, offset: int) -> str:
    out = []
    for i, c in enumerate(text):
        if c.isspace() or c == "-":
            continue
        c = {"0": "O", "1": "L"}.get(c, c.upper() if c.isascii() else c)
        if c not in ALPHABET:
            raise ParseError("invalid-character", ch=text[i], position=offset + i + 1)
        out.append(c)
    return "".join(out)


def code_text(payload: bytes) -> str:
    body = b32(MAGIC + payload)
    return body + luhn32(body)


def parse_code(text: str) -> bytes:
    """The reference parser of spec/identity.md § Access codes, in its order of checks."""
    rest = text.lstrip()
    skipped = len(text) - len(rest)
    head = rest[: len(SCHEME)]
    if head.isascii() and head.lower() == SCHEME:
        skipped += len(SCHEME)
    symbols = normalize(text[skipped:], skipped)
    if not symbols.startswith(PREFIX):
        if PREFIX.startswith(symbols):
            raise ParseError("wrong-length", found=len(symbols))
        raise ParseError("not-access-code")
    if len(symbols) != CODE_LEN:
        raise ParseError("wrong-length", found=len(symbols))
    if luhn32(symbols[:-1]) != symbols[-1]:
        raise ParseError("typo")
    data = unb32(symbols[:-1])
    if data[:4] != MAGIC:
        raise ParseError("not-access-code")
    return data[4:]


def locator_id(payload: bytes) -> bytes:
    return hashlib.sha256(LOCATOR_ID_CONTEXT + payload[:8]).digest()


def id_text(device_id: bytes) -> str:
    data = b32(device_id)
    groups = [data[i : i + GROUP_SYMBOLS] for i in range(0, len(data), GROUP_SYMBOLS)]
    symbols = "".join(g + luhn32(g) for g in groups)
    return "-".join(symbols[i : i + BLOCK] for i in range(0, len(symbols), BLOCK))


def parse_id(text: str) -> bytes:
    """The reference parser of spec/identity.md § Device IDs."""
    symbols = normalize(text, 0)
    if len(symbols) != ID_CHARS:
        raise ParseError("wrong-length", found=len(symbols))
    data = ""
    for g in range(GROUPS):
        group = symbols[g * 14 : g * 14 + 14]
        if luhn32(group[:13]) != group[13]:
            raise ParseError("typo", group=g + 1)
        data += group[:13]
    try:
        return unb32(data)
    except ValueError:
        raise ParseError("non-canonical")


# ---- helpers ----------------------------------------------------------------------------------


def derived(label: str, n: int) -> bytes:
    """n deterministic pseudo-random bytes, named by a label."""
    return hashlib.sha256(b"clearskies vector " + label.encode()).digest()[:n]


def substitute(text: str, index: int, new: str) -> str:
    assert text[index] != new
    return text[:index] + new + text[index + 1 :]


def swap(text: str, index: int) -> str:
    return text[:index] + text[index + 1] + text[index] + text[index + 2 :]


def check_case(parse, case):
    """Asserts that the reference parser agrees with the case's expectation."""
    expect = case["expect"]
    try:
        got = parse(case["input"])
    except ParseError as e:
        assert "error" in expect, (case["name"], e.code, e.detail)
        assert e.code == expect["error"], (case["name"], e.code)
        for key, value in e.detail.items():
            if key in expect:
                assert expect[key] == value, (case["name"], key, value)
        return
    assert "error" not in expect, (case["name"], "parsed", got.hex())
    assert got.hex() == expect.get("bytes", expect.get("id")), case["name"]


# ---- access_codes.json ------------------------------------------------------------------------


def code_expect(payload: bytes) -> dict:
    return {
        "bytes": payload.hex(),
        "locator": payload[:8].hex(),
        "secret": payload[8:].hex(),
        "locator_id": locator_id(payload).hex(),
        "text": code_text(payload),
    }


def access_code_cases():
    cases = []

    def valid(name, meaning, payload, text=None):
        cases.append(
            {
                "name": name,
                "meaning": meaning,
                "input": code_text(payload) if text is None else text,
                "expect": code_expect(payload),
            }
        )

    def error(name, meaning, text, code, **detail):
        cases.append(
            {"name": name, "meaning": meaning, "input": text, "expect": {"error": code, **detail}}
        )

    zero, counting, ones = bytes(16), bytes(range(16)), b"\xff" * 16
    assert code_text(zero) == "SYNC74YAAAAAAAAAAAAAAAAAAAAAAAAA4"
    assert code_text(counting) == "SYNC74YAAEBAGBAFAYDQQCIKBMGA2DQPP"
    assert code_text(ones) == "SYNC7477777777777777777777777777O"

    valid("zero", "All-zero payload: the DESIGN.md / 2014 reference vector.", zero)
    valid("counting", "Payload 00 01 .. 0f: the DESIGN.md / 2014 reference vector.", counting)
    valid("all-ones", "Payload ff x 16: the 2014 reference vector.", ones)
    for i in range(1, 4):
        valid(f"random-{i}", "A pseudo-random payload.", derived(f"access code {i}", 16))
    split = bytes.fromhex("0123456789abcdef") + bytes.fromhex("fedcba9876543210")
    valid("halves", "Locator 0123456789abcdef, secret fedcba9876543210.", split)

    # Leniency.
    c = code_text(counting)
    valid("lowercase", "Lowercase is accepted.", counting, c.lower())
    valid("scheme", "A clearskies: scheme is stripped.", counting, SCHEME + c)
    valid("scheme-mixed-case", "The scheme is case-insensitive.", counting, "ClearSkies:" + c.lower())
    valid("scheme-then-space", "Separators may follow the scheme.", counting, "clearskies: " + c)
    spaced = " ".join(c[i : i + 4] for i in range(0, len(c), 4))
    valid("spaces", "Spaces between groups are ignored.", counting, spaced)
    valid("dashes", "Dashes between groups are ignored.", counting, spaced.replace(" ", "-"))
    valid("no-break-spaces", "Any Unicode whitespace separates, e.g. U+00A0 NO-BREAK SPACE.", counting,
          spaced.replace(" ", "\u00a0"))
    valid("surrounding-whitespace", "Leading and trailing whitespace is ignored.", counting,
          "  \t" + c + "\r\n")
    valid("line-break", "A line break inside the code is ignored.", counting, c[:16] + "\n" + c[16:])
    o = code_text(ones)
    valid("zero-for-o", "The digit 0 is read as the letter O.", ones, o[:-1] + "0")
    with_l = next(p for p in (derived(f"with L {i}", 16) for i in range(100)) if "L" in code_text(p))
    valid("one-for-l", "The digit 1 is read as the letter L.", with_l, code_text(with_l).replace("L", "1"))

    # Typos: one changed character, anywhere after the prefix, and adjacent transpositions.
    error("typo-in-payload", "One character of the payload changed (B to C).", substitute(c, 10, "C"), "typo")
    error("typo-in-magic", "The 6th character (part of the magic) changed.", substitute(c, 5, "5"), "typo")
    error("typo-check-char", "The check character changed.", substitute(c, 32, "Q"), "typo")
    error("typo-lowercase", "A changed character is caught whatever the case.", substitute(c, 20, "X").lower(), "typo")
    assert c[12] != c[13]
    error("transposed", "Two adjacent different characters swapped.", swap(c, 12), "typo")
    z = code_text(zero)
    error("transposed-check", "The last data character and the check character swapped.", swap(z, 31), "typo")
    # The one adjacent transposition Luhn mod 32 misses: A and 7 (values 0 and 31).
    a7 = next(p for p in (derived(f"with A7 {i}", 16) for i in range(10000)) if "A7" in code_text(p)[7:32])
    t = code_text(a7)
    k = t.index("A7", 7)
    swapped = swap(t, k)
    valid("transposed-a7-undetected",
          "Swapping adjacent A and 7 keeps the check character: a different, valid code.",
          unb32(swapped[:-1])[4:], swapped)

    # Length.
    error("empty", "Nothing given.", "", "wrong-length", found=0)
    error("only-scheme", "The scheme alone.", "clearskies:", "wrong-length", found=0)
    error("truncated-prefix", "A start of the prefix: a cut-off code.", "sy", "wrong-length", found=2)
    error("truncated", "Cut after 8 characters.", c[:8], "wrong-length", found=8)
    error("missing-check-char", "The check character is missing.", c[:32], "wrong-length", found=32)
    error("one-extra", "One character too many.", c + "A", "wrong-length", found=34)
    g0 = b32(bytes.fromhex("961a2b") + derived("g0", 7))
    error("g0-format", "A 2014 G0 code (SYNC, 16 symbols + Luhn) is too short.", g0 + luhn32(g0),
          "wrong-length", found=17)

    # Not an access code.
    error("wrong-prefix", "A changed character in SYNC is not reported as a typo.", substitute(c, 2, "M"),
          "not-access-code")
    error("g3-format", "A 2014 G3 code (40 symbols, no SYNC).", "AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQTCQKRMF24",
          "not-access-code")
    error("device-id", "A device ID is not an access code.", id_text(bytes(range(32))), "not-access-code")
    forged = "SYNCAA" + "A" * 26
    error("forged-magic", "SYNC and a valid check character, but the magic's other bits are wrong.",
          forged + luhn32(forged), "not-access-code")

    # Characters.
    error("digit-8", "8 is not a base32 symbol.", substitute(c, 18, "8"), "invalid-character",
          ch="8", position=19)
    error("digit-9-lowercase", "9 is not a base32 symbol.", substitute(c, 9, "9").lower(), "invalid-character",
          ch="9", position=10)
    error("punctuation", "Punctuation other than dashes is refused.", c[:20] + "!" + c[20:],
          "invalid-character", ch="!", position=21)
    error("underscore", "Underscore is not a separator.", c[:4] + "_" + c[4:], "invalid-character",
          ch="_", position=5)
    error("position-counts-scheme", "Positions count the input as given, scheme included.",
          "  clearskies:" + substitute(c, 0, "*"), "invalid-character", ch="*", position=14)
    error("scheme-with-slashes", "Only clearskies: is stripped, not clearskies://.", "clearskies://" + c,
          "invalid-character", ch="/", position=12)
    error("non-ascii", "Positions count characters, not bytes.", "é" + c, "invalid-character",
          ch="é", position=1)
    error("invalid-before-length", "A bad character is reported before a wrong length.", c[:10] + "8",
          "invalid-character", ch="8", position=11)

    for case in cases:
        check_case(parse_code, case)
    return cases


# ---- device_ids.json --------------------------------------------------------------------------


def device_id_cases():
    cases = []

    def valid(name, meaning, device_id, text=None, public_key=None):
        case = {"name": name, "meaning": meaning}
        if public_key is not None:
            case["public_key"] = public_key.hex()
        case["input"] = id_text(device_id) if text is None else text
        case["expect"] = {"id": device_id.hex(), "text": id_text(device_id)}
        cases.append(case)

    def error(name, meaning, text, code, **detail):
        cases.append(
            {"name": name, "meaning": meaning, "input": text, "expect": {"error": code, **detail}}
        )

    rfc8032 = [
        ("rfc8032-test-1", "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
        ("rfc8032-test-2", "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"),
    ]
    for name, pk in rfc8032:
        key = bytes.fromhex(pk)
        valid(name, f"The public key of RFC 8032 section 7.1 {name[8:].upper().replace('-', ' ')}.",
              hashlib.sha256(key).digest(), public_key=key)
    zero, counting, ones = bytes(32), bytes(range(32)), b"\xff" * 32
    valid("zero", "The all-zero ID.", zero)
    valid("counting", "ID bytes 00 01 .. 1f.", counting)
    valid("all-ones", "The all-ff ID (last data symbol Q: 4 unused zero bits).", ones)
    valid("random-1", "A pseudo-random ID.", derived("device id 1", 32))

    t = id_text(counting)
    symbols = t.replace("-", "")
    valid("lowercase", "Lowercase is accepted.", counting, t.lower())
    valid("no-dashes", "The 56 characters without separators.", counting, symbols)
    valid("spaces", "Spaces instead of dashes.", counting, t.replace("-", " "))
    valid("groups-of-14", "Separators anywhere, e.g. after each check group.", counting,
          "-".join(symbols[i : i + 14] for i in range(0, 56, 14)))
    valid("surrounding-whitespace", "Leading and trailing whitespace is ignored.", counting, "\n " + t + " \t")
    with_ol = next(d for d in (derived(f"id with O L {i}", 32) for i in range(1000))
                   if "O" in id_text(d) and "L" in id_text(d))
    valid("zero-one-for-o-l", "The digits 0 and 1 are read as O and L.", with_ol,
          id_text(with_ol).replace("O", "0").replace("L", "1"))

    for g in range(4):
        # Character 3 of the group (1-based position in the dashed text computed below).
        k = g * 14 + 3
        error(f"typo-group-{g + 1}", f"One character of check group {g + 1} changed.",
              sub_dashed(t, k, "Z" if symbols[k] != "Z" else "Y"), "typo", group=g + 1)
    error("typo-check-char", "The check character of group 3 changed.",
          sub_dashed(t, 41, "A" if symbols[41] != "A" else "B"), "typo", group=3)
    error("typo-two-groups", "Typos in groups 2 and 4: the first is named.",
          sub_dashed(sub_dashed(t, 50, "Z" if symbols[50] != "Z" else "Y"), 20,
                     "Z" if symbols[20] != "Z" else "Y"), "typo", group=2)
    assert symbols[15] != symbols[16]
    error("transposed", "Two adjacent different characters swapped.",
          symbols[:15] + symbols[16] + symbols[15] + symbols[17:], "typo", group=2)
    group_swapped = symbols[14:28] + symbols[:14] + symbols[28:]
    valid("groups-swapped-undetected",
          "Whole check groups swapped keep their checks: a different, valid ID.",
          parse_id(group_swapped), group_swapped)

    error("empty", "Nothing given.", "", "wrong-length", found=0)
    error("unchecked-52", "The bare base32 of the ID, without check characters.", b32(counting),
          "wrong-length", found=52)
    error("missing-block", "The last block missing.", t[:-8], "wrong-length", found=49)
    error("one-extra", "One character too many.", t + "A", "wrong-length", found=57)
    error("access-code", "An access code is not a device ID.", code_text(bytes(16)), "wrong-length", found=33)

    error("digit-8", "8 is not a base32 symbol.", t[:5] + "8" + t[6:], "invalid-character", ch="8", position=6)
    error("punctuation", "Punctuation other than dashes is refused.", t[:7] + "." + t[8:],
          "invalid-character", ch=".", position=8)
    error("position-counts-whitespace", "Positions count the input as given.", "  " + t[:20] + "!" + t[20:],
          "invalid-character", ch="!", position=23)

    last = "A" * 12 + "B"
    noncanon = symbols[:42] + last + luhn32(last)
    error("non-canonical", "Valid check characters, but the last data symbol has unused bits set.",
          noncanon, "non-canonical")

    for case in cases:
        check_case(parse_id, case)
    return cases


def sub_dashed(text: str, symbol_index: int, new: str) -> str:
    """Substitutes the symbol_index-th symbol (0-based, dashes not counted) in dashed text."""
    seen = -1
    for i, c in enumerate(text):
        if c != "-":
            seen += 1
            if seen == symbol_index:
                return substitute(text, i, new)
    raise IndexError(symbol_index)


def write(name, description, cases, **extra):
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    doc = {"description": description, **extra, "cases": cases}
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {name}")


def main():
    write(
        "access_codes.json",
        "Access codes (spec/identity.md § Access codes). Each input is text as a person may type "
        "it; valid cases give the 16 bytes, both halves, the locator ID and the canonical text, "
        "error cases the error code of spec/identity.md § Errors (and where given, its detail).",
        access_code_cases(),
        locator_id_context=LOCATOR_ID_CONTEXT.decode("ascii"),
    )
    write(
        "device_ids.json",
        "Device IDs (spec/identity.md § Device IDs). Each input is text as a person may type it; "
        "valid cases give the 32 ID bytes and the canonical text (and, where given, the Ed25519 "
        "public key the ID is the SHA-256 of), error cases the error code of spec/identity.md "
        "§ Errors (and where given, its detail).",
        device_id_cases(),
    )


if __name__ == "__main__":
    main()

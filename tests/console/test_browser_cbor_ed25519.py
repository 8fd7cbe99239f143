"""The in-browser bundle verifier's primitives in a real headless Chromium:
its CBOR decoder (node/console/static/verify/cbor.js) accepts exactly what
codec.decode accepts, and its Ed25519 (crypto.js) exactly what libsodium
accepts."""

from __future__ import annotations

import random
from typing import Any

import pytest

from node.base import codec
from node.base.keys import Identity
from node.base.keys import verify as nacl_verify

# The browser takes a core: these tests run in the "processes" xdist group (tests/conftest.py), which
# finds browser tests by the Playwright call in their text; here that call is in verifier_browser.py.
pytestmark = pytest.mark.xdist_group("processes")


_DECODE = """async (inputs) => {
  const { decode, encode, fromHex, toHex } = await import("/verify/cbor.js");
  const describe = (v) => v === null ? ["n"] : typeof v === "boolean" ? ["?", v]
    : typeof v === "number" || typeof v === "bigint" ? ["i", String(v)]
    : v instanceof Uint8Array ? ["b", toHex(v)] : typeof v === "string" ? ["t", v]
    : Array.isArray(v) ? ["a", v.map(describe)] : ["m", [...v.entries()].map(([k, x]) => [k, describe(x)])];
  return inputs.map((hex) => {
    try { const v = decode(fromHex(hex)); return [describe(v), toHex(encode(v))]; } catch (e) { return null; }
  });
}"""


def _describe(value: Any) -> list[Any]:
    if value is None:
        return ["n"]
    if isinstance(value, bool):
        return ["?", value]
    if isinstance(value, int):
        return ["i", str(value)]
    if isinstance(value, bytes):
        return ["b", value.hex()]
    if isinstance(value, str):
        return ["t", value]
    if isinstance(value, list):
        return ["a", [_describe(v) for v in value]]
    return ["m", [[k, _describe(v)] for k, v in value.items()]]


def test_the_cbor_decoder_accepts_exactly_what_codec_decode_accepts(verifier_page: Any) -> None:
    rng = random.Random(17)
    vectors = [
        "a7616e39012b617601626f6bf56373696742010264696e747384171818190100" "1b0000000100000000646e616d656573616c6573646e6f6e65f6",
        "1801", "a16161f6a0", "a2616101616101", "f93c00", "c24101", "a1016161", "5f41ff", "", "17", "1818", "190100", "1900ff",
        "1a00010000", "1a0000ffff", "1b0000000100000000", "1b00000000ffffffff", "1bffffffffffffffff", "3bffffffffffffffff",
        "1b001fffffffffffff", "1b0020000000000000", "3b001fffffffffffff", "3b0020000000000000", "f4", "f5", "f6", "f7", "f0",
        "f818", "fb3ff0000000000000", "ff", "1c", "9f01ff", "bf6161f6ff", "7f6161ff", "63efbbbf", "63eda080", "62c0af",
        "64f4908080", "64f48fbfbf", "a26162f66161f6", "a2616101616202", "a26161016162", "a1616180", "a1400180", "d90100 80".replace(" ", ""),
        "4200", "43000102", "6161", "62616263", "80", "a0", "8180", "820102", "a1616101", "a161618201a0",
        "81" * 64 + "80", "81" * 64 + "8100", "81" * 64 + "a0", "81" * 63 + "a1616100", "81" * 65 + "80",
        "5a00000001ff", "5b000000000000000100", "7800", "781861616161616161616161616161616161616161616161",
    ]
    samples = [codec.encode(v) for v in (
        {"n": -300, "v": 1, "ok": True, "sig": b"\x01\x02", "ints": [23, 24, 256, 2**32], "name": "sales", "none": None},
        [2**64 - 1, -(2**64), 2**53, -(2**53), "é€😀", {"": [], "a": {"b": [b""]}}], {"x" * 30: 1, "y" * 25: [False]},
    )]
    for sample in samples:
        vectors.append(sample.hex())
        for _ in range(300):
            mutated = bytearray(sample)
            for _ in range(rng.randint(1, 3)):
                choice = rng.random()
                at = rng.randrange(len(mutated))
                if choice < 0.6:
                    mutated[at] ^= 1 << rng.randrange(8)
                elif choice < 0.8:
                    del mutated[at]
                else:
                    mutated.insert(at, rng.randrange(256))
            vectors.append(bytes(mutated).hex())
    vectors += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 6))).hex() for _ in range(3000)]
    results = verifier_page.evaluate(_DECODE, vectors)
    accepted = 0
    for hex_input, result in zip(vectors, results, strict=True):
        try:
            value = codec.decode(bytes.fromhex(hex_input))
        except codec.CodecError:
            assert result is None, f"{hex_input}: the browser accepts what codec.decode refuses"
            continue
        accepted += 1
        assert result == [_describe(value), hex_input], f"{hex_input}: browser {result}"
    assert 300 < accepted < len(vectors) - 1000, accepted


_ED25519 = """async (vectors) => {
  const { verifySignature } = await import("/verify/crypto.js");
  const { fromHex } = await import("/verify/cbor.js");
  const out = [];
  for (const [key, message, signature] of vectors) {
    out.push(await verifySignature(fromHex(key), "metanode/test/v1", fromHex(message), fromHex(signature)));
  }
  return out;
}"""

_L = 2**252 + 27742317777372353535851937790883648493
_SMALL_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


def test_ed25519_in_the_browser_accepts_exactly_what_libsodium_accepts(verifier_page: Any) -> None:
    """Web Crypto (BoringSSL) is laxer than libsodium on small-order points;
    crypto.js closes the gap. Vectors: good signatures, the small-order and
    non-canonical keys, a small-order R with S = 0 (which an identity key
    'verifies' under RFC 8032), a non-canonical S, and damaged signatures."""
    signer = Identity.from_label("browser-verifier-ed25519")
    message = b"a sealed header"
    good = signer.sign("metanode/test/v1", message)
    key = signer.public_key
    s = int.from_bytes(good[32:], "little")
    vectors: list[tuple[bytes, bytes, bytes]] = [(key, message, good), (key, message + b"!", good),
                                                 (key, message, good[:32] + (s + _L).to_bytes(32, "little")),
                                                 (key, message, bytes([good[0] ^ 1]) + good[1:])]
    for point in _SMALL_ORDER:
        raw = bytes.fromhex(point)
        for variant in (raw, raw[:31] + bytes([raw[31] | 0x80])):
            vectors.append((variant, message, variant + bytes(32)))  # R = A (small order), S = 0
            vectors.append((variant, message, bytes.fromhex(_SMALL_ORDER[1]) + bytes(32)))
            vectors.append((key, message, variant + good[32:]))
    non_canonical = bytes([0xef]) + b"\xff" * 30 + b"\x7f"
    vectors += [(non_canonical, message, good), (bytes(31) + b"\x80", message, good)]
    results = verifier_page.evaluate(_ED25519, [[k.hex(), m.hex(), sig.hex()] for k, m, sig in vectors])
    expected = [nacl_verify(k, "metanode/test/v1", m, sig) for k, m, sig in vectors]
    assert results == expected
    assert expected[0] and sum(expected) == 1

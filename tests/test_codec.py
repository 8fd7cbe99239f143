"""Deterministic CBOR: one value, one encoding; everything else rejected."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.base.codec import CodecError, decode, encode, from_hex, hash_tagged, hash_value

ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | ints | st.text(max_size=40) | st.binary(max_size=40)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


@given(values)
def test_round_trip(value):
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data


@given(st.dictionaries(st.text(max_size=30), ints, min_size=2, max_size=8))
def test_key_order_does_not_change_bytes(mapping):
    reversed_mapping = dict(reversed(list(mapping.items())))
    assert encode(mapping) == encode(reversed_mapping)


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_bytes_only_raise_codec_error(data):
    try:
        value = decode(data)
    except CodecError:
        return
    assert encode(value) == data  # anything accepted is canonical


@given(values, st.data())
def test_any_single_byte_change_is_rejected_or_canonical(value, data):
    encoded = bytearray(encode(value))
    i = data.draw(st.integers(0, len(encoded) - 1))
    encoded[i] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode(bytes(encoded))
    except CodecError:
        return
    assert encode(decoded) == bytes(encoded)


@pytest.mark.parametrize(
    "bad",
    [
        1.5,
        {"a": 0.0},
        {1: "int key"},
        {b"k": 1},
        2**64,
        -(2**64) - 1,
        {1, 2},
        object(),
    ],
)
def test_encode_rejects_values_outside_the_subset(bad):
    with pytest.raises(CodecError):
        encode(bad)


@pytest.mark.parametrize(
    "data, reason",
    [
        (cbor2.dumps(1.5), "float"),
        (bytes.fromhex("1801"), "non-minimal integer"),
        (bytes.fromhex("9f01ff"), "indefinite-length array"),
        (bytes.fromhex("a2616201616101"), "unsorted map keys"),
        (bytes.fromhex("a2616101616102"), "duplicate map keys"),
        (bytes.fromhex("0102"), "trailing bytes"),
        (bytes.fromhex("c11a5f5e1000"), "tag"),
        (bytes.fromhex("a10101"), "integer map key"),
        (bytes.fromhex("f7"), "undefined"),
        (b"", "empty"),
        (bytes.fromhex("9a7fffffff"), "truncated huge array"),
    ],
)
def test_decode_rejects_non_canonical_input(data, reason):
    with pytest.raises(CodecError):
        decode(data)


def test_decode_rejects_deep_nesting_without_recursion_error():
    with pytest.raises(CodecError):
        decode(b"\x81" * 10_000 + b"\x00")


def test_decode_size_limit():
    with pytest.raises(CodecError, match="exceeds"):
        decode(encode("x" * 100), max_size=50)


def test_hash_is_domain_separated():
    assert hash_tagged("metanode/a/v1", b"data") != hash_tagged("metanode/b/v1", b"data")
    # The separator stops tag/data boundary shifting from colliding.
    assert hash_tagged("metanode/a", b"b") != hash_tagged("metanode/", b"ab")
    assert hash_value("t", {"x": 1}) == hash_tagged("t", encode({"x": 1}))


def test_from_hex_checks_size_and_case():
    assert from_hex("ab" * 32) == b"\xab" * 32
    with pytest.raises(CodecError):
        from_hex("AB" * 32)
    with pytest.raises(CodecError):
        from_hex("ab" * 31)
    with pytest.raises(CodecError):
        from_hex("zz" * 32)


def test_text_that_is_not_valid_unicode_is_a_codec_error() -> None:
    """A lone surrogate (invalid UTF-8 in argv becomes one) is refused as a
    CodecError naming where it is, not a UnicodeEncodeError traceback."""
    bad = b"SELECT \xff".decode("utf-8", "surrogateescape")
    with pytest.raises(CodecError, match=r"\$\.query: text is not valid Unicode"):
        encode({"query": bad})
    with pytest.raises(CodecError, match="not valid Unicode"):
        encode({bad: 1})

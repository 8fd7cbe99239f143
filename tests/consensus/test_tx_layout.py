"""The field-by-field transaction reader gives exactly the generic decode's answer.

``decode_tx`` reads the canonical layout directly and falls back to the
generic CBOR decode for anything else; either way the result (or the
refusal and its message) must be what the generic decode alone gives.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.base.codec import decode, encode
from node.base.keys import Identity
from node.consensus.tx import (
    _CHAIN_ID_RE,
    _TYPE_RE,
    MAX_NONCE,
    TxError,
    decode_tx,
    sign_tx,
)
from node.consensus.tx_layout import parse_canonical

ALICE = Identity.from_label("alice")


def generic_decode(data: bytes):
    """The generic canonical decode of the whole map (what decode_tx used to run alone)."""
    return decode(data)


def parse(data: bytes):
    return parse_canonical(data, _CHAIN_ID_RE, _TYPE_RE, MAX_NONCE)


def outcome(data: bytes):
    try:
        tx = decode_tx(data)
    except TxError as exc:
        return ("refused", exc.code, exc.message)
    return ("ok", tx.chain_id, tx.sender, tx.nonce, tx.type, tx.payload, tx.signature, tx.encoded, tx.hash)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
# Nonces on each side of every header size boundary; names of 1, 23, 24 and 64 characters.
NONCES = [0, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, MAX_NONCE]
CHAINS = ["c", "metanode-testnet", "a" * 23, "b" * 24, "z" * 64]
TYPES = ["noop", "t" * 23, "u" * 24, "a.b_c.d" + "e" * 57]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CHAINS), st.sampled_from(NONCES), st.sampled_from(TYPES), cbor_values)
def test_signed_transactions_take_the_fast_path_with_the_same_fields(chain, nonce, tx_type, payload):
    tx = sign_tx(ALICE, chain_id=chain, nonce=nonce, tx_type=tx_type, payload=payload)
    fields = parse(tx.encoded)
    assert fields == (chain, ALICE.public_key, nonce, tx_type, payload, tx.signature)
    value = generic_decode(tx.encoded)
    assert (value["chain"], value["nonce"], value["type"], value["payload"]) == (chain, nonce, tx_type, payload)
    decoded = decode_tx(tx.encoded)
    assert decoded == tx and decoded.hash == tx.hash and decoded.payload == payload


def _fast_path_off(monkeypatch):
    monkeypatch.setattr("node.consensus.tx.parse_canonical", lambda *args: None)


VALID = [sign_tx(ALICE, chain_id="testnet-1", nonce=n, tx_type="noop", payload=p).encoded
         for n, p in [(0, None), (300, {"rows": [1, -2, 3], "b": b"\x00"}), (2**40, ["x" * 40])]]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3),
       st.integers(0, 10_000), st.integers(0, 30), st.binary(max_size=6))
def test_damaged_transactions_get_the_generic_answer(base, edits, start, length, insert):
    data = bytearray(base)
    for position, value in edits:
        data[position % len(data)] = value
    start %= len(data) + 1
    damaged = bytes(data[:start]) + insert + bytes(data[start + length:])
    fast = outcome(damaged)
    with pytest.MonkeyPatch.context() as patch:
        _fast_path_off(patch)
        generic = outcome(damaged)
    assert fast == generic


@pytest.mark.parametrize("damage", [
    lambda b: b.replace(b"\x65nonce\x19\x01\x2c", b"\x65nonce\x1a\x00\x00\x01\x2c"),  # non-minimal nonce
    lambda b: b.replace(b"\x64type\x64noop", b"\x64type\x78\x04noop"),  # non-minimal text header
    lambda b: b + b"\x00",  # trailing byte after the payload
    lambda b: b[:-1],  # payload cut short
    lambda b: b.replace(b"\x61b\x41\x00", b"\x61b\x58\x01\x00"),  # non-minimal bytes in the payload
    lambda b: b.replace(b"\x65nonce\x19\x01\x2c", b"\x65nonce\x39\x01\x2c"),  # negative nonce
])
def test_each_non_canonical_form_is_refused_as_before(damage, monkeypatch):
    base = VALID[1]
    damaged = damage(base)
    assert damaged != base
    assert parse(damaged) is None
    fast = outcome(damaged)
    _fast_path_off(monkeypatch)
    assert outcome(damaged) == fast
    assert fast[0] == "refused"


def test_payload_nesting_limit_is_the_same_on_both_paths(monkeypatch):
    deep: object = 1
    for _ in range(63):
        deep = [deep]
    tx = sign_tx(ALICE, chain_id="testnet-1", nonce=0, tx_type="noop", payload=deep)
    assert parse(tx.encoded) is not None
    too_deep = tx.encoded.replace(b"\x67payload", b"\x67payload\x81")  # one level more, same signature bytes
    fast = outcome(too_deep)
    _fast_path_off(monkeypatch)
    assert outcome(too_deep) == fast
    assert fast[0] == "refused"


def test_a_float_payload_is_refused_on_both_paths(monkeypatch):
    tx = sign_tx(ALICE, chain_id="testnet-1", nonce=0, tx_type="noop", payload=1)
    floated = tx.encoded[:-1] + b"\xf9\x3c\x00"  # payload 1.0 as a half float
    assert parse(floated) is None
    fast = outcome(floated)
    _fast_path_off(monkeypatch)
    assert outcome(floated) == fast
    assert fast[0] == "refused" and "float" in fast[2]


def test_signing_bytes_still_match_for_fast_decoded_transactions():
    from node.consensus.tx import verify_signature

    for raw in VALID:
        assert verify_signature(decode_tx(raw))
    assert encode(decode(VALID[0])) == VALID[0]


def both_paths(data: bytes):
    """decode_tx's answer with the fast path, and with the generic decode alone (they must agree)."""
    fast = outcome(data)
    with pytest.MonkeyPatch.context() as patch:
        _fast_path_off(patch)
        generic = outcome(data)
    return fast, generic


# Each field valid, or (the fields in ``broken``) a value of another type or out of range; keys missing or extra.
VALID_FIELDS = {
    "v": st.just(1), "sig": st.binary(min_size=64, max_size=64), "type": st.sampled_from(TYPES),
    "chain": st.sampled_from(CHAINS), "nonce": st.sampled_from(NONCES) | st.integers(0, MAX_NONCE),
    "sender": st.binary(min_size=32, max_size=32), "payload": cbor_values,
}
BROKEN_FIELDS = {
    "v": st.sampled_from([0, 2, -1, True, "1", b"\x01", None]),
    "sig": st.sampled_from([b"s" * 63, b"s" * 65, b"", "s" * 64, 64, None]),
    "type": st.sampled_from(["", "Noop", "a" * 65, "no op", "\u00e9", "a.", "1a", 7, b"noop", None]),
    "chain": st.sampled_from(["", "A", "a" * 65, "-a", "\u00df", "a\n", 1, b"c", None]),
    "nonce": st.sampled_from([-1, MAX_NONCE + 1, 2**64 - 1, -(2**64), False, "0", b"\x00", None]),
    "sender": st.sampled_from([b"k" * 31, b"k" * 33, b"", "k" * 32, 0, None]),
    "payload": st.just(None),  # any payload is valid
}
FIELD_NAMES = sorted(VALID_FIELDS)


@st.composite
def tx_maps(draw):
    broken = draw(st.sets(st.sampled_from(FIELD_NAMES), max_size=2))
    dropped = draw(st.sets(st.sampled_from(FIELD_NAMES), max_size=2))
    value = {k: draw(BROKEN_FIELDS[k] if k in broken else VALID_FIELDS[k]) for k in FIELD_NAMES if k not in dropped}
    extra = draw(st.dictionaries(st.sampled_from(["x", "vv", "sig2", "payloads", ""]), cbor_values, max_size=1))
    return value | extra


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx_maps())
def test_any_canonical_map_gets_the_same_answer_on_both_paths(value):
    data = encode(value)
    fast, generic = both_paths(data)
    assert fast == generic
    if fast[0] == "ok":  # what was accepted was exactly the seven valid fields, on the fast path
        assert set(value) == set(FIELD_NAMES) and parse(data) is not None
    else:
        assert parse(data) is None  # the fast path never accepts what the generic decode refuses


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120))
def test_arbitrary_bytes_after_the_prefix_get_the_same_answer(tail):
    # map(7), "v": 1, "sig": bytes(64)'s header (10 bytes), then the signature, then anything
    for data in (VALID[0][:10] + tail, VALID[0][:74] + tail, VALID[0][:79] + tail, tail):
        fast, generic = both_paths(data)
        assert fast == generic


def test_oversize_and_non_bytes_are_refused_before_either_path():
    big = sign_tx(ALICE, chain_id="testnet-1", nonce=0, tx_type="noop", payload=b"x" * 200).encoded
    fast, generic = both_paths(big)
    assert fast == generic == ("ok",) + fast[1:]
    with pytest.raises(TxError) as refused:
        decode_tx(big, max_size=len(big) - 1)
    assert refused.value.code == "too_large"
    for data in (None, "a7", 12):
        with pytest.raises(TxError) as refused:
            decode_tx(data)
        assert refused.value.code == "malformed"

"""Hostile input: the transaction decoder raises only TxError, whatever it is fed."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.base.codec import encode
from node.base.keys import Identity
from node.consensus.tx import TxError, TxErrorCode, decode_tx, sign_tx, verify_signature

ALICE = Identity.from_label("alice")
VALID = [
    sign_tx(ALICE, chain_id="testnet-1", nonce=n, tx_type="noop", payload=p).encoded
    for n, p in [(0, None), (5, {"rows": [1, -2, 3], "b": b"\x00"}), (2**40, ["x" * 40])]
]

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=70)
    | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _decode_or_tx_error(data: bytes) -> None:
    try:
        tx = decode_tx(data)
    except TxError as exc:
        assert exc.code in (TxErrorCode.MALFORMED, TxErrorCode.TOO_LARGE)
        assert exc.message
        return
    # Whatever decodes must be the canonical bytes it came from.
    assert tx.encoded == data
    verify_signature(tx)  # must not raise either


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes(data):
    _decode_or_tx_error(data)


@settings(max_examples=300)
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_valid_transactions_with_bytes_overwritten(base, edits):
    data = bytearray(base)
    for position, value in edits:
        data[position % len(data)] = value
    _decode_or_tx_error(bytes(data))


@settings(max_examples=200)
@given(st.sampled_from(VALID), st.integers(0, 10_000), st.integers(0, 10_000), st.binary(max_size=12))
def test_valid_transactions_cut_and_spliced(base, start, length, insert):
    start %= len(base) + 1
    _decode_or_tx_error(base[:start] + insert + base[start + length % 20:])


@settings(max_examples=300)
@given(
    st.sampled_from(VALID),
    st.sampled_from(["v", "chain", "sender", "nonce", "type", "payload", "sig", "extra"]),
    cbor_values,
)
def test_valid_transactions_with_a_field_replaced(base, field, value):
    from node.base.codec import decode

    fields = decode(base)
    fields[field] = value
    _decode_or_tx_error(encode(fields))


@settings(max_examples=200)
@given(st.dictionaries(st.text(max_size=8), cbor_values, max_size=8))
def test_arbitrary_maps(value):
    _decode_or_tx_error(encode(value))


@settings(max_examples=150)
@given(cbor_values, st.integers(0, 2**63 - 1), st.sampled_from(["noop", "a.b", "job.submit"]))
def test_signing_bytes_are_the_encoded_body(payload, nonce, tx_type):
    from node.consensus.tx import _body

    tx = sign_tx(ALICE, chain_id="c", nonce=nonce, tx_type=tx_type, payload=payload)
    for copy in (tx, decode_tx(tx.encoded)):
        assert copy.signing_bytes() == encode(_body("c", ALICE.public_key, nonce, tx_type, payload))
        assert verify_signature(copy)

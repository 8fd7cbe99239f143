"""Transactions: encoding round trip, field validation, signatures, registry, block checks."""

from __future__ import annotations

import cbor2
import pytest

from node.base.codec import decode, encode, hash_tagged
from node.base.keys import Identity
from node.consensus.tx import (
    MAX_NONCE,
    MAX_TX_BYTES,
    TX_SIGN_TAG,
    PayloadError,
    TxError,
    TxErrorCode,
    TxTypeRegistry,
    decode_tx,
    sign_tx,
    tx_hash,
    verify_signature,
)
from node.consensus.tx_caches import SignatureCache
from node.consensus.tx_checks import check_block_txs, check_tx, next_nonces_after

ALICE = Identity.from_label("alice")
BOB = Identity.from_label("bob")
CHAIN = "testnet-1"


def make(identity: Identity = ALICE, nonce: int = 0, payload: object = None, **kw: object):
    return sign_tx(
        identity,
        chain_id=kw.pop("chain_id", CHAIN),
        nonce=nonce,
        tx_type=kw.pop("tx_type", "noop"),
        payload={"n": nonce} if payload is None else payload,
    )


def fields(tx_bytes: bytes) -> dict:
    return decode(tx_bytes)


def reencode(value: dict) -> bytes:
    return encode(value)


# -- round trip --------------------------------------------------------------

def test_round_trip_keeps_every_field_and_the_bytes():
    tx = make(nonce=7, payload={"rows": [1, 2, 3], "blob": b"\x00\xff", "name": "x"})
    again = decode_tx(tx.encoded)
    assert again == tx
    assert again.encoded == tx.encoded
    assert (again.chain_id, again.sender, again.nonce, again.type) == (CHAIN, ALICE.public_key, 7, "noop")
    assert again.payload == {"rows": [1, 2, 3], "blob": b"\x00\xff", "name": "x"}
    assert again.signature == tx.signature
    assert verify_signature(again)


def test_hash_is_the_tagged_hash_of_the_full_encoding():
    tx = make()
    assert tx.hash == tx_hash(tx.encoded) == hash_tagged("metanode/tx/v1", tx.encoded)
    assert decode_tx(tx.encoded).hash == tx.hash


def test_signing_is_deterministic_and_distinct_per_field():
    assert make(nonce=3).encoded == make(nonce=3).encoded
    variants = {make(nonce=3).hash, make(nonce=4).hash, make(BOB, nonce=3).hash,
                make(nonce=3, chain_id="other").hash, make(nonce=3, payload=[1]).hash}
    assert len(variants) == 5


def test_encoding_is_a_map_with_exactly_the_documented_fields():
    value = fields(make().encoded)
    assert set(value) == {"v", "chain", "sender", "nonce", "type", "payload", "sig"}
    assert value["v"] == 1


def test_nonce_bounds_are_accepted():
    assert decode_tx(make(nonce=0).encoded).nonce == 0
    assert decode_tx(make(nonce=MAX_NONCE).encoded).nonce == MAX_NONCE


# -- sign_tx refuses what the network would refuse ------------------------------

@pytest.mark.parametrize(
    "kwargs, code, words",
    [
        ({"chain_id": ""}, TxErrorCode.MALFORMED, "'chain'"),
        ({"chain_id": "Upper"}, TxErrorCode.MALFORMED, "'chain'"),
        ({"nonce": -1}, TxErrorCode.MALFORMED, "'nonce'"),
        ({"nonce": MAX_NONCE + 1}, TxErrorCode.MALFORMED, "'nonce'"),
        ({"tx_type": "Job"}, TxErrorCode.MALFORMED, "'type'"),
        ({"tx_type": "job..submit"}, TxErrorCode.MALFORMED, "'type'"),
        ({"payload": 1.5}, TxErrorCode.MALFORMED, "floats"),
        ({"payload": {1: "x"}}, TxErrorCode.MALFORMED, "text string"),
        ({"payload": b"x" * MAX_TX_BYTES}, TxErrorCode.TOO_LARGE, "limit"),
    ],
)
def test_sign_tx_rejects_out_of_range_fields(kwargs, code, words):
    args = {"chain_id": CHAIN, "nonce": 0, "tx_type": "noop", "payload": None} | kwargs
    with pytest.raises(TxError) as info:
        sign_tx(ALICE, **args)
    assert info.value.code is code
    assert words in info.value.message


# -- decoding rejects every bad field, naming it ------------------------------------

def _mutated(**changes: object) -> bytes:
    value = fields(make().encoded)
    for key, new in changes.items():
        if new is _DROP:
            del value[key]
        else:
            value[key] = new
    return reencode(value)


_DROP = object()


@pytest.mark.parametrize(
    "data, words",
    [
        (encode([1, 2]), "CBOR map"),
        (encode("text"), "CBOR map"),
        (_mutated(sig=_DROP), "missing field(s) ['sig']"),
        (_mutated(nonce=_DROP, type=_DROP), "missing field(s) ['nonce', 'type']"),
        (_mutated(extra=1), "unknown field(s) ['extra']"),
        (_mutated(v=2), "'v'"),
        (_mutated(v=True), "'v'"),
        (_mutated(chain=b"testnet"), "'chain'"),
        (_mutated(chain="a" * 65), "'chain'"),
        (_mutated(chain="bad chain"), "'chain'"),
        (_mutated(sender=b"\x01" * 31), "'sender'"),
        (_mutated(sender="alice"), "'sender'"),
        (_mutated(nonce=-1), "'nonce'"),
        (_mutated(nonce=True), "'nonce'"),
        (_mutated(nonce=2**63), "'nonce'"),
        (_mutated(nonce="1"), "'nonce'"),
        (_mutated(type=""), "'type'"),
        (_mutated(type="a" * 65), "'type'"),
        (_mutated(type=["noop"]), "'type'"),
        (_mutated(sig=b"\x00" * 63), "'sig'"),
        (_mutated(sig=None), "'sig'"),
        (b"", "not canonical CBOR"),
        (b"\xff\x00", "not canonical CBOR"),
        (make().encoded + b"\x00", "not canonical CBOR"),
        (b"\x1b" + (5).to_bytes(8, "big"), "not canonical CBOR"),  # non-minimal integer
    ],
)
def test_decode_rejects_bad_fields_with_a_clear_message(data, words):
    with pytest.raises(TxError) as info:
        decode_tx(data)
    assert info.value.code is TxErrorCode.MALFORMED
    assert words in info.value.message


def test_decode_rejects_non_bytes_and_oversize():
    with pytest.raises(TxError) as info:
        decode_tx("not bytes")  # type: ignore[arg-type]
    assert info.value.code is TxErrorCode.MALFORMED
    big = make(payload=b"x" * 1000).encoded
    with pytest.raises(TxError) as info:
        decode_tx(big, max_size=500)
    assert info.value.code is TxErrorCode.TOO_LARGE
    assert f"{len(big)} bytes" in info.value.message


def test_non_canonical_key_order_is_rejected_even_if_fields_are_right():
    value = fields(make().encoded)
    reordered = b"\xa7" + b"".join(
        cbor2.dumps(k) + cbor2.dumps(value[k], canonical=True) for k in sorted(value, reverse=True)
    )
    assert cbor2.loads(reordered) == value
    with pytest.raises(TxError, match="not canonical"):
        decode_tx(reordered)


# -- signatures -------------------------------------------------------------------

@pytest.mark.parametrize(
    "field, new",
    [("nonce", 1), ("chain", "other"), ("type", "noop.other"), ("payload", {"n": 1}),
     ("sender", BOB.public_key)],
)
def test_tampering_with_any_signed_field_breaks_the_signature(field, new):
    tampered = decode_tx(_mutated(**{field: new}))
    assert not verify_signature(tampered)


def test_flipped_signature_bit_or_foreign_tag_does_not_verify():
    tx = make()
    value = fields(tx.encoded)
    sig = bytearray(value["sig"])
    sig[10] ^= 0x01
    assert not verify_signature(decode_tx(_mutated(sig=bytes(sig))))
    other_purpose = ALICE.sign("metanode/block/v1", tx.signing_bytes())
    assert not verify_signature(decode_tx(_mutated(sig=other_purpose)))
    right_purpose = ALICE.sign(TX_SIGN_TAG, tx.signing_bytes())
    assert verify_signature(decode_tx(_mutated(sig=right_purpose)))


def test_signature_cache_verifies_each_hash_once_and_never_caches_failures():
    cache = SignatureCache(capacity=2)
    good = [make(nonce=i) for i in range(3)]
    bad = decode_tx(_mutated(nonce=5))
    assert cache.verify(good[0]) and cache.verify(decode_tx(good[0].encoded))
    assert cache.verifications == 1
    assert not cache.verify(bad) and not cache.verify(bad)
    assert cache.verifications == 3
    cache.verify(good[1])
    cache.verify(good[2])  # evicts good[0], the least recently used
    assert len(cache) == 2
    cache.verify(good[0])
    assert cache.verifications == 6


def test_signature_cache_capacity_must_be_positive():
    with pytest.raises(ValueError):
        SignatureCache(capacity=0)


# -- type registry and stateless checks -----------------------------------------

def _positive_n(tx):
    if not isinstance(tx.payload, dict) or not isinstance(tx.payload.get("n"), int) or tx.payload["n"] <= 0:
        raise PayloadError("'n' must be a positive integer")


def registry_with_counter() -> TxTypeRegistry:
    registry = TxTypeRegistry.with_builtins()
    registry.register("test.counter", _positive_n)
    return registry


def test_registry_has_noop_built_in_and_refuses_bad_or_repeated_names():
    registry = TxTypeRegistry.with_builtins()
    assert "noop" in registry and registry.names() == ["noop"]
    assert "noop" not in TxTypeRegistry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register("noop", _positive_n)
    with pytest.raises(ValueError, match="not a type name"):
        registry.register("Bad Name", _positive_n)


def test_check_tx_accepts_valid_transactions():
    registry = registry_with_counter()
    check_tx(make(payload=[1, "anything"]), chain_id=CHAIN, registry=registry)
    check_tx(make(tx_type="test.counter", payload={"n": 3}), chain_id=CHAIN, registry=registry)


@pytest.mark.parametrize(
    "tx, code, words",
    [
        (make(chain_id="other"), TxErrorCode.WRONG_CHAIN, "'other'"),
        (make(tx_type="job.submit"), TxErrorCode.UNKNOWN_TYPE, "'job.submit'"),
        (decode_tx(_mutated(nonce=9)), TxErrorCode.BAD_SIGNATURE, ALICE.public_key.hex()),
        (make(tx_type="test.counter", payload={"n": 0}), TxErrorCode.INVALID_PAYLOAD, "'n' must be"),
        (make(tx_type="test.counter", payload="x"), TxErrorCode.INVALID_PAYLOAD, "'n' must be"),
    ],
)
def test_check_tx_codes(tx, code, words):
    with pytest.raises(TxError) as info:
        check_tx(tx, chain_id=CHAIN, registry=registry_with_counter())
    assert info.value.code is code
    assert words in info.value.message


def test_a_crashing_validation_hook_becomes_invalid_payload():
    registry = TxTypeRegistry()
    registry.register("fragile", lambda tx: tx.payload["missing"])
    with pytest.raises(TxError) as info:
        check_tx(make(tx_type="fragile", payload={}), chain_id=CHAIN, registry=registry)
    assert info.value.code is TxErrorCode.INVALID_PAYLOAD
    assert "KeyError" in info.value.message


# -- block-level checks -------------------------------------------------------------

def test_check_block_txs_accepts_each_senders_consecutive_nonces():
    committed = {ALICE.public_key: 2}
    txs = [make(nonce=2), make(BOB, nonce=0), make(nonce=3), make(BOB, nonce=1)]
    decoded = check_block_txs(
        [t.encoded for t in txs], chain_id=CHAIN, registry=TxTypeRegistry.with_builtins(),
        committed_nonce=lambda s: committed.get(s, 0),
    )
    assert decoded == txs
    assert next_nonces_after(decoded) == {ALICE.public_key: 4, BOB.public_key: 2}


@pytest.mark.parametrize(
    "txs, index, code",
    [
        ([make(nonce=0), make(nonce=0)], 1, TxErrorCode.BAD_NONCE),  # replay within a block
        ([make(nonce=0), make(nonce=2)], 1, TxErrorCode.BAD_NONCE),  # gap
        ([make(nonce=1)], 0, TxErrorCode.BAD_NONCE),  # not the committed next nonce
        ([make(nonce=0), make(BOB, chain_id="x")], 1, TxErrorCode.WRONG_CHAIN),
        ([make(nonce=0), decode_tx(_mutated(nonce=1))], 1, TxErrorCode.BAD_SIGNATURE),
    ],
)
def test_check_block_txs_names_the_offending_index(txs, index, code):
    with pytest.raises(TxError) as info:
        check_block_txs(
            [t.encoded for t in txs], chain_id=CHAIN, registry=TxTypeRegistry.with_builtins(),
            committed_nonce=lambda s: 0,
        )
    assert info.value.code is code
    assert info.value.index == index
    assert info.value.message.startswith(f"tx {index}: ")


def test_check_block_txs_reports_undecodable_bytes():
    with pytest.raises(TxError) as info:
        check_block_txs([make().encoded, b"\x01"], chain_id=CHAIN,
                        registry=TxTypeRegistry.with_builtins(), committed_nonce=lambda s: 0)
    assert (info.value.code, info.value.index) == (TxErrorCode.MALFORMED, 1)


def test_check_block_txs_reuses_the_signature_cache():
    cache = SignatureCache()
    txs = [make(nonce=i).encoded for i in range(4)]
    for _ in range(2):
        check_block_txs(txs, chain_id=CHAIN, registry=TxTypeRegistry.with_builtins(),
                        committed_nonce=lambda s: 0, signatures=cache)
    assert cache.verifications == 4

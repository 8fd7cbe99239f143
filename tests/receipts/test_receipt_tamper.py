"""Hostile envelopes: every single-byte change of a valid envelope fails with
the reason its position implies, and arbitrary input only ever raises a
ReceiptError with a documented reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from receipt_samples import NODE_B, VALID_FIELDS

from node.base import codec
from node.base.verification import Reason, ReceiptError
from node.receipts.envelope import build_receipt, decode_receipt, verify_receipt

# Failures that depend only on the envelope itself (not on what a caller expected).
INTRINSIC = {
    Reason.TOO_LARGE,
    Reason.MALFORMED,
    Reason.NON_CANONICAL,
    Reason.BAD_ENVELOPE,
    Reason.UNSUPPORTED_VERSION,
    Reason.UNKNOWN_KIND,
    Reason.SCHEMA,
    Reason.ISSUER_MISMATCH,
    Reason.BAD_SIGNATURE,
}

ENVELOPES = {
    kind: build_receipt(NODE_B, kind, height=99, subject=subject, prev=b"\x42" * 32, fields=fields).envelope
    for kind, (subject, fields) in VALID_FIELDS.items()
}


def value_span(envelope: bytes, marker: bytes, size: int) -> range:
    """Positions of the ``size``-byte value that follows ``marker``."""
    start = envelope.index(marker) + len(marker)
    assert envelope.count(marker) == 1
    return range(start, start + size)


def expected_reason(envelope: bytes, position: int) -> Reason | None:
    """The one correct reason for a change at ``position``, where it is certain."""
    if position in value_span(envelope, b"csigX@", 64):
        return Reason.BAD_SIGNATURE
    if position in value_span(envelope, b"ckeyX ", 32):
        return Reason.ISSUER_MISMATCH  # the node id no longer matches the key
    if position in value_span(envelope, b"gsubjectX ", 32) or position in value_span(envelope, b"dprevX ", 32):
        return Reason.BAD_SIGNATURE  # still a valid body, but not the signed one
    return None


def flipped(envelope: bytes, position: int, mask: int) -> bytes:
    return envelope[:position] + bytes([envelope[position] ^ mask]) + envelope[position + 1 :]


@pytest.mark.parametrize("kind", sorted(ENVELOPES))
def test_every_single_byte_flip_fails_with_the_right_reason(kind: str) -> None:
    envelope = ENVELOPES[kind]
    verify_receipt(envelope)
    certain = 0
    for position in range(len(envelope)):
        want = expected_reason(envelope, position)
        certain += want is not None
        for mask in (0x01, 0x80, 0xFF):
            with pytest.raises(ReceiptError) as info:
                verify_receipt(flipped(envelope, position, mask))
            got = info.value.reason
            assert got in INTRINSIC, (position, mask, got)
            if want is not None:
                assert got == want, (position, mask, got, info.value)
    assert certain == 64 + 32 + 32 + 32


def test_flips_in_structure_give_structural_reasons() -> None:
    envelope = ENVELOPES["job.exec"]
    # The first byte is the outer map header; the byte after "csig" is the
    # signature's length header.
    map_header = verify_reason(flipped(envelope, 0, 0x01))
    assert map_header in {Reason.MALFORMED, Reason.BAD_ENVELOPE}
    sig_header = envelope.index(b"csig") + 4
    assert verify_reason(flipped(envelope, sig_header, 0x01)) in {Reason.MALFORMED, Reason.BAD_ENVELOPE}
    key_text = envelope.index(b"sig")
    assert verify_reason(flipped(envelope, key_text, 0x01)) == Reason.BAD_ENVELOPE  # "rig" instead of "sig"


def verify_reason(envelope: bytes) -> Reason:
    with pytest.raises(ReceiptError) as info:
        verify_receipt(envelope)
    return info.value.reason


@given(st.binary(max_size=600))
def test_random_bytes_are_rejected_cleanly(data: bytes) -> None:
    for check in (decode_receipt, verify_receipt):
        with pytest.raises(ReceiptError) as info:
            check(data)
        assert info.value.reason in INTRINSIC


@given(
    kind=st.sampled_from(sorted(ENVELOPES)),
    position=st.integers(min_value=0),
    replacement=st.integers(min_value=0, max_value=255),
)
def test_single_byte_replacements_are_rejected_cleanly(kind: str, position: int, replacement: int) -> None:
    envelope = ENVELOPES[kind]
    position %= len(envelope)
    if envelope[position] == replacement:
        replacement ^= 0xFF
    changed = envelope[:position] + bytes([replacement]) + envelope[position + 1 :]
    with pytest.raises(ReceiptError) as info:
        verify_receipt(changed)
    assert info.value.reason in INTRINSIC


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


@given(body=cbor_values, signature=st.binary(min_size=64, max_size=64))
def test_arbitrary_canonical_bodies_are_rejected_cleanly(body: object, signature: bytes) -> None:
    envelope = codec.encode({"sig": signature, "body": codec.encode(body)})
    with pytest.raises(ReceiptError) as info:
        verify_receipt(envelope)
    assert info.value.reason in INTRINSIC


@given(outer=cbor_values)
def test_arbitrary_canonical_envelopes_are_rejected_cleanly(outer: object) -> None:
    with pytest.raises(ReceiptError) as info:
        verify_receipt(codec.encode(outer))
    assert info.value.reason in INTRINSIC


@given(
    kind=st.sampled_from(sorted(VALID_FIELDS)),
    name=st.sampled_from(["version", "kind", "issuer", "height", "subject", "prev", "extra"]),
    value=cbor_values,
)
def test_arbitrary_field_values_are_rejected_or_valid(kind: str, name: str, value: object) -> None:
    """A body with one field replaced by anything, signed by its issuer:
    either a valid receipt or a clean schema-level error."""
    body = dict(codec.decode(codec.decode(ENVELOPES[kind])["body"]))
    body[name] = value
    body_bytes = codec.encode(body)
    envelope = codec.encode({"sig": NODE_B.sign("metanode/receipt/v1", body_bytes), "body": body_bytes})
    try:
        receipt = verify_receipt(envelope)
    except ReceiptError as error:
        assert error.reason in INTRINSIC - {Reason.BAD_SIGNATURE}
        assert error.field is not None
    else:
        assert receipt.body[name] == value

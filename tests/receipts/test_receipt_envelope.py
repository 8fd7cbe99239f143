"""Receipt envelopes: round trips, schemas naming fields, every failure
reason, and per-issuer chains."""

from __future__ import annotations

import cbor2
import pytest
from receipt_samples import NODE_A, NODE_B, NODE_C, VALID_FIELDS, digest

from node.base import codec
from node.base.keys import Identity
from node.base.verification import Reason, ReceiptError
from node.receipts.chain import ReceiptIssuer
from node.receipts.envelope import (
    MAX_ENVELOPE_SIZE,
    RECEIPT_ID_TAG,
    RECEIPT_SIGN_TAG,
    Receipt,
    build_receipt,
    receipt_id,
    verify_chain,
    verify_receipt,
)


def build(kind: str, identity: Identity = NODE_A, prev: bytes | None = None, **changes) -> Receipt:
    subject, fields = VALID_FIELDS[kind]
    return build_receipt(identity, kind, height=7, subject=subject, prev=prev, fields={**fields, **changes})


def body_of(kind: str, identity: Identity = NODE_A) -> dict:
    return dict(build(kind, identity).body)


def sign_body(body: dict, identity: Identity = NODE_A, tag: str = RECEIPT_SIGN_TAG) -> bytes:
    """An envelope around any body, signed properly: only the body is wrong."""
    body_bytes = codec.encode(body)
    return codec.encode({"sig": identity.sign(tag, body_bytes), "body": body_bytes})


def failure(envelope: bytes, **kwargs) -> ReceiptError:
    with pytest.raises(ReceiptError) as info:
        verify_receipt(envelope, **kwargs)
    return info.value


def test_every_kind_round_trips(kind: str) -> None:
    receipt = build(kind)
    again = verify_receipt(receipt.envelope)
    assert again == receipt
    assert again.kind == kind and again.issuer_node == NODE_A.peer_id and again.issuer_key == NODE_A.public_key
    assert again.height == 7 and again.prev is None and again.subject == VALID_FIELDS[kind][0]
    assert again.fields == VALID_FIELDS[kind][1]
    assert verify_receipt(receipt.envelope, issuer_key=NODE_A.public_key) == receipt
    # Same inputs, same bytes (Ed25519 and the encoding are deterministic).
    assert build(kind).envelope == receipt.envelope
    assert receipt.id == receipt_id(receipt.envelope) == codec.hash_tagged(RECEIPT_ID_TAG, receipt.envelope)
    assert kind in repr(receipt) and codec.to_hex(receipt.id) in repr(receipt)


def test_envelope_layout_is_the_documented_one() -> None:
    receipt = build("job.exec")
    outer = codec.decode(receipt.envelope)
    assert set(outer) == {"sig", "body"}
    assert codec.decode(outer["body"]) == receipt.body
    assert NODE_A.sign(RECEIPT_SIGN_TAG, outer["body"]) == outer["sig"]


@pytest.mark.parametrize(
    ("kind", "changes", "field"),
    [
        ("api.call", {"method": "Analytics.Submit"}, "method"),
        ("api.call", {"tenant": b"\x01" * 31}, "tenant"),
        ("api.call", {"outcome": "maybe"}, "outcome"),
        ("api.call", {"code": 2**40}, "code"),
        ("api.call", {"response": "ab" * 32}, "response"),
        ("data.store", {"size": -1}, "size"),
        ("data.store", {"replicas": 0}, "replicas"),
        ("data.store", {"content": "blob"}, "content"),
        ("data.store", {"size": True}, "size"),
        ("job.schedule", {"assignees": []}, "assignees"),
        ("job.schedule", {"assignees": ["not-a-peer-id"]}, "assignees[0]"),
        ("job.schedule", {"assignees": [NODE_A.peer_id, NODE_A.peer_id]}, "assignees[1]"),
        ("job.schedule", {"block": None}, "block"),
        ("job.exec", {"witness": b"\x00" * 33}, "witness"),
        ("job.exec", {"exit": 256}, "exit"),
        ("job.exec", {"seed": 5}, "seed"),
        ("job.verdict", {"verdict": "disputed"}, "verdict"),
        ("job.verdict", {"results": [{"node": NODE_A.peer_id}]}, "results[0].result"),
        ("job.verdict", {"results": [{"node": NODE_A.peer_id, "result": digest("r"), "x": 1}]}, "results[0].x"),
        ("job.verdict", {"results": "all good"}, "results"),
        ("job.exec", {"extra": 1}, "extra"),
    ],
)
def test_schema_errors_name_the_field_on_build_and_on_decode(kind: str, changes: dict, field: str) -> None:
    with pytest.raises(ReceiptError) as built:
        build(kind, **changes)
    assert built.value.reason == Reason.SCHEMA and built.value.field == field
    assert field in str(built.value)
    error = failure(sign_body({**body_of(kind), **changes}))
    assert error.reason == Reason.SCHEMA and error.field == field


def test_disputed_verdict_needs_differing_results() -> None:
    results = [
        {"node": NODE_A.peer_id, "result": digest("one")},
        {"node": NODE_B.peer_id, "result": digest("two")},
    ]
    receipt = build("job.verdict", verdict="disputed", results=results)
    assert verify_receipt(receipt.envelope).fields["verdict"] == "disputed"
    with pytest.raises(ReceiptError, match="verdict"):
        build("job.verdict", verdict="verified", results=results)


@pytest.mark.parametrize("name", ["version", "kind", "issuer", "height", "subject", "prev"])
def test_common_fields_are_required_and_reserved(name: str) -> None:
    body = body_of("job.exec")
    del body[name]
    assert failure(sign_body(body)).reason in {Reason.SCHEMA, Reason.UNSUPPORTED_VERSION, Reason.UNKNOWN_KIND}
    subject, fields = VALID_FIELDS["job.exec"]
    with pytest.raises(ReceiptError, match=name):
        build_receipt(NODE_A, "job.exec", height=1, subject=subject, prev=None, fields={**fields, name: 1})


def test_common_field_errors() -> None:
    cases = [
        ({"version": 2}, Reason.UNSUPPORTED_VERSION, "version"),
        ({"version": True}, Reason.UNSUPPORTED_VERSION, "version"),
        ({"kind": "job.teleport"}, Reason.UNKNOWN_KIND, "kind"),
        ({"kind": ["job.exec"]}, Reason.UNKNOWN_KIND, "kind"),
        ({"height": -1}, Reason.SCHEMA, "height"),
        ({"subject": b"short"}, Reason.SCHEMA, "subject"),
        ({"prev": b"\x00" * 31}, Reason.SCHEMA, "prev"),
        ({"issuer": {"node": NODE_A.peer_id}}, Reason.SCHEMA, "issuer.key"),
        ({"issuer": {"node": 5, "key": NODE_A.public_key}}, Reason.SCHEMA, "issuer.node"),
    ]
    for changes, expected, field in cases:
        error = failure(sign_body({**body_of("job.exec"), **changes}))
        assert (error.reason, error.field) == (expected, field), changes
    assert failure(sign_body([1, 2])).reason == Reason.SCHEMA  # type: ignore[arg-type]


def test_issuer_node_must_belong_to_issuer_key() -> None:
    body = body_of("job.exec")
    body["issuer"] = {"node": NODE_B.peer_id, "key": NODE_A.public_key}
    assert failure(sign_body(body)).reason == Reason.ISSUER_MISMATCH


def test_signature_failures() -> None:
    body = body_of("data.store")
    assert failure(sign_body(body, identity=NODE_B)).reason == Reason.BAD_SIGNATURE
    # A signature made for another purpose never verifies as a receipt's.
    assert failure(sign_body(body, tag="metanode/tx/v1")).reason == Reason.BAD_SIGNATURE
    receipt = build("data.store")
    error = failure(receipt.envelope, issuer_key=NODE_B.public_key)
    assert error.reason == Reason.UNEXPECTED_ISSUER


def test_a_remembered_signature_check_answers_only_for_the_same_bytes() -> None:
    """verify_receipt remembers envelopes whose signature checked out (a node sees
    each several times): a good envelope verifies again, the same body under a bad
    signature is still refused, and the expected-issuer check still runs."""
    receipt = build("data.store", prev=digest("remembered"))
    assert verify_receipt(receipt.envelope).id == verify_receipt(receipt.envelope).id == receipt.id
    body = dict(receipt.body)
    forged = sign_body(body, identity=NODE_B)  # same body, another key's signature
    assert failure(forged).reason == Reason.BAD_SIGNATURE
    flipped = bytearray(receipt.envelope)
    at = bytes(flipped).index(receipt.signature) + 5
    flipped[at] ^= 0x01
    assert failure(bytes(flipped)).reason == Reason.BAD_SIGNATURE
    assert failure(receipt.envelope, issuer_key=NODE_B.public_key).reason == Reason.UNEXPECTED_ISSUER


def test_encoding_failures() -> None:
    receipt = build("job.exec")
    outer = codec.decode(receipt.envelope)
    unsorted = cbor2.dumps({"body": outer["body"], "sig": outer["sig"]})  # body before sig
    assert failure(unsorted).reason == Reason.NON_CANONICAL
    assert failure(receipt.envelope + b"\x00").reason == Reason.MALFORMED  # trailing byte
    assert failure(receipt.envelope[:-1]).reason == Reason.MALFORMED
    assert failure(b"").reason == Reason.MALFORMED
    assert failure("text").reason == Reason.MALFORMED  # type: ignore[arg-type]
    assert failure(b"\x00" * (MAX_ENVELOPE_SIZE + 1)).reason == Reason.TOO_LARGE
    body_noncanonical = cbor2.dumps(dict(reversed(list(receipt.body.items()))))
    envelope = codec.encode({"sig": NODE_A.sign(RECEIPT_SIGN_TAG, body_noncanonical), "body": body_noncanonical})
    error = failure(envelope)
    assert (error.reason, error.field) == (Reason.NON_CANONICAL, "body")
    float_body = codec.encode({"sig": outer["sig"], "body": cbor2.dumps({"version": 1.0})})
    assert failure(float_body).reason == Reason.NON_CANONICAL


def test_envelope_shape_failures() -> None:
    receipt = build("job.exec")
    outer = codec.decode(receipt.envelope)
    shapes = [
        [outer["sig"], outer["body"]],
        {"sig": outer["sig"]},
        {"sig": outer["sig"], "body": outer["body"], "x": 1},
        {"sig": outer["sig"][:63], "body": outer["body"]},
        {"sig": outer["sig"], "body": receipt.body},
    ]
    for shape in shapes:
        assert failure(codec.encode(shape)).reason == Reason.BAD_ENVELOPE


def test_fields_must_be_a_map() -> None:
    with pytest.raises(ReceiptError) as info:
        build_receipt(NODE_A, "job.exec", height=1, subject=digest("j"), prev=None, fields=[("exit", 0)])  # type: ignore[arg-type]
    assert (info.value.reason, info.value.field) == (Reason.SCHEMA, "fields")


def test_oversized_receipt_cannot_be_built() -> None:
    with pytest.raises(ReceiptError) as info:
        build("api.call", method="node_" + "x" * 20000)
    assert info.value.reason == Reason.SCHEMA and info.value.field == "method"


def test_issuer_chains_receipts_and_state_can_be_restored() -> None:
    issuer = ReceiptIssuer(NODE_C)
    assert issuer.prev_id is None
    first = issuer.issue("data.store", height=1, subject=digest("a"), fields=VALID_FIELDS["data.store"][1])
    assert issuer.prev_id == first.id and first.prev is None
    with pytest.raises(ReceiptError):
        issuer.issue("data.store", height=2, subject=b"bad", fields=VALID_FIELDS["data.store"][1])
    assert issuer.prev_id == first.id  # a failed issue does not advance the chain
    # A restarted node resumes from the persisted id.
    resumed = ReceiptIssuer(NODE_C, prev_id=issuer.prev_id)
    second = resumed.issue("job.exec", height=2, subject=digest("j"), fields=VALID_FIELDS["job.exec"][1])
    third = resumed.issue("job.exec", height=3, subject=digest("k"), fields=VALID_FIELDS["job.exec"][1])
    assert second.prev == first.id and third.prev == second.id
    assert verify_chain([first, second, third]) == third.id
    assert verify_chain([second, third], prev=first.id) == third.id
    with pytest.raises(ValueError):
        ReceiptIssuer(NODE_C, prev_id=b"short")


def test_chain_breaks_are_detected() -> None:
    issuer = ReceiptIssuer(NODE_C)
    fields = VALID_FIELDS["data.store"][1]
    a, b, c = (issuer.issue("data.store", height=h, subject=digest(str(h)), fields=fields) for h in range(3))
    for broken in ([a, c], [b, a, c], [b, c]):
        with pytest.raises(ReceiptError) as info:
            verify_chain(broken)
        assert info.value.reason == Reason.CHAIN_BREAK
    other = ReceiptIssuer(NODE_A, prev_id=a.id).issue("data.store", height=1, subject=digest("x"), fields=fields)
    with pytest.raises(ReceiptError) as info:
        verify_chain([a, other])
    assert info.value.reason == Reason.UNEXPECTED_ISSUER

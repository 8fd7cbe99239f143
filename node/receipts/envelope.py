"""Signed receipt envelopes: build, decode, verify.

An envelope is the deterministic CBOR map ``{"sig": <64 bytes>, "body":
<bytes>}`` where ``body`` is the deterministic CBOR of the receipt body (see
``node.receipts.schema``) and ``sig`` is the issuer's Ed25519 signature of
``RECEIPT_SIGN_TAG || 0x00 || body``. Carrying the body as bytes means the
signature covers exactly the bytes on the wire.

The receipt id is ``sha256(RECEIPT_ID_TAG || 0x00 || envelope)``: it commits
to the signature too, so one body has one id per signature (Ed25519 is
deterministic, so one issuer produces one envelope per body).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import cbor2

from node.base import codec
from node.base.keys import Identity, peer_id_from_public_key, verify
from node.base.verification import Reason, ReceiptError
from node.receipts.schema import VERSION, check_body

RECEIPT_SIGN_TAG = "metanode/receipt/v1"
RECEIPT_ID_TAG = "metanode/receipt/v1"
MAX_ENVELOPE_SIZE = 16 * 1024
SIGNATURE_SIZE = 64
_ENVELOPE_KEYS = frozenset({"sig", "body"})


@dataclass(frozen=True)
class Receipt:
    """A decoded receipt. ``envelope`` is the exact signed bytes; ``id`` its id."""

    envelope: bytes = field(repr=False)
    id: bytes = field(repr=False)
    body: dict[str, Any] = field(repr=False)
    body_bytes: bytes = field(repr=False)  # the signed encoding of body
    signature: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Receipt({self.kind} {codec.to_hex(self.id)} by {self.issuer_node})"

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def issuer_node(self) -> str:
        return self.body["issuer"]["node"]

    @property
    def issuer_key(self) -> bytes:
        return self.body["issuer"]["key"]

    @property
    def height(self) -> int:
        return self.body["height"]

    @property
    def subject(self) -> bytes:
        return self.body["subject"]

    @property
    def prev(self) -> bytes | None:
        return self.body["prev"]

    @property
    def fields(self) -> dict[str, Any]:
        """The kind-specific fields (everything but the common ones)."""
        common = {"version", "kind", "issuer", "height", "subject", "prev"}
        return {k: v for k, v in self.body.items() if k not in common}


def receipt_id(envelope: bytes) -> bytes:
    """The id of an envelope (32 bytes; print it with codec.to_hex)."""
    return codec.hash_tagged(RECEIPT_ID_TAG, envelope)


def build_receipt(
    identity: Identity,
    kind: str,
    *,
    height: int,
    subject: bytes,
    prev: bytes | None,
    fields: Mapping[str, Any],
) -> Receipt:
    """Build and sign a receipt. Raises ReceiptError (reason SCHEMA,
    UNKNOWN_KIND...) naming the offending field if the body is invalid."""
    if not isinstance(fields, Mapping):
        raise ReceiptError(Reason.SCHEMA, f"fields: must be a map, got {type(fields).__name__}", "fields")
    body = {
        **fields,
        "version": VERSION,
        "kind": kind,
        "issuer": {"node": identity.peer_id, "key": identity.public_key},
        "height": height,
        "subject": subject,
        "prev": prev,
    }
    clash = {"version", "kind", "issuer", "height", "subject", "prev"} & set(fields)
    if clash:
        name = sorted(clash)[0]
        raise ReceiptError(Reason.SCHEMA, f"{name}: is a common field, not a {kind} field", name)
    check_body(body)
    body_bytes = codec.encode(body)
    signature = identity.sign(RECEIPT_SIGN_TAG, body_bytes)
    envelope = codec.encode({"sig": signature, "body": body_bytes})
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise ReceiptError(Reason.TOO_LARGE, f"envelope of {len(envelope)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    return Receipt(envelope, receipt_id(envelope), body, body_bytes, signature)


def _decode_canonical(data: bytes, what: str) -> Any:
    try:
        return codec.decode(data)
    except codec.CodecError as exc:
        reason = Reason.NON_CANONICAL if _is_wellformed_cbor(data) else Reason.MALFORMED
        raise ReceiptError(reason, f"{what}: {exc}", what) from None


def _is_wellformed_cbor(data: bytes) -> bool:
    """Whether a permissive decoder reads exactly one CBOR item from data."""
    stream = io.BytesIO(data)
    try:
        cbor2.CBORDecoder(stream).decode()
    except Exception:  # any failure of a permissive parse means "not CBOR"
        return False
    return stream.tell() == len(data)


@lru_cache(maxsize=4096)
def _peer_id_of(public_key: bytes) -> str:
    return peer_id_from_public_key(public_key)


def decode_receipt(envelope: bytes) -> Receipt:
    """Decode an envelope and check everything but the signature: canonical
    encoding, envelope shape, body schema, and that the issuer's node id
    belongs to its key. Raises ReceiptError; never anything else."""
    if not isinstance(envelope, (bytes, bytearray, memoryview)):
        raise ReceiptError(Reason.MALFORMED, f"envelope must be bytes, got {type(envelope).__name__}")
    envelope = bytes(envelope)
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise ReceiptError(Reason.TOO_LARGE, f"envelope of {len(envelope)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    outer = _decode_canonical(envelope, "envelope")
    if not isinstance(outer, dict) or set(outer) != _ENVELOPE_KEYS:
        raise ReceiptError(Reason.BAD_ENVELOPE, "envelope must be a map of exactly 'sig' and 'body'")
    signature, body_bytes = outer["sig"], outer["body"]
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise ReceiptError(Reason.BAD_ENVELOPE, f"sig must be {SIGNATURE_SIZE} bytes", "sig")
    if not isinstance(body_bytes, bytes):
        raise ReceiptError(Reason.BAD_ENVELOPE, "body must be a byte string", "body")
    body = _decode_canonical(body_bytes, "body")
    check_body(body)
    issuer = body["issuer"]
    if _peer_id_of(issuer["key"]) != issuer["node"]:
        raise ReceiptError(Reason.ISSUER_MISMATCH, "issuer.node is not the peer id of issuer.key", "issuer.node")
    return Receipt(envelope, receipt_id(envelope), body, body_bytes, signature)


# Ids of envelopes whose signature checked out. A node checks the same envelope
# when the mempool admits its transaction, when the block is validated, when its
# attestation is judged and when the state applies it; the id is a hash of the
# whole envelope (signature included), so a remembered id means the very same
# bytes, and the same answer. Bounded: oldest forgotten first (32 bytes each).
SIGNATURE_CACHE_SIZE = 16_384
_SIGNATURE_CHECKED: OrderedDict[bytes, None] = OrderedDict()


def verify_receipt(envelope: bytes, *, issuer_key: bytes | None = None) -> Receipt:
    """Fully verify an envelope: everything :func:`decode_receipt` checks,
    then the issuer's signature, then (if given) that ``issuer_key`` signed
    it. Returns the receipt; raises ReceiptError with a :class:`Reason`."""
    receipt = decode_receipt(envelope)
    if receipt.id not in _SIGNATURE_CHECKED:
        if not verify(receipt.issuer_key, RECEIPT_SIGN_TAG, receipt.body_bytes, receipt.signature):
            raise ReceiptError(Reason.BAD_SIGNATURE, "signature is not the issuer's over the body", "sig")
        _SIGNATURE_CHECKED[receipt.id] = None
        if len(_SIGNATURE_CHECKED) > SIGNATURE_CACHE_SIZE:
            _SIGNATURE_CHECKED.popitem(last=False)
    if issuer_key is not None and receipt.issuer_key != issuer_key:
        raise ReceiptError(
            Reason.UNEXPECTED_ISSUER, f"signed by {receipt.issuer_node}, not the expected key", "issuer.key"
        )
    return receipt


def verify_chain(receipts: Iterable[Receipt], *, prev: bytes | None = None) -> bytes | None:
    """Check that receipts (already verified, oldest first, one issuer) form
    that issuer's hash chain starting after ``prev``. Returns the last id.
    Raises ReceiptError CHAIN_BREAK or UNEXPECTED_ISSUER."""
    issuer: bytes | None = None
    for position, receipt in enumerate(receipts):
        if issuer is None:
            issuer = receipt.issuer_key
        elif receipt.issuer_key != issuer:
            raise ReceiptError(
                Reason.UNEXPECTED_ISSUER, f"receipt {position} is from another issuer", "issuer.key"
            )
        if receipt.prev != prev:
            raise ReceiptError(
                Reason.CHAIN_BREAK,
                f"receipt {position} ({codec.to_hex(receipt.id)}) does not follow "
                f"{codec.to_hex(prev) if prev else 'the start of the chain'}",
                "prev",
            )
        prev = receipt.id
    return prev

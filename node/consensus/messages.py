"""IBFT wire messages: PROPOSAL, PREPARE, COMMIT, ROUND-CHANGE.

Every message has a *signed part*: the sender's key, a payload (CBOR bytes)
and the sender's Ed25519 signature over the payload under tag
``metanode/ibft/v1``. Payloads::

    PROPOSAL     {"kind": "proposal", "height", "round", "digest"}
    PREPARE      {"kind": "prepare",  "height", "round", "digest"}
    COMMIT       {"kind": "commit",   "height", "round", "digest", "seal"}
    ROUND-CHANGE {"kind": "round-change", "height", "round",
                  "prepared_round": int | null, "prepared_digest": bytes | null}

``digest`` is a block header hash; ``seal`` is the commit seal (see
``block.seal_message``). The wire message adds unsigned attachments, each of
which is checked against what the signed part commits to::

    {"signed": [sender, payload, signature],
     "block": bytes | null,         # proposal: the block; round change: the prepared block
     "round_changes": [signed...],  # proposal for round > 0: its justification
     "prepares": [signed...]}       # the prepare certificate of a prepared round

Decoding checks structure, types and sizes only; signatures and justifications
are checked by the core, which caches what it has verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.base.codec import CodecError, decode, encode
from node.base.keys import Identity
from node.consensus.block import (
    HASH_SIZE,
    KEY_SIZE,
    MAX_ROUND,
    MAX_UINT63,
    SIGNATURE_SIZE,
    Block,
    BlockError,
)

SIGN_TAG = "metanode/ibft/v1"
PROPOSAL = "proposal"
PREPARE = "prepare"
COMMIT = "commit"
ROUND_CHANGE = "round-change"
KINDS = (ROUND_CHANGE, PROPOSAL, PREPARE, COMMIT)
# Order of a validator's signatures within one (height, round): a round is
# entered by a ROUND-CHANGE, then PROPOSAL, PREPARE, COMMIT. The safety
# watermark relies on this order being the order the protocol signs in.
STEP = {ROUND_CHANGE: 0, PROPOSAL: 1, PREPARE: 2, COMMIT: 3}
MAX_PAYLOAD_BYTES = 512
MAX_JUSTIFICATION = 256  # at most one entry per validator
_SIGNED_OVERHEAD = 1024


class MessageError(ValueError):
    """A consensus message is malformed; says what was wrong."""


@dataclass(frozen=True)
class Signed:
    """A signed payload with its decoded fields (signature not yet checked)."""

    sender: bytes
    payload: bytes
    signature: bytes
    kind: str
    height: int
    round: int
    digest: bytes | None = None  # proposal/prepare/commit: block hash
    seal: bytes | None = None  # commit
    prepared_round: int | None = None  # round change
    prepared_digest: bytes | None = None  # round change

    @property
    def step(self) -> int:
        return STEP[self.kind]

    def to_value(self) -> list[bytes]:
        return [self.sender, self.payload, self.signature]


@dataclass(frozen=True)
class Message:
    """A wire message: a signed part plus its unsigned attachments."""

    signed: Signed
    block: Block | None = None
    round_changes: tuple[Signed, ...] = ()
    prepares: tuple[Signed, ...] = ()

    def encode(self) -> bytes:
        cached = self.__dict__.get("_encoded")
        if cached is None:
            cached = encode(
                {
                    "signed": self.signed.to_value(),
                    "block": None if self.block is None else self.block.encode(),
                    "round_changes": [rc.to_value() for rc in self.round_changes],
                    "prepares": [p.to_value() for p in self.prepares],
                }
            )
            object.__setattr__(self, "_encoded", cached)
        return cached


def max_message_size(max_block_size: int) -> int:
    """Upper bound on an encoded message given the largest encoded block."""
    return max_block_size + 2 * MAX_JUSTIFICATION * _SIGNED_OVERHEAD


def _uint(value: Any, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise MessageError(f"{what}: expected an integer in [0, {high}]")
    return value


def _hash(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise MessageError(f"{what}: expected {HASH_SIZE} bytes")
    return value


_PAYLOAD_KEYS = {
    PROPOSAL: {"kind", "height", "round", "digest"},
    PREPARE: {"kind", "height", "round", "digest"},
    COMMIT: {"kind", "height", "round", "digest", "seal"},
    ROUND_CHANGE: {"kind", "height", "round", "prepared_round", "prepared_digest"},
}


def parse_signed(value: Any) -> Signed:
    """Parse ``[sender, payload, signature]`` and its payload's fields."""
    if not isinstance(value, list) or len(value) != 3:
        raise MessageError("signed: expected [sender, payload, signature]")
    sender, payload, signature = value
    if not isinstance(sender, bytes) or len(sender) != KEY_SIZE:
        raise MessageError("signed.sender: expected a 32-byte public key")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise MessageError("signed.signature: expected 64 bytes")
    if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"signed.payload: expected at most {MAX_PAYLOAD_BYTES} bytes")
    try:
        fields = decode(payload)
    except CodecError as exc:
        raise MessageError(f"signed.payload: {exc}") from None
    if not isinstance(fields, dict):
        raise MessageError("signed.payload: expected a map")
    kind = fields.get("kind")
    if kind not in _PAYLOAD_KEYS:
        raise MessageError(f"signed.payload.kind: expected one of {list(KINDS)}, got {kind!r}")
    if set(fields) != _PAYLOAD_KEYS[kind]:
        raise MessageError(f"signed.payload: a {kind} has exactly {sorted(_PAYLOAD_KEYS[kind])}")
    height = _uint(fields["height"], MAX_UINT63, "signed.payload.height")
    round_number = _uint(fields["round"], MAX_ROUND, "signed.payload.round")
    extra: dict[str, Any] = {}
    if kind == ROUND_CHANGE:
        prepared_round, prepared_digest = fields["prepared_round"], fields["prepared_digest"]
        if (prepared_round is None) != (prepared_digest is None):
            raise MessageError("round change: prepared_round and prepared_digest are both set or both null")
        if prepared_round is not None:
            extra["prepared_round"] = _uint(prepared_round, MAX_ROUND, "round change.prepared_round")
            extra["prepared_digest"] = _hash(prepared_digest, "round change.prepared_digest")
            if prepared_round >= round_number:
                raise MessageError("round change: prepared_round must be below round")
    else:
        extra["digest"] = _hash(fields["digest"], f"{kind}.digest")
        if kind == COMMIT:
            seal = fields["seal"]
            if not isinstance(seal, bytes) or len(seal) != SIGNATURE_SIZE:
                raise MessageError("commit.seal: expected 64 bytes")
            extra["seal"] = seal
    return Signed(sender, payload, signature, kind, height, round_number, **extra)


def decode_message(data: bytes, *, max_size: int, max_block_size: int) -> Message:
    """Decode a wire message, checking structure, types and sizes."""
    try:
        value = decode(data, max_size=max_size)
    except CodecError as exc:
        raise MessageError(f"message: {exc}") from None
    if not isinstance(value, dict) or set(value) != {"signed", "block", "round_changes", "prepares"}:
        raise MessageError("message: expected a map with signed, block, round_changes, prepares")
    signed = parse_signed(value["signed"])
    lists = []
    for name in ("round_changes", "prepares"):
        items = value[name]
        if not isinstance(items, list) or len(items) > MAX_JUSTIFICATION:
            raise MessageError(f"message.{name}: expected a list of at most {MAX_JUSTIFICATION}")
        lists.append(tuple(parse_signed(item) for item in items))
    round_changes, prepares = lists
    if any(rc.kind != ROUND_CHANGE for rc in round_changes):
        raise MessageError("message.round_changes: holds a message that is not a round change")
    if any(p.kind != PREPARE for p in prepares):
        raise MessageError("message.prepares: holds a message that is not a prepare")
    block = None
    if value["block"] is not None:
        if not isinstance(value["block"], bytes):
            raise MessageError("message.block: expected bytes or null")
        try:
            block = Block.decode(value["block"], max_size=max_block_size)
        except BlockError as exc:
            raise MessageError(f"message.block: {exc}") from None
        if block.seals or block.commit_round:
            raise MessageError("message.block: a proposed or prepared block carries no seals")
    kind = signed.kind
    if kind in (PREPARE, COMMIT) and (block is not None or round_changes or prepares):
        raise MessageError(f"{kind}: carries no attachments")
    if kind == PROPOSAL and block is None:
        raise MessageError("proposal: carries its block")
    if kind == ROUND_CHANGE:
        if round_changes:
            raise MessageError("round change: carries no round changes")
        if (signed.prepared_round is None) != (block is None) or (block is None and prepares):
            raise MessageError("round change: a prepared block and certificate come with a prepared round, only")
    message = Message(signed, block, round_changes, prepares)
    object.__setattr__(message, "_encoded", bytes(data))
    return message


# -- building signed messages ----------------------------------------------

def sign_payload(identity: Identity, fields: dict[str, Any]) -> Signed:
    """Sign a payload map and return the parsed Signed form."""
    payload = encode(fields)
    signature = identity.sign(SIGN_TAG, payload)
    return parse_signed([identity.public_key, payload, signature])


def proposal_payload(height: int, round_number: int, digest: bytes) -> dict[str, Any]:
    return {"kind": PROPOSAL, "height": height, "round": round_number, "digest": digest}


def prepare_payload(height: int, round_number: int, digest: bytes) -> dict[str, Any]:
    return {"kind": PREPARE, "height": height, "round": round_number, "digest": digest}


def commit_payload(height: int, round_number: int, digest: bytes, seal: bytes) -> dict[str, Any]:
    return {"kind": COMMIT, "height": height, "round": round_number, "digest": digest, "seal": seal}


def round_change_payload(
    height: int, round_number: int, prepared_round: int | None, prepared_digest: bytes | None
) -> dict[str, Any]:
    return {
        "kind": ROUND_CHANGE,
        "height": height,
        "round": round_number,
        "prepared_round": prepared_round,
        "prepared_digest": prepared_digest,
    }

"""Transactions: format, signatures and the type registry.

A transaction is one deterministic-CBOR map::

    {"v": 1, "chain": "<chain id>", "sender": <32-byte Ed25519 public key>,
     "nonce": <uint>, "type": "<registered type>", "payload": <any CBOR value>,
     "sig": <64-byte Ed25519 signature>}

The signature is the sender's, over the encoding of the same map without
``"sig"``, with the domain tag ``metanode/tx-sig/v1``. The transaction hash is
``hash_tagged("metanode/tx/v1", <full encoded transaction>)``, so it also
commits to the signature. Nonces count a sender's committed transactions
from 0: a transaction is valid in a block only with the sender's next nonce,
which rejects replays and duplicates.

Decoding validates every field but does not check the signature (the mempool
verifies it once per transaction and caches the result by hash). A node
decodes each transaction once too: :mod:`node.consensus.tx_caches` keeps the
decoded form and the verified signatures, by hash, for every later step of
the block path; :mod:`node.consensus.tx_checks` holds the stateless and
block-level checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from node.base.codec import CodecError, decode, encode, hash_tagged, to_hex
from node.base.keys import Identity, verify
from node.consensus.tx_layout import parse_canonical

TX_VERSION = 1
TX_HASH_TAG = "metanode/tx/v1"
TX_SIGN_TAG = "metanode/tx-sig/v1"
MAX_TX_BYTES = 64 * 1024
MAX_NONCE = 2**63 - 1  # fits DuckDB BIGINT and every language's int64

_CHAIN_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
_MAX_TYPE_LEN = 64
_FIELDS = frozenset({"v", "chain", "sender", "nonce", "type", "payload", "sig"})
# Canonical layout of an encoded transaction's start: map(7), "v": 1, "sig": bytes(64).
_SIGNED_PREFIX = b"\xa7\x61v\x01\x63sig\x58\x40"
_SIG_ENTRY_END = len(_SIGNED_PREFIX) + 64


class TxErrorCode(StrEnum):
    """Stable codes for why a transaction was refused (RPC clients match on them)."""

    MALFORMED = "malformed"  # not a well-formed transaction encoding
    TOO_LARGE = "too_large"
    WRONG_CHAIN = "wrong_chain"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_PAYLOAD = "invalid_payload"
    BAD_NONCE = "bad_nonce"  # stale, already taken, or too far ahead
    DUPLICATE = "duplicate"  # this exact transaction is already pending
    SENDER_LIMIT = "sender_limit"  # the sender's pending share is used up
    MEMPOOL_FULL = "mempool_full"


class TxError(ValueError):
    """A transaction is invalid; ``code`` says why, the message says what."""

    def __init__(self, code: TxErrorCode, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.index = index  # position in a block, for block-level checks


class PayloadError(ValueError):
    """Raised by a type's validation hook: the payload is not valid for the type."""


def tx_hash(tx_bytes: bytes) -> bytes:
    """The transaction id: ``hash_tagged("metanode/tx/v1", tx_bytes)`` over the full encoding."""
    return hash_tagged(TX_HASH_TAG, bytes(tx_bytes))


@dataclass(frozen=True, eq=False)
class Transaction:
    """A decoded (or freshly signed) transaction; ``encoded`` is its one canonical form.

    Build one with :func:`sign_tx` or :func:`decode_tx` only: they keep the
    fields, ``encoded`` and ``hash`` consistent.
    """

    chain_id: str
    sender: bytes
    nonce: int
    type: str
    payload: Any
    signature: bytes
    encoded: bytes = field(repr=False)
    hash: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.encoded)

    def signing_bytes(self) -> bytes:
        """What the sender signed: the body map (everything but ``sig``)."""
        # In the canonical encoding "sig" is the second key (length-first
        # order: v, sig, type, chain, nonce, sender, payload) and its value is
        # exactly 64 bytes, so the body is the same bytes with that entry cut
        # out and the map header changed from 7 to 6 entries. This saves a
        # full re-encode per signature check; anything else re-encodes.
        encoded = self.encoded
        if encoded[: len(_SIGNED_PREFIX)] == _SIGNED_PREFIX:
            return b"\xa6" + encoded[1:4] + encoded[_SIG_ENTRY_END:]
        return encode(_body(self.chain_id, self.sender, self.nonce, self.type, self.payload))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transaction) and other.encoded == self.encoded

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return (
            f"Transaction(hash={to_hex(self.hash)[:16]}, type={self.type!r}, "
            f"sender={to_hex(self.sender)[:16]}, nonce={self.nonce})"
        )


def _body(chain_id: str, sender: bytes, nonce: int, tx_type: str, payload: Any) -> dict[str, Any]:
    return {
        "v": TX_VERSION,
        "chain": chain_id,
        "sender": sender,
        "nonce": nonce,
        "type": tx_type,
        "payload": payload,
    }


def sign_tx(
    identity: Identity, *, chain_id: str, nonce: int, tx_type: str, payload: Any
) -> Transaction:
    """Build and sign a transaction from ``identity`` (the sender).

    Raises TxError (malformed / too_large) if a field is out of range, so a
    client can never produce bytes the network would refuse to decode.
    """
    sender = identity.public_key
    _check_chain_id(chain_id)
    _check_nonce(nonce)
    _check_type_name(tx_type)
    try:
        body = encode(_body(chain_id, sender, nonce, tx_type, payload))
    except CodecError as exc:
        raise TxError(TxErrorCode.MALFORMED, f"payload cannot be encoded: {exc}") from None
    signature = identity.sign(TX_SIGN_TAG, body)
    encoded = encode(_body(chain_id, sender, nonce, tx_type, payload) | {"sig": signature})
    if len(encoded) > MAX_TX_BYTES:
        raise TxError(
            TxErrorCode.TOO_LARGE,
            f"transaction is {len(encoded)} bytes; the limit is {MAX_TX_BYTES}",
        )
    return Transaction(chain_id, sender, nonce, tx_type, payload, signature, encoded, tx_hash(encoded))


def decode_tx(data: bytes, *, max_size: int = MAX_TX_BYTES) -> Transaction:
    """Decode and validate every field of an encoded transaction.

    Raises only TxError: ``too_large`` beyond ``max_size`` bytes, otherwise
    ``malformed`` with a message naming the offending field. The signature is
    not verified here (see :class:`node.consensus.tx_caches.SignatureCache`).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TxError(TxErrorCode.MALFORMED, f"transaction must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise TxError(
            TxErrorCode.TOO_LARGE, f"transaction is {len(data)} bytes; the limit is {max_size}"
        )
    # The usual case, read field by field (a third of the generic decode's
    # cost); anything unusual takes the generic path, which names the fault.
    fields = parse_canonical(data, _CHAIN_ID_RE, _TYPE_RE, MAX_NONCE)
    if fields is not None:
        return Transaction(*fields, data, tx_hash(data))
    try:
        value = decode(data)
    except CodecError as exc:
        raise TxError(TxErrorCode.MALFORMED, f"transaction is not canonical CBOR: {exc}") from None
    if not isinstance(value, dict):
        raise TxError(TxErrorCode.MALFORMED, "transaction must be a CBOR map")
    missing = _FIELDS - value.keys()
    if missing:
        raise TxError(TxErrorCode.MALFORMED, f"transaction is missing field(s) {sorted(missing)}")
    unknown = value.keys() - _FIELDS
    if unknown:
        raise TxError(TxErrorCode.MALFORMED, f"transaction has unknown field(s) {sorted(unknown)}")
    version = value["v"]
    if type(version) is not int or version != TX_VERSION:
        raise TxError(TxErrorCode.MALFORMED, f"field 'v': unsupported version {version!r}")
    chain_id, sender, nonce = value["chain"], value["sender"], value["nonce"]
    tx_type, signature = value["type"], value["sig"]
    _check_chain_id(chain_id)
    if not isinstance(sender, bytes) or len(sender) != 32:
        raise TxError(TxErrorCode.MALFORMED, "field 'sender': must be a 32-byte Ed25519 public key")
    _check_nonce(nonce)
    _check_type_name(tx_type)
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise TxError(TxErrorCode.MALFORMED, "field 'sig': must be a 64-byte Ed25519 signature")
    return Transaction(
        chain_id, sender, nonce, tx_type, value["payload"], signature, data, tx_hash(data)
    )


def _check_chain_id(chain_id: Any) -> None:
    if not isinstance(chain_id, str) or not _CHAIN_ID_RE.fullmatch(chain_id):
        raise TxError(
            TxErrorCode.MALFORMED,
            f"field 'chain': {chain_id!r} is not a chain id (1-64 of a-z 0-9 . _ -)",
        )


def _check_nonce(nonce: Any) -> None:
    if type(nonce) is not int or not 0 <= nonce <= MAX_NONCE:
        raise TxError(
            TxErrorCode.MALFORMED, f"field 'nonce': {nonce!r} is not an integer in 0..2**63-1"
        )


def _check_type_name(tx_type: Any) -> None:
    if (
        not isinstance(tx_type, str)
        or len(tx_type) > _MAX_TYPE_LEN
        or not _TYPE_RE.fullmatch(tx_type)
    ):
        raise TxError(
            TxErrorCode.MALFORMED,
            f"field 'type': {tx_type!r} is not a type name (dotted lowercase words)",
        )


# -- signature checks ---------------------------------------------------------

def verify_signature(tx: Transaction) -> bool:
    """True when ``tx.signature`` is the sender's signature of the body."""
    return verify(tx.sender, TX_SIGN_TAG, tx.signing_bytes(), tx.signature)


# -- type registry ------------------------------------------------------------

PayloadValidator = Callable[[Transaction], None]


def _validate_noop(tx: Transaction) -> None:
    """The built-in "noop" type accepts any payload; it changes no state."""


class TxTypeRegistry:
    """Transaction types the node accepts, each with a payload validation hook.

    A hook gets the decoded transaction and raises :class:`PayloadError` when
    its payload is invalid for the type. Hooks must be pure functions of the
    transaction (no state, clock or I/O): block validity depends on them.
    """

    def __init__(self) -> None:
        self._validators: dict[str, PayloadValidator] = {}

    @classmethod
    def with_builtins(cls) -> "TxTypeRegistry":
        """A registry holding the built-in ``noop`` type (for tests and benchmarks)."""
        registry = cls()
        registry.register("noop", _validate_noop)
        return registry

    def register(self, name: str, validate: PayloadValidator) -> None:
        """Add a type; ValueError if the name is malformed or already registered."""
        try:
            _check_type_name(name)
        except TxError as exc:
            raise ValueError(f"cannot register transaction type: {exc.message}") from None
        if name in self._validators:
            raise ValueError(f"transaction type {name!r} is already registered")
        self._validators[name] = validate

    def __contains__(self, name: object) -> bool:
        return name in self._validators

    def names(self) -> list[str]:
        return sorted(self._validators)

    def check(self, tx: Transaction) -> None:
        """Raise TxError (unknown_type / invalid_payload) unless the payload is valid."""
        validate = self._validators.get(tx.type)
        if validate is None:
            raise TxError(TxErrorCode.UNKNOWN_TYPE, f"transaction type {tx.type!r} is not registered")
        try:
            validate(tx)
        except PayloadError as exc:
            raise TxError(
                TxErrorCode.INVALID_PAYLOAD, f"invalid {tx.type!r} payload: {exc}"
            ) from None
        except Exception as exc:  # a hook tripping over hostile input must not crash the node
            raise TxError(
                TxErrorCode.INVALID_PAYLOAD,
                f"invalid {tx.type!r} payload: validator raised {type(exc).__name__}: {exc}",
            ) from None

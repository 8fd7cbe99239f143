"""Deterministic CBOR and domain-separated hashing.

Everything metanode hashes or signs goes through this module, so that two
nodes given the same value always produce the same bytes:

* maps have text-string keys only, sorted as RFC 8949 section 4.2.1 (for
  text keys this equals cbor2's length-first canonical order);
* no floats, tags, undefined or indefinite-length items;
* integers fit in 64 bits (CBOR major types 0 and 1; no bignums);
* a decoder re-encodes what it read and rejects input that is not
  byte-identical, so one value has exactly one accepted encoding.

Hashes are ``sha256(tag || 0x00 || data)`` with a tag such as
``metanode/block/v1``: a digest made for one purpose never equals one made
for another.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2

MAX_INT = 2**64 - 1
MIN_INT = -(2**64)
MAX_DEPTH = 64


class CodecError(ValueError):
    """Input is not a value metanode can encode, or not canonical CBOR."""


def _check(value: Any, depth: int, path: str) -> None:
    if depth > MAX_DEPTH:
        raise CodecError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    # bool is a subclass of int: test it first.
    if value is None or isinstance(value, (bool, bytes)):
        return
    if isinstance(value, str):
        _check_text(value, path)
        return
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise CodecError(f"{path}: integer {value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        raise CodecError(f"{path}: floats are not allowed in hashed or signed data")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, depth + 1, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError(f"{path}: map key {key!r} is not a text string")
            _check_text(key, path)
            _check(item, depth + 1, f"{path}.{key}")
        return
    raise CodecError(f"{path}: type {type(value).__name__} cannot be encoded")


def _check_text(text: str, path: str) -> None:
    """CBOR text is UTF-8: a lone surrogate (what Python makes of invalid
    UTF-8 in a command-line argument or a file name) cannot be encoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodecError(f"{path}: text is not valid Unicode (character {exc.start} is a lone surrogate)") from None


def encode(value: Any) -> bytes:
    """Encode ``value`` as deterministic CBOR. Raises CodecError on values
    outside the allowed subset (floats, non-text keys, big ints, sets...)."""
    _check(value, 0, "$")
    return cbor2.dumps(value, canonical=True)


def decode(data: bytes, *, max_size: int | None = None) -> Any:
    """Decode deterministic CBOR, rejecting anything that is not the one
    canonical encoding of the value it holds (trailing bytes, duplicate or
    unsorted keys, non-minimal lengths, floats, tags...)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if max_size is not None and len(data) > max_size:
        raise CodecError(f"{len(data)} bytes exceeds the limit of {max_size}")
    if not data:
        raise CodecError("empty input")
    try:
        value = cbor2.loads(
            data,
            max_depth=MAX_DEPTH + 1,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            tag_hook=_reject_tag,
        )
    except CodecError:
        raise
    except Exception as exc:  # cbor2 raises several types; none may escape raw
        raise CodecError(f"malformed CBOR: {exc}") from None
    if encode(value) != data:
        raise CodecError("not canonical CBOR (re-encoding differs)")
    return value


def _reject_tag(decoder: Any, tag: Any) -> Any:
    raise CodecError(f"CBOR tag {tag.tag} is not allowed")


def hash_tagged(tag: str, data: bytes) -> bytes:
    """Domain-separated SHA-256: ``sha256(tag || 0x00 || data)``."""
    return hashlib.sha256(tag.encode("ascii") + b"\x00" + data).digest()


def hash_value(tag: str, value: Any) -> bytes:
    """Domain-separated SHA-256 of the deterministic encoding of ``value``."""
    return hash_tagged(tag, encode(value))


def to_hex(digest: bytes) -> str:
    """Ids are lowercase hex digests."""
    return digest.hex()


def from_hex(text: str, *, size: int = 32, what: str = "digest") -> bytes:
    """Parse a lowercase-hex id of ``size`` bytes, naming ``what`` on error."""
    if not isinstance(text, str) or len(text) != 2 * size:
        raise CodecError(f"{what} must be {2 * size} hex characters")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise CodecError(f"{what} is not hex: {text!r}") from None
    if raw.hex() != text:
        raise CodecError(f"{what} must be lowercase hex")
    return raw

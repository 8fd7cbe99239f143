"""The canonical byte layout of a transaction, read without a generic CBOR pass.

Every transaction a correct client signs has one layout: deterministic CBOR
orders map keys length-first, so the seven entries always come as ``v``,
``sig``, ``type``, ``chain``, ``nonce``, ``sender``, ``payload``, each with a
minimal-length header. :func:`parse_canonical` reads exactly that layout
field by field and hands only the payload (the one free-form value) to the
generic decoder with its canonical re-encode check. Anything else (another
key set, a non-minimal header, a field out of range) returns None, and the
caller falls back to the full generic decode, which then names the fault:
the fast path never decides a refusal, so refusals and their messages stay
exactly those of :func:`node.consensus.tx.decode_tx`.

Why it is the same answer: CBOR is concatenative, so the canonical encoding
of the map is the canonical encoding of each key and field value in order.
The fields checked here are canonical by construction (minimal headers,
fixed sizes, ASCII text matched by the same patterns as the full decode),
and the payload is decoded as the one element of an array (``0x81`` +
its bytes), which puts it at the same nesting depth as inside the map and
rejects trailing bytes and non-canonical payload encodings just as the full
re-encode would.
"""

from __future__ import annotations

import re
from typing import Any

from node.base.codec import CodecError, decode

# map(7), "v": 1, "sig": bytes(64)
_PREFIX = b"\xa7\x61v\x01\x63sig\x58\x40"
_SIG_START = len(_PREFIX)
_SIG_END = _SIG_START + 64
_TYPE_KEY = b"\x64type"
_CHAIN_KEY = b"\x65chain"
_NONCE_KEY = b"\x65nonce"
_SENDER_KEY = b"\x66sender\x58\x20"  # "sender": bytes(32)
_PAYLOAD_KEY = b"\x67payload"
_MAX_TEXT = 64  # chain ids and type names are at most 64 characters


def parse_canonical(
    data: bytes, chain_re: re.Pattern[str], type_re: re.Pattern[str], max_nonce: int
) -> tuple[str, bytes, int, str, Any, bytes] | None:
    """``(chain_id, sender, nonce, type, payload, signature)`` of a transaction
    in the canonical layout with every field valid, else None (decode it the
    generic way). ``chain_re``/``type_re``/``max_nonce``: the rules the full
    decode applies, passed in so both paths share one definition."""
    if not data.startswith(_PREFIX):
        return None
    signature = data[_SIG_START:_SIG_END]
    pos = _SIG_END
    if data[pos:pos + 5] != _TYPE_KEY:
        return None
    tx_type, pos = _text(data, pos + 5)
    if tx_type is None or not type_re.fullmatch(tx_type):
        return None
    if data[pos:pos + 6] != _CHAIN_KEY:
        return None
    chain_id, pos = _text(data, pos + 6)
    if chain_id is None or not chain_re.fullmatch(chain_id):
        return None
    if data[pos:pos + 6] != _NONCE_KEY:
        return None
    nonce, pos = _uint(data, pos + 6)
    if nonce is None or nonce > max_nonce:
        return None
    if data[pos:pos + 9] != _SENDER_KEY:
        return None
    sender = data[pos + 9:pos + 41]
    pos += 41
    if len(sender) != 32 or data[pos:pos + 8] != _PAYLOAD_KEY:
        return None
    try:
        payload = decode(b"\x81" + data[pos + 8:])[0]
    except CodecError:
        return None
    return chain_id, sender, nonce, tx_type, payload, signature


def _text(data: bytes, pos: int) -> tuple[str | None, int]:
    """A short ASCII text string with a minimal header at ``pos``."""
    if pos >= len(data):
        return None, pos
    head = data[pos]
    if 0x60 <= head < 0x78:
        length, start = head - 0x60, pos + 1
    elif head == 0x78 and pos + 1 < len(data) and data[pos + 1] >= 24:
        length, start = data[pos + 1], pos + 2
    else:
        return None, pos
    if length > _MAX_TEXT or start + length > len(data):
        return None, pos
    raw = data[start:start + length]
    if not raw.isascii():
        return None, pos
    return raw.decode("ascii"), start + length


_UINT_SIZES = {0x18: 1, 0x19: 2, 0x1A: 4, 0x1B: 8}


def _uint(data: bytes, pos: int) -> tuple[int | None, int]:
    """An unsigned integer with a minimal header at ``pos``."""
    if pos >= len(data):
        return None, pos
    head = data[pos]
    if head < 0x18:
        return head, pos + 1
    size = _UINT_SIZES.get(head)
    if size is None or pos + 1 + size > len(data):
        return None, pos
    value = int.from_bytes(data[pos + 1:pos + 1 + size], "big")
    if value < (24 if size == 1 else 1 << (4 * size)):  # a shorter header would hold it
        return None, pos
    return value, pos + 1 + size

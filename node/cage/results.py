"""Canonical encoding of a job's result table, and its digest.

The result is ``{"columns": [[name, type], ...], "order": ORDER,
"rows": [[cell, ...], ...]}`` in deterministic CBOR. Floats become their
8-byte big-endian IEEE-754 bits (every NaN becomes the one quiet NaN, so
``NaN`` from two engines hashes the same; ``-0.0`` keeps its sign bit).

``order`` says what the row order means:

* ``"canonical"``: the query did not order its rows, so they are a bag,
  sorted by their own encoding: one total order whatever order the engine
  produced them in;
* ``"query"``: the query's top-level ORDER BY ordered them, and that order
  is kept (ties included, it is deterministic under ``threads=1`` and the
  pinned DuckDB version the witness records).
"""

from __future__ import annotations

import datetime
import decimal
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from node.base.codec import CodecError, decode, encode, hash_tagged

RESULT_DIGEST_TAG = "metanode/cage/result/v2"  # v2: the encoding records the row order
CANONICAL_NAN = struct.pack(">Q", 0x7FF8000000000000)

# DuckDB types whose Python values encode exactly; anything else (nested,
# TIMESTAMPTZ, INTERVAL, UUID, ENUM...) is cast to VARCHAR by the engine first.
NATIVE_TYPES = frozenset({
    "boolean", "tinyint", "smallint", "integer", "bigint", "hugeint",
    "utinyint", "usmallint", "uinteger", "ubigint", "uhugeint",
    "float", "double", "decimal", "varchar", "blob", "date", "timestamp", "time",
})

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1

_PASSTHROUGH = frozenset({type(None), bool, str, bytes})

ORDER_CANONICAL = "canonical"
ORDER_QUERY = "query"
RESULT_ORDERS = (ORDER_CANONICAL, ORDER_QUERY)


class ResultError(ValueError):
    """A value the canonical result encoding does not accept."""


def encode_float(value: float) -> bytes:
    """IEEE-754 binary64, big-endian; all NaNs map to one canonical NaN."""
    if math.isnan(value):
        return CANONICAL_NAN
    return struct.pack(">d", value)


def canonical_cell(value: Any) -> Any:
    """One cell as a CBOR-able, float-free value."""
    kind = type(value)
    if kind in _PASSTHROUGH:  # the common cases first, by exact type
        return value
    if kind is float:
        return encode_float(value)
    if value is None or isinstance(value, (bool, str, bytes)):
        return value
    if isinstance(value, int):
        # Out-of-range HUGEINTs keep their exact decimal digits.
        return value if _INT64_MIN <= value <= _UINT64_MAX else str(value)
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        if getattr(value, "tzinfo", None) is not None:
            raise ResultError("timezone-aware values must be cast to text first")
        return value.isoformat()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise ResultError(f"cannot encode a result value of type {type(value).__name__}")


def _cbor_header(major: int, length: int) -> bytes:
    """The head of a CBOR item of major type ``major`` with the shortest
    encoding of ``length`` (RFC 8949 section 4.2.1)."""
    if length < 24:
        return bytes([major << 5 | length])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if length < 1 << (8 * size):
            return bytes([major << 5 | extra]) + length.to_bytes(size, "big")
    raise ResultError(f"{length} items do not fit in a CBOR length")


def encode_result(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]], *,
                  ordered: bool = False) -> bytes:
    """Canonical bytes of a result table (see the module docstring).
    ``ordered``: the rows are in the order the query asked for; keep it."""
    width = len(columns)
    encoded_rows = []
    try:
        for index, row in enumerate(rows):
            if len(row) != width:
                raise ResultError(f"row {index} has {len(row)} cells, expected {width}")
            encoded_rows.append(encode([canonical_cell(cell) for cell in row]))
        if not ordered:
            encoded_rows.sort()
        # Each row is encoded once; the table is assembled from those bytes
        # exactly as encode() would lay out the whole map (keys in RFC 8949
        # order), so decode() accepts it as canonical.
        parts = {
            "columns": encode([[str(name), str(kind)] for name, kind in columns]),
            "order": encode(ORDER_QUERY if ordered else ORDER_CANONICAL),
            "rows": _cbor_header(4, len(encoded_rows)) + b"".join(encoded_rows),
        }
        keys = sorted((encode(key), key) for key in parts)
        return _cbor_header(5, len(parts)) + b"".join(head + parts[key] for head, key in keys)
    except CodecError as exc:
        raise ResultError(str(exc)) from None


def result_digest(result: bytes) -> bytes:
    """Domain-tagged digest of canonical result bytes."""
    return hash_tagged(RESULT_DIGEST_TAG, result)


def decode_result(result: bytes) -> dict[str, Any]:
    """Parse canonical result bytes back into columns and rows (cells stay
    in their canonical form: floats are 8-byte strings)."""
    try:
        value = decode(result)
    except CodecError as exc:
        raise ResultError(f"not a canonical result: {exc}") from None
    if not isinstance(value, dict) or set(value) != {"columns", "order", "rows"}:
        raise ResultError("not a canonical result: expected columns, order and rows")
    if not isinstance(value["columns"], list) or not isinstance(value["rows"], list):
        raise ResultError("not a canonical result: columns and rows must be arrays")
    if value["order"] not in RESULT_ORDERS:
        raise ResultError(f"not a canonical result: order {value['order']!r} is not one of {', '.join(RESULT_ORDERS)}")
    if value["order"] == ORDER_CANONICAL:
        encoded = [encode(row) for row in value["rows"]]
        if any(a > b for a, b in zip(encoded, encoded[1:])):
            raise ResultError("not a canonical result: rows are not in canonical order")
    return value


def display_cell(kind: str, cell: Any) -> str:
    """Human-readable text of one canonical cell, given its column type."""
    if cell is None:
        return "NULL"
    if kind.upper() in ("DOUBLE", "FLOAT") and isinstance(cell, bytes) and len(cell) == 8:
        return repr(struct.unpack(">d", cell)[0])
    if isinstance(cell, bytes):
        return "0x" + cell.hex()
    return str(cell)

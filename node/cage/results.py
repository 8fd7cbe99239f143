"""Canonical encoding of a job's result table, and its digest.

The result is ``{"columns": [[name, type], ...], "rows": [[cell, ...], ...]}``
in deterministic CBOR. Floats become their 8-byte big-endian IEEE-754 bits
(every NaN becomes the one quiet NaN, so ``NaN`` from two engines hashes the
same; ``-0.0`` keeps its sign bit). Rows are sorted by their own encoding:
the result is a bag of rows in one total order whatever order the engine
produced them in.
"""

from __future__ import annotations

import datetime
import decimal
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from node.codec import CodecError, decode, encode, hash_tagged

RESULT_DIGEST_TAG = "metanode/cage/result/v1"
CANONICAL_NAN = struct.pack(">Q", 0x7FF8000000000000)

# DuckDB types whose Python values encode exactly; anything else (nested,
# TIMESTAMPTZ, INTERVAL, UUID, ENUM...) is cast to VARCHAR by the engine first.
NATIVE_TYPES = frozenset({
    "boolean", "tinyint", "smallint", "integer", "bigint", "hugeint",
    "utinyint", "usmallint", "uinteger", "ubigint", "uhugeint",
    "float", "double", "decimal", "varchar", "blob", "date", "timestamp", "time",
})

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


class ResultError(ValueError):
    """A value the canonical result encoding does not accept."""


def encode_float(value: float) -> bytes:
    """IEEE-754 binary64, big-endian; all NaNs map to one canonical NaN."""
    if math.isnan(value):
        return CANONICAL_NAN
    return struct.pack(">d", value)


def canonical_cell(value: Any) -> Any:
    """One cell as a CBOR-able, float-free value."""
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


def encode_result(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> bytes:
    """Canonical bytes of a result table (see the module docstring)."""
    width = len(columns)
    encoded_rows = []
    for index, row in enumerate(rows):
        if len(row) != width:
            raise ResultError(f"row {index} has {len(row)} cells, expected {width}")
        cells = [canonical_cell(cell) for cell in row]
        encoded_rows.append((encode(cells), cells))
    encoded_rows.sort(key=lambda pair: pair[0])
    try:
        return encode({
            "columns": [[str(name), str(kind)] for name, kind in columns],
            "rows": [cells for _, cells in encoded_rows],
        })
    except CodecError as exc:
        raise ResultError(str(exc)) from None


def result_digest(result: bytes) -> bytes:
    """Domain-tagged digest of canonical result bytes."""
    return hash_tagged(RESULT_DIGEST_TAG, result)


def decode_result(result: bytes) -> dict[str, Any]:
    """Parse canonical result bytes back into columns and rows (cells stay
    in their canonical form: floats are 8-byte strings)."""
    value = decode(result)
    if not isinstance(value, dict) or set(value) != {"columns", "rows"}:
        raise ResultError("not a canonical result")
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

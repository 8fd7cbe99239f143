"""Field checks the payload schemas are built from (tx types and job types alike).

Each check takes the value, the field's path in the payload (``inputs.sales``,
``params.window``...) and its bounds, and either returns the value or raises
:class:`PayloadError` naming the path. The messages become part of the chain
state (a refused transaction's reason is recorded), so they are fixed text:
change one and nodes running the old code compute another state.
"""

from __future__ import annotations

import re
from typing import Any

from node.consensus.tx import PayloadError

DIGEST_SIZE = 32
MAX_UINT = 2**63 - 1


def type_name(value: Any) -> str:
    """The CBOR-ish name of a value's type, for "got ..." in messages."""
    return "null" if value is None else type(value).__name__


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def record(value: Any, path: str, names: tuple[str, ...]) -> dict[str, Any]:
    """A map with exactly the fields ``names`` (missing ones first, then unknown ones, sorted)."""
    if not isinstance(value, dict):
        raise PayloadError(f"{path or 'payload'}: must be a map, got {type_name(value)}")
    for name in names:
        if name not in value:
            raise PayloadError(f"{join(path, name)}: is missing")
    for name in sorted(value):
        if name not in names:
            raise PayloadError(f"{join(path, name)}: is not a field of this payload")
    return value


def integer(value: Any, path: str, low: int, high: int) -> int:
    """An int (not a bool) in low..high."""
    if type(value) is not int:
        raise PayloadError(f"{path}: must be an integer, got {type_name(value)}")
    if not low <= value <= high:
        raise PayloadError(f"{path}: must be in {low}..{high}, got {value}")
    return value


def digest(value: Any, path: str) -> bytes:
    """A 32-byte digest."""
    if not isinstance(value, bytes) or len(value) != DIGEST_SIZE:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type_name(value)
        raise PayloadError(f"{path}: must be a {DIGEST_SIZE}-byte digest, got {got}")
    return value


def text(value: Any, path: str, regex: re.Pattern[str], what: str) -> str:
    """Text matching ``regex`` whole; ``what`` says in words what it must be."""
    if not isinstance(value, str):
        raise PayloadError(f"{path}: must be text, got {type_name(value)}")
    if not regex.fullmatch(value):
        raise PayloadError(f"{path}: must be {what}, got {value[:80]!r}")
    return value


def choice(value: Any, path: str, options: tuple[str, ...]) -> str:
    """One of ``options`` (listed in the message in the order given)."""
    if not isinstance(value, str) or value not in options:
        raise PayloadError(f"{path}: must be one of {', '.join(options)}, got {value!r:.80}")
    return value

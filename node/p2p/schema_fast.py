"""A fast acceptor for the JSON Schema subset our RPC methods use.

Validating every call's parameters with ``jsonschema`` costs more than a
transaction's whole admission apart from its signature check (``iter_errors``
builds an error generator and walks keyword objects per call). Most calls
are valid, so :func:`compile_acceptor` turns a method's schema into a plain
function that says *yes, valid* or *not sure*; only the latter go through
``jsonschema``, which then names the exact problem as before.

The acceptor must never accept what ``jsonschema`` (Draft 2020-12, no format
checker: ``format`` is an annotation) refuses, so it is built only from
keywords whose meaning it reproduces exactly, and answers "not sure" for
anything subtle (a float where an integer is allowed, a non-text enum). A
schema with any other keyword gets no acceptor: its calls always take the
``jsonschema`` path. tests/p2p/test_schema_fast.py checks the implication
against ``jsonschema`` on generated schemas and values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Acceptor = Callable[[Any], bool]

# Keywords that only annotate (no effect on validity without a format checker).
_ANNOTATIONS = frozenset({"description", "default", "format", "title", "examples"})
_SCALAR_KEYWORDS = frozenset({"type", "pattern", "minLength", "maxLength", "minimum", "maximum",
                              "exclusiveMinimum", "exclusiveMaximum", "enum"}) | _ANNOTATIONS
_OBJECT_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties"}) | _ANNOTATIONS


def compile_acceptor(schema: Mapping[str, Any]) -> Acceptor | None:
    """A function true only for values ``schema`` accepts, or None when the
    schema uses a keyword outside the subset (then always ask jsonschema)."""
    if not isinstance(schema, Mapping):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        return _object_acceptor(schema)
    return _scalar_acceptor(schema)


def _object_acceptor(schema: Mapping[str, Any]) -> Acceptor | None:
    if set(schema) - _OBJECT_KEYWORDS or schema.get("type", "object") != "object":
        return None
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(properties, Mapping) or not isinstance(required, list) or extra not in (True, False):
        return None
    checks: dict[str, Acceptor] = {}
    for name, sub in properties.items():
        check = compile_acceptor(sub)
        if check is None:
            return None
        checks[name] = check
    needed = tuple(required)
    closed = extra is False

    def accept(value: Any) -> bool:
        if type(value) is not dict:
            return False
        for name in needed:
            if name not in value:
                return False
        for name, item in value.items():
            check = checks.get(name)
            if check is None:
                if closed:
                    return False
            elif not check(item):
                return False
        return True

    return accept


def _scalar_acceptor(schema: Mapping[str, Any]) -> Acceptor | None:
    if set(schema) - _SCALAR_KEYWORDS:
        return None
    kind = schema.get("type")
    if kind not in (None, "string", "integer", "number", "boolean"):
        return None
    enum = schema.get("enum")
    if enum is not None and not (isinstance(enum, list) and all(type(e) is str for e in enum)):
        return None
    pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
    min_len, max_len = schema.get("minLength"), schema.get("maxLength")
    bounds = [(schema.get(k), op) for k, op in (("minimum", "ge"), ("maximum", "le"),
                                                  ("exclusiveMinimum", "gt"), ("exclusiveMaximum", "lt"))]
    bounds = [(limit, op) for limit, op in bounds if limit is not None]
    if any(type(limit) not in (int, float) for limit, _ in bounds):
        return None
    choices = frozenset(enum) if enum is not None else None

    def accept(value: Any) -> bool:
        cls = type(value)
        # Exact types only: a bool is not a number here, and a float where an
        # integer is allowed (1.0 is one in 2020-12) is left to jsonschema.
        if kind == "string" and cls is not str:
            return False
        if kind == "integer" and cls is not int:
            return False
        if kind == "number" and cls is not int and cls is not float:
            return False
        if kind == "boolean" and cls is not bool:
            return False
        if kind is None and cls not in (str, int, float, bool, type(None)):
            return False  # an untyped keyword set over a container: not sure
        if choices is not None and (cls is not str or value not in choices):
            return False
        if cls is str:
            if min_len is not None and len(value) < min_len:
                return False
            if max_len is not None and len(value) > max_len:
                return False
            if pattern is not None and pattern.search(value) is None:
                return False
        elif (cls is int or cls is float) and bounds:
            for limit, op in bounds:
                if ((op == "ge" and not value >= limit) or (op == "le" and not value <= limit)
                        or (op == "gt" and not value > limit) or (op == "lt" and not value < limit)):
                    return False
        return True

    return accept

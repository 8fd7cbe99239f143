"""Registry of named Python functions a ``python-fn`` job may run.

Project code registers functions with :func:`register_function`; the cage's
fork server imports the registering modules once, so each confined child
finds them without reading any file. A function receives a
:class:`JobContext` (a confined DuckDB connection with one view per input,
the job's seed, logical clock and output directory) and its parameters, and
returns a :class:`Table` (``ctx.query(sql)`` builds one from a SELECT).

A job type of the chain that runs Python names its function here by its
registered name (the job-type registry, node/app/jobtypes.py, sits above the
cage, which knows nothing of chains). Functions the shipped job types use live
in the modules every pool imports (``node.cage.pool.DEFAULT_FUNCTION_MODULES``:
this one and node/cage/trend.py).
"""

from __future__ import annotations

import hashlib
import inspect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

JobFunction = Callable[["JobContext", dict[str, Any]], Any]


@dataclass(frozen=True)
class Table:
    """A result built in Python: column (name, type) pairs and rows.

    ``ordered``: the row order means something (a query's ORDER BY, or a
    function that sorts its rows itself) and is kept in the result;
    otherwise the rows are sorted canonically."""

    columns: Sequence[tuple[str, str]]
    rows: Sequence[Sequence[Any]]
    ordered: bool = False


@dataclass
class JobContext:
    """What a registered function may use. Everything here is part of the
    job's witness, so using only these keeps the function deterministic."""

    con: duckdb.DuckDBPyConnection
    inputs: dict[str, str]  # input name -> view name (same text)
    output_dir: str
    seed: bytes
    clock: int  # logical clock: the block time given with the job, in seconds
    rng: random.Random
    # ctx.query(sql, params=None) -> Table: a SELECT fetched canonically
    # (ordered when the SELECT has a top-level ORDER BY).
    query: Callable[..., "Table"]


@dataclass(frozen=True)
class RegisteredFunction:
    name: str
    function: JobFunction
    code_digest: bytes  # sha256 of the function's source text


_REGISTRY: dict[str, RegisteredFunction] = {}


def register_function(name: str) -> Callable[[JobFunction], JobFunction]:
    """Decorator: make ``fn`` runnable as ``python-fn`` job ``name``."""
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise ValueError(f"function name {name!r} must be letters, digits, '.', '_' or '-'")

    def decorate(fn: JobFunction) -> JobFunction:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.function is not fn:
            raise ValueError(f"function {name!r} is already registered by {existing.function.__module__}")
        source = inspect.getsource(fn)
        _REGISTRY[name] = RegisteredFunction(name, fn, hashlib.sha256(source.encode()).digest())
        return fn

    return decorate


def get_function(name: str) -> RegisteredFunction:
    """The registered function ``name``; KeyError naming the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"no registered function {name!r} (registered: {known})") from None


def registered_functions() -> dict[str, bytes]:
    """Name -> code digest of every registered function."""
    return {name: entry.code_digest for name, entry in sorted(_REGISTRY.items())}


def quote_identifier(name: str) -> str:
    """A DuckDB identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


@register_function("table_summary")
def table_summary(ctx: JobContext, params: dict[str, Any]) -> Table:
    """Per column of one input: type, row count, non-null and distinct counts,
    minimum and maximum (as text). Params: ``{"input": name}``."""
    name = params.get("input")
    if name not in ctx.inputs:
        raise ValueError(f"params.input must name one of the inputs ({', '.join(sorted(ctx.inputs))})")
    view = quote_identifier(ctx.inputs[name])
    described = ctx.con.execute(f"DESCRIBE {view}").fetchall()
    rows = []
    for column_name, column_type, *_ in described:
        col = quote_identifier(column_name)
        stats = ctx.con.execute(
            f"SELECT count(*), count({col}), count(DISTINCT {col}), "
            f"min({col})::VARCHAR, max({col})::VARCHAR FROM {view}"
        ).fetchone()
        assert stats is not None  # an aggregate without GROUP BY always yields one row
        total, non_null, distinct, low, high = stats
        rows.append([column_name, column_type, total, non_null, distinct, low, high])
    columns = [("column_name", "VARCHAR"), ("column_type", "VARCHAR"), ("rows", "BIGINT"),
               ("non_null", "BIGINT"), ("distinct", "BIGINT"), ("min", "VARCHAR"), ("max", "VARCHAR")]
    return Table(columns, rows)

"""The SQL gate: which statements a cage job may run, with a reason for each
refusal.

Only one SELECT is accepted. It may read its inputs only by name (the cage
creates one view per input), call no function that reads the clock, and
call random functions only when the cage has seeded them. The gate works on
DuckDB's own parse tree (``json_serialize_sql``), so spelling tricks in the
text do not hide a call. It is the first of three walls: DuckDB's locked
sandbox and Landlock stop anything it misses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb

MAX_SQL_BYTES = 256 * 1024

# Functions whose value comes from the wall clock (even after setseed).
CLOCK_FUNCTIONS = frozenset({
    "now", "current_timestamp", "get_current_timestamp", "transaction_timestamp",
    "statement_timestamp", "current_date", "current_time", "get_current_time", "today",
    "localtime", "localtimestamp", "current_localtime", "current_localtimestamp", "uuidv7",
})
# Bare keywords the parser turns into column references.
CLOCK_KEYWORDS = frozenset({
    "current_date", "current_time", "current_timestamp", "localtime", "localtimestamp",
})
RANDOM_FUNCTIONS = frozenset({"random", "uuid", "gen_random_uuid", "uuidv4"})
CAGE_ONLY_FUNCTIONS = frozenset({"setseed"})
# Table functions that compute rows without touching files or the catalog.
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
FILE_TABLE_FUNCTIONS = frozenset({
    "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json", "read_json_auto",
    "read_json_objects", "read_ndjson", "read_ndjson_auto", "read_ndjson_objects", "read_text",
    "read_blob", "glob", "sniff_csv", "parquet_metadata", "parquet_schema", "parquet_file_metadata",
    "parquet_kv_metadata", "iceberg_scan", "delta_scan", "sqlite_scan", "read_xlsx",
})


class SqlRefused(ValueError):
    """The statement is not allowed in the cage; the message says why."""


def _statement_kind(statement: Any) -> str:
    kind = str(statement.type).rsplit(".", 1)[-1]
    return "INSTALL/LOAD" if kind == "LOAD" else kind


def check_statement(sql: str) -> None:
    """Exactly one statement, and it is a SELECT."""
    if not isinstance(sql, str) or not sql.strip():
        raise SqlRefused("the SQL text is empty")
    if len(sql.encode()) > MAX_SQL_BYTES:
        raise SqlRefused(f"the SQL text exceeds {MAX_SQL_BYTES} bytes")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlRefused(f"cannot parse SQL: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise SqlRefused(f"exactly one statement is allowed, got {len(statements)}")
    kind = _statement_kind(statements[0])
    if kind != "SELECT":
        raise SqlRefused(f"only SELECT statements are allowed, got {kind}")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def walk_tree(node: Any) -> Iterator[dict[str, Any]]:
    """Every map in a DuckDB parse tree (``json_serialize_sql``), depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_trees(con: duckdb.DuckDBPyConnection, texts: Sequence[str]) -> list[dict[str, Any]]:
    """DuckDB's parse tree of each SQL text, as JSON (one statement for all)."""
    calls = ", ".join(f"json_serialize_sql($q{i})" for i in range(len(texts)))
    row = con.execute(f"SELECT {calls}", {f"q{i}": text for i, text in enumerate(texts)}).fetchone()
    try:
        trees = [json.loads(text) for text in row]  # type: ignore[union-attr]
    except RecursionError:  # DuckDB's depth limit is per expression; its JSON tree nests deeper
        raise SqlRefused("the SQL is nested too deeply to analyse") from None
    for tree in trees:
        if tree.get("error"):
            raise SqlRefused(f"cannot analyse SQL: {tree.get('error_message', 'unknown error')}")
    return trees


def parse_tree(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of one SELECT, as JSON."""
    return parse_trees(con, [sql])[0]


def has_top_level_order(tree: dict[str, Any]) -> bool:
    """True if the statement's outermost query has an ORDER BY (in DuckDB's
    own parse tree: an ORDER_MODIFIER among the top node's modifiers). An
    ORDER BY inside a subquery, a CTE or a window does not count."""
    statements = tree.get("statements")
    if not isinstance(statements, list) or len(statements) != 1 or not isinstance(statements[0], dict):
        return False
    node = statements[0].get("node")
    modifiers = node.get("modifiers") if isinstance(node, dict) else None
    return isinstance(modifiers, list) and any(
        isinstance(m, dict) and m.get("type") == "ORDER_MODIFIER" for m in modifiers)


def gate_sql(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    inputs: set[str],
    seeded: bool,
    clock_allowed: bool = False,
) -> dict[str, Any]:
    """Raise SqlRefused unless ``sql`` is one SELECT that reads only the
    named ``inputs`` and is deterministic under the cage's seed and clock.
    Returns DuckDB's parse tree of the accepted statement."""
    return gate_sql_texts(con, [sql], inputs=inputs, seeded=seeded, clock_allowed=clock_allowed)[0]


def gate_sql_texts(
    con: duckdb.DuckDBPyConnection,
    texts: Sequence[str],
    *,
    inputs: set[str],
    seeded: bool,
    clock_allowed: bool = False,
) -> list[dict[str, Any]]:
    """:func:`gate_sql` for each of ``texts`` (in order; the first refusal
    is raised), parsed by DuckDB in one statement. Returns the parse trees."""
    for sql in texts:
        check_statement(sql)
    trees = parse_trees(con, texts)
    for tree in trees:
        _check_tree(tree, inputs=inputs, seeded=seeded, clock_allowed=clock_allowed)
    return trees


def _check_tree(tree: dict[str, Any], *, inputs: set[str], seeded: bool, clock_allowed: bool) -> None:
    nodes = list(walk_tree(tree))
    ctes = {
        entry["key"].lower()
        for node in nodes if isinstance(node.get("cte_map"), dict)
        for entry in node["cte_map"].get("map", []) if isinstance(entry, dict) and "key" in entry
    }
    known = {name.lower() for name in inputs} | ctes
    listing = ", ".join(sorted(inputs)) or "none"
    table_function_nodes = {id(node["function"]) for node in nodes
                            if node.get("type") == "TABLE_FUNCTION" and isinstance(node.get("function"), dict)}
    for node in nodes:
        node_type = node.get("type")
        if node.get("class") == "FUNCTION" and "function_name" in node:
            name = str(node["function_name"]).lower()
            if id(node) in table_function_nodes:
                _check_table_function(name, listing)
            else:
                _check_function(name, seeded=seeded, clock_allowed=clock_allowed)
        elif node_type == "BASE_TABLE":
            _check_table(node, known, listing)
        elif node.get("class") == "COLUMN_REF":
            names = node.get("column_names") or []
            if len(names) == 1 and str(names[0]).lower() in CLOCK_KEYWORDS and not clock_allowed:
                raise SqlRefused(f"{names[0]} reads the wall clock; the job's clock is logical")
        sample = node.get("sample")
        if isinstance(sample, dict) and not sample.get("repeatable", False):
            raise SqlRefused("USING SAMPLE needs REPEATABLE(seed) to be deterministic")


def _check_function(name: str, *, seeded: bool, clock_allowed: bool) -> None:
    if name in CLOCK_FUNCTIONS and not clock_allowed:
        raise SqlRefused(f"{name}() reads the wall clock; the job's clock is logical")
    if name in CAGE_ONLY_FUNCTIONS:
        raise SqlRefused(f"{name}() is reserved to the cage, which seeds every job")
    if name in RANDOM_FUNCTIONS and not seeded:
        raise SqlRefused(f"{name}() is unseeded: this policy has rng_seed_source = 'none'")


def _check_table_function(name: str, listing: str) -> None:
    if name in ALLOWED_TABLE_FUNCTIONS:
        return
    if name in FILE_TABLE_FUNCTIONS:
        raise SqlRefused(f"{name}() reads files by path; refer to the inputs by name ({listing})")
    raise SqlRefused(f"table function {name}() is not allowed in a cage job")


def _check_table(node: dict[str, Any], known: set[str], listing: str) -> None:
    name = str(node.get("table_name", ""))
    if node.get("catalog_name") or node.get("schema_name"):
        qualified = ".".join(p for p in (node.get("catalog_name"), node.get("schema_name"), name) if p)
        raise SqlRefused(f"qualified table {qualified!r}: jobs read only their inputs ({listing})")
    if "://" in name:
        raise SqlRefused(f"URLs are not allowed: {name!r}")
    if name.lower() in known:
        return
    if "/" in name or "." in name:
        raise SqlRefused(f"{name!r} is a file path; refer to the inputs by name ({listing})")
    raise SqlRefused(f"table {name!r} is not one of the inputs ({listing})")

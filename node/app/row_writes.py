"""Writing the working state's rows back to the ``state_`` tables at the end of
a block, in bulk: rows new to a table are inserted, rows read from it are
updated only if they changed (and only the columns that changed), unchanged
rows are skipped.

DuckDB CPU (threads=1, a node's tables, bench numbers of issue 16): an
upsert (INSERT ... ON CONFLICT, INSERT OR REPLACE) ~2-5 ms, an UPDATE joined
to ``unnest`` lists ~2-3 ms whatever the row count, a plain ``UPDATE t SET
a = ? WHERE pk = ?`` ~0.4-1 ms per row, less with fewer columns set; hence
the three ways, and per-row updates for one or two rows. Also the key lists
of the working state's bulk reads (:func:`keys_in`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from node.app.state_rows import row_values

PRIMARY_KEYS = {
    "state_services": ("service_id",),
    "state_nodes": ("node_key",),
    "state_jobs": ("job_id",),
    "state_assignments": ("job_id", "node_key"),
    "state_results": ("job_id", "node_key"),
    "state_decisions": ("decision_id",),
}
# UNIQUE besides the primary key: an UPDATE never sets them (a row whose
# UNIQUE column would change goes the upsert way).
UNIQUE_COLUMNS = {"state_jobs": ("seq",), "state_services": ("tenant", "name")}
# Up to this many new rows, an INSERT names their values as parameters (VALUES (?, ...), ...):
# ~0.1-0.3 ms less than selecting them from unnest lists, which costs less from ~5 rows.
VALUES_ROWS = 3
# Up to this many changed rows, one UPDATE per row (~0.4-1 ms each) costs less
# than one UPDATE joined to unnest lists (~1-3 ms).
PER_ROW_UPDATES = 2

# (table, key) -> a row's values as the table holds them (read, or written back)
Stored = dict[tuple[str, Any], tuple[Any, ...]]


def write_rows(conn: duckdb.DuckDBPyConnection, stored: Stored, table: str, columns: Sequence[str],
               rows: list[tuple[Any, Any]]) -> None:
    """Write ``(key, row)`` pairs back: rows not in ``stored`` inserted, the others
    updated only if their values changed; ``stored`` then holds the values written."""
    new: list[tuple[Any, ...]] = []
    changed: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []  # (before, after)
    moved: list[tuple[Any, ...]] = []
    fixed = [columns.index(name) for name in UNIQUE_COLUMNS.get(table, ())]
    for key, row in rows:
        values = row_values(row)
        before = stored.get((table, key))
        if before is None:
            new.append(values)
        elif before != values:
            # An UPDATE of a row known to be there costs less than an upsert; one that
            # would change a UNIQUE column (never done today) goes the general way.
            if any(before[i] != values[i] for i in fixed):
                moved.append(values)
            else:
                changed.append((before, values))
        stored[(table, key)] = values
    _write(conn, f"INSERT INTO {table} ({', '.join(columns)})", new)
    _update(conn, table, columns, changed)
    upsert(conn, table, columns, moved)


def upsert(conn: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
    """Insert rows, or rewrite those whose primary key the table holds."""
    keys = PRIMARY_KEYS[table]
    updates = ", ".join(f"{name} = excluded.{name}" for name in columns if name not in keys)
    _write(conn, f"INSERT INTO {table} ({', '.join(columns)})", rows,
           f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}")


def _update(conn: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str],
            rows: list[tuple[tuple[Any, ...], tuple[Any, ...]]]) -> None:
    """Rewrite the columns that changed (``(before, after)`` values) of rows that
    are in ``table`` (matched on the primary key), UNIQUE columns left as they are."""
    if not rows:
        return
    keys, unique = PRIMARY_KEYS[table], UNIQUE_COLUMNS.get(table, ())
    key_at = [columns.index(name) for name in keys]
    settable = [i for i, name in enumerate(columns) if name not in keys and name not in unique]
    if len(rows) <= PER_ROW_UPDATES:
        for before, after in rows:
            sets = [i for i in settable if before[i] != after[i]]
            conn.execute(
                f"UPDATE {table} SET {', '.join(f'{_q(columns[i])} = ?' for i in sets)} "
                f"WHERE {' AND '.join(f'{_q(columns[i])} = ?' for i in key_at)}",
                [after[i] for i in sets] + [after[i] for i in key_at],
            )
        return
    sets = [i for i in settable if any(before[i] != after[i] for before, after in rows)]
    used = key_at + sets
    match = " AND ".join(f'{table}.{_q(columns[i])} = v.{_q(columns[i])}' for i in key_at)
    conn.execute(
        f"UPDATE {table} SET {', '.join(f'{_q(columns[i])} = v.{_q(columns[i])}' for i in sets)} "
        f"FROM (SELECT {', '.join(f'unnest(?) AS {_q(columns[i])}' for i in used)}) AS v WHERE {match}",
        [[after[i] for _, after in rows] for i in used],
    )


def _q(name: str) -> str:
    return f'"{name}"'


def insert(conn: duckdb.DuckDBPyConnection, table: str, rows: list[tuple]) -> None:
    """Insert rows, every column in table order."""
    _write(conn, f"INSERT INTO {table}", rows)


def _write(conn: duckdb.DuckDBPyConnection, head: str, rows: list[tuple], tail: str = "") -> None:
    if not rows:
        return
    width = len(rows[0])
    if len(rows) <= VALUES_ROWS:
        row = f"({', '.join('?' * width)})"
        conn.execute(f"{head} VALUES {', '.join([row] * len(rows))}{tail}", [v for values in rows for v in values])
        return
    conn.execute(
        f"{head} SELECT {', '.join(['unnest(?)'] * width)}{tail}",
        [[row[i] for row in rows] for i in range(width)],
    )


# Up to this many keys, a lookup names them as parameters (``k IN (?, ?)``: DuckDB
# answers it from the primary key's index, ~0.5 ms for one key); more go as one
# list (``k IN (SELECT unnest(?))``: a join, ~1-1.5 ms whatever the count).
_LISTED_KEYS = 16


def keys_in(column: str, keys: list[Any]) -> tuple[str, list[Any]]:
    """A ``column IN (...)`` condition for ``keys`` (not empty) and its parameters."""
    if len(keys) <= _LISTED_KEYS:
        return f"{column} IN ({', '.join('?' * len(keys))})", list(keys)
    return f"{column} IN (SELECT unnest(?))", [list(keys)]

"""The node database: one DuckDB file per data directory.

``open_node_db(data_dir)`` opens ``data_dir/node.duckdb`` and turns DuckDB's
failures (held by another process, corrupt, unreadable) into one clear
:class:`NodeDatabaseError`. Every package keeps its tables in this one
connection and creates them itself (``ChainStore(conn)`` makes the chain
tables if missing), so no central schema has to know them all.

A DuckDB connection is not safe to use from two threads at once; a shell
that moves work to a thread gives it ``conn.cursor()`` or serialises access.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from node.base.errors import UserError

DB_FILENAME = "node.duckdb"

_LOCK_PID_RE = re.compile(r"\(PID (\d+)\)")
_CORRUPT_MARKERS = (
    "not a valid DuckDB database file",
    "Corrupt database file",
    "Could not read enough bytes",
    "checksum",
)


class NodeDatabaseError(UserError):
    """The node database cannot be opened or used (locked, corrupt, unreadable)."""


def db_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where the node database of ``data_dir`` lives."""
    return Path(data_dir) / DB_FILENAME


def open_node_db(
    data_dir: str | os.PathLike[str], *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed, unless ``read_only``) the node's DuckDB file.

    A zero-length file without a WAL (left by a crash while the database was
    first being created) is replaced by a fresh database.
    Raises NodeDatabaseError naming the file and what is wrong: another
    process holds it (with that pid), it is corrupt or not a DuckDB file, or
    it cannot be read or created.
    """
    path = db_path(data_dir)
    if read_only and not path.exists():
        raise NodeDatabaseError(f"node database {path} does not exist; has this node been initialised?")
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeDatabaseError(f"cannot create data directory {path.parent}: {exc.strerror}") from None
    if path.is_dir():
        raise NodeDatabaseError(f"node database {path} is a directory, not a DuckDB file")
    if not read_only:
        _remove_unfinished_creation(path)
    try:
        conn = duckdb.connect(str(path), read_only=read_only)
        # Touch the catalog so that a damaged file fails here rather than
        # half-way through the first store's setup.
        conn.execute("SELECT count(*) FROM duckdb_tables()").fetchone()
    except duckdb.Error as exc:
        raise NodeDatabaseError(describe_open_error(path, exc)) from None
    return conn


def _remove_unfinished_creation(path: Path) -> None:
    # A zero-length file with no WAL holds no data: the process that was
    # creating the database died before DuckDB wrote its header. Starting
    # over is the only useful thing to do with it.
    wal = path.with_name(path.name + ".wal")
    try:
        if path.stat().st_size == 0 and not wal.exists():
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise NodeDatabaseError(f"cannot inspect node database {path}: {exc.strerror}") from None


def describe_open_error(path: Path, exc: BaseException) -> str:
    """One line saying why DuckDB could not open ``path``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Could not set lock" in text or "Conflicting lock" in text:
        match = _LOCK_PID_RE.search(text)
        holder = f" (pid {match.group(1)})" if match else ""
        return (
            f"node database {path} is locked by another process{holder}; "
            "is a daemon already running with this data directory?"
        )
    if any(marker in text for marker in _CORRUPT_MARKERS):
        return (
            f"node database {path} is corrupt or not a DuckDB database ({text}); "
            "restore it from a backup, or move it away to resync the chain from peers"
        )
    if isinstance(exc, duckdb.IOException):
        return f"cannot read node database {path}: {text}"
    return f"cannot open node database {path}: {text}"


def one_row(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    """The row of an executed query that always returns exactly one (an
    aggregate such as ``count(*)``, a setting). ``fetchone()`` is typed
    Optional for queries that may return none; this states that ours cannot."""
    row = result.fetchone()
    if row is None:
        raise duckdb.InvalidInputException("expected the query to return a row, it returned none")
    return row


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run the block as one DuckDB transaction: all of it commits, or none.

    On any exception the transaction is rolled back and the exception
    re-raised. Transactions do not nest; do not call this inside another.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        _rollback_quietly(conn)
        raise


def _rollback_quietly(conn: duckdb.DuckDBPyConnection) -> None:
    # The original error matters more than a failed rollback (for example
    # after a failed COMMIT, which DuckDB has already rolled back).
    try:
        conn.execute("ROLLBACK")
    except duckdb.Error:
        pass

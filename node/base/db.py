"""The node database: one DuckDB file per data directory.

``open_node_db(data_dir)`` opens ``data_dir/node.duckdb`` and turns DuckDB's
failures (held by another process, corrupt, unreadable) into one clear
:class:`NodeDatabaseError`. Every package keeps its tables in this one
connection and creates them itself (``ChainStore(conn)`` makes the chain
tables if missing), so no central schema has to know them all.

A DuckDB connection is not safe to use from two threads at once; a shell
that moves work to a thread gives it ``conn.cursor()`` or serialises access.

Surviving kill -9 (checkpoints). DuckDB commits to its write-ahead log
(``node.duckdb.wal``), which a crash at any point leaves replayable. A
checkpoint moves the log into the database file: it writes new data to free
blocks, then rewrites its *metadata blocks in place* (whole 256 KiB blocks,
each with one checksum over the block), then the header. A SIGKILL inside that
in-place write (the kernel stops a large write between pages on a fatal
signal) leaves a metadata block whose checksum fails while the header still
in force points into it: the file no longer opens ("Corrupt database file:
computed checksum X does not match stored checksum Y in block at location
12288"). This happens with any table, index or not. So this module:

* turns DuckDB's automatic checkpoints and its checkpoint on close off
  (``checkpoint_threshold`` of 1000 TB, ``disable_checkpoint_on_shutdown``);
  checkpoints happen only through :func:`checkpoint_node_db` (the chain store
  calls it once the log passes a size) and when an open replays a log;
* before every checkpoint, keeps a copy of the metadata blocks the header in
  force uses, in ``node.duckdb.guard`` (written to a temporary file, synced,
  renamed): ``MNDBGUARD1``, then the header iteration, block size and block
  count (u64 little-endian each), then per block its id (u64) and its bytes,
  then the SHA-256 of everything before it;
* on an open that fails on a checksum, if the guard belongs to the header in
  force (same iteration), writes its blocks back and opens again. The blocks
  the interrupted checkpoint wrote elsewhere were free for that header, and
  the log, which the header does not cover yet, is replayed: nothing
  committed is lost.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from node.base.durable import fsync_dir
from node.base.errors import UserError

DB_FILENAME = "node.duckdb"
GUARD_SUFFIX = ".guard"

_GUARD_MAGIC = b"MNDBGUARD1"
# DuckDB's file layout: a main header, two database headers (the one with
# the higher iteration is in force), then block 0.
_HEADER_OFFSETS = (4096, 8192)
_FIRST_BLOCK = 12288
# No automatic checkpoint (see the module docstring): the log is checkpointed
# by checkpoint_node_db, under the metadata guard.
_NO_AUTO_CHECKPOINT = "1000TB"

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
    if read_only:
        # A torn checkpoint is repaired here too (the blocks written back are
        # the committed state's own): a CLI that only reads must not call a
        # file corrupt that the daemon's next start would open.
        try:
            return _connect(path, read_only=True)
        except NodeDatabaseError as exc:
            if "checksum" not in str(exc) or not _restore_from_guard(path):
                raise
        return _connect(path, read_only=True)
    _remove_unfinished_creation(path)
    if _wal_path(path).exists() and not _guard_current(path):
        # Opening replays the log and checkpoints: guard that checkpoint too.
        # A read-only open replays in memory only, and names the metadata blocks.
        try:
            probe = _connect(path, read_only=True)
        except NodeDatabaseError:
            pass  # the read-write open below reports it (or repairs it)
        else:
            try:
                _write_guard(probe, path)
            finally:
                probe.close()
    try:
        conn = _connect(path, read_only=False)
    except NodeDatabaseError as exc:
        if "checksum" not in str(exc) or not _restore_from_guard(path):
            raise
        conn = _connect(path, read_only=False)
    try:
        conn.execute(f"SET checkpoint_threshold = '{_NO_AUTO_CHECKPOINT}'")
        conn.execute("PRAGMA disable_checkpoint_on_shutdown")
        if not _guard_current(path):  # the open may have checkpointed a replayed log
            _write_guard(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect(path: Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        # One thread: the node's statements are small point reads and writes,
        # where waking a second worker costs more than it gives (a point query
        # ~300 us of CPU with one thread, ~450 us with two; bench/duckdb_stmt.py).
        conn = duckdb.connect(str(path), read_only=read_only, config={"threads": 1})
        # Touch the catalog so that a damaged file fails here rather than
        # half-way through the first store's setup.
        conn.execute("SELECT count(*) FROM duckdb_tables()").fetchone()
    except duckdb.Error as exc:
        raise NodeDatabaseError(describe_open_error(path, exc)) from None
    return conn


def checkpoint_node_db(conn: duckdb.DuckDBPyConnection) -> None:
    """Move the write-ahead log into the database file, kill-safely: the
    metadata blocks the checkpoint rewrites in place are saved first (see the
    module docstring), and saved again once the new header is in force.
    Raises duckdb.Error as DuckDB does (disk full...); nothing committed is lost
    then, the log still holds it."""
    path = _file_of(conn)
    # Metadata blocks change only in checkpoints, so a guard of the header in
    # force still holds them (usually the one saved after the last checkpoint).
    if path is not None and not _guard_current(path):
        _write_guard(conn, path)
    conn.execute("CHECKPOINT")
    if path is not None:
        _write_guard(conn, path)


def wal_size(conn_or_path: duckdb.DuckDBPyConnection | Path) -> int:
    """Bytes in the write-ahead log of the node database (0 if none or in memory)."""
    path = conn_or_path if isinstance(conn_or_path, Path) else _file_of(conn_or_path)
    if path is None:
        return 0
    try:
        return _wal_path(path).stat().st_size
    except FileNotFoundError:
        return 0


def _file_of(conn: duckdb.DuckDBPyConnection) -> Path | None:
    row = conn.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    return Path(row[0]) if row and row[0] else None


def _wal_path(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def _guard_path(path: Path) -> Path:
    return path.with_name(path.name + GUARD_SUFFIX)


def _header_in_force(path: Path) -> tuple[int, int] | None:
    """(iteration, block size) of the database header in force, or None if
    the file has no header yet. Layout: checksum, iteration, meta block, free
    list, block count, block size (u64 little-endian each)."""
    with open(path, "rb") as f:
        head = f.read(_FIRST_BLOCK)
    if len(head) < _FIRST_BLOCK:
        return None
    headers = [struct.unpack_from("<6Q", head, offset) for offset in _HEADER_OFFSETS]
    best = max(headers, key=lambda h: h[1])
    return best[1], best[5]


def _read_guard(path: Path) -> tuple[int, int, list[tuple[int, bytes]]] | None:
    """(iteration, block size, blocks) of the guard file, or None if absent, damaged
    or unreadable (no usable copy: writing a new one then says what is wrong)."""
    try:
        data = _guard_path(path).read_bytes()
    except OSError:
        return None
    body, digest = data[:-32], data[-32:]
    if len(data) < len(_GUARD_MAGIC) + 56 or not body.startswith(_GUARD_MAGIC) \
            or hashlib.sha256(body).digest() != digest:
        return None
    iteration, block_size, count = struct.unpack_from("<3Q", body, len(_GUARD_MAGIC))
    offset = len(_GUARD_MAGIC) + 24
    if len(body) != offset + count * (8 + block_size):
        return None
    blocks = []
    for _ in range(count):
        (block_id,) = struct.unpack_from("<Q", body, offset)
        blocks.append((block_id, body[offset + 8:offset + 8 + block_size]))
        offset += 8 + block_size
    return iteration, block_size, blocks


def _guard_current(path: Path) -> bool:
    guard = _read_guard(path)
    header = _header_in_force(path)
    return guard is not None and header is not None and guard[:2] == header


def _write_guard(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Save the metadata blocks of the header in force (no checkpoint may be
    running: this module's connections only checkpoint in checkpoint_node_db)."""
    header = _header_in_force(path)
    if header is None:
        return
    iteration, block_size = header
    block_ids = sorted(int(r[0]) for r in conn.execute("SELECT block_id FROM pragma_metadata_info()").fetchall())
    parts = [_GUARD_MAGIC, struct.pack("<3Q", iteration, block_size, len(block_ids))]
    with open(path, "rb") as f:
        for block_id in block_ids:
            f.seek(_FIRST_BLOCK + block_id * block_size)
            block = f.read(block_size)
            if len(block) != block_size:
                raise NodeDatabaseError(f"node database {path}: metadata block {block_id} is past the end of the file")
            parts += [struct.pack("<Q", block_id), block]
    body = b"".join(parts)
    guard = _guard_path(path)
    tmp = guard.with_name(guard.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(body + hashlib.sha256(body).digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, guard)
        fsync_dir(path.parent)
    except OSError as exc:
        raise NodeDatabaseError(f"cannot write {guard} (the copy that makes checkpoints crash-safe): "
                                f"{exc.strerror}") from None


def _restore_from_guard(path: Path) -> bool:
    """Write the guard's blocks back if it belongs to the header in force
    (an interrupted checkpoint tore one of them); whether it did."""
    guard = _read_guard(path)
    header = _header_in_force(path)
    if guard is None or header is None or guard[:2] != header or not guard[2]:
        return False
    _, block_size, blocks = guard
    try:
        with open(path, "r+b") as f:
            for block_id, block in blocks:
                f.seek(_FIRST_BLOCK + block_id * block_size)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise NodeDatabaseError(f"node database {path} has a checkpoint torn by a crash and cannot be repaired from "
                                f"{_guard_path(path)}: {exc.strerror or exc}") from None
    return True


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


def in_transaction(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether a transaction is open on ``conn``: in autocommit mode each
    statement is a transaction of its own, so two statements see two ids.
    (A BEGIN that fails because one is open aborts it, so it cannot be the test.)"""
    first = one_row(conn.execute("SELECT txid_current()"))[0]
    return bool(one_row(conn.execute("SELECT txid_current()"))[0] == first)


@contextmanager
def atomic(conn: duckdb.DuckDBPyConnection) -> Iterator[bool]:
    """Run the block atomically: in a transaction of its own (yields True, and
    commits it), or inside the caller's if one is open (yields False: it then
    commits or rolls back with the caller's). For a writer that serves both
    autocommit callers and callers applying a block in one transaction."""
    if in_transaction(conn):
        yield False
        return
    with transaction(conn):
        yield True


def _rollback_quietly(conn: duckdb.DuckDBPyConnection) -> None:
    # The original error matters more than a failed rollback (for example
    # after a failed COMMIT, which DuckDB has already rolled back).
    try:
        conn.execute("ROLLBACK")
    except duckdb.Error:
        pass

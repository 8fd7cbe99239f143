"""A checkpoint torn by kill -9 must not cost the store (see node/base/db.py).

DuckDB rewrites its metadata block in place at every checkpoint, before the
new header; the kernel stops a large write between pages when SIGKILL
arrives. This builds that exact file state without killing anything: the
header in force is the old one, the log is still there, and the first page of
block 0 already holds the next checkpoint's bytes. Plain DuckDB cannot open
such a file (the CI failure: "computed checksum ... in block at location
12288"); ``open_node_db`` repairs it from its guard and loses no block.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import duckdb
import pytest

from node.base.codec import hash_tagged
from node.base.db import NodeDatabaseError, checkpoint_node_db, db_path, open_node_db, wal_size
from node.consensus.store import ChainStore
from tests.consensus.test_store_crash import CHAIN, GENESIS

BLOCK_0 = 12288  # DuckDB: main header, two database headers, then block 0
TORN_BYTES = 4096  # one page of the in-place write reached the file


def _append(store: ChainStore, count: int) -> None:
    for _ in range(count):
        head = store.head()
        height = 1 if head is None else head.height + 1
        parent = GENESIS if head is None else head.hash
        block = b"torn-block" + height.to_bytes(8, "big") + parent
        store.append_block(height=height, block_hash=hash_tagged("test/block", block), parent_hash=parent,
                           timestamp_ms=height, proposer=b"torn", block=block, txs=[])


def _torn_store(tmp_path: Path) -> tuple[Path, int]:
    """A data directory whose checkpoint was cut inside the block-0 write; its head height."""
    live = tmp_path / "live"
    conn = open_node_db(live)
    store = ChainStore(conn)
    store.bind_chain(CHAIN, GENESIS)
    _append(store, 5)
    checkpoint_node_db(conn)  # header K, and its guard
    _append(store, 5)  # in the log only
    head = store.head()
    assert head is not None and wal_size(conn) > 0
    conn.close()  # no checkpoint on close: the log stays
    # What the next checkpoint writes to block 0: let a copy run it.
    ahead = tmp_path / "ahead"
    shutil.copytree(live, ahead)
    duckdb.connect(str(db_path(ahead))).close()  # replays the log and checkpoints
    with open(db_path(ahead), "rb") as f:
        f.seek(BLOCK_0)
        new_first_page = f.read(TORN_BYTES)
    with open(db_path(live), "r+b") as f:
        f.seek(BLOCK_0)
        assert f.read(TORN_BYTES) != new_first_page, "the checkpoint did not rewrite block 0"
        f.seek(BLOCK_0)
        f.write(new_first_page)
    return live, head.height


def test_plain_duckdb_cannot_open_a_torn_checkpoint(tmp_path):
    live, _ = _torn_store(tmp_path)
    with pytest.raises(duckdb.Error, match="checksum .* in block at location 12288"):
        duckdb.connect(str(db_path(live)), read_only=True)


def test_open_node_db_repairs_a_torn_checkpoint_and_keeps_every_block(tmp_path):
    live, height = _torn_store(tmp_path)
    conn = open_node_db(live)
    try:
        assert ChainStore(conn).head().height == height  # the logged blocks were replayed too
    finally:
        conn.close()
    conn = open_node_db(live)  # and it stays repaired
    conn.close()


def test_a_read_only_open_repairs_a_torn_checkpoint_too(tmp_path):
    """The CLI's read-only commands (receipt, audit) see what the daemon would."""
    live, height = _torn_store(tmp_path)
    conn = open_node_db(live, read_only=True)
    try:
        assert conn.execute("SELECT max(height) FROM chain_blocks").fetchone() == (height,)
    finally:
        conn.close()


def test_a_torn_checkpoint_without_its_guard_is_reported_not_a_traceback(tmp_path):
    live, _ = _torn_store(tmp_path)
    (live / "node.duckdb.guard").unlink()
    with pytest.raises(NodeDatabaseError, match="is corrupt .*checksum"):
        open_node_db(live)


def test_a_guard_of_another_header_is_never_written_back(tmp_path):
    live, _ = _torn_store(tmp_path)
    guard = live / "node.duckdb.guard"
    data = bytearray(guard.read_bytes())
    data[10] ^= 1  # the header iteration it belongs to: no longer the one in force
    guard.write_bytes(bytes(data[:-32]) + hashlib.sha256(bytes(data[:-32])).digest())
    with pytest.raises(NodeDatabaseError, match="is corrupt"):
        open_node_db(live)


def test_checkpoints_only_happen_through_the_store(tmp_path):
    """DuckDB's automatic checkpoint is off: the log grows until the store checkpoints it."""
    conn = open_node_db(tmp_path)
    try:
        store = ChainStore(conn, checkpoint_wal_bytes=1 << 40)
        store.bind_chain(CHAIN, GENESIS)
        conn.execute("CREATE TABLE filler (b BLOB)")
        conn.execute("INSERT INTO filler SELECT repeat('x'::BLOB, 1000) FROM range(40000)")  # ~40 MB
        assert wal_size(conn) > 32 * 1024 * 1024
        store.checkpoint_wal_bytes = 1
        _append(store, 1)
        assert wal_size(conn) == 0
    finally:
        conn.close()
    conn = open_node_db(tmp_path)
    try:
        assert ChainStore(conn).head().height == 1
    finally:
        conn.close()


def test_a_guard_that_cannot_be_written_stops_the_append_as_a_data_directory_fault(tmp_path):
    """No checkpoint without its guard: when the copy cannot be written (here its
    path is taken by a non-empty directory, as a full or failing disk would also
    refuse it) the append that wanted the checkpoint stops with the node's
    data-directory fault, the block it appended is kept, and the log is not
    checkpointed unguarded."""
    from node.base.errors import DataDirError

    conn = open_node_db(tmp_path)
    store = ChainStore(conn, checkpoint_wal_bytes=1)
    store.bind_chain(CHAIN, GENESIS)
    guard = db_path(tmp_path).with_name(db_path(tmp_path).name + ".guard")
    guard.unlink(missing_ok=True)
    guard.mkdir()
    (guard / "taken").write_text("x")
    with pytest.raises(DataDirError, match="checkpointing it failed"):
        _append(store, 1)
    assert wal_size(conn) > 0  # not checkpointed without its guard
    conn.close()
    shutil.rmtree(guard)
    reopened = ChainStore(open_node_db(tmp_path))
    assert reopened.head() is not None and reopened.head().height == 1

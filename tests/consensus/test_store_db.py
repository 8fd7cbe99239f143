"""The node database opener: creation, clear errors, and the transaction helper."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import duckdb
import pytest

from node.base.db import DB_FILENAME, NodeDatabaseError, open_node_db, transaction
from node.base.errors import UserError


def test_creates_the_data_directory_and_file(tmp_path):
    data_dir = tmp_path / "nested" / "node"
    conn = open_node_db(data_dir)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.close()
    assert (data_dir / DB_FILENAME).is_file()
    conn = open_node_db(data_dir, read_only=True)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()


def test_a_database_held_by_another_process_names_its_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, duckdb
            conn = duckdb.connect({str(tmp_path / DB_FILENAME)!r})
            print("ready", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(NodeDatabaseError) as info:
            open_node_db(tmp_path)
        message = str(info.value)
        assert f"(pid {holder.pid})" in message and "already running" in message
        assert DB_FILENAME in message and "\n" not in message
        assert isinstance(info.value, UserError)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


@pytest.mark.parametrize("content", [b"\x00", b"not a database" * 500])
def test_a_file_that_is_not_duckdb_is_reported_as_corrupt(tmp_path, content):
    (tmp_path / DB_FILENAME).write_bytes(content)
    with pytest.raises(NodeDatabaseError, match="corrupt or not a DuckDB database"):
        open_node_db(tmp_path)
    assert (tmp_path / DB_FILENAME).read_bytes() == content  # nothing overwritten


def test_an_empty_file_from_a_crash_during_creation_is_started_over(tmp_path):
    (tmp_path / DB_FILENAME).write_bytes(b"")
    with pytest.raises(NodeDatabaseError, match="corrupt"):
        open_node_db(tmp_path, read_only=True)  # read-only never changes files
    conn = open_node_db(tmp_path)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.close()
    (tmp_path / "wal-guard").mkdir()
    empty_with_wal = tmp_path / "wal-guard" / DB_FILENAME
    empty_with_wal.write_bytes(b"")
    (tmp_path / "wal-guard" / (DB_FILENAME + ".wal")).write_bytes(b"wal")
    with pytest.raises(NodeDatabaseError):
        open_node_db(empty_with_wal.parent)  # a WAL might hold data: leave it to a person
    assert empty_with_wal.exists()


def test_a_damaged_database_is_reported_as_corrupt(tmp_path):
    conn = open_node_db(tmp_path)
    conn.execute("CREATE TABLE t AS SELECT range AS x FROM range(200000)")
    conn.close()
    path = tmp_path / DB_FILENAME
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # smash the first metadata block
    path.write_bytes(bytes(data))
    with pytest.raises(NodeDatabaseError, match="corrupt"):
        open_node_db(tmp_path)


def test_directory_in_place_of_the_file_and_missing_read_only(tmp_path):
    (tmp_path / DB_FILENAME).mkdir()
    with pytest.raises(NodeDatabaseError, match="is a directory"):
        open_node_db(tmp_path)
    with pytest.raises(NodeDatabaseError, match="does not exist"):
        open_node_db(tmp_path / "empty", read_only=True)
    assert not (tmp_path / "empty").exists()


def test_transaction_commits_or_rolls_back_everything():
    conn = duckdb.connect(":memory:")
    conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(duckdb.ConstraintException):
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (3)")
            conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError):
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (4)")
            raise RuntimeError("caller failed")
    assert conn.execute("SELECT list(x ORDER BY x) FROM t").fetchone() == ([1, 2],)
    with transaction(conn):  # the connection is usable again
        conn.execute("INSERT INTO t VALUES (5)")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)

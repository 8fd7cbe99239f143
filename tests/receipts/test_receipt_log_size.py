"""The receipt log's size kept in memory: it must always equal the stored
log's, through appends, reopening, rolled-back and failed transactions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest

from node.base.db import transaction
from node.base.merkle import merkle_root
from node.receipts.log import LogError, LogHead, ReceiptLog


def rid(i: int) -> bytes:
    return hashlib.sha256(b"size %d" % i).digest()


def stored(conn: duckdb.DuckDBPyConnection) -> int:
    """The number of leaves as the table holds them (what the cache must match)."""
    row = conn.execute("SELECT count(*) FROM receipt_log_nodes WHERE node < 1::BIGINT << 56").fetchone()
    assert row is not None
    return int(row[0])


def check(log: ReceiptLog, conn: duckdb.DuckDBPyConnection, ids: list[bytes]) -> None:
    assert log.size() == stored(conn) == len(ids)
    assert log.head() == LogHead(len(ids), merkle_root(ids))
    assert log.head_after([]) == log.head()


def test_size_follows_appends_and_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "node.duckdb")
    conn = duckdb.connect(path)
    log = ReceiptLog(conn)
    ids: list[bytes] = []
    check(log, conn, ids)
    for batch in [1, 0, 3, 64, 1, 200]:
        new = [rid(len(ids) + i) for i in range(batch)]
        log.append(new)
        ids += new
        check(log, conn, ids)
    conn.close()
    again = duckdb.connect(path)
    log = ReceiptLog(again)
    check(log, again, ids)
    log.append([rid(999)])
    check(log, again, ids + [rid(999)])
    again.close()


def test_a_rolled_back_append_does_not_advance_the_size() -> None:
    conn = duckdb.connect()
    log = ReceiptLog(conn)
    ids = [rid(i) for i in range(5)]
    log.append(ids)
    with pytest.raises(RuntimeError, match="block refused"):
        with transaction(conn):
            log.append([rid(10), rid(11)])
            assert log.size() == stored(conn) == 7  # the transaction sees its own rows
            log.append([rid(12)])
            assert log.size() == 8
            raise RuntimeError("block refused")
    check(log, conn, ids)
    # Again with no read inside the transaction, then an append right after it.
    with pytest.raises(RuntimeError):
        with transaction(conn):
            log.append([rid(20)])
            raise RuntimeError("block refused")
    log.append([rid(21)])
    check(log, conn, ids + [rid(21)])


def test_a_committed_transaction_keeps_the_size() -> None:
    conn = duckdb.connect()
    log = ReceiptLog(conn)
    with transaction(conn):
        log.append_receipts([])
        log.append([rid(0), rid(1)])
    check(log, conn, [rid(0), rid(1)])
    with transaction(conn):  # a transaction that writes no receipts
        assert log.size() == 2
    check(log, conn, [rid(0), rid(1)])


def test_an_aborted_transaction_and_refused_appends_leave_the_size() -> None:
    conn = duckdb.connect()
    conn.execute("CREATE TABLE other (x INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO other VALUES (1)")
    log = ReceiptLog(conn)
    log.append([rid(0)])
    # A statement fails after the append: DuckDB aborts the transaction.
    with pytest.raises(duckdb.ConstraintException):
        with transaction(conn):
            log.append([rid(1), rid(2)])
            conn.execute("INSERT INTO other VALUES (1)")
    check(log, conn, [rid(0)])
    # Refused batches write nothing.
    for bad in ([rid(0)], [rid(3), rid(3)], [b"short"]):
        with pytest.raises(LogError):
            log.append(bad)
        check(log, conn, [rid(0)])


def test_opening_inside_an_uncommitted_transaction_that_rolls_back() -> None:
    conn = duckdb.connect()
    ReceiptLog(conn).append([rid(0)])
    conn.execute("BEGIN TRANSACTION")
    ReceiptLog(conn).append([rid(1)])
    log = ReceiptLog(conn)  # counted while the uncommitted leaf is visible
    assert log.size() == 2
    conn.execute("ROLLBACK")
    check(log, conn, [rid(0)])


def test_a_commit_that_fails_on_a_conflict_leaves_the_size_exact() -> None:
    """A write-write conflict with another connection makes the append's
    transaction fail; the size must follow what was committed."""
    conn = duckdb.connect()
    log = ReceiptLog(conn)
    log.append([rid(0)])
    other = conn.cursor()
    with pytest.raises(duckdb.Error):
        with transaction(conn):
            log.append([rid(1)])
            # Another writer takes leaf 1 first (breaking the one-writer rule, the way a failure would).
            other.execute("INSERT INTO receipt_log_nodes (node, hash, receipt_id) VALUES (1, ?, ?)",
                          [bytes(32), rid(7)])
    assert log.size() == stored(conn)


def test_the_same_size_reached_again_after_a_rollback_has_its_own_frontier() -> None:
    """The frontier kept after an append must not outlive a rollback: the log
    grows back to the same size with other leaves, and the heads must follow."""
    conn = duckdb.connect()
    log = ReceiptLog(conn)
    base = [rid(i) for i in range(3)]
    log.append(base)
    with pytest.raises(RuntimeError):
        with transaction(conn):
            log.append([rid(100), rid(101)])
            assert log.head_after([]) == LogHead(5, merkle_root(base + [rid(100), rid(101)]))
            raise RuntimeError("block refused")
    assert log.head_after([rid(200), rid(201)]) == LogHead(5, merkle_root(base + [rid(200), rid(201)]))
    log.append([rid(200), rid(201)])
    check(log, conn, base + [rid(200), rid(201)])
    assert log.append([rid(202)]) == LogHead(6, merkle_root(base + [rid(200), rid(201), rid(202)]))
    check(log, conn, base + [rid(200), rid(201), rid(202)])


class _Counting:
    """A connection that counts the statements run through it (and its cursors)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, counter: list[int] | None = None) -> None:
        self._conn, self.counter = conn, counter if counter is not None else [0]

    def execute(self, *args: object) -> duckdb.DuckDBPyConnection:
        self.counter[0] += 1
        return self._conn.execute(*args)  # type: ignore[arg-type]

    def cursor(self) -> _Counting:
        return _Counting(self._conn.cursor(), self.counter)

    def close(self) -> None:
        self._conn.close()


def test_a_commit_the_caller_reports_spares_the_probe() -> None:
    """After ``committed()`` the size is trusted without a query; without it
    the next read still probes (and a rollback the caller does not report is
    still found)."""
    raw = duckdb.connect()
    conn = _Counting(raw)
    log = ReceiptLog(conn)  # type: ignore[arg-type]
    with transaction(raw):
        log.append([rid(0), rid(1)])
    log.committed()
    before = conn.counter[0]
    assert log.size() == 2
    assert conn.counter[0] == before  # no probe
    with transaction(raw):
        log.append([rid(2)])
    before = conn.counter[0]
    assert log.size() == 3
    assert conn.counter[0] > before  # not reported: probed
    with pytest.raises(RuntimeError):
        with transaction(raw):
            log.append([rid(3)])
            raise RuntimeError("block refused")
    check(log, raw, [rid(0), rid(1), rid(2)])

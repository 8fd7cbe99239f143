"""The DuckDB receipt log: appends, persistence, transactions, envelopes,
and refusals that leave the log unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest
from receipt_samples import NODE_A, NODE_B, VALID_FIELDS

from node.base.merkle import EMPTY_ROOT, leaf_hash, merkle_root, verify_consistency, verify_inclusion
from node.receipts.chain import ReceiptIssuer
from node.receipts.envelope import verify_receipt
from node.receipts.log import LogError, LogHead, ReceiptLog


def rid(i: int) -> bytes:
    return hashlib.sha256(b"id %d" % i).digest()


@pytest.fixture
def conn() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


def test_tables_are_prefixed_and_creation_is_idempotent(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("CREATE TABLE chain_blocks (height BIGINT)")  # another store's table
    ReceiptLog(conn).append([rid(0)])
    ReceiptLog(conn)  # second open keeps the data
    names = {row[0] for row in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert names == {"chain_blocks", "receipt_log_nodes", "receipt_envelopes", "receipt_keys_000000"}
    assert ReceiptLog(conn).size() == 1


def test_empty_log(conn: duckdb.DuckDBPyConnection) -> None:
    log = ReceiptLog(conn)
    assert log.head() == LogHead(0, EMPTY_ROOT)
    assert log.append([]) == LogHead(0, EMPTY_ROOT)
    assert log.consistency_proof(0, 0) == []


def test_batches_report_head_and_past_roots_stay_answerable(conn: duckdb.DuckDBPyConnection) -> None:
    log = ReceiptLog(conn)
    ids = [rid(i) for i in range(300)]
    heads = []
    done = 0
    for batch in [1, 2, 5, 64, 0, 100, 128]:
        head = log.append(ids[done : done + batch])
        done += batch
        assert head == LogHead(done, merkle_root(ids[:done]))
        assert log.head() == head
        heads.append(head)
    for head in heads:
        assert log.root_at(head.size) == head.root
        verify_consistency(head.size, done, log.consistency_proof(head.size, done), head.root, log.head().root)
    for i in [0, 7, 150, 299]:
        assert log.leaf(i) == ids[i] and log.index_of(ids[i]) == i
        verify_inclusion(leaf_hash(ids[i]), i, 300, log.inclusion_proof(i, 300), log.head().root)
    assert log.index_of(rid(999)) is None


def test_log_survives_reopening_the_database(tmp_path: Path) -> None:
    path = str(tmp_path / "node.duckdb")
    ids = [rid(i) for i in range(50)]
    first = duckdb.connect(path)
    ReceiptLog(first).append(ids[:20])
    first.close()
    again = duckdb.connect(path)
    log = ReceiptLog(again)
    assert log.head() == LogHead(20, merkle_root(ids[:20]))
    assert log.append(ids[20:]) == LogHead(50, merkle_root(ids))
    again.close()


def test_duplicates_are_refused_and_nothing_is_written(conn: duckdb.DuckDBPyConnection) -> None:
    log = ReceiptLog(conn)
    log.append([rid(0), rid(1)])
    before = log.head()
    with pytest.raises(LogError, match="already in the log"):
        log.append([rid(2), rid(1)])
    with pytest.raises(LogError, match="repeats"):
        log.append([rid(3), rid(3)])
    with pytest.raises(LogError, match="32 bytes"):
        log.append([rid(4), b"short"])
    with pytest.raises(LogError, match="32 bytes"):
        log.append(["not bytes"])  # type: ignore[list-item]
    assert log.head() == before
    assert conn.execute("SELECT count(*) FROM receipt_log_nodes").fetchone()[0] == 3


def test_requests_beyond_the_log_are_refused(conn: duckdb.DuckDBPyConnection) -> None:
    log = ReceiptLog(conn)
    log.append([rid(i) for i in range(8)])
    for call in [
        lambda: log.root_at(9),
        lambda: log.inclusion_proof(0, 9),
        lambda: log.inclusion_proof(8, 9),  # the leaf itself would be missing
        lambda: log.consistency_proof(3, 9),
        lambda: log.leaf(8),
    ]:
        with pytest.raises(LogError, match="beyond the log"):
            call()
    for call in [
        lambda: log.inclusion_proof(5, 5),
        lambda: log.consistency_proof(6, 5),
        lambda: log.root_at(-1),
        lambda: log.inclusion_proof(True, 5),
    ]:
        with pytest.raises(LogError):
            call()


def test_append_joins_the_callers_transaction(conn: duckdb.DuckDBPyConnection) -> None:
    log = ReceiptLog(conn)
    log.append([rid(0)])
    committed = log.head()
    conn.begin()
    assert log.append([rid(1), rid(2)]).size == 3
    conn.rollback()
    assert log.head() == committed
    conn.begin()
    log.append([rid(1)])
    conn.commit()
    assert log.head() == LogHead(2, merkle_root([rid(0), rid(1)]))


def test_receipts_are_stored_by_id_and_queryable(conn: duckdb.DuckDBPyConnection) -> None:
    log = ReceiptLog(conn)
    issuers = {NODE_A.peer_id: ReceiptIssuer(NODE_A), NODE_B.peer_id: ReceiptIssuer(NODE_B)}
    receipts = []
    for height, kind in enumerate(sorted(VALID_FIELDS)):
        for issuer in issuers.values():
            subject, fields = VALID_FIELDS[kind]
            receipts.append(issuer.issue(kind, height=height, subject=subject, fields=fields))
    head = log.append_receipts(receipts[:6])
    head = log.append_receipts(receipts[6:])
    assert head == LogHead(len(receipts), merkle_root([r.id for r in receipts]))
    for position, receipt in enumerate(receipts):
        stored = log.envelope(receipt.id)
        assert stored == receipt.envelope
        assert verify_receipt(stored).id == receipt.id
        assert log.index_of(receipt.id) == position
    # The audit trail is plain SQL.
    rows = conn.execute(
        "SELECT issuer, count(*) FROM receipt_envelopes WHERE kind = 'job.exec' GROUP BY issuer ORDER BY issuer"
    ).fetchall()
    assert rows == sorted([(NODE_A.peer_id, 1), (NODE_B.peer_id, 1)])
    chained = conn.execute(
        "SELECT count(*) FROM receipt_envelopes e JOIN receipt_envelopes p ON e.prev = p.id AND e.issuer = p.issuer"
    ).fetchone()[0]
    assert chained == len(receipts) - 2  # all but each issuer's first
    # Logging again is refused, and writes nothing.
    with pytest.raises(LogError):
        log.append_receipts(receipts[:1])
    assert log.head() == head
    assert conn.execute("SELECT count(*) FROM receipt_envelopes").fetchone()[0] == len(receipts)
    assert log.envelope(hashlib.sha256(b"absent").digest()) is None

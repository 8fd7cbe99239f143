"""The receipt log's ids are found through key segments (leaf N's id in
segment N // segment_leaves), its envelopes are kept by leaf: lookups across
segments and across a batch that crosses a boundary, a repeated id refused
from an old segment, a rolled-back append leaving no segment behind, full
segments untouched by later checkpoints, appends atomic without a caller's
transaction, and a version 1 log migrated with every leaf, id and envelope."""

from __future__ import annotations

import duckdb
import pytest
from receipt_samples import NODE_A, VALID_FIELDS

from node.base.db import checkpoint_node_db, open_node_db, transaction
from node.base.merkle import merkle_root
from node.receipts.chain import ReceiptIssuer
from node.receipts.log import LogError, LogHead, ReceiptLog
from node.receipts.log_tables import key_table


def rid(n: int) -> bytes:
    return (n + 1).to_bytes(32, "big")


def key_tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'receipt_keys_%' "
                                       "ORDER BY table_name").fetchall()]


def receipts(count: int, start_height: int = 1) -> list:
    issuer = ReceiptIssuer(NODE_A)
    subject, fields = VALID_FIELDS["api.call"]
    return [issuer.issue("api.call", height=start_height + i, subject=subject, fields=fields) for i in range(count)]


def test_ids_are_found_across_segments_and_batches_that_cross_them() -> None:
    conn = duckdb.connect()
    log = ReceiptLog(conn, segment_leaves=4)
    ids = [rid(n) for n in range(11)]
    log.append(ids[:3])
    log.append(ids[3:9])  # leaves 3..8: segments 0, 1 and 2
    log.append(ids[9:])
    assert key_tables(conn) == [key_table(0), key_table(1), key_table(2)]
    assert [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in key_tables(conn)] == [4, 4, 3]
    assert [log.index_of(i) for i in ids] == list(range(11))
    assert log.present(ids + [rid(99)]) == set(ids)
    assert log.index_of(rid(99)) is None
    reopened = ReceiptLog(conn, segment_leaves=4)
    assert [reopened.index_of(i) for i in ids] == list(range(11))
    assert reopened.head() == LogHead(11, merkle_root(ids))


def test_an_id_in_an_old_segment_is_refused_and_nothing_is_written() -> None:
    conn = duckdb.connect()
    log = ReceiptLog(conn, segment_leaves=2)
    log.append([rid(n) for n in range(5)])
    head = log.head()
    with pytest.raises(LogError, match="already in the log"):
        log.append([rid(7), rid(0)])
    assert log.head() == head and key_tables(conn) == [key_table(0), key_table(1), key_table(2)]
    assert log.index_of(rid(7)) is None


def test_a_rolled_back_append_leaves_no_segment_and_the_leaves_are_appended_again() -> None:
    conn = duckdb.connect()
    log = ReceiptLog(conn, segment_leaves=3)
    log.append([rid(0), rid(1), rid(2)])
    with pytest.raises(RuntimeError):
        with transaction(conn):
            log.append([rid(3), rid(4)])  # opens segment 1
            assert log.index_of(rid(4)) == 4  # seen in the caller's own transaction
            raise RuntimeError("block refused")
    assert key_tables(conn) == [key_table(0)]
    assert log.index_of(rid(3)) is None and log.size() == 3
    log.append([rid(5), rid(3)])
    assert log.index_of(rid(3)) == 4 and key_tables(conn) == [key_table(0), key_table(1)]


def test_an_append_without_a_transaction_is_atomic() -> None:
    """Three tables take an append; in autocommit mode it is still all or nothing."""
    conn = duckdb.connect()
    log = ReceiptLog(conn, segment_leaves=4)
    log.append_receipts(receipts(2))
    # Another writer (a fault: one writer per database) took the next id's key.
    conn.execute(f"INSERT INTO {key_table(0)} VALUES (?, 9)", [rid(50)])
    with pytest.raises(duckdb.ConstraintException):
        log.append([rid(40), rid(50)])
    assert conn.execute("SELECT count(*) FROM receipt_log_nodes WHERE node < 100").fetchone()[0] == 2
    assert log.size() == 2 and log.index_of(rid(40)) is None


def test_envelopes_are_kept_by_leaf(tmp_path) -> None:
    conn = duckdb.connect()
    log = ReceiptLog(conn, segment_leaves=2)
    batch = receipts(5)
    log.append([rid(0)])  # a leaf without an envelope
    log.append_receipts(batch)
    assert [log.envelope(r.id) for r in batch] == [r.envelope for r in batch]
    assert log.envelope(rid(0)) is None
    rows = conn.execute("SELECT leaf, id FROM receipt_envelopes ORDER BY leaf").fetchall()
    assert [(int(leaf), bytes(i)) for leaf, i in rows] == [(n + 1, r.id) for n, r in enumerate(batch)]


def test_full_segments_are_not_rewritten_by_later_checkpoints(tmp_path) -> None:
    conn = open_node_db(tmp_path)
    log = ReceiptLog(conn, segment_leaves=50_000)
    with transaction(conn):
        log.append([rid(n) for n in range(50_000)])
    checkpoint_node_db(conn)
    stamp = conn.execute("SELECT block_id FROM pragma_storage_info(?) ORDER BY ALL", (key_table(0),)).fetchall()
    for batch in range(4):
        start = 50_000 + batch * 100
        log.append([rid(n) for n in range(start, start + 100)])
        checkpoint_node_db(conn)
    assert conn.execute("SELECT block_id FROM pragma_storage_info(?) ORDER BY ALL", (key_table(0),)).fetchall() == stamp
    assert key_tables(conn) == [key_table(0), key_table(1)] and log.index_of(rid(7)) == 7
    conn.close()


_V1 = (
    """CREATE TABLE receipt_log_nodes (node BIGINT PRIMARY KEY, hash BLOB NOT NULL, receipt_id BLOB UNIQUE,
        level UTINYINT AS (node >> 56), idx BIGINT AS (node & ((1::BIGINT << 56) - 1)))""",
    """CREATE TABLE receipt_envelopes (id BLOB PRIMARY KEY, kind VARCHAR NOT NULL, issuer VARCHAR NOT NULL,
        height BIGINT NOT NULL, subject BLOB NOT NULL, prev BLOB, envelope BLOB NOT NULL)""",
)


def test_a_version_1_log_is_migrated(tmp_path) -> None:
    """Built with version 1's tables and rows, then opened: the same head and
    proofs, every id found, envelopes by leaf, and no key on an id left."""
    batch = receipts(7)
    reference = ReceiptLog(duckdb.connect(), segment_leaves=3)
    reference.append_receipts(batch)
    conn = open_node_db(tmp_path)
    for statement in _V1:
        conn.execute(statement)
    nodes = reference._conn.execute("SELECT node, hash, receipt_id FROM receipt_log_nodes ORDER BY node").fetchall()
    conn.executemany("INSERT INTO receipt_log_nodes (node, hash, receipt_id) VALUES (?, ?, ?)", nodes)
    orphan = receipts(1, start_height=99)[0]  # stored, never appended (version 1's store-then-append)
    for r in [*batch, orphan]:
        conn.execute("INSERT INTO receipt_envelopes VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [r.id, r.kind, r.issuer_node, r.height, r.subject, r.prev, r.envelope])
    conn.close()

    conn = open_node_db(tmp_path)
    log = ReceiptLog(conn, segment_leaves=3)
    assert log.head() == reference.head()
    assert log.inclusion_proof(5, 7) == reference.inclusion_proof(5, 7)
    assert [log.index_of(r.id) for r in batch] == list(range(7))
    assert [log.envelope(r.id) for r in batch] == [r.envelope for r in batch]
    assert log.envelope(orphan.id) is None
    assert key_tables(conn) == [key_table(0), key_table(1), key_table(2)]
    keyed = {(r[0], r[1]) for r in conn.execute(
        "SELECT table_name, constraint_type FROM duckdb_constraints() WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE') "
        "AND table_name IN ('receipt_log_nodes', 'receipt_envelopes')").fetchall()}
    assert keyed == {("receipt_log_nodes", "PRIMARY KEY"), ("receipt_envelopes", "PRIMARY KEY")}
    log.append_receipts(receipts(2, start_height=50))  # and it goes on
    assert log.size() == 9
    conn.close()
    assert ReceiptLog(open_node_db(tmp_path), segment_leaves=3).size() == 9  # reopened: nothing left to migrate

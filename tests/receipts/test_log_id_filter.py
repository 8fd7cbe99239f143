"""The receipt log's in-memory id filter only saves queries: present() and
index_of() answer exactly what the table holds, for ids the filter cannot
tell apart, after a rolled-back append, and in a new instance."""

from __future__ import annotations

import duckdb

from node.receipts.log import ReceiptLog


def rid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def twin(receipt_id: bytes) -> bytes:
    """Another id with the same first 12 bytes: the filter cannot tell them apart."""
    return receipt_id[:12] + bytes(b ^ 0xFF for b in receipt_id[12:])


def test_ids_the_filter_confuses_are_answered_by_the_table():
    log = ReceiptLog(duckdb.connect(":memory:"))
    ids = [rid(n) for n in range(1, 40)]
    log.append(ids)
    assert log.present(ids + [twin(i) for i in ids]) == set(ids)
    assert [log.index_of(i) for i in ids[:3]] == [0, 1, 2]
    assert log.index_of(twin(ids[0])) is None and log.index_of(rid(10_000)) is None


def test_a_rolled_back_append_is_not_present_and_a_new_instance_sees_committed_ids():
    conn = duckdb.connect(":memory:")
    log = ReceiptLog(conn)
    log.append([rid(1), rid(2)])
    conn.execute("BEGIN")
    log.append([rid(3)])
    assert log.present([rid(1), rid(3)]) == {rid(1), rid(3)}  # the caller's own view
    conn.execute("ROLLBACK")
    assert log.present([rid(1), rid(3)]) == {rid(1)} and log.index_of(rid(3)) is None
    assert log.size() == 2
    log.append([rid(3)])  # may be appended again, now for good
    reopened = ReceiptLog(conn)
    assert reopened.present([rid(n) for n in range(1, 6)]) == {rid(1), rid(2), rid(3)}
    assert reopened.index_of(rid(3)) == 2

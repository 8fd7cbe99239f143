"""The chain store's segmented index of transaction hashes: lookups across
segments, a new segment when a block would overflow the newest, full segments
never written again, state read back at reopen, nothing kept from a write
that rolled back, and a migrated store indexed as appends would have."""

from __future__ import annotations

import duckdb
import pytest

from node.base.codec import hash_tagged
from node.base.db import checkpoint_node_db, open_node_db, transaction
from node.consensus.store import ChainStore
from node.consensus.tx_index import TxKeyIndex, build_from_chain_txs, segment_table
from tests.consensus.test_store import ALICE, BOB, append, tx


def digest(n: int) -> bytes:
    return hash_tagged("test/tx", n.to_bytes(4, "big"))


def write(index: TxKeyIndex, conn: duckdb.DuckDBPyConnection, height: int, numbers: range) -> None:
    with transaction(conn):
        done = index.write(conn, height, [digest(n) for n in numbers])
    index.committed(done)


def segment_rows(conn: duckdb.DuckDBPyConnection) -> list[int]:
    names = [r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables() "
                                        "WHERE table_name LIKE 'chain_tx_keys_%' ORDER BY table_name").fetchall()]
    return [conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in names]


def test_blocks_fill_segments_without_splitting_and_every_hash_is_found() -> None:
    conn = duckdb.connect(":memory:")
    index = TxKeyIndex(conn, segment_keys=10)
    write(index, conn, 1, range(0, 6))
    write(index, conn, 2, range(6, 10))   # exactly fills segment 0
    write(index, conn, 3, range(10, 14))  # segment 1
    write(index, conn, 4, range(14, 21))  # 4 + 7 > 10: segment 2
    write(index, conn, 5, range(21, 21))  # an empty block writes nothing
    write(index, conn, 6, range(21, 35))  # larger than a segment: one of its own
    write(index, conn, 7, range(35, 36))  # and the next block starts another
    assert segment_rows(conn) == [10, 4, 7, 14, 1] and index.segments == 5
    heights = {**{n: (1, n) for n in range(6)}, **{n: (2, n - 6) for n in range(6, 10)},
               **{n: (3, n - 10) for n in range(10, 14)}, **{n: (4, n - 14) for n in range(14, 21)},
               **{n: (6, n - 21) for n in range(21, 35)}, 35: (7, 0)}
    assert {n: index.find(digest(n)) for n in range(36)} == heights
    assert index.find(digest(99)) is None
    reopened = TxKeyIndex(conn, segment_keys=10)  # state read back from the tables
    write(reopened, conn, 8, range(36, 45))  # 1 + 9 = 10: still fits the newest
    assert segment_rows(conn) == [10, 4, 7, 14, 10] and reopened.find(digest(44)) == (8, 8)


def test_a_rolled_back_write_leaves_no_trace_in_memory_or_tables() -> None:
    conn = duckdb.connect(":memory:")
    index = TxKeyIndex(conn, segment_keys=4)
    write(index, conn, 1, range(0, 3))
    with pytest.raises(RuntimeError), transaction(conn):
        index.write(conn, 2, [digest(n) for n in range(3, 6)])  # would start segment 1
        raise RuntimeError("the block's other writes failed")
    assert segment_rows(conn) == [3] and index.segments == 1 and index.find(digest(4)) is None
    write(index, conn, 2, range(3, 4))  # the newest segment is still segment 0, with 3 keys
    assert segment_rows(conn) == [4]


def test_a_repeated_hash_in_the_newest_segment_is_refused_by_its_key() -> None:
    conn = duckdb.connect(":memory:")
    index = TxKeyIndex(conn, segment_keys=100)
    write(index, conn, 1, range(0, 3))
    with pytest.raises(duckdb.ConstraintException), transaction(conn):
        index.write(conn, 2, [digest(2)])
    assert segment_rows(conn) == [3]


def test_full_segments_are_not_rewritten_by_later_writes(tmp_path) -> None:
    """The point of the segments: a checkpoint after writes to the newest one
    leaves the blocks of the older ones as they were."""
    conn = open_node_db(tmp_path)
    index = TxKeyIndex(conn, segment_keys=50_000)
    with transaction(conn):
        done = index.write(conn, 1, [digest(n) for n in range(50_000)])
    index.committed(done)
    checkpoint_node_db(conn)
    blocks = conn.execute(f"SELECT count(*) FROM pragma_storage_info('{segment_table(0)}')").fetchone()
    stamp = conn.execute("SELECT block_id FROM pragma_storage_info(?) ORDER BY ALL", (segment_table(0),)).fetchall()
    for height in range(2, 6):
        write(index, conn, height, range(50_000 + height * 100, 50_000 + height * 100 + 100))
        checkpoint_node_db(conn)
    assert conn.execute(f"SELECT count(*) FROM pragma_storage_info('{segment_table(0)}')").fetchone() == blocks
    assert conn.execute("SELECT block_id FROM pragma_storage_info(?) ORDER BY ALL",
                        (segment_table(0),)).fetchall() == stamp
    assert index.segments == 2 and index.find(digest(7)) == (1, 7)
    conn.close()


def test_a_migrated_store_is_indexed_block_by_block() -> None:
    conn = duckdb.connect(":memory:")
    store = ChainStore(conn)
    for nonce in range(5):
        append(store, [tx(ALICE, nonce), tx(BOB, nonce // 2)] if nonce % 2 == 0 else [tx(ALICE, nonce)])
    rows = conn.execute("SELECT hash, height, idx FROM chain_txs ORDER BY height, idx").fetchall()
    for name in [r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables() "
                                             "WHERE table_name LIKE 'chain_tx_keys_%'").fetchall()]:
        conn.execute(f"DROP TABLE {name}")
    build_from_chain_txs(conn, segment_keys=3)
    assert segment_rows(conn) == [3, 3, 2]  # blocks of 2, 1 | 2, 1 | 2: none split
    index = TxKeyIndex(conn, segment_keys=3)
    assert [index.find(bytes(h)) for h, _, _ in rows] == [(height, idx) for _, height, idx in rows]
    with pytest.raises(ValueError, match="already has segments"):
        build_from_chain_txs(conn, segment_keys=3)


def test_the_store_reports_each_checkpoint_it_runs(tmp_path) -> None:
    """A checkpoint runs inside an append and delays that block: the store
    tells its listeners (the daemon's metrics) how long and how much log."""
    conn = open_node_db(tmp_path)
    store = ChainStore(conn, checkpoint_wal_bytes=64 * 1024)
    seen: list[tuple[float, int]] = []
    store.on_checkpoint.append(lambda seconds, log_bytes: seen.append((seconds, log_bytes)))
    for nonce in range(40):
        append(store, [tx(ALICE, nonce, size=4000), tx(BOB, nonce, size=4000)])
    assert seen and all(seconds >= 0 and log_bytes >= 64 * 1024 for seconds, log_bytes in seen)
    assert len(seen) < 40  # only when the log passed the threshold, not every append
    conn.close()


def test_first_found_names_the_earliest_indexed_hash_across_segments() -> None:
    conn = duckdb.connect(":memory:")
    index = TxKeyIndex(conn, segment_keys=4)
    assert index.first_found([digest(0)]) is None  # no segment yet
    for height in range(1, 5):
        write(index, conn, height, range(height * 10, height * 10 + 3))
    assert index.segments == 4
    assert index.first_found([digest(99), digest(41), digest(22), digest(31)]) == (digest(22), 2)
    assert index.first_found([digest(99), digest(98)]) is None and index.first_found([]) is None
    many = [digest(1000 + n) for n in range(2500)] + [digest(42)]  # past one IN list
    assert index.first_found(many) == (digest(42), 4)

"""The chain store's recent committed blocks in memory: what it answers from
them is exactly what the database holds, reads of the newest blocks run no
query, and the bounds hold."""

from __future__ import annotations

import duckdb

from node.consensus.recent_blocks import RecentBlocks
from node.consensus.store import ChainStore, StoredBlock
from tests.consensus.test_store import ALICE, BOB, append, tx


class CountingConnection:
    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self._conn, self.statements = conn, 0

    def execute(self, sql, *params):
        self.statements += 1
        return self._conn.execute(sql, *params)


def test_recent_blocks_are_the_stored_ones_and_cost_no_query() -> None:
    conn = duckdb.connect(":memory:")
    counting = CountingConnection(conn)
    store = ChainStore(counting)  # type: ignore[arg-type]
    for nonce in range(5):
        append(store, [tx(ALICE, nonce), tx(BOB, nonce, size=nonce * 10)])
    before = counting.statements
    recent = [store.block_by_height(h) for h in range(1, 6)]
    assert counting.statements == before
    fresh = ChainStore(conn)  # nothing in memory: every answer from the tables
    assert recent == [fresh.block_by_height(h) for h in range(1, 6)]
    assert all(isinstance(b, StoredBlock) and type(b.block) is bytes for b in recent)
    assert store.block_by_height(6) is None


def block(height: int, size: int) -> StoredBlock:
    return StoredBlock(height, bytes(32), bytes(32), height, bytes(32), 0, b"b" * size)


def test_bounds_drop_the_oldest_first() -> None:
    by_count: RecentBlocks[StoredBlock] = RecentBlocks(max_blocks=3, max_bytes=1_000)
    for h in range(1, 6):
        by_count.add(block(h, 10))
    assert [h for h in range(1, 6) if by_count.get(h)] == [3, 4, 5]
    by_bytes: RecentBlocks[StoredBlock] = RecentBlocks(max_blocks=100, max_bytes=250)
    for h in range(1, 6):
        by_bytes.add(block(h, 100))
    assert [h for h in range(1, 6) if by_bytes.get(h)] == [4, 5]
    by_bytes.add(block(6, 251))  # larger than the whole budget: not kept, nothing dropped for it
    assert by_bytes.get(6) is None and len(by_bytes) == 2

"""The chain store's recent committed blocks and their transactions in
memory: what it answers from them is exactly what the database holds, reads
of the newest blocks (by height, and their transactions by hash) run no
query, and the bounds hold."""

from __future__ import annotations

import duckdb

from node.base.codec import hash_tagged
from node.consensus.recent_blocks import RecentBlocks, RecentTxs
from node.consensus.store import ChainStore, StoredBlock, StoredTx
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


def test_recent_transactions_by_hash_are_the_stored_ones_and_cost_no_query() -> None:
    conn = duckdb.connect(":memory:")
    counting = CountingConnection(conn)
    store = ChainStore(counting)  # type: ignore[arg-type]
    raws = []
    for nonce in range(4):
        raws += [tx(ALICE, nonce), tx(BOB, nonce, size=nonce * 10)]
        append(store, raws[-2:])
    hashes = [hash_tagged("metanode/tx/v1", raw) for raw in raws]
    before = counting.statements
    found = [store.tx_by_hash(digest) for digest in hashes]
    assert counting.statements == before
    fresh = ChainStore(conn)  # nothing in memory: every answer from the tables
    assert found == [fresh.tx_by_hash(digest) for digest in hashes]
    assert [(t.height, t.index, t.tx) for t in found if t] == [(n // 2 + 1, n % 2, raws[n]) for n in range(8)]
    assert store.tx_by_hash(bytes(32)) is None


def stored_tx(height: int, index: int, size: int) -> StoredTx:
    return StoredTx(hash_tagged("test/tx", bytes([height, index])), height, index, b"t" * size)


def test_recent_transaction_bounds_drop_whole_blocks_oldest_first() -> None:
    kept = RecentTxs[StoredTx](max_blocks=2, max_txs=100, max_bytes=10_000)
    blocks = {h: [stored_tx(h, i, 10) for i in range(3)] for h in range(1, 5)}
    for h, txs in blocks.items():
        kept.add_block(h, txs)
    assert [h for h, txs in blocks.items() if all(kept.get(t.hash) == t for t in txs)] == [3, 4]
    assert len(kept) == 6 and all(kept.get(t.hash) is None for h in (1, 2) for t in blocks[h])
    by_count = RecentTxs[StoredTx](max_blocks=100, max_txs=5, max_bytes=10_000)
    for h, txs in blocks.items():
        by_count.add_block(h, txs)
    assert len(by_count) == 3 and by_count.get(blocks[4][0].hash) is not None
    by_bytes = RecentTxs[StoredTx](max_blocks=100, max_txs=100, max_bytes=70)
    for h, txs in blocks.items():
        by_bytes.add_block(h, txs)
    assert len(by_bytes) == 6
    by_bytes.add_block(5, [stored_tx(5, 0, 71)])  # larger than the whole budget: not kept, nothing dropped
    assert len(by_bytes) == 6 and by_bytes.get(stored_tx(5, 0, 71).hash) is None


def test_committed_copy_queries_only_for_a_transaction_whose_nonce_is_used() -> None:
    """tx_submit in commit mode first asks whether the transaction is already
    committed: a new one (its nonce not yet used), or bytes that are no
    transaction, is answered with no query, since a miss would scan the chain."""
    conn = duckdb.connect(":memory:")
    append(ChainStore(conn), [tx(ALICE, 0), tx(ALICE, 1)])
    counting = CountingConnection(conn)
    store = ChainStore(counting)  # type: ignore[arg-type]  # reopened: nothing in memory
    before = counting.statements
    assert store.committed_copy(tx(ALICE, 2)) is None and store.committed_copy(tx(BOB, 0)) is None
    assert store.committed_copy(b"\x00garbage") is None
    assert counting.statements == before
    found = store.committed_copy(tx(ALICE, 1))
    assert found is not None and (found.height, found.index, found.tx) == (1, 1, tx(ALICE, 1))
    assert counting.statements == before + 2  # the hash index, then the row
    assert store.committed_copy(tx(ALICE, 1, size=5)) is None  # nonce used by another transaction

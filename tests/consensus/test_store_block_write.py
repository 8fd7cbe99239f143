"""The chain store's per-block write (issue 16). Schema 4: the next nonces
come from the committed transactions (no chain_nonces table), a version 3
store is migrated in place, and the nonces survive reopening exactly as the
version 3 table held them. The head row is updated in place, not upserted."""

from __future__ import annotations

import duckdb
import pytest

from node.base.codec import hash_tagged
from node.base.db import open_node_db
from node.base.keys import Identity
from node.consensus.store import SCHEMA_VERSION, ChainStore, StoreError, StoreVersionError
from node.consensus.tx import sign_tx

CHAIN = "nonce-derivation"
ALICE, BOB, CAROL = (Identity.from_label(n) for n in ("alice", "bob", "carol"))
GENESIS = hash_tagged("test/genesis", b"")


def tx(who: Identity, nonce: int) -> bytes:
    return sign_tx(who, chain_id=CHAIN, nonce=nonce, tx_type="noop", payload={"n": nonce}).encoded


def append(store: ChainStore, txs: list[bytes]) -> None:
    head = store.head()
    height = 1 if head is None else head.height + 1
    parent = GENESIS if head is None else head.hash
    block = b"block:" + height.to_bytes(8, "big") + parent + b"".join(txs)
    store.append_block(height=height, block_hash=hash_tagged("test/block", block), parent_hash=parent,
                       timestamp_ms=height, proposer=ALICE.public_key, block=block, txs=txs)


def tables(conn: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def version(conn: duckdb.DuckDBPyConnection) -> bytes:
    row = conn.execute("SELECT value FROM chain_meta WHERE key = 'schema_version'").fetchone()
    assert row is not None
    return bytes(row[0])


def test_nonces_are_derived_from_the_committed_transactions_on_reopen(tmp_path):
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    append(store, [tx(ALICE, 0), tx(BOB, 0), tx(ALICE, 1)])
    append(store, [])
    append(store, [tx(ALICE, 2), tx(CAROL, 0)])
    expected = {ALICE.public_key: 3, BOB.public_key: 1, CAROL.public_key: 1}
    assert {k: store.next_nonce(k) for k in expected} == expected
    assert "chain_nonces" not in tables(conn) and version(conn) == str(SCHEMA_VERSION).encode() == b"4"
    conn.close()
    conn = open_node_db(tmp_path)
    again = ChainStore(conn)
    assert {k: again.next_nonce(k) for k in expected} == expected
    assert again.next_nonce(Identity.from_label("nobody").public_key) == 0
    with pytest.raises(StoreError, match="is already in block 1"):  # a replay is still caught by its nonce
        append(again, [tx(BOB, 0)])
    with pytest.raises(StoreError, match="is not the next nonce 3"):
        append(again, [tx(ALICE, 4)])
    append(again, [tx(ALICE, 3), tx(BOB, 1)])
    assert again.next_nonce(ALICE.public_key) == 4 and again.next_nonce(BOB.public_key) == 2
    conn.close()


def make_version_3(conn: duckdb.DuckDBPyConnection) -> None:
    """Turn a fresh version 4 store into what version 3 wrote: the same rows
    plus the chain_nonces table, filled as version 3 kept it."""
    conn.execute("CREATE TABLE chain_nonces (sender BLOB PRIMARY KEY, next_nonce UBIGINT NOT NULL)")
    conn.execute("INSERT INTO chain_nonces SELECT sender, max(nonce) + 1 FROM chain_txs GROUP BY sender")
    conn.execute("UPDATE chain_meta SET value = '3'::BLOB WHERE key = 'schema_version'")


def test_a_version_3_store_is_migrated_in_place_and_keeps_its_chain(tmp_path):
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    append(store, [tx(ALICE, 0), tx(ALICE, 1)])
    append(store, [tx(BOB, 0)])
    head = store.head()
    make_version_3(conn)
    conn.close()
    conn = open_node_db(tmp_path)
    migrated = ChainStore(conn)
    assert "chain_nonces" not in tables(conn) and version(conn) == b"4"
    assert migrated.head() == head and migrated.block_txs(1) == [tx(ALICE, 0), tx(ALICE, 1)]
    assert migrated.next_nonce(ALICE.public_key) == 2 and migrated.next_nonce(BOB.public_key) == 1
    append(migrated, [tx(ALICE, 2)])
    conn.close()


def test_a_version_2_store_is_refused_untouched(tmp_path):
    """Only version 3 migrates: an older store (blocks that no longer
    validate) is refused and nothing in it is changed."""
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    append(store, [tx(ALICE, 0)])
    make_version_3(conn)
    conn.execute("UPDATE chain_meta SET value = '2'::BLOB WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError, match="schema version 2 is not 4"):
        ChainStore(conn)
    assert "chain_nonces" in tables(conn) and version(conn) == b"2"
    conn.close()


def test_a_newer_store_is_refused_not_migrated(tmp_path):
    conn = open_node_db(tmp_path)
    ChainStore(conn)
    conn.execute("UPDATE chain_meta SET value = '5'::BLOB WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError, match="schema version 5 is not 4"):
        ChainStore(conn)
    conn.close()


def test_the_head_row_is_inserted_once_then_updated_and_a_lost_one_is_refused():
    conn = duckdb.connect()
    store = ChainStore(conn)
    append(store, [tx(ALICE, 0)])
    append(store, [])
    assert conn.execute("SELECT count(*) FROM chain_head").fetchone() == (1,)
    assert ChainStore(conn).head() == store.head()
    conn.execute("DELETE FROM chain_head")  # the fault: the head row is gone under a running store
    with pytest.raises(StoreError, match="block 3: the chain store has lost its head row"):
        append(store, [tx(ALICE, 1)])
    assert store.block_by_height(3) is None and store.next_nonce(ALICE.public_key) == 1

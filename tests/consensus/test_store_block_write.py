"""The chain store's per-block write (issue 16). Schema 4: the next nonces
come from the committed transactions (no chain_nonces table). Schema 5: no
key on a hash (chain_txs.hash was the primary key, chain_blocks.hash
UNIQUE). Schema 6: a transaction's bytes kept only in its block. Stores of
versions 3, 4 and 5 are migrated in place, and the nonces
survive reopening exactly as the version 3 table held them. The head row is
updated in place, not upserted."""

from __future__ import annotations

import duckdb
import pytest

from node.base.codec import hash_tagged
from node.base.db import open_node_db
from node.base.errors import UserError
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
    assert "chain_nonces" not in tables(conn) and version(conn) == str(SCHEMA_VERSION).encode() == b"6"
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


def hash_keys(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, list[str]]]:
    rows = conn.execute("SELECT table_name, constraint_column_names FROM duckdb_constraints() "
                        "WHERE table_name IN ('chain_blocks', 'chain_txs') AND constraint_type IN "
                        "('PRIMARY KEY', 'UNIQUE')").fetchall()
    return sorted((table, list(columns)) for table, columns in rows)


VERSION_4_TABLES = {  # as version 4 created them
    "chain_blocks": """height UBIGINT PRIMARY KEY, hash BLOB NOT NULL UNIQUE, parent_hash BLOB NOT NULL,
        timestamp_ms BIGINT NOT NULL, proposer BLOB NOT NULL, tx_count INTEGER NOT NULL, block BLOB NOT NULL""",
    "chain_txs": """hash BLOB PRIMARY KEY, height UBIGINT NOT NULL, idx INTEGER NOT NULL,
        sender BLOB NOT NULL, nonce UBIGINT NOT NULL, type VARCHAR NOT NULL, tx BLOB NOT NULL""",
}


V5_TXS = """hash BLOB NOT NULL, height UBIGINT NOT NULL, idx INTEGER NOT NULL,
    sender BLOB NOT NULL, nonce UBIGINT NOT NULL, type VARCHAR NOT NULL, tx BLOB NOT NULL"""


def version_5_txs(conn: duckdb.DuckDBPyConnection) -> list[tuple]:
    """chain_txs rows as version 5 kept them: each transaction's bytes in a ``tx`` column."""
    rows = []
    for hash_, height, idx, sender, nonce, type_, offset, length, block in conn.execute(
            "SELECT t.*, b.block FROM chain_txs t JOIN chain_blocks b USING (height) ORDER BY height, idx").fetchall():
        rows.append((hash_, height, idx, sender, nonce, type_, bytes(block)[offset:offset + length]))
    return rows


def make_version_5(conn: duckdb.DuckDBPyConnection) -> None:
    """Turn a fresh store into what version 5 wrote: the same rows, each
    transaction's bytes copied into chain_txs."""
    rows = version_5_txs(conn)
    conn.execute("DROP TABLE chain_txs")
    conn.execute(f"CREATE TABLE chain_txs ({V5_TXS})")
    if rows:
        conn.executemany("INSERT INTO chain_txs VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("UPDATE chain_meta SET value = '5'::BLOB WHERE key = 'schema_version'")


def make_version_4(conn: duckdb.DuckDBPyConnection) -> None:
    """Turn a fresh store into what version 4 wrote: version 5's rows, with
    chain_txs keyed by hash and chain_blocks.hash UNIQUE, and no hash index."""
    make_version_5(conn)
    for table, shape in VERSION_4_TABLES.items():
        conn.execute(f"CREATE TABLE {table}_v4 ({shape})")
        conn.execute(f"INSERT INTO {table}_v4 SELECT * FROM {table}")
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE {table}_v4 RENAME TO {table}")
    for table in tables(conn):
        if table.startswith("chain_tx_keys_"):  # version 5's hash index
            conn.execute(f"DROP TABLE {table}")
    conn.execute("UPDATE chain_meta SET value = '4'::BLOB WHERE key = 'schema_version'")
    assert hash_keys(conn) == [("chain_blocks", ["hash"]), ("chain_blocks", ["height"]), ("chain_txs", ["hash"])]


def make_version_3(conn: duckdb.DuckDBPyConnection) -> None:
    """Turn a fresh store into what version 3 wrote: version 4's tables
    plus the chain_nonces table, filled as version 3 kept it."""
    make_version_4(conn)
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
    assert "chain_nonces" not in tables(conn) and version(conn) == b"6"
    assert hash_keys(conn) == [("chain_blocks", ["height"])]
    assert migrated.head() == head and migrated.block_txs(1) == [tx(ALICE, 0), tx(ALICE, 1)]
    assert migrated.next_nonce(ALICE.public_key) == 2 and migrated.next_nonce(BOB.public_key) == 1
    append(migrated, [tx(ALICE, 2)])
    conn.close()


def test_a_version_4_store_is_migrated_in_place_and_keeps_its_chain(tmp_path):
    """Version 4 keyed chain_txs by hash and chain_blocks.hash: the tables are
    copied into version 5's shape, then version 6's, rows and order kept, in one transaction."""
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    append(store, [tx(ALICE, 0), tx(BOB, 0), tx(ALICE, 1)])
    append(store, [tx(CAROL, 0)])
    head, rows = store.head(), conn.execute("SELECT * FROM chain_txs ORDER BY height, idx").fetchall()
    blocks = conn.execute("SELECT * FROM chain_blocks ORDER BY height").fetchall()
    make_version_4(conn)
    conn.close()
    conn = open_node_db(tmp_path)
    migrated = ChainStore(conn)
    assert version(conn) == b"6" and hash_keys(conn) == [("chain_blocks", ["height"])]
    assert conn.execute("SELECT hash, height, idx FROM chain_tx_keys_000000 ORDER BY height, idx").fetchall() == [
        (row[0], row[1], row[2]) for row in rows]
    assert conn.execute("SELECT * FROM chain_txs ORDER BY height, idx").fetchall() == rows
    assert conn.execute("SELECT * FROM chain_blocks ORDER BY height").fetchall() == blocks
    assert migrated.head() == head and migrated.next_nonce(ALICE.public_key) == 2
    assert migrated.tx_by_hash(hash_tagged("metanode/tx/v1", tx(BOB, 0))).height == 1  # type: ignore[union-attr]
    with pytest.raises(StoreError, match="is already in block 1"):
        append(migrated, [tx(ALICE, 1)])
    append(migrated, [tx(ALICE, 2)])
    conn.close()


def test_a_version_5_store_is_migrated_to_keep_each_transaction_once(tmp_path):
    """Version 5 copied each transaction's bytes into chain_txs: each is found
    in its block, and its row keeps only the place (rows and order kept)."""
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    append(store, [tx(ALICE, 0), tx(BOB, 0), tx(ALICE, 1)])
    append(store, [])
    append(store, [tx(CAROL, 0), tx(ALICE, 2)])
    head, rows = store.head(), conn.execute("SELECT * FROM chain_txs ORDER BY height, idx").fetchall()
    v5_rows = version_5_txs(conn)
    make_version_5(conn)
    conn.close()
    conn = open_node_db(tmp_path)
    migrated = ChainStore(conn)
    assert version(conn) == b"6" and "tx" not in {r[0] for r in conn.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = 'chain_txs'").fetchall()}
    assert conn.execute("SELECT * FROM chain_txs ORDER BY height, idx").fetchall() == rows
    assert migrated.head() == head and migrated.block_txs(3) == [tx(CAROL, 0), tx(ALICE, 2)]
    assert [migrated.tx_by_hash(row[0]).tx for row in v5_rows] == [row[6] for row in v5_rows]  # type: ignore[union-attr]
    append(migrated, [tx(ALICE, 3)])
    conn.close()


def test_a_version_5_store_whose_block_lacks_a_transaction_is_refused_untouched(tmp_path):
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    append(store, [tx(ALICE, 0)])
    append(store, [tx(ALICE, 1)])
    make_version_5(conn)
    conn.execute("UPDATE chain_txs SET tx = ? WHERE height = 2", [tx(BOB, 0)])  # damaged: not in block 2
    conn.close()
    conn = open_node_db(tmp_path)
    with pytest.raises(StoreError, match="block 2 does not hold the bytes of its transactions") as refused:
        ChainStore(conn)
    assert isinstance(refused.value, UserError) and "move the data directory" in str(refused.value)  # one line, no traceback
    assert version(conn) == b"5" and conn.execute("SELECT count(*) FROM chain_txs WHERE tx IS NOT NULL").fetchone() == (2,)
    conn.close()


def test_a_version_2_store_is_refused_untouched(tmp_path):
    """Only version 3 migrates: an older store (blocks that no longer
    validate) is refused and nothing in it is changed."""
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    append(store, [tx(ALICE, 0)])
    make_version_3(conn)
    conn.execute("UPDATE chain_meta SET value = '2'::BLOB WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError, match="schema version 2 is not 6"):
        ChainStore(conn)
    assert "chain_nonces" in tables(conn) and version(conn) == b"2"
    conn.close()


def test_a_newer_store_is_refused_not_migrated(tmp_path):
    conn = open_node_db(tmp_path)
    ChainStore(conn)
    conn.execute("UPDATE chain_meta SET value = '7'::BLOB WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError, match="schema version 7 is not 6"):
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

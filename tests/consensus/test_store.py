"""Chain store: appends, refusals that write nothing, atomicity, reopening, queries."""

from __future__ import annotations

import duckdb
import pytest

from node.base.codec import hash_tagged
from node.base.db import DB_FILENAME, open_node_db
from node.base.errors import DataDirError, UserError
from node.base.keys import Identity
from node.consensus.store import SCHEMA_VERSION, ChainHead, ChainStore, StoreError, StoreVersionError
from node.consensus.tx import sign_tx

CHAIN = "testnet-1"
ALICE, BOB = Identity.from_label("alice"), Identity.from_label("bob")
GENESIS = hash_tagged("test/genesis", b"")


def tx(who=ALICE, nonce=0, size=0):
    return sign_tx(who, chain_id=CHAIN, nonce=nonce, tx_type="noop",
                   payload={"n": nonce, "pad": b"p" * size}).encoded


def block_fields(height, parent, txs):
    """What the consensus layer hands the store (the 'block' bytes are opaque to it)."""
    block = b"block:" + height.to_bytes(8, "big") + parent + b"".join(txs)
    return dict(height=height, block_hash=hash_tagged("test/block", block), parent_hash=parent,
                timestamp_ms=1_700_000_000_000 + height,
                proposer=ALICE.public_key, block=block, txs=txs)


def append(store, txs, **overrides):
    head = store.head()
    height = store.first_height if head is None else head.height + 1
    parent = GENESIS if head is None else head.hash
    fields = block_fields(height, parent, txs) | overrides
    store.append_block(**fields)
    return fields


def counts(conn):
    return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("chain_blocks", "chain_txs", "chain_head"))


@pytest.fixture
def conn():
    connection = duckdb.connect(":memory:")
    yield connection
    connection.close()


def test_empty_store(conn):
    store = ChainStore(conn)
    assert store.head() is None
    assert store.block_by_height(1) is None and store.block_by_hash(GENESIS) is None
    assert store.tx_by_hash(b"\x00" * 32) is None
    assert store.next_nonce(ALICE.public_key) == 0
    assert store.blocks_range(0, 10) == [] and store.block_txs(1) == []


def test_append_and_query_everything(conn):
    store = ChainStore(conn)
    b1_txs = [tx(ALICE, 0), tx(BOB, 0), tx(ALICE, 1)]
    b1 = append(store, b1_txs)
    b2 = append(store, [])
    b3 = append(store, [tx(BOB, 1)])
    assert store.head() == ChainHead(3, b3["block_hash"])

    got = store.block_by_height(1)
    assert (got.height, got.hash, got.parent_hash, got.timestamp_ms, got.proposer, got.tx_count,
            got.block) == (
        1, b1["block_hash"], GENESIS, b1["timestamp_ms"], ALICE.public_key, 3, b1["block"])
    assert store.block_by_hash(b2["block_hash"]) == store.block_by_height(2)
    assert store.block_by_height(2).parent_hash == b1["block_hash"]
    assert store.block_by_height(4) is None and store.block_by_height(-1) is None

    assert store.block_txs(1) == b1_txs and store.block_txs(2) == []
    found = store.tx_by_hash(hash_tagged("metanode/tx/v1", b1_txs[2]))
    assert (found.height, found.index, found.tx) == (1, 2, b1_txs[2])
    assert store.tx_by_hash(hash_tagged("metanode/tx/v1", b3["txs"][0])).height == 3

    assert store.next_nonce(ALICE.public_key) == 2
    assert store.next_nonce(BOB.public_key) == 2
    assert ChainStore(conn).next_nonce(ALICE.public_key) == 2  # derived from chain_txs on open
    assert store.next_nonce(Identity.from_label("nobody").public_key) == 0


def test_blocks_range_for_sync(conn):
    store = ChainStore(conn)
    sizes = []
    for n in range(5):
        fields = append(store, [tx(ALICE, n, size=100 * n)])
        sizes.append(len(fields["block"]))
    assert [b.height for b in store.blocks_range(2, 2)] == [2, 3]
    assert [b.height for b in store.blocks_range(4, 100)] == [4, 5]
    assert store.blocks_range(6, 10) == [] and store.blocks_range(1, 0) == []
    assert [b.height for b in store.blocks_range(1, 5, max_bytes=sizes[0] + sizes[1])] == [1, 2]
    # A block larger than max_bytes still comes alone, so sync always progresses.
    assert [b.height for b in store.blocks_range(5, 5, max_bytes=1)] == [5]


def test_first_block_must_follow_the_genesis_when_told(conn):
    store = ChainStore(conn, first_parent=GENESIS)
    with pytest.raises(StoreError, match="is not the genesis"):
        store.append_block(**block_fields(1, b"\x09" * 32, []))
    assert store.head() is None
    store.append_block(**block_fields(1, GENESIS, []))
    assert store.head().height == 1


def test_first_height_is_configurable(conn):
    store = ChainStore(conn, first_height=0)
    with pytest.raises(StoreError, match="expected 0"):
        store.append_block(**block_fields(1, GENESIS, []))
    store.append_block(**block_fields(0, b"\x00" * 32, []))
    assert store.head().height == 0


# -- refusals write nothing ------------------------------------------------------

def _bad_appends(store):
    head = store.head()
    good = block_fields(head.height + 1, head.hash, [tx(ALICE, 1)])

    def holding(txs):  # the good block, holding other transactions
        return good | {"txs": txs, "block": block_fields(head.height + 1, head.hash, txs)["block"]}

    return [
        (good | {"height": head.height + 2}, "does not follow the head"),
        (good | {"height": head.height}, "does not follow the head"),
        (good | {"height": True}, "does not follow the head"),
        (good | {"parent_hash": b"\x07" * 32}, "is not the head"),
        (good | {"parent_hash": b"\x07"}, "parent_hash must be 32 bytes"),
        (good | {"block_hash": b"\x07" * 31}, "block_hash must be 32 bytes"),
        (good | {"block_hash": head.hash}, "already stored"),
        (good | {"timestamp_ms": -1}, "timestamp_ms"),
        (good | {"proposer": "alice"}, "must be bytes"),
        (holding([b"\x00garbage"]), "tx 0: transaction is not canonical CBOR"),
        (holding([tx(ALICE, 1), tx(ALICE, 1)]), "appears twice"),
        (holding([tx(ALICE, 0)]), "is already in block 1"),
        (holding([tx(ALICE, 2)]), "is not the next nonce 1"),
        (holding([tx(BOB, 0), tx(BOB, 2)]), "tx 1: nonce 2"),
        (holding([tx(ALICE, 1), tx(ALICE, 1, size=1)]), "tx 1: nonce 1"),
        # The store keeps a transaction's bytes once, in its block: a block must hold them, in order.
        (good | {"block": b"block without its transactions"}, "do not hold its transactions' bytes"),
        (holding([tx(ALICE, 1), tx(ALICE, 2)]) | {"block": block_fields(head.height + 1, head.hash,
                                                                            [tx(ALICE, 2), tx(ALICE, 1)])["block"]},
         "do not hold its transactions' bytes in order"),
    ]


def test_refused_appends_leave_the_store_unchanged(conn):
    store = ChainStore(conn)
    append(store, [tx(ALICE, 0)])
    before = (store.head(), counts(conn), store.next_nonce(ALICE.public_key))
    for fields, words in _bad_appends(store):
        with pytest.raises(StoreError, match=words):
            store.append_block(**fields)
        assert (store.head(), counts(conn), store.next_nonce(ALICE.public_key)) == before
    append(store, [tx(ALICE, 1)])  # and the store still takes the right block
    assert store.head().height == 2


def test_a_repeated_transaction_is_refused_by_its_nonce_after_a_reopen(conn):
    """The store has no key on transaction hashes: a repeat is refused by its
    sender's nonce, which a reopened store derives from the stored
    transactions, and the refusal names the block that holds it (found by a
    scan, as the reopened store has no recent blocks in memory). The refused
    append writes nothing."""
    store = ChainStore(conn)
    repeated = tx(ALICE, 0)
    first = append(store, [repeated])
    reopened = ChainStore(conn)
    assert reopened.next_nonce(ALICE.public_key) == 1
    before = (reopened.head(), counts(conn))
    with pytest.raises(StoreError, match=f"transaction {hash_tagged('metanode/tx/v1', repeated).hex()} "
                                         "is already in block 1"):
        append(reopened, [tx(BOB, 0), repeated])
    assert (reopened.head(), counts(conn)) == before and reopened.next_nonce(BOB.public_key) == 0
    assert reopened.block_txs(1) == first["txs"]
    append(reopened, [tx(BOB, 0)])  # the store still takes a good block
    assert reopened.head().height == 2


def test_a_repeated_transaction_is_refused_by_the_index_key_even_when_the_nonces_allow_it(conn):
    """The backstop behind the nonces: the hash index's newest segment keys
    the hash, so with nonces that lost the sender's entry the write is still
    refused, named, and rolled back whole."""
    store = ChainStore(conn)
    repeated = tx(ALICE, 0)
    append(store, [repeated])
    store._nonces.clear()  # the fault: the sender's next nonce is gone
    before = (store.head(), counts(conn))
    with pytest.raises(StoreError, match=f"transaction {hash_tagged('metanode/tx/v1', repeated).hex()} "
                                         "is already in block 1"):
        append(store, [tx(BOB, 0), repeated])
    assert (store.head(), counts(conn)) == before and store.block_by_height(2) is None


def test_only_heights_and_the_index_segments_are_keys(conn):
    """Random keys make DuckDB rewrite a whole index at every checkpoint (a
    cost that grows with the chain): the blocks and transactions are keyed by
    height only, and hashes only in the index's segments."""
    store = ChainStore(conn)
    append(store, [tx(ALICE, 0)])
    keyed = conn.execute(
        "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
        "WHERE table_name LIKE 'chain_%' AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')").fetchall()
    assert sorted((table, list(columns)) for table, columns in keyed) == [
        ("chain_blocks", ["height"]), ("chain_head", ["id"]), ("chain_meta", ["key"]),
        ("chain_tx_keys_000000", ["hash"])]


class FailingConnection:
    """A DuckDB connection whose disk 'fails' at one statement (fault injection)."""

    def __init__(self, conn, fail_on):
        self._conn, self.fail_on, self.armed = conn, fail_on, False

    def execute(self, sql, *params):
        if self.armed and self.fail_on in sql:
            self.armed = False
            raise duckdb.IOException("injected: disk full")
        return self._conn.execute(sql, *params)


@pytest.mark.parametrize("fail_on", ["INSERT INTO chain_txs", "UPDATE chain_head", "COMMIT"])
def test_a_failure_inside_the_append_rolls_back_all_of_it(conn, fail_on):
    faulty = FailingConnection(conn, fail_on)
    store = ChainStore(faulty)
    append(store, [tx(ALICE, 0)])
    before = (store.head(), counts(conn))
    faulty.armed = True
    with pytest.raises(DataDirError, match="injected.*block 2 was not stored"):  # a disk fault: the node stops
        append(store, [tx(ALICE, 1), tx(BOB, 0)])
    assert (store.head(), counts(conn)) == before
    assert store.next_nonce(ALICE.public_key) == 1 and store.next_nonce(BOB.public_key) == 0
    assert store.block_by_height(2) is None
    append(store, [tx(ALICE, 1), tx(BOB, 0)])  # the retry succeeds
    assert ChainStore(conn).head() == store.head()


# -- reopening ---------------------------------------------------------------------

def test_reopen_resumes_at_the_head(tmp_path):
    conn = open_node_db(tmp_path)
    store = ChainStore(conn)
    for n in range(3):
        append(store, [tx(ALICE, n)])
    head = store.head()
    conn.close()
    conn = open_node_db(tmp_path)
    again = ChainStore(conn)
    assert again.head() == head
    assert again.next_nonce(ALICE.public_key) == 3
    append(again, [tx(ALICE, 3)])
    conn.close()


def test_open_detects_a_head_that_disagrees_with_the_blocks(conn):
    store = ChainStore(conn)
    append(store, [])
    append(store, [])
    conn.execute("DELETE FROM chain_blocks WHERE height = 2")
    with pytest.raises(StoreError, match="inconsistent"):
        ChainStore(conn)


def test_tables_coexist_with_other_packages(conn):
    conn.execute("CREATE TABLE receipts_log (idx UBIGINT, leaf BLOB)")
    store = ChainStore(conn)
    append(store, [])
    ChainStore(conn)  # creating the tables again is harmless
    assert conn.execute("SELECT count(*) FROM receipts_log").fetchone() == (0,)


def test_schema_version_mismatch_is_refused(conn):
    ChainStore(conn)
    conn.execute("UPDATE chain_meta SET value = '99'::BLOB WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        ChainStore(conn)


def test_a_store_from_before_headers_committed_to_the_genesis_is_refused_with_what_to_do(tmp_path):
    """Version 1 blocks lack the header's genesis hash: the store is refused as
    a user error (one line, no traceback) naming its file and what to do."""
    conn = open_node_db(tmp_path / "data")
    ChainStore(conn)
    conn.execute("UPDATE chain_meta SET value = '1'::BLOB WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError) as info:
        ChainStore(conn)
    conn.close()
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert str(tmp_path / "data" / DB_FILENAME) in message and f"schema version 1 is not {SCHEMA_VERSION}" in message
    assert "genesis hash" in message and f"data directory {tmp_path / 'data'} aside" in message


def test_bind_chain_records_and_then_checks_the_chain(conn):
    store = ChainStore(conn)
    assert store.chain_identity() is None
    store.bind_chain(CHAIN, GENESIS)
    store.bind_chain(CHAIN, GENESIS)
    assert ChainStore(conn).chain_identity() == (CHAIN, GENESIS)
    with pytest.raises(StoreError, match="holds chain testnet-1"):
        store.bind_chain("other", GENESIS)
    with pytest.raises(StoreError, match="another data directory"):
        store.bind_chain(CHAIN, b"\x01" * 32)

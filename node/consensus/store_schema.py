"""The chain store's tables, its schema version, and the migrations from older versions.

docs/data-dir.md gives the tables column by column and each migration.
"""

from __future__ import annotations

import duckdb

from node.base.db import transaction
from node.base.errors import UserError
from node.consensus.tx_bytes import locate_stored_txs
from node.consensus.tx_index import build_from_chain_txs

# 2: block headers commit to the genesis hash (``genesis_hash``); blocks of
# version 1 lack it and no longer validate, so such a store is refused.
# 3: headers carry ``next_validators_hash`` and ``seed_proof`` (validator-set
# changes and the VRF seed); blocks of version 2 lack them.
# 4: no ``chain_nonces`` table (the next nonces are derived from ``chain_txs``
# at open); a version 3 store is migrated by dropping it.
# 5: transaction hashes indexed in segments (``chain_tx_keys_*``), no key on
# a hash in ``chain_txs`` (it was the primary key) or ``chain_blocks`` (its hash
# was UNIQUE); versions 3 and 4 are migrated by copying both tables into the
# new shape and indexing the stored transactions.
# 6: a transaction's bytes are not copied into ``chain_txs`` (``tx``); its
# row locates them in its block (``tx_offset``, ``tx_length``); version 5 is
# migrated by finding each stored transaction in its block.
SCHEMA_VERSION = 6

_BLOCKS_SHAPE = """height UBIGINT PRIMARY KEY, hash BLOB NOT NULL, parent_hash BLOB NOT NULL,
    timestamp_ms BIGINT NOT NULL, proposer BLOB NOT NULL, tx_count INTEGER NOT NULL, block BLOB NOT NULL"""
_TXS_SHAPE = """hash BLOB NOT NULL, height UBIGINT NOT NULL, idx INTEGER NOT NULL,
    sender BLOB NOT NULL, nonce UBIGINT NOT NULL, type VARCHAR NOT NULL,
    tx_offset INTEGER NOT NULL, tx_length INTEGER NOT NULL"""
# Version 5's chain_txs, which versions 3 and 4 are first copied into.
_V5_TXS_SHAPE = """hash BLOB NOT NULL, height UBIGINT NOT NULL, idx INTEGER NOT NULL,
    sender BLOB NOT NULL, nonce UBIGINT NOT NULL, type VARCHAR NOT NULL, tx BLOB NOT NULL"""
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chain_meta (
        key VARCHAR PRIMARY KEY, value BLOB NOT NULL)""",
    f"CREATE TABLE IF NOT EXISTS chain_blocks ({_BLOCKS_SHAPE})",
    f"CREATE TABLE IF NOT EXISTS chain_txs ({_TXS_SHAPE})",
    """CREATE TABLE IF NOT EXISTS chain_head (
        id INTEGER PRIMARY KEY CHECK (id = 0), height UBIGINT NOT NULL, hash BLOB NOT NULL)""",
)


def _reshaped(table: str, shape: str) -> tuple[str, ...]:
    """Statements that copy ``table`` into ``shape`` (same columns, other keys),
    rows in the order they were appended (no sort: DuckDB keeps insertion order)."""
    return (f"CREATE TABLE {table}_v5 ({shape})", f"INSERT INTO {table}_v5 SELECT * FROM {table}",
            f"DROP TABLE {table}", f"ALTER TABLE {table}_v5 RENAME TO {table}")


# Same blocks, same meaning: migrated in place, in the opening transaction.
_TO_V5 = (*_reshaped("chain_blocks", _BLOCKS_SHAPE), *_reshaped("chain_txs", _V5_TXS_SHAPE))
_MIGRATES_TO_V5 = {b"3": ("DROP TABLE IF EXISTS chain_nonces", *_TO_V5), b"4": _TO_V5}


class StoreError(Exception):
    """A block cannot be appended (wrong height or parent, bad or repeated
    transaction, out-of-order nonce) or the stored chain is inconsistent.
    Nothing is written when it is raised."""


class StoreVersionError(StoreError, UserError):
    """The chain store was written by another metanode version whose chain
    format this one cannot read. Reported as one line naming the database
    file and what to do, never a traceback."""


class StoreDamagedError(StoreError, UserError):
    """The stored chain contradicts itself in a way an older version's
    migration cannot carry over (a transaction its block does not hold).
    Reported as one line naming the database file and what to do."""


def open_schema(conn: duckdb.DuckDBPyConnection, db_file: str, data_dir: str) -> None:
    """Create the tables if missing, or migrate an older version in place, in
    one transaction; raise StoreVersionError for a version this one cannot read
    (``db_file`` and ``data_dir`` name it in the message)."""
    with transaction(conn):
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT value FROM chain_meta WHERE key = 'schema_version'").fetchone()
        version = None if row is None else bytes(row[0])
        if version is None:
            conn.execute("INSERT INTO chain_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION).encode(),))
        elif version in _MIGRATES_TO_V5 or version == b"5":
            for statement in _MIGRATES_TO_V5.get(version, ()):
                conn.execute(statement)
            if version != b"5":
                build_from_chain_txs(conn)
            try:
                locate_stored_txs(conn, _TXS_SHAPE)
            except ValueError as exc:
                raise StoreDamagedError(
                    f"{db_file}: cannot migrate the chain store: {exc}; it is left unchanged: move the data "
                    f"directory {data_dir} aside and start the node with an empty one (it syncs the chain from "
                    "its peers)") from None
            conn.execute("UPDATE chain_meta SET value = ? WHERE key = 'schema_version'",
                         (str(SCHEMA_VERSION).encode(),))
        elif version != str(SCHEMA_VERSION).encode():
            raise StoreVersionError(
                f"{db_file}: chain store schema version {version.decode(errors='replace')} is not "
                f"{SCHEMA_VERSION}; this data directory was written by another metanode version "
                "(block headers changed: from version 2 they commit to the genesis hash, from version 3 to "
                "the next validator set and a VRF seed, so older blocks no longer "
                f"validate); move the data directory {data_dir} aside and start the node with "
                "an empty one: the chain restarts from its genesis (or syncs from peers of this version)"
            )

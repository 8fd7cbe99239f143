"""The chain store: committed blocks, transactions, nonces and head in DuckDB.

The store does not parse blocks. The consensus layer hands it each final
block as plain values (height, hash, parent hash, timestamp, proposer, the encoded
block and its encoded transactions); the store only decodes transactions
(its own format, :mod:`node.consensus.tx`) to index them and to track each
sender's next nonce.

Appending a block is one DuckDB transaction of one statement per table:
after a crash at any point (kill -9 included, see :mod:`node.base.db` for
checkpoints) the store reopens at the last block whose append returned, or
at most the one being appended, never part of one. Once the write-ahead log
passes ``checkpoint_wal_bytes`` an append checkpoints it, through
:func:`node.base.db.checkpoint_node_db` (DuckDB's own automatic checkpoints,
which a kill can leave torn, are off). A repeated
transaction is refused by the nonce rule, before anything is written (it
carries a nonce its sender has already used), with no query when the block is
good. Transactions are found by hash through :mod:`node.consensus.tx_index`
(segments of at most 2^20 keys, so that a checkpoint never rewrites an index
of the whole chain), the newest blocks' from memory; ``chain_txs`` and
``chain_blocks`` have no key on a hash. Tables (all prefixed
``chain_``):

* ``chain_blocks``  height, hash, parent_hash, timestamp_ms, proposer, tx_count, block
* ``chain_txs``     hash, height, idx, sender, nonce, type, tx_offset, tx_length
* ``chain_tx_keys_NNNNNN``  hash (primary key), height, idx: the hash index's segments
* ``chain_head``    one row: height, hash
* ``chain_meta``    key/value: schema version, chain id, genesis hash

A transaction's bytes are kept once, inside its block: ``tx_offset`` and
``tx_length`` locate them in ``chain_blocks.block``. The store still does
not parse blocks: it requires each transaction's bytes to appear in the
block's bytes, in block order (as a block embeds them), and finds them there.

Each sender's next nonce is not stored apart: it is one more than the
sender's highest nonce in ``chain_txs`` (a sender's committed nonces run
0, 1, 2... without a gap), read once at open and then kept in memory. Keeping
a table of them cost an upsert per block, about as much as the rest of
the block's rows together.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from node.base.codec import to_hex
from node.base.db import NodeDatabaseError, checkpoint_node_db, transaction, wal_size
from node.base.errors import DataDirError
from node.base.faults import data_dir_failure
from node.consensus.recent_blocks import RecentBlocks, RecentTxs
from node.consensus.store_schema import SCHEMA_VERSION, StoreError, StoreVersionError, open_schema
from node.consensus.tx import Transaction, TxError
from node.consensus.tx_bytes import cut, locate
from node.consensus.tx_caches import DecodedTxCache
from node.consensus.tx_checks import next_nonces_after
from node.consensus.tx_index import IndexWrite, TxKeyIndex

__all__ = ["SCHEMA_VERSION", "ChainHead", "ChainStore", "StoreError", "StoreVersionError", "StoredBlock", "StoredTx"]

MAX_TIME = 2**63 - 1
# DuckDB's own default checkpoint threshold: replaying at most this much log
# on open takes well under a second.
CHECKPOINT_WAL_BYTES = 16 * 1024 * 1024

_BLOCK_COLUMNS = "height, hash, parent_hash, timestamp_ms, proposer, tx_count, block"


@dataclass(frozen=True)
class ChainHead:
    height: int
    hash: bytes


@dataclass(frozen=True)
class StoredBlock:
    height: int
    hash: bytes
    parent_hash: bytes
    timestamp_ms: int  # the block time from its header
    proposer: bytes
    tx_count: int
    block: bytes  # the encoded block exactly as handed to append_block


@dataclass(frozen=True)
class StoredTx:
    hash: bytes
    height: int
    index: int  # position in its block
    tx: bytes  # the encoded transaction


class ChainStore:
    """Committed chain data in the node's DuckDB connection (single writer).

    ``first_height`` is the height the first appended block must have (1 when
    the genesis header is not itself stored) and ``first_parent``, if given,
    the parent hash it must carry (the genesis header's hash). Creates its
    tables if missing and checks, on open, that the head agrees with the blocks.
    """

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        first_height: int = 1,
        first_parent: bytes | None = None,
        tx_cache: DecodedTxCache | None = None,
        checkpoint_wal_bytes: int = CHECKPOINT_WAL_BYTES,
    ) -> None:
        """``tx_cache``: the node's decoded transactions. Appends decode through
        it, and the application reads the same entries (``store.tx_cache``);
        the consensus service installs one sized for its limits, and a
        block's entries leave when the mempool is told of its commit. A store
        used alone gets a default-sized one (its bounds still hold).
        ``checkpoint_wal_bytes``: the log size (all tables of the connection)
        from which an append checkpoints it."""
        if first_height < 0:
            raise ValueError("first_height must be >= 0")
        if checkpoint_wal_bytes <= 0:
            raise ValueError("checkpoint_wal_bytes must be > 0")
        self._conn = conn
        self.checkpoint_wal_bytes = checkpoint_wal_bytes
        # Told (seconds of wall time, log bytes moved) after each checkpoint: a
        # checkpoint runs inside a block's append, so its time delays the block.
        self.on_checkpoint: list[Callable[[float, int], None]] = []
        self.tx_cache = tx_cache if tx_cache is not None else DecodedTxCache()
        # Named in the error that stops the node when a write fails (disk full...).
        files = conn.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
        self.db_file: str = files[0][0] if files and files[0][0] else "the in-memory chain store"
        self._db_path = Path(files[0][0]) if files and files[0][0] else None  # None: nothing to checkpoint
        self.first_height = first_height
        self.first_parent = first_parent
        open_schema(conn, self.db_file, self._data_dir())
        self._head = self._load_head()
        self._index = TxKeyIndex(conn)
        self._recent: RecentBlocks[StoredBlock] = RecentBlocks()  # committed blocks, newest (chain_block, sync)
        self._recent_txs: RecentTxs[StoredTx] = RecentTxs()  # their transactions by hash (tx_get, tx_submit)
        # Every sender's next nonce, in memory: the mempool asks on every
        # admission from a new sender, and a DuckDB point query (~0.5-1 ms)
        # costs more than the signature check. One entry per sender that ever
        # had a transaction committed (each paid for with block space). Read
        # from the committed transactions (see the module docstring): one scan
        # at open (~0.2 s CPU for a million transactions of 200,000 senders).
        self._nonces: dict[bytes, int] = {
            bytes(sender): int(nonce)
            for sender, nonce in conn.execute("SELECT sender, max(nonce) + 1 FROM chain_txs GROUP BY sender").fetchall()
        }

    def _data_dir(self) -> str:
        """The directory of the database file (for messages)."""
        return os.path.dirname(self.db_file) if os.path.isabs(self.db_file) else self.db_file

    # -- chain identity -------------------------------------------------------
    def bind_chain(self, chain_id: str, genesis_hash: bytes) -> None:
        """Record which chain this database holds, or check it is the same one.

        Raises StoreError when the database already belongs to another chain
        id or genesis, so a node never mixes two chains in one data directory.
        """
        with transaction(self._conn):
            stored_id, stored_genesis = self._meta("chain_id"), self._meta("genesis_hash")
            if stored_id is None and stored_genesis is None:
                self._set_meta("chain_id", chain_id.encode())
                self._set_meta("genesis_hash", bytes(genesis_hash))
                return
        if stored_id != chain_id.encode() or stored_genesis != bytes(genesis_hash):
            raise StoreError(
                f"this database holds chain {stored_id.decode(errors='replace') if stored_id else '?'}"
                f" with genesis {to_hex(stored_genesis) if stored_genesis else '?'}, not chain "
                f"{chain_id} with genesis {to_hex(genesis_hash)}; use another data directory"
            )

    def chain_identity(self) -> tuple[str, bytes] | None:
        """(chain id, genesis hash) recorded by :meth:`bind_chain`, if any."""
        stored_id, stored_genesis = self._meta("chain_id"), self._meta("genesis_hash")
        if stored_id is None or stored_genesis is None:
            return None
        return stored_id.decode(), stored_genesis

    # -- writing --------------------------------------------------------------
    def append_block(
        self,
        *,
        height: int,
        block_hash: bytes,
        parent_hash: bytes,
        timestamp_ms: int,
        proposer: bytes,
        block: bytes,
        txs: Sequence[bytes],
    ) -> ChainHead:
        """Append a final block atomically and make it the head.

        ``height`` must be head + 1 (``first_height`` on an empty store) and
        ``parent_hash`` the head's hash (``first_parent``, if set, on an empty
        store); ``txs`` are the block's encoded transactions in block order,
        each with its sender's next nonce, none already stored. ``block`` is
        stored as given and never parsed. StoreError names the problem and
        nothing is written: the checks run before the write (a repeated
        transaction fails the nonce check), and the keys (height, transaction
        hashes in the index's newest segment) are checked by the write itself,
        whose DuckDB transaction is then rolled back whole.
        """
        head = self._head
        expected = self.first_height if head is None else head.height + 1
        if type(height) is not int or height != expected:
            raise StoreError(f"block height {height!r} does not follow the head: expected {expected}")
        if not isinstance(block_hash, bytes) or len(block_hash) != 32:
            raise StoreError(f"block {height}: block_hash must be 32 bytes")
        if not isinstance(parent_hash, bytes) or len(parent_hash) != 32:
            raise StoreError(f"block {height}: parent_hash must be 32 bytes")
        want_parent = self.first_parent if head is None else head.hash
        if want_parent is not None and parent_hash != want_parent:
            raise StoreError(
                f"block {height}: parent {to_hex(parent_hash)} is not "
                f"{'the head' if head else 'the genesis'} {to_hex(want_parent)}"
            )
        if block_hash == parent_hash:  # a repeat of an older block's hash needs a broken hash function
            raise StoreError(f"block {height}: hash {to_hex(block_hash)} is already stored (as its parent's)")
        if type(timestamp_ms) is not int or not 0 <= timestamp_ms <= MAX_TIME:
            raise StoreError(
                f"block {height}: timestamp_ms {timestamp_ms!r} is not an integer in 0..2**63-1"
            )
        if not isinstance(proposer, bytes) or not isinstance(block, bytes):
            raise StoreError(f"block {height}: proposer and block must be bytes")
        decoded = self._decode_block_txs(height, txs)
        nonces = self._check_nonces(height, decoded)
        offsets = locate(block, [tx.encoded for tx in decoded])
        if offsets is None:
            raise StoreError(f"block {height}: the block's bytes do not hold its transactions' bytes in order")
        try:
            indexed = self._write_block(height, block_hash, parent_hash, timestamp_ms, proposer, block, decoded,
                                        offsets)
        except duckdb.ConstraintException as exc:
            # A key already stored (rolled back: nothing was written). The
            # nonces make a repeated transaction fail earlier on a consistent
            # store; this is the check that does not depend on them.
            raise self._duplicate_error(height, block_hash, decoded, exc) from None
        except duckdb.Error as exc:
            # The checks above passed, so a failure here is the disk's (full,
            # read-only, I/O error): the block is not stored, and the node must
            # stop rather than go on as if it were (the transaction rolled back).
            fault = data_dir_failure(exc, db_file=self.db_file)
            if fault is None:
                raise
            raise type(fault)(f"{fault}; block {height} was not stored") from None
        self._head = ChainHead(height, block_hash)
        self._nonces.update(nonces)  # only once the transaction has committed
        self._index.committed(indexed)
        self._recent.add(StoredBlock(height, bytes(block_hash), bytes(parent_hash), timestamp_ms, bytes(proposer),
                                     len(decoded), bytes(block)))
        self._recent_txs.add_block(height, [StoredTx(tx.hash, height, index, tx.encoded)
                                            for index, tx in enumerate(decoded)])
        if self._db_path is not None and (log_bytes := wal_size(self._db_path)) >= self.checkpoint_wal_bytes:
            started = time.monotonic()
            if self._checkpoint(height):
                for listener in self.on_checkpoint:
                    listener(time.monotonic() - started, log_bytes)
        return self._head

    def _checkpoint(self, height: int) -> bool:
        """Whether the log was checkpointed (False: deferred to the next append)."""
        try:
            checkpoint_node_db(self._conn)
        except duckdb.TransactionException:
            return False  # another cursor's transaction is open: the next append tries again
        except NodeDatabaseError as exc:
            # The guard copy could not be written (full or failing disk): the
            # same data-directory fault as a failing checkpoint, so the node
            # stops the way it does for one, not with a traceback.
            raise DataDirError(f"{exc}; block {height} is stored, checkpointing it failed") from None
        except duckdb.Error as exc:
            # Block ``height`` is committed (in the log); a failing disk must
            # still stop the node rather than let it go on writing.
            fault = data_dir_failure(exc, db_file=self.db_file)
            if fault is None:
                raise
            raise type(fault)(f"{fault}; block {height} is stored, checkpointing it failed") from None
        return True

    def _write_block(self, height: int, block_hash: bytes, parent_hash: bytes, timestamp_ms: int, proposer: bytes,
                     block: bytes, decoded: list[Transaction], offsets: list[int]) -> IndexWrite | None:
        with transaction(self._conn) as conn:
            conn.execute(
                f"INSERT INTO chain_blocks ({_BLOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (height, block_hash, parent_hash, timestamp_ms, proposer, len(decoded), block),
            )
            if decoded:
                # One statement for all rows: DuckDB's executemany is ~50x slower.
                conn.execute(
                    "INSERT INTO chain_txs SELECT unnest($1), $2, unnest($3), unnest($4), "
                    "unnest($5), unnest($6), unnest($7), unnest($8)",
                    [
                        [tx.hash for tx in decoded], height, list(range(len(decoded))),
                        [tx.sender for tx in decoded], [tx.nonce for tx in decoded],
                        [tx.type for tx in decoded], offsets, [len(tx.encoded) for tx in decoded],
                    ],
                )
            # The head row exists once a block is stored (checked at open): an
            # UPDATE in place, where an upsert cost ~1.2 ms more per block.
            if self._head is None:
                conn.execute("INSERT INTO chain_head VALUES (0, ?, ?)", (height, block_hash))
            else:
                updated = conn.execute("UPDATE chain_head SET height = ?, hash = ? WHERE id = 0",
                                       (height, block_hash)).fetchone()
                if updated is None or updated[0] != 1:
                    raise StoreError(f"block {height}: the chain store has lost its head row")
            return self._index.write(conn, height, [tx.hash for tx in decoded])

    def _decode_block_txs(self, height: int, txs: Sequence[bytes]) -> list[Transaction]:
        decoded: list[Transaction] = []
        seen: set[bytes] = set()
        for index, raw in enumerate(txs):
            try:
                tx = self.tx_cache.decode(raw)
            except TxError as exc:
                raise StoreError(f"block {height} tx {index}: {exc.message}") from None
            if tx.hash in seen:
                raise StoreError(f"block {height} tx {index}: {to_hex(tx.hash)} appears twice")
            seen.add(tx.hash)
            decoded.append(tx)
        return decoded

    def _duplicate_error(self, height: int, block_hash: bytes, decoded: list[Transaction],
                         exc: duckdb.ConstraintException) -> StoreError:
        """Which key the refused write repeated, as a StoreError."""
        if self.block_by_hash(block_hash) is not None:
            return StoreError(f"block {height}: hash {to_hex(block_hash)} is already stored")
        found = self._index.first_found([tx.hash for tx in decoded])
        if found is not None:
            return StoreError(f"block {height}: transaction {to_hex(found[0])} is already in block {found[1]}")
        return StoreError(f"block {height}: refused by the chain store: {str(exc).splitlines()[0][:300]}")

    def _check_nonces(self, height: int, decoded: list[Transaction]) -> dict[bytes, int]:
        expected: dict[bytes, int] = {}
        for index, tx in enumerate(decoded):
            want = expected.get(tx.sender)
            if want is None:
                want = self._nonces.get(tx.sender, 0)
            if tx.nonce != want:
                stored = self.tx_by_hash(tx.hash) if tx.nonce < want else None
                if stored is not None:  # the usual way a repeated transaction shows
                    raise StoreError(
                        f"block {height}: transaction {to_hex(tx.hash)} is already in block {stored.height}"
                    )
                raise StoreError(
                    f"block {height} tx {index}: nonce {tx.nonce} of sender "
                    f"{to_hex(tx.sender)} is not the next nonce {want}"
                )
            expected[tx.sender] = want + 1
        return next_nonces_after(decoded)

    # -- queries --------------------------------------------------------------
    def head(self) -> ChainHead | None:
        """The last appended block, or None for an empty chain."""
        return self._head

    def block_by_height(self, height: int) -> StoredBlock | None:
        if type(height) is not int or height < 0:
            return None
        recent = self._recent.get(height)
        if recent is not None:
            return recent
        row = self._conn.execute(
            f"SELECT {_BLOCK_COLUMNS} FROM chain_blocks WHERE height = ?", (height,)
        ).fetchone()
        return _block(row)

    def block_by_hash(self, block_hash: bytes) -> StoredBlock | None:
        row = self._conn.execute(
            f"SELECT {_BLOCK_COLUMNS} FROM chain_blocks WHERE hash = ?", (bytes(block_hash),)
        ).fetchone()
        return _block(row)

    def blocks_range(self, start: int, limit: int, *, max_bytes: int | None = None) -> list[StoredBlock]:
        """Up to ``limit`` consecutive blocks from height ``start`` (for sync).

        With ``max_bytes``, stops before the encoded blocks would exceed it,
        but always returns at least one block if ``start`` exists, so a
        syncing peer always makes progress.
        """
        if type(start) is not int or type(limit) is not int or start < 0 or limit <= 0:
            return []
        rows = self._conn.execute(
            f"SELECT {_BLOCK_COLUMNS} FROM chain_blocks WHERE height >= ? AND height < ? "
            "ORDER BY height",
            (start, start + limit),
        ).fetchall()
        blocks: list[StoredBlock] = []
        used = 0
        for row in rows:
            block = _block(row)
            assert block is not None
            if max_bytes is not None and blocks and used + len(block.block) > max_bytes:
                break
            used += len(block.block)
            blocks.append(block)
        return blocks

    def block_txs(self, height: int) -> list[bytes]:
        """The encoded transactions of block ``height`` in block order."""
        stored = self.block_by_height(height)
        if stored is None or not stored.tx_count:
            return []
        places = self._conn.execute(
            "SELECT tx_offset, tx_length FROM chain_txs WHERE height = ? ORDER BY idx", (height,)
        ).fetchall()
        return cut(stored.block, places)

    def tx_by_hash(self, tx_hash_: bytes) -> StoredTx | None:
        """A committed transaction with its block height and index: from
        memory for the newest blocks, else through the hash index."""
        digest = bytes(tx_hash_)
        recent = self._recent_txs.get(digest)
        if recent is not None:
            return recent
        found = self._index.find(digest)
        if found is None:
            return None
        row = self._conn.execute("SELECT b.block, t.tx_offset, t.tx_length FROM chain_txs t JOIN chain_blocks b "
                                 "ON b.height = t.height WHERE t.height = ? AND t.idx = ?", found).fetchone()
        if row is None:
            raise StoreError(f"chain store is inconsistent: transaction {to_hex(digest)} is indexed at block "
                             f"{found[0]} index {found[1]}, which holds none")
        return StoredTx(digest, found[0], found[1], cut(bytes(row[0]), [(row[1], row[2])])[0])

    def committed_copy(self, raw: bytes) -> StoredTx | None:
        """The stored copy of the encoded transaction ``raw`` if it is committed.
        Only a transaction whose nonce its sender has already used can be, so
        any other (a new submission, or bytes that are no transaction) is
        answered with None and no query."""
        try:
            tx = self.tx_cache.decode(raw)
        except TxError:
            return None
        if tx.nonce >= self._nonces.get(tx.sender, 0):
            return None
        return self.tx_by_hash(tx.hash)

    def next_nonce(self, sender: bytes) -> int:
        """The nonce the sender's next transaction must carry (0 if none committed).
        Served from memory; cheap enough to pass as the mempool's ``committed_nonce``."""
        return self._nonces.get(bytes(sender), 0)

    # -- internals ------------------------------------------------------------
    def _load_head(self) -> ChainHead | None:
        head_row = self._conn.execute("SELECT height, hash FROM chain_head").fetchone()
        top = self._conn.execute(
            "SELECT height, hash FROM chain_blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        if head_row is None and top is None:
            return None
        if head_row is None or top is None or (int(head_row[0]), bytes(head_row[1])) != (
            int(top[0]), bytes(top[1])
        ):
            raise StoreError(
                f"chain store is inconsistent: head row {head_row!r} does not match the "
                f"highest block {top[0] if top else None}"
            )
        return ChainHead(int(top[0]), bytes(top[1]))

    def _meta(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM chain_meta WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row is not None else None

    def _set_meta(self, key: str, value: bytes) -> None:
        self._conn.execute("INSERT INTO chain_meta VALUES (?, ?)", (key, value))


def _block(row: tuple | None) -> StoredBlock | None:
    if row is None:
        return None
    height, hash_, parent, timestamp_ms, proposer, tx_count, block = row
    return StoredBlock(
        int(height), bytes(hash_), bytes(parent), int(timestamp_ms), bytes(proposer),
        int(tx_count), bytes(block),
    )

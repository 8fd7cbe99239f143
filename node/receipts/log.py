"""The global append-only receipt log, stored in the node's DuckDB database.

The log's leaves are receipt ids, hashed as RFC 9162 leaves. Instead of the
leaves alone, the log stores the hash of every complete (perfect) subtree as
it forms: the row ``(level, idx, hash)`` (keyed by ``node``, which packs
level and idx) covers leaves ``[idx * 2**level, (idx + 1) * 2**level)``;
level-0 rows are the leaves and carry the receipt id. About two rows per
leaf buy this: the root at any past size, an inclusion proof
and a consistency proof each read O(log n) rows in a single query, and an
append reads only the current frontier (at most 64 rows).

The Merkle planning is pure (``node.base.merkle``); this class only
reads and writes rows, in the tables of :mod:`node.receipts.log_tables`
(subtrees, envelopes by leaf, and receipt id -> leaf in key segments). An
append is atomic: inside the caller's transaction (a block being applied) it
commits or rolls back with everything else; in autocommit mode it runs a
transaction of its own. One writer per database.

The size is asked for several times per block, and counting the leaves reads
the whole table, so an instance keeps it in memory: counted once at open,
advanced by its own appends. An append may still be undone by the caller's
transaction rolling back, so after one the size is *unconfirmed* until a
probe on a fresh cursor (which sees committed rows only) finds it committed;
until then every read probes the caller's own view. A probe reads two leaf
keys through the primary-key index (leaves are written contiguously from 0:
leaf ``n - 1`` present and leaf ``n`` absent means exactly ``n``); a failed
probe falls back to a count. So an instance is exact after a rollback too;
another instance appending to the same database would go unseen (one writer).
A caller that owns the transaction says when it committed
(:meth:`ReceiptLog.committed`), which spares the probe (a fresh cursor and
a query, ~1.5 ms of CPU per block).

Asking whether ids are in the log (:meth:`ReceiptLog.present`, once per block,
mostly for ids that are not) costs a query over every key segment. So an
instance also keeps a fixed-size Bloom filter of every id it counted at open or appended:
a superset of the log (an append rolled back leaves its bits set), so an id
it misses is certainly not in the log, and only its hits are asked of the
table. Answers stay exact (what this connection sees); the filter only saves
queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb

from node.base.codec import to_hex
from node.base.db import atomic, one_row
from node.base.merkle import (
    Subtree,
    append_subtrees,
    assemble_proof,
    consistency_ranges,
    fold_subtrees,
    inclusion_ranges,
    leaf_hash,
    perfect_subtrees,
    proof_subtrees,
)
from node.receipts.envelope import Receipt
from node.receipts.log_tables import (
    LEVEL_SHIFT,
    MAX_LEAVES,
    SEGMENT_LEAVES,
    create_key_segment,
    index_lookup_sql,
    key_table,
    open_tables,
    present_sql,
    segment_of,
    segments_spanned,
)

_LOOKUP_CHUNK = 1000
_FILTER_LOAD_CHUNK = 100_000  # leaves read per query when an instance fills its id filter at open


def _key(level: int, index: int) -> int:
    return (level << LEVEL_SHIFT) | index


class LogError(ValueError):
    """A request the log cannot satisfy: a size or index beyond it, a
    duplicate or malformed receipt id. Nothing was written."""


@dataclass(frozen=True)
class LogHead:
    """The log's size and root after some batch: what a block header seals."""

    size: int
    root: bytes


class ReceiptLog:
    """The receipt Merkle log and the receipt envelopes, on ``conn``.

    Creates its ``receipt_*`` tables if missing. Typical use, per block::

        head = log.append_receipts(receipts_of_block)   # -> LogHead(size, root)
        proof = log.inclusion_proof(log.index_of(rid), head.size)
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection, segment_leaves: int = SEGMENT_LEAVES) -> None:
        if segment_leaves <= 0:
            raise ValueError("segment_leaves must be > 0")
        self._conn = conn
        self.segment_leaves = segment_leaves
        open_tables(conn, segment_leaves)
        self._size = _count(conn)
        self._filter = _IdFilter()
        for start in range(0, self._size, _FILTER_LOAD_CHUNK):  # every leaf, in chunks (bounded memory)
            self._filter.add_all(bytes(row[0]) for row in conn.execute(
                "SELECT receipt_id FROM receipt_log_nodes WHERE node >= ? AND node < ?",
                [start, min(start + _FILTER_LOAD_CHUNK, MAX_LEAVES)]).fetchall())
        # True from an append until a probe finds its rows committed (see the
        # module docstring); at open too, as the caller may be inside a transaction.
        self._unconfirmed = True
        # (size, frontier hashes) after this instance's last append: reused while
        # that size is confirmed, committed rows never changing (no frontier read).
        self._frontier: tuple[int, list[bytes]] | None = None

    # -- reading ----------------------------------------------------------
    def size(self) -> int:
        """Number of receipt ids in the log (as this connection sees it)."""
        if self._unconfirmed:
            self._confirm()
        return self._size

    def committed(self) -> None:
        """The caller's transaction holding this instance's appends has
        committed: the size in memory is the committed size. Call it only
        after a successful COMMIT (after a rollback, say nothing: the next
        read probes and recounts)."""
        self._unconfirmed = False

    def _confirm(self) -> None:
        """Settle the size after an append: committed (then trusted until the
        next append), or else whatever this connection's view holds now."""
        cursor = self._conn.cursor()  # its own transaction: committed rows only
        try:
            committed = _probe(cursor, self._size)
        finally:
            cursor.close()
        if committed:
            self._unconfirmed = False
        elif not _probe(self._conn, self._size):
            self._size = _count(self._conn)  # rolled back (or failed) since: count again

    def head(self) -> LogHead:
        """Current size and root."""
        size = self.size()
        return LogHead(size, self.root_at(size))

    def root_at(self, size: int) -> bytes:
        """Root of the log when it held ``size`` leaves (0 <= size <= current)."""
        size = self._check_count(size, "size")
        pieces = perfect_subtrees(0, size)
        extra = [Subtree(0, size - 1)] if size else []
        hashes = self._read(pieces + extra, size)
        return fold_subtrees([hashes[p] for p in pieces])

    def leaf(self, index: int) -> bytes:
        """The receipt id at ``index``."""
        index = self._check_count(index, "index")
        row = self._conn.execute(
            "SELECT receipt_id FROM receipt_log_nodes WHERE node = ?", [_key(0, index)]
        ).fetchone()
        if row is None:
            raise LogError(f"index {index} is beyond the log")
        return bytes(row[0])

    def index_of(self, receipt_id: bytes) -> int | None:
        """Position of a receipt id in the log, or None if it is not there."""
        if not self._filter.may_hold(_check_id(receipt_id)):
            return None
        segments = self._segments()
        if not segments:
            return None
        row = self._conn.execute(index_lookup_sql(segments), [receipt_id]).fetchone()
        return None if row is None else int(row[0])

    def envelope(self, receipt_id: bytes) -> bytes | None:
        """The stored envelope of a receipt in the log, or None."""
        index = self.index_of(receipt_id)
        if index is None:
            return None
        row = self._conn.execute("SELECT envelope FROM receipt_envelopes WHERE leaf = ?", [index]).fetchone()
        return None if row is None else bytes(row[0])

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the log at ``size``."""
        index = self._check_count(index, "index")
        size = self._check_count(size, "size")
        if index >= size:
            raise LogError(f"index {index} is not below size {size}")
        ranges = inclusion_ranges(index, size)
        return assemble_proof(ranges, self._read(proof_subtrees(ranges) + [Subtree(0, size - 1)], size))

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 consistency proof from the log at ``size1`` to ``size2``."""
        size1 = self._check_count(size1, "size1")
        size2 = self._check_count(size2, "size2")
        if size1 > size2:
            raise LogError(f"size1 {size1} is larger than size2 {size2}")
        ranges = consistency_ranges(size1, size2)
        extra = [Subtree(0, size2 - 1)] if size2 else []
        return assemble_proof(ranges, self._read(proof_subtrees(ranges) + extra, size2))

    # -- writing ----------------------------------------------------------
    def head_after(self, receipt_ids: Sequence[bytes]) -> LogHead:
        """The head :meth:`append` would produce for ``receipt_ids``, writing
        nothing (a proposer puts it in the block header before the block is
        final). Same checks as :meth:`append`."""
        ids, size, frontier = self._prepare(receipt_ids)
        if not ids:
            return LogHead(size, fold_subtrees(frontier))
        _, new_frontier = append_subtrees(size, frontier, [leaf_hash(rid) for rid in ids])
        return LogHead(size + len(ids), fold_subtrees(new_frontier))

    def _prepare(self, receipt_ids: Sequence[bytes]) -> tuple[list[bytes], int, list[bytes]]:
        ids = [_check_id(rid) for rid in receipt_ids]
        if len(set(ids)) != len(ids):
            raise LogError("the batch repeats a receipt id")
        size = self.size()
        cached = self._frontier
        if cached is not None and cached[0] == size and not self._unconfirmed:
            frontier = cached[1]
        else:
            coords = perfect_subtrees(0, size)
            hashes = self._read(coords, size)
            frontier = [hashes[c] for c in coords]
            self._frontier = (size, frontier)
        if not ids:
            return ids, size, frontier
        if size + len(ids) > MAX_LEAVES:
            raise LogError(f"the log cannot hold more than {MAX_LEAVES} receipts")
        present = self.present(ids)
        if present:
            raise LogError(f"receipt {to_hex(min(present))} is already in the log")
        return ids, size, frontier

    def present(self, receipt_ids: Sequence[bytes]) -> set[bytes]:
        """Which of ``receipt_ids`` are in the log (one query per thousand ids)."""
        found: set[bytes] = set()
        ids = [rid for rid in (_check_id(rid) for rid in receipt_ids) if self._filter.may_hold(rid)]
        segments = self._segments() if ids else 0
        for start in range(0, len(ids) if segments else 0, _LOOKUP_CHUNK):
            chunk = ids[start : start + _LOOKUP_CHUNK]
            found.update(bytes(row[0]) for row in self._conn.execute(present_sql(segments, len(chunk)), chunk).fetchall())
        return found

    def append(self, receipt_ids: Sequence[bytes]) -> LogHead:
        """Append a batch of receipt ids (one block's worth); returns the
        head after it. Rejects (LogError, nothing written) an id that is
        malformed, repeated in the batch, or already in the log."""
        return self._append(receipt_ids, None)

    def append_receipts(self, receipts: Sequence[Receipt]) -> LogHead:
        """Append receipts: their ids as :meth:`append` does, and their
        envelopes (which the caller should have verified) by leaf."""
        receipts = list(receipts)
        return self._append([r.id for r in receipts], receipts)

    def _append(self, receipt_ids: Sequence[bytes], receipts: list[Receipt] | None) -> LogHead:
        ids, size, frontier = self._prepare(receipt_ids)
        if not ids:
            return LogHead(size, fold_subtrees(frontier))
        formed, new_frontier = append_subtrees(size, frontier, [leaf_hash(rid) for rid in ids])
        leaf_ids = iter(ids)  # formed lists each leaf before the nodes it completes
        leaves = list(range(size, size + len(ids)))
        self._unconfirmed = True  # set first: a failed insert aborts the caller's transaction
        self._filter.add_all(ids)  # before the insert too: the filter must stay a superset
        with atomic(self._conn) as own:
            self._conn.execute(
                "INSERT INTO receipt_log_nodes (node, hash, receipt_id) SELECT unnest(?), unnest(?), unnest(?)",
                [
                    [_key(n.level, n.index) for n in formed],
                    [n.hash for n in formed],
                    [next(leaf_ids) if n.level == 0 else None for n in formed],
                ],
            )
            self._index_ids(ids, leaves)
            if receipts is not None:
                self._conn.execute(
                    "INSERT INTO receipt_envelopes SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), "
                    "unnest(?), unnest(?), unnest(?)",
                    [leaves, ids, [r.kind for r in receipts], [r.issuer_node for r in receipts],
                     [r.height for r in receipts], [r.subject for r in receipts], [r.prev for r in receipts],
                     [r.envelope for r in receipts]],
                )
        self._unconfirmed = not own  # its own transaction has committed
        self._size = size + len(ids)
        self._frontier = (self._size, new_frontier)
        return LogHead(self._size, fold_subtrees(new_frontier))

    def _index_ids(self, ids: list[bytes], leaves: list[int]) -> None:
        """Each id -> its leaf, in the key segment the leaf falls in (a
        batch across a segment boundary is one statement per segment)."""
        start = 0
        while start < len(ids):
            segment = segment_of(leaves[start], self.segment_leaves)
            end = min(len(ids), start + (segment + 1) * self.segment_leaves - leaves[start])
            if leaves[start] == segment * self.segment_leaves:
                create_key_segment(self._conn, segment)
            self._conn.execute(f"INSERT INTO {key_table(segment)} SELECT unnest(?), unnest(?)",
                               [ids[start:end], leaves[start:end]])
            start = end

    # -- internals --------------------------------------------------------
    def _segments(self) -> int:
        """How many key segments the log's size spans."""
        return segments_spanned(self.size(), self.segment_leaves)

    def _check_count(self, value: int, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise LogError(f"{what} must be a non-negative integer, got {value!r}")
        return value

    def _read(self, coords: Sequence[Subtree], size: int) -> dict[Subtree, bytes]:
        """Hashes of the given subtrees in one query; LogError if the log
        is smaller than ``size`` (some subtree has not formed yet)."""
        if not coords:
            return {}
        keys = sorted({_key(c.level, c.position) for c in coords})
        rows = self._conn.execute(
            f"SELECT node, hash FROM receipt_log_nodes WHERE node IN ({_placeholders(len(keys))})", keys
        ).fetchall()
        mask = MAX_LEAVES - 1
        found = {Subtree(key >> LEVEL_SHIFT, key & mask): bytes(digest) for key, digest in rows}
        if len(found) != len(set(coords)):
            raise LogError(f"size {size} is beyond the log")
        return found


class _IdFilter:
    """A Bloom filter of receipt ids: ``may_hold`` is True for every id added
    (and, rarely, for others). Fixed size: 2**24 bits (2 MiB), three probes
    taken from the id's own bytes (an id is a SHA-256 digest); false
    positives stay below 0.5% up to a million leaves, 0.002% at 50k. A
    false positive costs one query, never a wrong answer."""

    _BITS = 1 << 24

    def __init__(self) -> None:
        self._bits = bytearray(self._BITS // 8)

    @classmethod
    def _positions(cls, receipt_id: bytes) -> tuple[int, int, int]:
        mask = cls._BITS - 1
        return (int.from_bytes(receipt_id[0:4], "big") & mask, int.from_bytes(receipt_id[4:8], "big") & mask,
                int.from_bytes(receipt_id[8:12], "big") & mask)

    def add_all(self, receipt_ids: Iterable[bytes]) -> None:
        bits = self._bits
        for receipt_id in receipt_ids:
            for position in self._positions(receipt_id):
                bits[position >> 3] |= 1 << (position & 7)

    def may_hold(self, receipt_id: bytes) -> bool:
        bits = self._bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in self._positions(receipt_id))


def _count(conn: duckdb.DuckDBPyConnection) -> int:
    """The number of leaves, counted (reads the whole table)."""
    return int(one_row(conn.execute("SELECT count(*) FROM receipt_log_nodes WHERE node < ?", [MAX_LEAVES]))[0])


def _probe(conn: duckdb.DuckDBPyConnection, size: int) -> bool:
    """Whether the log holds exactly ``size`` leaves, through the index:
    leaf ``size - 1`` present (so all below it are) and leaf ``size`` absent."""
    keys = [size - 1, size] if size else [0]
    found = {int(row[0]) for row in conn.execute(
        f"SELECT node FROM receipt_log_nodes WHERE node IN ({_placeholders(len(keys))})", keys).fetchall()}
    return found == ({size - 1} if size else set())


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _check_id(receipt_id: object) -> bytes:
    if not isinstance(receipt_id, bytes) or len(receipt_id) != 32:
        raise LogError("a receipt id is 32 bytes")
    return receipt_id

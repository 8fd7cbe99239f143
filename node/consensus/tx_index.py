"""The chain store's index of transaction hashes: hash -> (height, index).

Transaction hashes are random keys. DuckDB keeps an index (ART) whole in
memory and, at every checkpoint, rewrites every part of it that changed since
the last one; random inserts change nearly all of it, so a single index over
all transactions made each checkpoint cost in proportion to the whole chain
(0.2-0.34 s of CPU at 2M transactions, every ~16 MiB of log: more than the
blocks themselves past a few million; DuckDB issue 24848).

So the index is cut into segments, tables ``chain_tx_keys_000000``,
``chain_tx_keys_000001``... (hash primary key, height, index), each of at most
``segment_keys`` keys. Only the newest takes inserts; a full one is never
written again, so a checkpoint rewrites at most one segment's index, and the
older ones can leave memory. A lookup asks every segment in one statement,
newest first (~0.08 ms per segment; 100 segments of 2^20 keys hold 100M
transactions). A block's keys all go into one segment: a new one starts when
they would overflow the newest (a block larger than a segment gets a segment
of its own).

The segment tables and their order are the whole state: the newest segment
and its key count are read at open, and kept in memory only once the write
that changed them has committed (:meth:`TxKeyIndex.committed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import duckdb

from node.base.db import one_row

SEGMENT_KEYS = 1 << 20  # a full segment's index rewrite: ~0.15 s, once; lookups: ~0.08 ms per segment
_LOOKUP_BATCH = 1000  # hashes per IN list: below DuckDB's index_scan_max_count (2048)
_PREFIX = "chain_tx_keys_"


def segment_table(number: int) -> str:
    return f"{_PREFIX}{number:06d}"


@dataclass(frozen=True)
class IndexWrite:
    """What a write did to the index, applied to memory once its transaction commits."""

    segment: int
    keys: int  # keys in ``segment`` after the write


class TxKeyIndex:
    """Segments of transaction hash -> (height, index), on the store's connection (single writer)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, segment_keys: int = SEGMENT_KEYS) -> None:
        if segment_keys <= 0:
            raise ValueError("segment_keys must be > 0")
        self._conn = conn
        self.segment_keys = segment_keys
        names = [r[0] for r in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE starts_with(table_name, ?) "
            "AND database_name = current_database() ORDER BY table_name",
            (_PREFIX,)).fetchall()]
        self._segments = [int(name[len(_PREFIX):]) for name in names if name[len(_PREFIX):].isdigit()]
        self._keys = 0
        if self._segments:
            self._keys = int(one_row(conn.execute(f"SELECT count(*) FROM {segment_table(self._segments[-1])}"))[0])
        self._lookup = self._lookup_sql()

    @property
    def segments(self) -> int:
        return len(self._segments)

    def write(self, conn: duckdb.DuckDBPyConnection, height: int, hashes: Sequence[bytes]) -> IndexWrite | None:
        """Index a block's transactions, inside the caller's transaction. Returns
        what to pass to :meth:`committed` once that transaction has committed
        (None when there was nothing to write). A hash already in the newest
        segment raises duckdb.ConstraintException (the transaction must then be
        rolled back); the nonces refuse a repeated transaction before this."""
        if not hashes:
            return None
        segment, keys = (self._segments[-1], self._keys) if self._segments else (-1, 0)
        if _starts_segment(segment, keys, len(hashes), self.segment_keys):
            segment, keys = segment + 1, 0
            _create_segment(conn, segment)
        conn.execute(f"INSERT INTO {segment_table(segment)} SELECT unnest($1), $2, unnest($3)",
                     [list(hashes), height, list(range(len(hashes)))])
        return IndexWrite(segment, keys + len(hashes))

    def committed(self, write: IndexWrite | None) -> None:
        if write is None:
            return
        if not self._segments or write.segment != self._segments[-1]:
            self._segments.append(write.segment)
            self._lookup = self._lookup_sql()
        self._keys = write.keys

    def find(self, digest: bytes) -> tuple[int, int] | None:
        """(height, index) of the committed transaction with this hash, or None."""
        if self._lookup is None:
            return None
        row = self._conn.execute(self._lookup, [bytes(digest)]).fetchone()
        return (int(row[0]), int(row[1])) if row is not None else None

    def first_found(self, digests: Sequence[bytes]) -> tuple[bytes, int] | None:
        """The indexed hash among ``digests`` in the earliest block, with that
        block's height, or None: one statement per thousand hashes (an IN list
        is answered through each segment's key, up to DuckDB's 2048)."""
        best: tuple[int, int, bytes] | None = None
        for start in range(0, len(digests) if self._segments else 0, _LOOKUP_BATCH):
            batch = [bytes(d) for d in digests[start:start + _LOOKUP_BATCH]]
            marks = ", ".join("?" * len(batch))
            parts = [f"(SELECT hash, height, idx FROM {segment_table(n)} WHERE hash IN ({marks}))" for n in self._segments]
            row = self._conn.execute(f"SELECT height, idx, hash FROM ({' UNION ALL '.join(parts)}) "
                                     "ORDER BY height, idx LIMIT 1", batch * len(self._segments)).fetchone()
            if row is not None and (best is None or (int(row[0]), int(row[1])) < best[:2]):
                best = (int(row[0]), int(row[1]), bytes(row[2]))
        return None if best is None else (best[2], best[0])

    def _lookup_sql(self) -> str | None:
        if not self._segments:
            return None
        parts = [f"(SELECT height, idx FROM {segment_table(n)} WHERE hash = $1)" for n in reversed(self._segments)]
        return f"SELECT height, idx FROM ({' UNION ALL '.join(parts)}) LIMIT 1"


def _starts_segment(newest: int, keys: int, adding: int, segment_keys: int) -> bool:
    """Whether a block of ``adding`` keys starts a new segment: there is none
    yet, or it would overflow a non-empty newest one (``keys`` in segment
    ``newest``; -1 for none). A block is never split, so one larger than a
    segment fills a new one alone."""
    return newest < 0 or (keys > 0 and keys + adding > segment_keys)


def _create_segment(conn: duckdb.DuckDBPyConnection, number: int) -> None:
    conn.execute(f"CREATE TABLE {segment_table(number)} "
                 "(hash BLOB PRIMARY KEY, height UBIGINT NOT NULL, idx INTEGER NOT NULL)")


def build_from_chain_txs(conn: duckdb.DuckDBPyConnection, segment_keys: int = SEGMENT_KEYS) -> None:
    """Index the transactions already in ``chain_txs`` (a store migrated from a
    version that keyed them there), block by block as appends would have, in
    the caller's transaction."""
    index = TxKeyIndex(conn, segment_keys)
    if index.segments:
        raise ValueError("the transaction index already has segments")
    blocks = conn.execute("SELECT height, count(*) FROM chain_txs GROUP BY height ORDER BY height").fetchall()
    segment, keys, first, last = -1, 0, None, 0
    spans: list[tuple[int, int, int]] = []  # (segment, first height, last height)
    for height, count in blocks:
        if _starts_segment(segment, keys, count, segment_keys):
            if first is not None:
                spans.append((segment, first, last))
            segment, keys, first = segment + 1, 0, height
        keys += count
        last = height
    if first is not None:
        spans.append((segment, first, last))
    for number, low, high in spans:
        _create_segment(conn, number)
        conn.execute(f"INSERT INTO {segment_table(number)} SELECT hash, height, idx FROM chain_txs "
                     "WHERE height BETWEEN ? AND ? ORDER BY height, idx", (low, high))

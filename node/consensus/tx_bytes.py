"""Where a stored transaction's bytes are: inside its block, not copied.

A block embeds each transaction's encoded bytes verbatim (a CBOR byte string
in its ``txs`` array), so the chain store keeps them once, in
``chain_blocks.block``, and ``chain_txs`` holds their place in it
(``tx_offset``, ``tx_length``). The store does not parse blocks: it finds
each transaction's bytes in the block's bytes, in block order, each search
starting where the previous transaction ended. Any match is right, since the
bytes found are equal to the transaction's (a coincidental earlier match
would still read back the same bytes).

Keeping them twice cost 41% of the chain's disk (419 against 247 bytes per
170-byte transaction, measured). A block's append costs the same either way:
finding the transactions costs what writing the copies did.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

_MIGRATE_BLOCKS = 200  # blocks read per step of the migration: bounded memory (a block is at most a few MiB)


def locate(block: bytes, txs: Sequence[bytes]) -> list[int] | None:
    """The offset of each of ``txs`` in ``block``, in order; None when one is not there."""
    offsets = []
    position = 0
    for raw in txs:
        found = block.find(raw, position)
        if found < 0:
            return None
        offsets.append(found)
        position = found + len(raw)
    return offsets


def cut(block: bytes, places: Sequence[tuple[int, int]]) -> list[bytes]:
    """The bytes at each (offset, length) of ``block``."""
    return [block[offset:offset + length] for offset, length in places]


def locate_stored_txs(conn: duckdb.DuckDBPyConnection, shape: str) -> None:
    """Migrate ``chain_txs`` from version 5 (each transaction's bytes in a
    ``tx`` column) to ``shape`` (their place in the block), rows in their
    order, in the caller's transaction. Raises ValueError naming a stored
    transaction that its block does not hold (a damaged store)."""
    conn.execute(f"CREATE TABLE chain_txs_v6 ({shape})")
    bounds = conn.execute("SELECT min(height), max(height) FROM chain_txs").fetchone()
    if bounds is not None and bounds[0] is not None:
        for low in range(int(bounds[0]), int(bounds[1]) + 1, _MIGRATE_BLOCKS):
            high = low + _MIGRATE_BLOCKS - 1
            blocks = {int(h): bytes(b) for h, b in conn.execute(
                "SELECT height, block FROM chain_blocks WHERE height BETWEEN ? AND ?", (low, high)).fetchall()}
            rows = conn.execute("SELECT hash, height, idx, sender, nonce, type, tx FROM chain_txs "
                                "WHERE height BETWEEN ? AND ? ORDER BY height, idx", (low, high)).fetchall()
            _copy_located(conn, blocks, rows)
    conn.execute("DROP TABLE chain_txs")
    conn.execute("ALTER TABLE chain_txs_v6 RENAME TO chain_txs")


def _copy_located(conn: duckdb.DuckDBPyConnection, blocks: dict[int, bytes], rows: list[tuple]) -> None:
    offsets: list[int] = []
    start = 0
    while start < len(rows):
        height = int(rows[start][1])
        end = start
        while end < len(rows) and int(rows[end][1]) == height:
            end += 1
        found = locate(blocks.get(height, b""), [bytes(row[6]) for row in rows[start:end]])
        if found is None:
            raise ValueError(f"stored block {height} does not hold the bytes of its transactions")
        offsets.extend(found)
        start = end
    if rows:
        columns = list(zip(*rows))
        conn.execute("INSERT INTO chain_txs_v6 SELECT unnest($1), unnest($2), unnest($3), unnest($4), unnest($5), "
                     "unnest($6), unnest($7), unnest($8)",
                     [list(columns[0]), list(columns[1]), list(columns[2]), list(columns[3]), list(columns[4]),
                      list(columns[5]), offsets, [len(raw) for raw in columns[6]]])

"""The most recently committed blocks, in memory, for the chain store.

The newest blocks are the ones asked for most: every client following the
chain reads each new block (``chain_block``), and a peer that fell a few
blocks behind syncs them. Each such read was a DuckDB point query (~0.3-0.5
ms of CPU) for a row the store had just written. Stored blocks never change
and are never removed, so a copy is exact once its write has committed; the
store adds a block only then.

Bounded by count and by bytes (the encoded blocks), oldest dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Protocol, TypeVar


class _Block(Protocol):
    @property
    def height(self) -> int: ...
    @property
    def block(self) -> bytes: ...


B = TypeVar("B", bound=_Block)


class RecentBlocks(Generic[B]):
    """The last ``max_blocks`` committed blocks (at most ``max_bytes`` of encoded blocks), by height."""

    def __init__(self, max_blocks: int = 64, max_bytes: int = 16 * 1024 * 1024) -> None:
        if max_blocks < 0 or max_bytes < 0:
            raise ValueError("recent-block bounds must be >= 0")
        self.max_blocks = max_blocks
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[int, B] = OrderedDict()  # ascending heights (appends come in order)
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, block: B) -> None:
        """Keep a block whose write has committed (the next height)."""
        if len(block.block) > self.max_bytes or self.max_blocks == 0:
            return
        self._blocks[block.height] = block
        self._bytes += len(block.block)
        while len(self._blocks) > self.max_blocks or self._bytes > self.max_bytes:
            _, dropped = self._blocks.popitem(last=False)
            self._bytes -= len(dropped.block)

    def get(self, height: int) -> B | None:
        return self._blocks.get(height)


class _Tx(Protocol):
    @property
    def hash(self) -> bytes: ...
    @property
    def tx(self) -> bytes: ...


T = TypeVar("T", bound=_Tx)


class RecentTxs(Generic[T]):
    """The transactions of the last ``max_blocks`` committed blocks, by hash
    (at most ``max_txs`` of them and ``max_bytes`` of encoded transactions;
    oldest blocks dropped first, whole).

    A client that submits a transaction and waits for it asks for it by hash
    as soon as it commits (``tx_submit`` in commit mode, ``tx_get``): the
    newest blocks' transactions are answered from here, without a query of
    every segment of the hash index (:mod:`node.consensus.tx_index`)."""

    def __init__(self, max_blocks: int = 64, max_txs: int = 65_536, max_bytes: int = 32 * 1024 * 1024) -> None:
        if min(max_blocks, max_txs, max_bytes) < 0:
            raise ValueError("recent-transaction bounds must be >= 0")
        self.max_blocks, self.max_txs, self.max_bytes = max_blocks, max_txs, max_bytes
        self._by_hash: dict[bytes, T] = {}
        self._blocks: OrderedDict[int, tuple[list[bytes], int]] = OrderedDict()  # height -> (hashes, bytes)
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._by_hash)

    def add_block(self, height: int, txs: list[T]) -> None:
        """Keep the transactions of a block whose write has committed (the next height)."""
        size = sum(len(tx.tx) for tx in txs)
        if self.max_blocks == 0 or len(txs) > self.max_txs or size > self.max_bytes:
            return  # too big to keep: asked for by hash, its transactions are read from the store
        for tx in txs:
            self._by_hash[tx.hash] = tx
        self._blocks[height] = ([tx.hash for tx in txs], size)
        self._bytes += size
        while len(self._blocks) > self.max_blocks or len(self._by_hash) > self.max_txs or self._bytes > self.max_bytes:
            _, (hashes, dropped) = self._blocks.popitem(last=False)
            self._bytes -= dropped
            for digest in hashes:
                del self._by_hash[digest]

    def get(self, digest: bytes) -> T | None:
        return self._by_hash.get(digest)

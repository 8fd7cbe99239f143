"""Where bundle building reads committed blocks from.

:class:`BlockSource` is the little a bundle needs: a block by height, the
head height, and the first block whose header covers a log index. Anything
holding committed blocks can provide it; :class:`ChainStoreBlocks` does so
over ``node.consensus.store.ChainStore``. The log size in headers never
shrinks from one height to the next, so "first block covering leaf i" is a
binary search over heights.
"""

from __future__ import annotations

from typing import Protocol

from node.consensus.block import Block, BlockError
from node.consensus.store import ChainStore


class BlockSourceError(RuntimeError):
    """The stored chain could not be read or holds a block that does not decode."""


class BlockSource(Protocol):
    """Read access to committed, already verified blocks."""

    def head_height(self) -> int | None:
        """Height of the newest committed block, None when there is none."""

    def block_at(self, height: int) -> Block | None:
        """The committed block at ``height``, None if there is none."""

    def first_block_covering(self, index: int) -> Block | None:
        """The lowest block whose header has ``receipts_size > index``
        (the block that sealed log leaf ``index``), None if none does yet."""


def first_covering_height(source: BlockSource, index: int, low: int) -> int | None:
    """Binary search for the lowest height in ``[low, head]`` whose header
    has ``receipts_size > index``; None when even the head does not."""
    high = source.head_height()
    if high is None or high < low:
        return None
    head = source.block_at(high)
    if head is None or head.header.receipts_size <= index:
        return None
    while low < high:
        middle = (low + high) // 2
        block = source.block_at(middle)
        if block is None:
            raise BlockSourceError(f"block {middle} is missing below the head {high}")
        if block.header.receipts_size > index:
            high = middle
        else:
            low = middle + 1
    return low


class ChainStoreBlocks:
    """A :class:`BlockSource` over a node's ChainStore (blocks decoded with
    ``Block.decode``). ``max_block_size`` bounds what it will decode."""

    def __init__(self, store: ChainStore, *, max_block_size: int | None = None) -> None:
        self._store = store
        self._max_block_size = max_block_size

    def head_height(self) -> int | None:
        head = self._store.head()
        return None if head is None else head.height

    def block_at(self, height: int) -> Block | None:
        stored = self._store.block_by_height(height)
        if stored is None:
            return None
        try:
            block = Block.decode(stored.block, max_size=self._max_block_size)
        except BlockError as exc:
            raise BlockSourceError(f"stored block {height} does not decode: {exc}") from None
        if block.height != height or block.hash != stored.hash:
            raise BlockSourceError(f"stored block {height} does not match its index row")
        return block

    def first_block_covering(self, index: int) -> Block | None:
        height = first_covering_height(self, index, self._store.first_height)
        return None if height is None else self.block_at(height)

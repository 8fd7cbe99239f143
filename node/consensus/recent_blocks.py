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

"""What the consensus service does with a finalised block, and who hears of it.

:meth:`BlockCommits.commit` stores the block, has the application apply it,
lets the mempool drop what it holds, then announces it. The order is the
contract: the application reads the block's transactions through the
store's decode cache, and the mempool's ``on_commit``, the last step that
decodes, evicts the block's cache entries. Only then is the block announced:

* :attr:`BlockCommits.recent`, the last ``RECENT_BLOCKS`` summaries
  (``consensus_state``, the scheduler's liveness check);
* the events of :meth:`BlockCommits.commit_event`, set for each of the
  block's transactions that someone waits for (``tx_submit`` in commit mode);
* the ``on_finalized`` callbacks, called with the block;
* the channels of :meth:`BlockCommits.subscribe` (``chain_subscribe``, the
  processing role), fed a :class:`BlockSummary` each.

Only the service's actor task calls :meth:`BlockCommits.commit`, in the
order blocks are finalised (node/consensus/service.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from node.consensus.app import Application
from node.consensus.block import Block
from node.consensus.mempool import Mempool
from node.consensus.store import ChainStore

RECENT_BLOCKS = 64
SUBSCRIPTION_BUFFER = 256  # summaries a subscriber may lag behind before it is dropped


@dataclass(frozen=True)
class BlockSummary:
    height: int
    hash: bytes
    round: int
    commit_round: int
    timestamp_ms: int
    tx_count: int
    proposer: bytes


class BlockCommits:
    """Commits finalised blocks to the store, the application and the mempool, and announces them."""

    def __init__(self, *, store: ChainStore, app: Application, mempool: Mempool) -> None:
        self.store = store
        self.app = app
        self.mempool = mempool
        self.recent: deque[BlockSummary] = deque(maxlen=RECENT_BLOCKS)
        self.on_finalized: list[Callable[[Block], None]] = []
        self._committed: dict[bytes, trio.Event] = {}
        self._subscribers: list[trio.MemorySendChannel[BlockSummary]] = []

    def commit(self, block: Block) -> None:
        header = block.header
        self.store.append_block(
            height=header.height, block_hash=block.hash, parent_hash=header.parent_hash,
            timestamp_ms=header.timestamp_ms, proposer=header.proposer, block=block.encode(),
            txs=list(block.transactions),
        )
        self.app.apply_final_block(block)
        hashes = block.tx_hashes
        self.mempool.on_commit(header.height, block.transactions, hashes)
        summary = BlockSummary(header.height, block.hash, header.round, block.commit_round,
                               header.timestamp_ms, len(block.transactions), header.proposer)
        self.recent.append(summary)
        for digest in hashes if self._committed else ():
            waiter = self._committed.pop(digest, None)
            if waiter is not None:
                waiter.set()
        for callback in self.on_finalized:
            callback(block)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(summary)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                # A subscriber that cannot keep up is dropped: closing its channel ends its
                # forwarding task (and frees its stream) instead of leaving it waiting forever.
                self._subscribers.remove(channel)
                channel.close()

    def commit_event(self, tx_hash_: bytes) -> trio.Event:
        """An event set when ``tx_hash_`` is finalised."""
        event = self._committed.get(tx_hash_)
        if event is None:
            event = self._committed[tx_hash_] = trio.Event()
        return event

    def forget_waiter(self, tx_hash_: bytes) -> None:
        """Drop the event of ``tx_hash_`` unless it is set (its waiter gave up)."""
        event = self._committed.get(tx_hash_)
        if event is not None and not event.is_set():
            self._committed.pop(tx_hash_, None)

    def subscribe(self) -> trio.MemoryReceiveChannel[BlockSummary]:
        """A channel fed the summary of every block finalised from now on."""
        send, receive = trio.open_memory_channel[BlockSummary](SUBSCRIPTION_BUFFER)
        self._subscribers.append(send)
        return receive

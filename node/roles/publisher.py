"""Receipts this node signs go to the chain in ``receipts.batch`` transactions.

Every role that issues receipts (the gateway's ``api.call``, storage's
``data.store``) queues them here; once per interval the queue is submitted as
node-signed transactions, so every receipt enters the chain's receipt log and
can be bundled and verified offline. (A scheduler node's attestations of the
chain's decisions go in batches of their own: node/roles/scheduler.py.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import trio

from node.consensus.service import ConsensusService
from node.receipts.envelope import Receipt
from node.roles.issuer import NodeIssuer
from node.roles.node_txs import NodeTransactions

BATCH_INTERVAL_S = 1.0


class Attesting(Protocol):
    """A scheduler node's attester (node/roles/scheduler.py), run by the publisher's loop."""

    def attest_once(self) -> int: ...

    def status(self) -> dict[str, int]: ...


class ReceiptPublisher:
    def __init__(self, *, issuer: NodeIssuer, node_txs: NodeTransactions, chain: ConsensusService,
                 max_batch: Callable[[], int]) -> None:
        """``max_batch`` is asked before each batch: the chain's ``max_batch_receipts``
        rule in force at the next height (a vote may change it)."""
        self.issuer = issuer
        self.node_txs = node_txs
        self.chain = chain
        self.max_batch = max_batch
        self.pending: list[bytes] = []
        self.published = 0
        self.attester: Attesting | None = None  # set by the scheduler role on a scheduler node

    def issue(self, kind: str, *, subject: bytes, fields: Mapping[str, Any], height: int | None = None) -> Receipt:
        receipt = self.issuer.issue(kind, height=self.chain.finalized_height if height is None else height, subject=subject, fields=fields)
        self.pending.append(receipt.envelope)
        return receipt

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(BATCH_INTERVAL_S)
            if self.attester is not None:
                self.attester.attest_once()  # in batches of their own, before the queue
            while self.pending and self.chain.started:
                size = self.max_batch()
                batch = self.pending[:size]
                if not self.node_txs.submit("receipts.batch", {"receipts": batch}).accepted:
                    break  # mempool busy: try again next interval
                del self.pending[:size]
                self.published += len(batch)

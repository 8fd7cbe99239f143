"""The receipts role of every node on the chain: publish the receipts it signs.

Receipts this node signs (the gateway's ``api.call``, the scheduler's
``job.schedule`` and ``job.verdict``, storage's ``data.store``) queue in the
context's :class:`~node.roles.publisher.ReceiptPublisher`; this role runs it.
"""

from __future__ import annotations

from node.base.config import NodeConfig
from node.roles.role import RoleContext, Service


class ReceiptsRole:
    """Every node on the chain publishes the receipts it signs (the context's publisher)."""

    name = "receipts"

    def enabled(self, config: NodeConfig) -> bool:
        return True

    def build(self, context: RoleContext) -> list[Service]:
        publisher = context.publisher
        return [Service("receipts", publisher.run, lambda: {"pending": len(publisher.pending), "published": publisher.published})]

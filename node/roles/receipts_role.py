"""The receipts role of every node on the chain: publish the receipts it signs.

Receipts this node signs (the gateway's ``api.call``, storage's
``data.store``) queue in the
context's :class:`~node.roles.publisher.ReceiptPublisher`; this role runs it,
and stops the daemon (a DataDirError) when the receipt issuer could not make
a receipt durable (:meth:`~node.roles.issuer.NodeIssuer.watch`). On a
scheduler node the publisher's loop also runs the attester of the chain's
decisions (node/roles/scheduler.py), whose counts this service's status shows.
"""

from __future__ import annotations

from typing import Any

import trio

from node.base.config import NodeConfig
from node.roles.role import RoleContext, Service


class ReceiptsRole:
    """Every node on the chain publishes the receipts it signs (the context's publisher)."""

    name = "receipts"

    def enabled(self, config: NodeConfig) -> bool:
        return True

    def build(self, context: RoleContext) -> list[Service]:
        publisher, issuer = context.publisher, context.issuer

        async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(issuer.watch)
                await nursery.start(publisher.run)
                task_status.started()

        def status() -> dict[str, Any]:
            attester = publisher.attester
            return {"pending": len(publisher.pending), "published": publisher.published,
                    **(attester.status() if attester is not None else {})}

        return [Service("receipts", run, status)]

"""The scheduler role: sign the ``job.schedule``, ``job.verdict`` and ``service.placement`` receipts each block implies.

Scheduling itself is a pure function of the chain (node/app/scheduler.py) that
every node computes; a scheduler node also vouches for each decision with a
receipt of its own, published on chain like every other receipt.
"""

from __future__ import annotations

from node.app.model import BlockEffects
from node.base.config import NodeConfig
from node.consensus.block import Block
from node.roles.role import RoleContext, Service


class SchedulerRole:
    name = "scheduler"

    def enabled(self, config: NodeConfig) -> bool:
        return "scheduler" in config.roles

    def build(self, context: RoleContext) -> list[Service]:
        publisher = context.publisher

        def sign_implied_receipts(effects: BlockEffects, block: Block) -> None:
            for body in effects.receipt_bodies:
                publisher.issue(body.kind, subject=body.subject, fields=body.fields, height=block.height)

        context.app.on_effects.append(sign_implied_receipts)
        return []  # its work happens as blocks are applied: nothing of its own runs

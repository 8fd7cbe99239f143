"""Keeps this node's registration on chain (``node.register``): roles and processing capacity.

The scheduler assigns jobs only to registered processing nodes, so a node
registers itself once consensus runs, and again whenever its configured
roles or capacity differ from what the chain records.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
import trio

from node.app.chain_app import ChainApplication
from node.consensus.service import ConsensusService
from node.roles.node_txs import NodeTransactions

log = structlog.get_logger("metanode.registrar")
CHECK_INTERVAL_S = 2.0


def registration_payload(roles: list[str], capacity: int, moniker: str) -> dict[str, Any]:
    clean = re.sub(r"[^A-Za-z0-9._-]", "-", moniker)[:64] or "node"
    return {"roles": sorted(roles), "capacity": capacity if "processing" in roles else 0, "moniker": clean}


class Registrar:
    def __init__(self, *, node_txs: NodeTransactions, chain: ConsensusService, app: ChainApplication, roles: list[str],
                 capacity: int, moniker: str) -> None:
        self.node_txs = node_txs
        self.chain = chain
        self.app = app
        self.wanted = registration_payload(roles, capacity, moniker)
        self.registered = False

    def on_chain(self) -> dict[str, Any] | None:
        key = self.node_txs.identity.public_key.hex()
        return next((n for n in self.app.state.nodes(processing_only=False) if n["node"] == key), None)

    def matches(self, record: dict[str, Any] | None) -> bool:
        return record is not None and sorted(record["roles"]) == self.wanted["roles"] and record["capacity"] == self.wanted["capacity"]

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        submitted_at: int | None = None
        while True:
            await trio.sleep(CHECK_INTERVAL_S)
            if not self.chain.started:
                continue
            self.registered = self.matches(self.on_chain())
            if self.registered:
                submitted_at = None
                continue
            height = self.chain.finalized_height
            if submitted_at is None or height > submitted_at + 5:  # not committed after 5 blocks: resubmit
                if self.node_txs.submit("node.register", self.wanted).accepted:
                    submitted_at = height
                    log.info("registering on chain", **self.wanted)

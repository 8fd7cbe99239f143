"""The registrar role: keep this node's registration (roles, capacity) on chain (node/roles/registrar.py)."""

from __future__ import annotations

from node.base.config import NodeConfig
from node.roles.registrar import Registrar
from node.roles.role import RoleContext, Service


class RegistrarRole:
    """A node with any role keeps its registration on chain: the scheduler and
    the storage and gateway nodes find it there."""

    name = "registrar"

    def enabled(self, config: NodeConfig) -> bool:
        return bool(config.roles)

    def build(self, context: RoleContext) -> list[Service]:
        config = context.config
        registrar = Registrar(node_txs=context.node_txs, chain=context.chain, app=context.app, roles=config.roles,
                              capacity=config.services["processing_capacity"],
                              moniker=config.moniker or context.identity.peer_id[-8:])
        return [Service("registrar", registrar.run, lambda: {"registered": registrar.registered})]

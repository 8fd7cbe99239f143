"""The processing role: run the jobs the chain assigns to this node in the cage
(node/roles/processing.py), and serve their results and witnesses to registered
gateways (``artifact_get``)."""

from __future__ import annotations

from node.base.config import NodeConfig
from node.roles import processing
from node.roles.artifacts import register_artifact_methods
from node.roles.role import RoleContext, Service


class ProcessingRole:
    name = "processing"

    def enabled(self, config: NodeConfig) -> bool:
        return "processing" in config.roles

    def build(self, context: RoleContext) -> list[Service]:
        if context.cage_pool is None or context.storage is None:
            raise RuntimeError("the processing role needs the cage pool and the storage role built before it")
        artifacts = context.artifacts()
        # Node tables, height and queue depth read per job: kept until the next applied block.
        context.app.state.follow_blocks()
        # Looked up on the module when built, so a test can run the real daemon with another service class.
        service = processing.ProcessingService(
            identity=context.identity, chain=context.chain, app=context.app, pool=context.cage_pool,
            issuer=context.issuer, node_txs=context.node_txs,
            resolve_input=processing.storage_resolver(context.storage, context.storage_peers),
            artifacts=artifacts, metrics=context.metrics,
            # Only deterministic job policies: results are compared across nodes, and a
            # service naming the daemon's own (network, host clock) policy must be declined
            # (policy_unavailable), not run, nor counted as this node's fault.
            policies=[name for name, policy in context.cage_pool.policies.items()
                      if policy.deterministic_execution and not policy.allows_network],
        )
        register_artifact_methods(context.registry, artifacts, lambda key: context.is_registered_as(key, {"gateway"}))
        return [Service("processing", service.run, lambda: {"completed": service.completed, "declined": service.declined})]

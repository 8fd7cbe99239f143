"""What a node reports about itself and the mesh, served by every daemon.

* ``node_metrics``: this node's Prometheus gauges as JSON (height, round,
  peers, mempool, jobs by state, storage bytes), read from the same registry
  ``/metrics`` exposes, so RPC readers and Prometheus see the same figures;
  and ``under_replicated``: the replicas this storage node should hold and
  does not have now (missing or quarantined, being fetched again), as
  ``{"count", "datasets": [{digest, size, missing_s, attempts, last_error}]}``.
* ``mesh_nodes``: the nodes this node knows: those registered on chain (roles,
  moniker), the current validators (the set of the height being decided), and the addresses it can dial them at (its
  persistent peers and outbound connections).

The client half (probing nodes, crawling the mesh) is :mod:`node.sdk.mesh`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from node.base.keys import peer_id_from_public_key
from node.p2p.jsonrpc import CallContext, Registry
from node.roles.metrics import NodeMetrics


@dataclass(frozen=True)
class MeshView:
    """What the mesh methods read of a node, and nothing more. The callables are
    read at each call: peers come and go, registrations follow the chain."""

    peer_id: str
    persistent_peers: Sequence[str]  # multiaddrs ending in /p2p/<peer id>, from the config
    peer_snapshot: Callable[[], list[dict[str, Any]]]  # PeerManager.snapshot(): connected peers
    registered_nodes: Callable[[], list[dict[str, Any]]]  # StateQueries.nodes(processing_only=False); [] without a chain
    validators: Callable[[], Sequence[bytes]]  # the chain's current set (public keys); empty without a genesis
    metrics: Callable[[], NodeMetrics | None]
    # StorageService.under_replicated: {"count", "datasets"}; nothing on a node without a store.
    under_replicated: Callable[[], dict[str, Any]] = lambda: {"count": 0, "datasets": []}


# -- served by the daemon -------------------------------------------------------------
def metrics_figures(metrics: NodeMetrics | None) -> dict[str, Any]:
    """The daemon's gauges (node.roles.metrics.NodeMetrics) as plain numbers."""
    if metrics is None:  # not serving yet
        return {"height": 0, "round": 0, "peers": 0, "mempool_transactions": 0, "mempool_bytes": 0, "jobs": {}, "storage_bytes": 0}

    def value(name: str) -> int:
        sample = metrics.registry.get_sample_value(name)
        return int(sample) if sample is not None else 0

    jobs = {s.labels["state"]: int(s.value) for family in metrics.jobs.collect() for s in family.samples}
    return {
        "height": value("metanode_height"), "round": value("metanode_round"), "peers": value("metanode_peers"),
        "mempool_transactions": value("metanode_mempool_transactions"), "mempool_bytes": value("metanode_mempool_bytes"),
        "jobs": dict(sorted(jobs.items())), "storage_bytes": value("metanode_storage_bytes"),
    }


def known_nodes(view: MeshView) -> dict[str, Any]:
    """Registered nodes, the current validators and dialable addresses, as the node behind ``view`` knows them."""
    addresses: dict[str, set[str]] = {}
    for text in view.persistent_peers:
        addresses.setdefault(text.rsplit("/p2p/", 1)[-1], set()).add(text)
    for peer in view.peer_snapshot():
        if peer["direction"] == "outbound" and peer["address"]:
            addresses.setdefault(peer["peer_id"], set()).add(f"{peer['address']}/p2p/{peer['peer_id']}")
    registered = [
        {"peer_id": n["peer_id"], "moniker": n["moniker"], "roles": n["roles"], "capacity": n["capacity"],
         "registered_height": n["registered_height"], "healthy": n["healthy"]}
        for n in view.registered_nodes()
    ]
    validators = [peer_id_from_public_key(k) for k in view.validators()]
    return {"peer_id": view.peer_id, "registered": registered, "validators": validators,
            "addresses": {peer: sorted(addrs) for peer, addrs in sorted(addresses.items())}}


def register_mesh_methods(registry: Registry, view: MeshView) -> None:
    async def node_metrics(ctx: CallContext) -> dict[str, Any]:
        return {**metrics_figures(view.metrics()), "under_replicated": view.under_replicated()}

    async def mesh_nodes(ctx: CallContext) -> dict[str, Any]:
        return known_nodes(view)

    registry.register("node_metrics", node_metrics, {}, "This node's Prometheus gauges as JSON: height, round, peers, mempool, jobs, storage; "
                      "the replicas it should hold and does not have now (under_replicated).")
    registry.register("mesh_nodes", mesh_nodes, {}, "Nodes this node knows: registered on chain, the current validators, and where to dial them.")

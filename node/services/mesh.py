"""The figures a node reports about itself and the mesh, and how a client gathers them.

Served by every daemon (register_mesh_methods):

* ``node_metrics``: this node's Prometheus gauges as JSON (height, round,
  peers, mempool, jobs by state, storage bytes), read from the same registry
  ``/metrics`` exposes, so RPC readers and Prometheus see the same figures.
* ``mesh_nodes``: the nodes this node knows: those registered on chain (roles,
  moniker), the genesis validators, and the addresses it can dial them at (its
  persistent peers and outbound connections).

Read by clients: :func:`probe_node` (one connection, one batch: status, peers,
figures) and :func:`mesh_status` (an entry node, then every node it knows, then
every node those know). ``metanode mesh status`` and ``metanode testnet status``
both build their rows with :func:`figures_row`.
"""

from __future__ import annotations

from typing import Any

import trio

from node.errors import UnreachableError, UserError, sole_exception

PROBE_TIMEOUT_S = 3.0
MAX_CRAWL_ROUNDS = 3
ACTIVE_JOB_STATES = ("submitted", "scheduled", "running")


# -- served by the daemon -------------------------------------------------------------
def metrics_figures(metrics: Any) -> dict[str, Any]:
    """The daemon's gauges (node.metrics.NodeMetrics) as plain numbers."""
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


def known_nodes(daemon: Any) -> dict[str, Any]:
    """Registered nodes, genesis validators and dialable addresses, as ``daemon`` knows them."""
    from node.keys import peer_id_from_public_key

    addresses: dict[str, set[str]] = {}
    for text in daemon.config.network["persistent_peers"]:
        peer = text.rsplit("/p2p/", 1)[-1]
        addresses.setdefault(peer, set()).add(text)
    for peer in daemon.peers.snapshot() if daemon.peers else []:
        if peer["direction"] == "outbound" and peer["address"]:
            addresses.setdefault(peer["peer_id"], set()).add(f"{peer['address']}/p2p/{peer['peer_id']}")
    app = getattr(daemon, "app", None)
    registered = [
        {"peer_id": n["peer_id"], "moniker": n["moniker"], "roles": n["roles"], "capacity": n["capacity"],
         "registered_height": n["registered_height"], "healthy": n["healthy"]}
        for n in app.state.nodes(processing_only=False)
    ] if app is not None and daemon.chain is not None else []
    validators = [peer_id_from_public_key(k) for k in daemon.genesis.validators] if daemon.genesis else []
    return {"peer_id": daemon.identity.peer_id, "registered": registered, "validators": validators,
            "addresses": {peer: sorted(addrs) for peer, addrs in sorted(addresses.items())}}


def register_mesh_methods(registry: Any, daemon: Any) -> None:
    async def node_metrics(ctx: Any) -> dict[str, Any]:
        return metrics_figures(getattr(daemon, "metrics", None))

    async def mesh_nodes(ctx: Any) -> dict[str, Any]:
        return known_nodes(daemon)

    registry.register("node_metrics", node_metrics, {}, "This node's Prometheus gauges as JSON: height, round, peers, mempool, jobs, storage.")
    registry.register("mesh_nodes", mesh_nodes, {}, "Nodes this node knows: registered on chain, genesis validators, and where to dial them.")


# -- read by clients ------------------------------------------------------------------
async def probe_node(address: str, *, timeout: float = PROBE_TIMEOUT_S, mesh: bool = False) -> dict[str, Any]:
    """Ask one node how it is: ``{"live": True, "status", "peers", "figures"[, "mesh"]}``,
    or ``{"live": False, "error": why}``. Never raises for an unreachable node. The
    probe's own connection is left out of ``peers``."""
    from node.keys import Identity
    from node.p2p.client import connect_to_node

    me = Identity.generate()
    calls = [("node_status", None), ("net_peers", None), ("node_metrics", None)] + ([("mesh_nodes", None)] if mesh else [])
    try:
        with trio.fail_after(timeout * 2):  # dial, then the batch
            async with connect_to_node(address, identity=me, timeout=timeout) as client:
                answers = await client.call_batch(calls, timeout=timeout)
    except trio.TooSlowError:
        return {"live": False, "error": f"no answer within {timeout:g} s"}
    except Exception as exc:  # any failure to talk means "not live" (exception groups included)
        inner = sole_exception(exc)
        if isinstance(inner, trio.TooSlowError):
            return {"live": False, "error": f"no answer within {timeout:g} s"}
        if isinstance(inner, UserError) and not isinstance(inner, UnreachableError):
            raise inner from None  # a malformed address is the caller's mistake
        text = (str(inner) or type(inner).__name__).splitlines()[0]
        return {"live": False, "error": text.replace(str(address), "the node")[:200]}
    results = [a.get("result") if isinstance(a, dict) else None for a in answers]
    if not isinstance(results[0], dict):
        return {"live": False, "error": "node_status did not answer"}
    peers = [p for p in results[1] or [] if p.get("peer_id") != me.peer_id]
    probe = {"live": True, "status": results[0], "peers": peers, "figures": results[2]}
    if mesh:
        probe["mesh"] = results[3] if isinstance(results[3], dict) else None
    return probe


def figures_row(probe: dict[str, Any]) -> dict[str, Any]:
    """The per-node figures both status commands print (None where the node did not say)."""
    if not probe.get("live"):
        return {"live": False, "moniker": None, "roles": None, "height": None, "round": None, "peers": None, "peer_ids": [],
                "mempool": None, "jobs": None, "error": probe.get("error")}
    status, figures = probe["status"], probe.get("figures") or {}
    jobs = figures.get("jobs")
    return {
        "live": True, "moniker": status.get("moniker"), "roles": status.get("roles"),
        "height": figures.get("height"), "round": figures.get("round"),
        "peers": len(probe["peers"]), "peer_ids": sorted(p["peer_id"] for p in probe["peers"]),
        "mempool": figures.get("mempool_transactions"),
        "jobs": sum(jobs.get(s, 0) for s in ACTIVE_JOB_STATES) if isinstance(jobs, dict) else None,
        "uptime_s": status.get("uptime_s"), "version": status.get("version"),
    }


async def mesh_status(entry: str, *, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Every node the entry node knows (and those its peers know), each probed.

    UnreachableError if the entry node does not answer."""
    from node.p2p.client import parse_node_addr

    parse_node_addr(entry)  # exit 2 on a malformed address, before any dial
    first = await probe_node(entry, timeout=timeout, mesh=True)
    if not first["live"]:
        error = first["error"]
        raise UnreachableError(error.replace("the node", entry, 1) if error.startswith("could not reach the node")
                               else f"could not reach {entry}: {error}")
    entry_id = first["status"]["peer_id"]
    registered: dict[str, dict[str, Any]] = {}
    validators: set[str] = set()
    addresses: dict[str, list[str]] = {entry_id: [entry]}
    probes: dict[str, dict[str, Any]] = {}
    via: dict[str, str] = {entry_id: entry}

    def learn(probe: dict[str, Any]) -> None:
        mesh = probe.get("mesh") or {}
        for node in mesh.get("registered", []):
            registered.setdefault(node["peer_id"], node)
        validators.update(mesh.get("validators", []))
        for peer, addrs in mesh.get("addresses", {}).items():
            known = addresses.setdefault(peer, [])
            known.extend(a for a in addrs if a not in known)

    probes[entry_id] = first
    learn(first)

    async def probe_one(peer: str) -> None:
        tried = []
        for address in addresses.get(peer, []):
            probe = await probe_node(address, timeout=timeout, mesh=True)
            if probe["live"] and probe["status"].get("peer_id") == peer:
                probes[peer], via[peer] = probe, address
                return
            tried.append(probe.get("error") or "another node answers there")
        probes[peer] = {"live": False, "error": "; ".join(dict.fromkeys(tried)) or "no address known"}

    for _ in range(MAX_CRAWL_ROUNDS):
        todo = sorted((set(registered) | validators | set(addresses)) - set(probes))
        todo = [peer for peer in todo if addresses.get(peer)]
        if not todo:
            break
        async with trio.open_nursery() as nursery:
            for peer in todo:
                nursery.start_soon(probe_one, peer)
        for peer in todo:
            learn(probes[peer])
    entry_peers = {p["peer_id"] for p in first["peers"]}
    rows = []
    for peer in sorted(set(registered) | validators | set(addresses)):
        probe = probes.get(peer) or {"live": False, "error": "no address known (no reachable node dials it)"}
        row = {"peer_id": peer, **figures_row(probe)}
        chain = registered.get(peer, {})
        row["moniker"] = row["moniker"] or chain.get("moniker")
        row["roles"] = row.get("roles") or chain.get("roles") or []
        row.update(validator=peer in validators, registered=peer in registered, address=via.get(peer),
                   entry=peer == entry_id, connected_to_entry=peer in entry_peers or peer == entry_id)
        rows.append(row)
    rows.sort(key=lambda r: (not r["entry"], r["moniker"] or "~", r["peer_id"]))
    return {"entry": entry_id, "nodes": rows}

"""How a client gathers the figures nodes report about themselves and the mesh.

:func:`probe_node` (one connection, one batch: status, peers, figures) and
:func:`mesh_status` (an entry node, then every node it knows, then every node
those know). ``metanode mesh status`` and ``metanode testnet status`` both
build their rows with :func:`figures_row`; :func:`under_replicated` gathers the
datasets storage nodes report missing (being fetched again from a peer). The node side is
:mod:`node.roles.mesh` (``node_metrics``, ``mesh_nodes``).
"""

from __future__ import annotations

from typing import Any

import trio

from node.base.errors import UnreachableError, UserError, sole_exception

PROBE_TIMEOUT_S = 3.0
MAX_CRAWL_ROUNDS = 3
ACTIVE_JOB_STATES = ("submitted", "scheduled", "running")


async def probe_node(address: str, *, timeout: float = PROBE_TIMEOUT_S, mesh: bool = False) -> dict[str, Any]:
    """Ask one node how it is: ``{"live": True, "status", "peers", "figures"[, "mesh"]}``,
    or ``{"live": False, "error": why}``. Never raises for an unreachable node. The
    probe's own connection is left out of ``peers``."""
    from node.base.keys import Identity
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
                "mempool": None, "jobs": None, "under_replicated": None, "error": probe.get("error")}
    status, figures = probe["status"], probe.get("figures") or {}
    jobs = figures.get("jobs")
    missing = figures.get("under_replicated")
    return {
        "live": True, "moniker": status.get("moniker"), "roles": status.get("roles"),
        "height": figures.get("height"), "round": figures.get("round"),
        "peers": len(probe["peers"]), "peer_ids": sorted(p["peer_id"] for p in probe["peers"]),
        "mempool": figures.get("mempool_transactions"),
        "jobs": sum(jobs.get(s, 0) for s in ACTIVE_JOB_STATES) if isinstance(jobs, dict) else None,
        # Replicas this node should hold and does not have now (None: a node that does not say).
        "under_replicated": missing.get("count") if isinstance(missing, dict) else None,
        "uptime_s": status.get("uptime_s"), "version": status.get("version"),
    }


def under_replicated(probes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Datasets some live node should hold and does not have now, by digest: size and
    the nodes missing it (``[{digest, size, missing_on: [{peer_id, missing_s, attempts,
    last_error}]}]``, in digest order)."""
    datasets: dict[str, dict[str, Any]] = {}
    for peer, probe in sorted(probes.items()):
        report = (probe.get("figures") or {}).get("under_replicated") if probe.get("live") else None
        if not isinstance(report, dict):
            continue
        for item in report.get("datasets") or []:
            if not isinstance(item, dict) or not isinstance(item.get("digest"), str):
                continue
            entry = datasets.setdefault(item["digest"], {"digest": item["digest"], "size": item.get("size"), "missing_on": []})
            entry["missing_on"].append({"peer_id": peer, "missing_s": item.get("missing_s"),
                                        "attempts": item.get("attempts"), "last_error": item.get("last_error")})
    return [datasets[digest] for digest in sorted(datasets)]


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
    return {"entry": entry_id, "nodes": rows, "under_replicated": under_replicated(probes)}

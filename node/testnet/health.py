"""Ask every node of a testnet how it is, over p2p JSON-RPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from node.p2p.client import call_node
from node.testnet.layout import read_manifest
from node.testnet.processes import running_pid


async def node_health(address: str, timeout: float = 5.0) -> dict[str, Any] | None:
    try:
        with trio.fail_after(timeout):
            status = await call_node(address, "node_status", timeout=timeout)
            peers = await call_node(address, "net_peers", timeout=timeout)
    except Exception:
        return None
    return {"status": status, "peers": peers}


async def cluster_status(directory: Path) -> list[dict[str, Any]]:
    nodes = read_manifest(directory)
    results: dict[str, dict[str, Any] | None] = {}

    async def one(node: dict[str, Any]) -> None:
        results[node["name"]] = await node_health(node["address"])

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(one, node)
    rows = []
    for node in nodes:
        health = results[node["name"]]
        rows.append({
            "name": node["name"],
            "address": node["address"],
            "peer_id": str(node["address"]).rsplit("/", 1)[1],
            "roles": node["roles"],
            "pid": running_pid(directory, str(node["name"])),
            "live": health is not None,
            "peers": len(health["peers"]) if health else None,
            "peer_ids": sorted(p["peer_id"] for p in health["peers"]) if health else [],
        })
    return rows

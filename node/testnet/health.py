"""Ask every node of a testnet how it is, over p2p JSON-RPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from node.sdk.mesh import figures_row, probe_node
from node.testnet.layout import read_manifest
from node.testnet.processes import running_pid


async def node_health(address: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """{"status", "peers", "figures"} of one node (node/sdk/mesh.py), None if it does not answer."""
    probe = await probe_node(address, timeout=timeout)
    return probe if probe["live"] else None


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
            # The figures `metanode mesh status` shows too (height, round, peers, mempool, jobs).
            **{k: v for k, v in figures_row(health or {"live": False}).items() if k not in ("roles", "error")},
        })
    return rows

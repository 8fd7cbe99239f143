"""Fetch a running node's receipt log for auditing, page by page over JSON-RPC.

The pages are copied as they are; nothing is trusted for being fetched:
the export carries each receipt's envelope and its anchor, which
``metanode receipt verify`` (with a bundle) or a re-run of the Merkle root
checks independently.
"""

from __future__ import annotations

import trio

from node.receipts.audit import AuditError, FetchedLog

PAGE = 1000


async def fetch_log(rpc: object) -> FetchedLog:
    leaves: list[list[tuple[int, bytes]]] = []
    start = 0
    while True:
        page = await rpc.call("audit_leaves", {"start": start, "limit": PAGE}, timeout=120)  # type: ignore[attr-defined]
        batch = [(int(index), bytes.fromhex(envelope)) for index, envelope in page["leaves"]]
        if batch:
            leaves.append(batch)
            start = batch[-1][0] + 1
        if len(batch) < PAGE:
            break
    anchors: list[tuple[int, str, int, str]] = []
    height = 1
    while True:
        page = await rpc.call("audit_anchors", {"start_height": height, "limit": PAGE}, timeout=120)  # type: ignore[attr-defined]
        rows = [(int(h), str(b), int(size), str(root)) for h, b, size, root in page["anchors"]]
        anchors.extend(rows)
        if len(rows) < PAGE:
            break
        height = rows[-1][0] + 1
    return FetchedLog(leaves, anchors)


def fetch_log_from(node_addr: str, *, timeout: float = 30.0) -> FetchedLog:
    """The log of the node at ``node_addr`` (UnreachableError / AuditError on failure)."""
    from node.base.errors import exit_code_of, sole_exception
    from node.p2p.client import connect_to_node
    from node.p2p.rpc_client import RpcCallError

    async def main() -> FetchedLog:
        async with connect_to_node(node_addr, timeout=timeout) as rpc:
            return await fetch_log(rpc)

    try:
        return trio.run(main)
    except BaseException as exc:
        inner = sole_exception(exc)
        if isinstance(inner, RpcCallError):
            raise AuditError(f"{node_addr}: {inner.message} (code {inner.code})", exit_code=exit_code_of(inner.code)) from None
        if inner is not exc:
            raise inner from None
        raise

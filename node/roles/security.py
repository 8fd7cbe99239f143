"""What a node tells a security audit: the ``security_report`` RPC.

It answers this node's own facts (confinement layers, the digests of its
cage policies, counters since start: rate-limit refusals, HTTP
authentication failures, cage runs by outcome) and, unless asked not to,
the chain's security facts in a height or time range, read from its
database by node/receipts/security.py (where both kinds of facts, and why
they are kept apart, are described). ``metanode security export-audit``
(node/cli/security.py) asks every node of a cluster; docs/audit-report.md
is the format.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb

from node.base.config import NodeConfig
from node.p2p.jsonrpc import CallContext, Registry
from node.receipts.security import chain_findings, resolve_range
from node.roles.metrics import NodeMetrics


# -- the node's own facts -----------------------------------------------------------------
def policy_digests(config: NodeConfig) -> dict[str, Any]:
    """Digest of each policy of the node's policy file (read at start-up, before
    confinement may hide the file): ``{"file", "digests": {name: hex}}``, or
    ``{"file", "error"}`` when it does not load."""
    from node.cage.job import CageError
    from node.cage.policy import default_policy_path, load_policies

    path = config.cage["policies_file"] or default_policy_path()
    try:
        return {"file": str(path), "digests": {name: p.digest.hex() for name, p in sorted(load_policies(path).items())}}
    except (CageError, OSError, ValueError) as exc:
        return {"file": str(path), "error": str(exc)[:300]}


@dataclass
class SecurityView:
    """What ``security_report`` reads of a daemon; the callables are read at each call."""

    peer_id: str
    moniker: str
    roles: tuple[str, ...]
    policies: dict[str, Any]  # policy_digests(config)
    confinement: Callable[[], dict[str, Any] | None]
    rate_limited: Callable[[], int]
    services: Callable[[], dict[str, Any]]
    metrics: Callable[[], NodeMetrics | None]
    conn: Callable[[], duckdb.DuckDBPyConnection | None]
    started_unix: float = field(default_factory=time.time)


def cage_runs(metrics: NodeMetrics | None) -> dict[str, int]:
    """metanode_cage_runs by status, since start."""
    if metrics is None:
        return {}
    runs = {s.labels["status"]: int(s.value) for family in metrics.cage_runs.collect() for s in family.samples
            if s.name.endswith("_total")}
    return dict(sorted(runs.items()))


def node_facts(view: SecurityView) -> dict[str, Any]:
    """This node's confinement, policy digests and counters since start."""
    http = view.services().get("http") or {}
    return {
        "peer_id": view.peer_id, "moniker": view.moniker, "roles": list(view.roles), "live": True,
        "confinement": view.confinement(), "policies": view.policies,
        "counters": {
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(view.started_unix)),
            "rate_limited": view.rate_limited(),
            "auth_failures": http.get("auth_failures") if http else None,  # None: no HTTP gateway here
            "cage_runs": cage_runs(view.metrics()),
        },
    }


def daemon_security_view(daemon: Any) -> SecurityView:
    """The view of a node.roles.daemon.Daemon (built in its constructor, before confinement)."""
    config = daemon.config
    return SecurityView(
        peer_id=daemon.identity.peer_id, moniker=config.moniker, roles=tuple(config.roles), policies=policy_digests(config),
        confinement=lambda: daemon.confinement,
        rate_limited=lambda: daemon.rpc_server.rate_limited if daemon.rpc_server is not None else 0,
        services=lambda: {s.name: s.status() for s in daemon.services},
        metrics=lambda: daemon.metrics,
        conn=lambda: daemon.db if daemon.chain is not None else None,
    )


_HEIGHT = {"type": "integer", "minimum": 0}
_MS = {"type": "integer"}


def register_security_methods(registry: Registry, view: SecurityView) -> None:
    async def security_report(ctx: CallContext, since_height: int | None = None, until_height: int | None = None,
                              since_ms: int | None = None, until_ms: int | None = None, chain: bool = True) -> dict[str, Any]:
        answer: dict[str, Any] = {"node": node_facts(view), "chain": None}
        conn = view.conn()
        if chain and conn is not None:
            cursor = conn.cursor()
            try:
                heights = resolve_range(cursor, since_height, until_height, since_ms, until_ms)
                answer["chain"] = {"range": heights.to_json(), **chain_findings(cursor, heights)}
            finally:
                cursor.close()
        return answer

    registry.register("security_report", security_report, {"properties": {
        "since_height": _HEIGHT, "until_height": _HEIGHT, "since_ms": _MS, "until_ms": _MS, "chain": {"type": "boolean"}}},
        "Security facts: this node's confinement, policy digests and counters since start (rate-limit refusals, HTTP "
        "authentication failures, cage runs by outcome); with chain, the chain's cage denials, limit kills and disputed "
        "jobs in a height or time range, each with the receipts that back it (metanode security export-audit).")

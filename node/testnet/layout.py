"""Plan and write a local testnet: one key and one config per node, a genesis
file naming the validators, and a full mesh of persistent peers.

Planning is pure (a seed gives the same keys, names and ports every time);
writing puts the plan on disk with keys at mode 0600.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.app.rules import NEW_CHAIN_RULES
from node.base.errors import UserError
from node.base.keys import Identity
from node.consensus.genesis import Genesis

MANIFEST = "testnet.json"
GENESIS = "genesis.toml"
CHAIN_ID = "metanode-testnet"


@dataclass(frozen=True)
class NodePlan:
    name: str
    port: int
    roles: tuple[str, ...]
    identity: Identity = field(repr=False)

    @property
    def address(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.identity.peer_id}"


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now (bound together so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def plan_testnet(
    validators: int,
    *,
    non_validators: int = 0,
    validator_roles: tuple[str, ...] = ("validator", "scheduler", "gateway", "processing", "storage"),
    other_roles: tuple[str, ...] = ("gateway", "processing", "storage"),
    base_port: int | None = None,
    seed: str | None = None,
) -> list[NodePlan]:
    if validators < 1 or validators > 64 or non_validators < 0 or validators + non_validators > 64:
        raise UserError("a local testnet has 1..64 nodes (validators >= 1)", exit_code=2)
    count = validators + non_validators
    ports = list(range(base_port, base_port + count)) if base_port else free_ports(count)
    plans = []
    for i in range(count):
        name = f"node{i}"
        identity = Identity.from_label(f"testnet/{seed}/{name}") if seed is not None else Identity.generate()
        roles = validator_roles if i < validators else other_roles
        plans.append(NodePlan(name, ports[i], tuple(roles), identity))
    return plans


def node_config_text(plan: NodePlan, peers: list[NodePlan], *, log_format: str = "json", storage_nodes: int = 2) -> str:
    peer_lines = ",\n".join(f'    "{p.address}"' for p in peers)
    return f"""# {plan.name} of a local metanode testnet (written by `metanode testnet init`).
[node]
moniker = "{plan.name}"
identity_key = "{plan.name}.key"
data_dir = "{plan.name}-data"
roles = {json.dumps(list(plan.roles))}

[network]
listen = ["/ip4/127.0.0.1/tcp/{plan.port}"]
persistent_peers = [
{peer_lines}
]
keepalive_interval = 2.0
keepalive_timeout = 4.0
redial_backoff_base = 0.2
redial_backoff_cap = 5.0

[consensus]
genesis = "genesis.toml"

[services]
storage_replicas = {max(1, min(2, storage_nodes))}

[log]
format = "{log_format}"
"""


def testnet_genesis(plans: list[NodePlan], *, chain_id: str = CHAIN_ID, genesis_time_ms: int | None = None, block_period_ms: int = 500) -> Genesis:
    """Local timings: short block period and round timeouts, so a lost proposer costs seconds."""
    return Genesis(
        chain_id=chain_id,
        genesis_time_ms=genesis_time_ms if genesis_time_ms is not None else time.time_ns() // 1_000_000,
        validators=tuple(p.identity.public_key for p in plans if "validator" in p.roles),
        block_period_ms=block_period_ms,
        round_timeout_base_ms=2_000,
        round_timeout_cap_ms=16_000,
        # Blocks with transactions ready follow 250 ms after the last, empty ones every period:
        # a job's two proposal waits shrink from up to a period each (docs/blocks.md, "Block timing").
        min_block_interval_ms=min(block_period_ms, 250),
        # ack_blocks = 6: a dead assignee is replaced in seconds; attest_once = 1: one receipt per decision
        rules=dict(NEW_CHAIN_RULES),
    )


def write_testnet(directory: Path, plans: list[NodePlan], genesis: Genesis | None = None) -> Path:
    """Write keys, configs, the genesis file and a manifest; refuses a directory that holds a testnet."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / MANIFEST
    if manifest.exists():
        raise UserError(f"{directory} already holds a testnet ({MANIFEST}); choose another --dir", exit_code=2)
    (genesis or testnet_genesis(plans)).write(directory / GENESIS)
    for plan in plans:
        plan.identity.write(directory / f"{plan.name}.key")
        peers = [p for p in plans if p is not plan]
        storage_nodes = sum(1 for p in plans if "storage" in p.roles)
        (directory / f"{plan.name}.toml").write_text(node_config_text(plan, peers, storage_nodes=storage_nodes))
    manifest.write_text(json.dumps({
        "nodes": [
            {"name": p.name, "config": f"{p.name}.toml", "address": p.address, "roles": list(p.roles)}
            for p in plans
        ]
    }, indent=2) + "\n")
    return manifest


def read_manifest(directory: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((directory / MANIFEST).read_text())["nodes"]
    except FileNotFoundError:
        raise UserError(f"{directory} holds no testnet (no {MANIFEST}); run `metanode testnet init` first", exit_code=2) from None
    except (ValueError, KeyError) as exc:
        raise UserError(f"{directory / MANIFEST} is damaged: {exc}", exit_code=2) from None

"""How the daemon composes roles (node/roles/role.py, node/roles/daemon.py), that
nothing outside consensus reaches into the IBFT core, and the mesh methods'
narrow view of a node."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from node.base.config import load_config
from node.base.keys import Identity, peer_id_from_public_key
from node.roles.daemon import ROLES
from node.roles.mesh import MeshView, known_nodes
from tests.support import write_node_config

NODE = Path(__file__).resolve().parents[1] / "node"


def test_nothing_outside_consensus_reaches_into_the_core():
    """The core belongs to the consensus actor: others read ConsensusService's accessors."""
    offenders = []
    for path in sorted(NODE.rglob("*.py")):
        if path.is_relative_to(NODE / "consensus"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "core":
                offenders.append(f"{path.relative_to(NODE.parent)}:{node.lineno}")
    assert not offenders, offenders


def test_roles_have_one_interface_and_unique_names():
    names = [role.name for role in ROLES]
    assert names == ["receipts", "scheduler", "registrar", "gateway", "storage", "processing", "consensus"]
    for role in ROLES:
        assert callable(role.enabled) and callable(role.build)


@pytest.mark.parametrize(("roles", "enabled"), [
    ([], ["receipts", "consensus"]),
    (["validator"], ["receipts", "registrar", "consensus"]),
    (["validator", "scheduler"], ["receipts", "scheduler", "registrar", "consensus"]),
    (["gateway"], ["receipts", "registrar", "gateway", "storage", "consensus"]),
    (["processing"], ["receipts", "registrar", "storage", "processing", "consensus"]),
    (["storage"], ["receipts", "registrar", "storage", "consensus"]),
])
def test_a_config_enables_its_roles(tmp_path, roles, enabled):
    genesis = tmp_path / "genesis.toml"
    genesis.write_text("")  # only named: enabling reads the config, not the file
    config = load_config(write_node_config(tmp_path, "n", roles=roles, genesis=genesis))
    assert [role.name for role in ROLES if role.enabled(config)] == enabled


def test_without_a_genesis_there_is_no_chain_to_follow(tmp_path):
    config = load_config(write_node_config(tmp_path, "n", roles=["gateway"]))
    assert [role.name for role in ROLES if role.name == "consensus" and role.enabled(config)] == []


def test_known_nodes_reads_only_its_view():
    validator = Identity.from_label("mesh-validator")
    dialed = Identity.from_label("mesh-dialed").peer_id
    persistent = f"/ip4/10.0.0.1/tcp/26656/p2p/{dialed}"
    registered = {"node": "ab" * 32, "peer_id": dialed, "moniker": "m", "roles": ["storage"], "capacity": 0,
                  "registered_height": 3, "healthy": True, "pending": 0, "delivered": 0, "missed": 0}
    view = MeshView(
        peer_id="me", persistent_peers=(persistent,),
        peer_snapshot=lambda: [
            {"peer_id": dialed, "direction": "outbound", "address": "/ip4/10.0.0.2/tcp/26656"},
            {"peer_id": "inbound-peer", "direction": "inbound", "address": "/ip4/10.0.0.3/tcp/4001"},
        ],
        registered_nodes=lambda: [registered],
        validators=lambda: (validator.public_key,),
        metrics=lambda: None,
    )
    assert known_nodes(view) == {
        "peer_id": "me",
        "registered": [{"peer_id": dialed, "moniker": "m", "roles": ["storage"], "capacity": 0,
                        "registered_height": 3, "healthy": True}],
        "validators": [peer_id_from_public_key(validator.public_key)],
        "addresses": {dialed: sorted([persistent, f"/ip4/10.0.0.2/tcp/26656/p2p/{dialed}"])},
    }

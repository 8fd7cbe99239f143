"""Helpers for the service state tests (no tests here; the test_svc_state_* files import it)."""

from __future__ import annotations

from typing import Any

from node.app import ChainRules
from node.app.scheduler import Candidate, rank_nodes
from node.app.services import run_job_id, service_id
from node.base.keys import Identity
from node.receipts.envelope import build_receipt
from tests.services.test_state_support import ALICE, NODES, Chain, content_digest

SALES_V1 = content_digest("sales v1")
SALES_V2 = content_digest("sales v2")
R1 = b"\x11" * 32
SCHEDULER = Identity.from_label("svc-scheduler")
BY_PEER = {n.peer_id: n for n in NODES}


def ready_chain(node_count: int = 4, *, capacity: int = 2, rules: ChainRules | None = None, **kw: Any) -> Chain:
    """Processing nodes NODES[:node_count] and Alice's dataset sales.csv (version 1)."""
    chain = Chain(rules=rules, **kw) if rules else Chain(**kw)
    chain.block(*(chain.register_node(n, capacity=capacity) for n in NODES[:node_count]),
                chain.register_dataset(ALICE, SALES_V1, name="sales.csv"))
    return chain


def deploy_payload(name: str = "daily", *, inputs: dict[str, str] | None = None, replicas: int = 2,
                   trigger: dict[str, Any] | None = None, deadline_blocks: int = 3, job_type: str = "sql",
                   params: dict[str, Any] | None = None, policy: str = "processing") -> dict[str, Any]:
    inputs = inputs if inputs is not None else {"sales": "sales.csv"}
    return {"name": name, "type": job_type, "inputs": inputs,
            "params": params if params is not None else {"query": "SELECT count(*) FROM " + sorted(inputs)[0]},
            "replicas": replicas, "policy": policy,
            "trigger": trigger if trigger is not None else {"on_new_version": True},
            "deadline_blocks": deadline_blocks}


def deploy(chain: Chain, tenant: Identity = ALICE, name: str = "daily", **kw: Any):
    return chain.tx(tenant, "service.deploy", deploy_payload(name, **kw))


def scale(chain: Chain, replicas: int, tenant: Identity = ALICE, name: str = "daily"):
    return chain.tx(tenant, "service.scale", {"name": name, "replicas": replicas})


def stop(chain: Chain, tenant: Identity = ALICE, name: str = "daily"):
    return chain.tx(tenant, "service.stop", {"name": name})


def run_id(run: int, tenant: Identity = ALICE, name: str = "daily") -> bytes:
    return run_job_id(service_id(tenant.public_key, name), run)


def status(chain: Chain, tenant: Identity = ALICE, name: str = "daily") -> dict[str, Any]:
    found = chain.machine.service(tenant.public_key, name)
    assert found is not None
    return found


def placed(chain: Chain, tenant: Identity = ALICE, name: str = "daily") -> list[str]:
    return [p["peer_id"] for p in status(chain, tenant, name)["placements"]]


def ranking(nodes: list[Identity], tenant: Identity = ALICE, name: str = "daily", capacity: int = 2) -> list[str]:
    """The peer ids of ``nodes`` in the service's rendezvous order, best first."""
    by_key = {n.public_key: n for n in nodes}
    keys = rank_nodes(service_id(tenant.public_key, name), [Candidate(n.public_key, capacity) for n in nodes])
    return [by_key[k].peer_id for k in keys]


def rejections(chain: Chain) -> list[str]:
    return [r["reason"] for r in chain.machine.rejections_for_block(chain.height)]


def placement_bodies(effects: Any) -> list[Any]:
    return [b for b in effects.receipt_bodies if b.kind == "service.placement"]


def sign(body: Any, height: int):
    """The body as a signed receipt: build_receipt runs the receipt schema."""
    return build_receipt(SCHEDULER, body.kind, height=height, subject=body.subject, prev=None, fields=body.fields)

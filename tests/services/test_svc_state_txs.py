"""service.deploy / scale / stop: payload schemas (PayloadError naming the field) and state refusals."""

from __future__ import annotations

from typing import Any

import pytest

from node.app import ChainRules
from node.app.policy import Governance
from node.app.txtypes import parse_payload
from node.consensus.tx import PayloadError, sign_tx
from tests.services.test_state_support import ALICE, BOB, NODES
from tests.services.test_svc_state_support import deploy, deploy_payload, ready_chain, rejections, scale, status, stop


def parse(tx_type: str, payload: Any, rules: ChainRules | None = None):
    tx = sign_tx(ALICE, chain_id="svc", nonce=0, tx_type=tx_type, payload=payload)
    return parse_payload(tx, rules) if rules else parse_payload(tx)


@pytest.mark.parametrize(("change", "field"), [
    ({"name": "Daily"}, "name: must be 1-64 of a-z"),
    ({"name": ""}, "name: must be"),
    ({"name": "a" * 65}, "name: must be"),
    ({"trigger": {"on_new_version": True, "every_blocks": 10}}, "trigger: must be a map with exactly one"),
    ({"trigger": {}}, "trigger: must be a map with exactly one"),
    ({"trigger": {"on_new_version": False}}, "trigger.on_new_version: must be true"),
    ({"trigger": {"every_blocks": 4}}, r"trigger.every_blocks: must be in 5..1000000, got 4"),
    ({"replicas": 0}, r"replicas: must be in 1..8"),
    ({"replicas": 9}, r"replicas: must be in 1..8"),
    ({"type": "matrix"}, "type: must be one of sql, trend-analysis, summary"),
    ({"type": "summary", "params": {"input": "other"}}, r"params.input: must name one of the inputs \(sales\)"),
    ({"params": {}}, "params.query: is missing"),
    ({"inputs": {}}, "inputs: must be a map of 1 to"),
    ({"inputs": {"Sales": "sales.csv"}}, "inputs: 'Sales' is not an input name"),
    ({"inputs": {"sales": ""}}, "inputs.sales: must be a dataset name"),
    ({"inputs": {"sales": b"\x00" * 32}}, "inputs.sales: must be a dataset name .* got bytes"),
    ({"policy": "-bad"}, "policy: must be a policy name"),
    ({"deadline_blocks": 1}, "deadline_blocks: must be in 2..10000"),
])
def test_deploy_payload_errors_name_the_field(change, field):
    with pytest.raises(PayloadError, match=field):
        parse("service.deploy", {**deploy_payload(), **change})


def test_valid_payloads_parse_typed():
    p = parse("service.deploy", deploy_payload(trigger={"every_blocks": 5}, inputs={"b": "x", "a": "y"},
                                               params={"query": "SELECT 1"}))
    assert (p.name, p.job_type, p.inputs, p.every_blocks, p.replicas) == ("daily", "sql", {"a": "y", "b": "x"}, 5, 2)
    assert list(p.inputs) == ["a", "b"]
    assert parse("service.deploy", deploy_payload()).every_blocks is None
    assert parse("service.scale", {"name": "daily", "replicas": 3}).replicas == 3
    assert parse("service.stop", {"name": "daily"}).name == "daily"
    with pytest.raises(PayloadError, match="replicas: must be in 1..8"):
        parse("service.scale", {"name": "daily", "replicas": 0})
    with pytest.raises(PayloadError, match="name: is missing"):
        parse("service.stop", {})
    # The interval bound is the rule in force.
    with pytest.raises(PayloadError, match="trigger.every_blocks: must be in 20..1000000"):
        parse("service.deploy", deploy_payload(trigger={"every_blocks": 10}), ChainRules(min_service_interval=20))


def test_state_refusals_are_recorded_with_reasons():
    chain = ready_chain(rules=ChainRules(max_services=2))
    chain.block(deploy(chain, inputs={"sales": "nope.csv"}))
    assert rejections(chain) == ["inputs.sales: no dataset named 'nope.csv' is registered by this tenant"]
    chain.block(deploy(chain))
    assert rejections(chain) == []
    chain.block(deploy(chain))
    assert rejections(chain) == [
        "name: service daily is already active (scale or stop it, or deploy under another name)"]
    chain.block(deploy(chain, name="second"))
    chain.block(deploy(chain, name="third"))
    assert rejections(chain) == ["this tenant already has 2 active services, the most max_services (2) allows"]
    # Another tenant's service is not the sender's: nothing to scale or stop.
    chain.block(scale(chain, 3, tenant=BOB), stop(chain, tenant=BOB))
    assert rejections(chain) == ["name: this tenant has no active service daily"] * 2
    chain.block(scale(chain, 2))
    assert rejections(chain) == ["replicas: service daily already has 2 replicas"]
    chain.block(stop(chain))
    chain.block(stop(chain), scale(chain, 3))
    assert rejections(chain) == ["name: this tenant has no active service daily"] * 2
    # Stopped: deployable again under the same id, and it counts no longer.
    chain.block(deploy(chain, name="third"))
    assert rejections(chain) == []
    assert chain.machine.check_tx_against_state(deploy(chain, name="fourth")) == (
        "this tenant already has 2 active services, the most max_services (2) allows")


def test_an_unadmitted_tenant_is_refused():
    gov = Governance(tenant_policy="allow-list", genesis_tenants=frozenset({ALICE.public_key}))
    chain = ready_chain(governance=gov)
    chain.block(deploy(chain, tenant=BOB, inputs={"sales": "sales.csv"}))
    assert rejections(chain)[0].startswith(f"tenant {BOB.public_key.hex()} is not admitted by the consortium")


def test_redeploy_keeps_the_id_and_continues_run_numbers():
    chain = ready_chain()
    chain.block(deploy(chain))
    first = status(chain)
    assert first["runs"] == 1
    chain.block(stop(chain))
    stopped = status(chain)
    assert stopped["state"] == "stopped" and stopped["placements"] == []
    assert stopped["recent_runs"][0]["state"] == "cancelled"
    assert stopped["recent_runs"][0]["reason"] == "service stopped"
    chain.block(deploy(chain, replicas=3))
    again = status(chain)
    assert again["service_id"] == first["service_id"] and again["state"] == "active"
    assert again["runs"] == 2 and again["replicas"] == 3 and len(again["placements"]) == 3
    assert [r["run"] for r in again["recent_runs"]] == [2, 1]
    assert NODES  # (imported for the ready chain's nodes)

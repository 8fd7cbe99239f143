"""Service runs: on_new_version and every_blocks triggers, no duplicate runs, results and the queries."""

from __future__ import annotations

from node.app.services import service_id
from tests.services.test_state_support import ALICE, BOB, NODES, content_digest
from tests.services.test_svc_state_support import (
    BY_PEER,
    R1,
    SALES_V1,
    SALES_V2,
    deploy,
    ready_chain,
    run_id,
    status,
)


def deliver(chain, run: int, result: bytes = R1, name: str = "daily") -> None:
    """Every pending assignee of the run delivers ``result``, in one block."""
    job = chain.machine.job(run_id(run, name=name))
    chain.block(*(chain.result(BY_PEER[a["peer_id"]], run_id(run, name=name), result)
                  for a in job["assignments"] if a["status"] == "pending"))


def test_on_new_version_starts_a_run_on_the_new_digest_only_for_its_names():
    chain = ready_chain(4)
    chain.block(deploy(chain, deadline_blocks=20))
    assert status(chain)["runs"] == 1
    chain.block(chain.register_dataset(ALICE, content_digest("other"), name="other.csv"))
    chain.block(chain.register_dataset(BOB, SALES_V2, name="sales.csv"))
    assert status(chain)["runs"] == 1  # another name, another tenant's name: nothing
    chain.block(chain.register_dataset(ALICE, SALES_V2, name="sales.csv"))
    service = status(chain)
    assert service["runs"] == 2
    newest = chain.machine.job(run_id(2))
    assert newest["inputs"] == {"sales": SALES_V2.hex()} and newest["state"] == "scheduled"
    assert newest["submitted_height"] == chain.height
    # The older run keeps going; both are listed, newest first.
    assert [(r["run"], r["state"], r["inputs"]["sales"]) for r in service["recent_runs"]] == [
        (2, "scheduled", SALES_V2.hex()), (1, "scheduled", SALES_V1.hex())]
    # Older content registered again becomes the latest: a run on it.
    chain.block(chain.register_dataset(ALICE, SALES_V1, name="sales.csv"))
    assert chain.machine.job(run_id(3))["inputs"] == {"sales": SALES_V1.hex()}


def test_every_blocks_runs_on_schedule_but_never_twice_the_same_active_work():
    chain = ready_chain(4)
    chain.block(deploy(chain, trigger={"every_blocks": 5}, deadline_blocks=20))
    deployed = chain.height
    chain.empty_blocks(4)
    assert status(chain)["runs"] == 1
    chain.block()  # deployed + 5: run 1 is still active on the same inputs
    assert chain.height == deployed + 5 and status(chain)["runs"] == 1
    deliver(chain, 1)
    assert chain.machine.job(run_id(1))["state"] == "verified"
    chain.empty_blocks(deployed + 10 - chain.height - 1)
    assert status(chain)["runs"] == 1
    chain.block()  # deployed + 10: run 1 is verified, so the same inputs run again
    assert status(chain)["runs"] == 2 and chain.machine.job(run_id(2))["submitted_height"] == deployed + 10
    chain.block(chain.register_dataset(ALICE, SALES_V2, name="sales.csv"))
    assert status(chain)["runs"] == 2  # every_blocks services ignore new versions between ticks
    chain.empty_blocks(deployed + 15 - chain.height)
    assert status(chain)["runs"] == 3  # run 2 is active, but the inputs differ now
    assert chain.machine.job(run_id(3))["inputs"] == {"sales": SALES_V2.hex()}


def test_a_verified_run_becomes_the_result_and_the_queries_answer_the_contract_shapes():
    chain = ready_chain(4)
    chain.block(deploy(chain, deadline_blocks=20))
    chain.block(chain.register_dataset(ALICE, SALES_V2, name="sales.csv"))
    deliver(chain, 2)
    verified_at = chain.height
    service = status(chain)
    assert service["last_verified"] == {"run": 2, "job_id": run_id(2).hex(), "height": verified_at,
                                        "result_digest": R1.hex()}
    deliver(chain, 1)  # an older run verifying later does not replace a newer result
    assert status(chain)["last_verified"]["run"] == 2
    sid = service_id(ALICE.public_key, "daily").hex()
    assert set(service) == {"service_id", "name", "tenant", "type", "inputs", "params", "replicas", "policy",
                            "trigger", "deadline_blocks", "state", "deployed_height", "updated_height", "runs",
                            "placements", "recent_runs", "last_verified", "late", "waiting"}
    assert (service["service_id"], service["tenant"], service["inputs"], service["params"]) == (
        sid, ALICE.public_key.hex(), {"sales": "sales.csv"}, {"query": "SELECT count(*) FROM sales"})
    assert service["trigger"] == {"on_new_version": True} and service["waiting"] is None
    assert [set(p) for p in service["placements"]] == [{"peer_id", "node_key", "slot", "since_height"}] * 2
    assert [p["slot"] for p in service["placements"]] == [0, 1]
    assert set(service["recent_runs"][0]) == {"run", "job_id", "state", "reason", "submitted_height", "inputs",
                                              "results"}
    assert service["recent_runs"][0]["results"] == 2
    assert chain.machine.service(ALICE.public_key, "nope") is None
    assert chain.machine.service(BOB.public_key, "daily") is None
    chain.block(deploy(chain, name="alpha", trigger={"every_blocks": 7}))
    summaries = chain.machine.services_by_tenant(ALICE.public_key)
    assert [s["name"] for s in summaries] == ["alpha", "daily"]
    assert summaries[1] == {"name": "daily", "service_id": sid, "type": "sql", "replicas": 2, "state": "active",
                            "trigger": {"on_new_version": True}, "placements": 2, "runs": 2, "verified_run": 2,
                            "verified_job": run_id(2).hex()}
    assert summaries[0]["trigger"] == {"every_blocks": 7}
    assert chain.machine.services_by_tenant(BOB.public_key) == []
    # Holders: the nodes with the verified digest, least loaded first (alpha's run loads two nodes).
    holders = chain.machine.service_holders(run_id(2))
    assert sorted(h["peer_id"] for h in holders) == sorted(p["peer_id"] for p in service["placements"])
    load = {n["peer_id"]: n["pending"] for n in chain.machine.nodes()}
    assert [h["pending"] for h in holders] == [load[h["peer_id"]] for h in holders]
    assert [(h["pending"], h["peer_id"]) for h in holders] == sorted((h["pending"], h["peer_id"]) for h in holders)
    assert chain.machine.service_holders(run_id(3)) == []  # no such run
    assert NODES

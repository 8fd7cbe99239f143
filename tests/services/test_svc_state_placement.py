"""Service placement through committed blocks: deploy, replacement, scale, stop, receipts, replay."""

from __future__ import annotations

import duckdb
import pytest

from node.app import StateMachine
from node.base.codec import decode
from node.base.verification import ReceiptError
from node.receipts.schema import check_body
from tests.services.test_state_support import ALICE, NODES, replay
from tests.services.test_svc_state_support import (
    BY_PEER,
    R1,
    SALES_V1,
    deploy,
    placed,
    placement_bodies,
    ranking,
    ready_chain,
    rejections,
    run_id,
    scale,
    sign,
    status,
    stop,
)


def test_deploy_places_by_rendezvous_and_starts_run_one_on_the_placed_nodes():
    chain = ready_chain(4)
    effects = chain.block(deploy(chain, replicas=2))
    assert rejections(chain) == []
    best = ranking(NODES[:4])
    assert placed(chain) == best[:2]
    kinds = [b.kind for b in effects.receipt_bodies]
    assert kinds == ["service.placement", "job.schedule"]
    (body,) = placement_bodies(effects)
    assert body.fields == {"block": chain.blocks[-1][1], "action": "deploy", "replicas": 2, "placements": best[:2],
                           "moved": [{"from": None, "to": best[0]}, {"from": None, "to": best[1]}]}
    assert sign(body, chain.height).kind == "service.placement"
    schedule = effects.receipt_bodies[1]
    assert schedule.subject == run_id(1) and sorted(schedule.fields["assignees"]) == sorted(best[:2])
    job = chain.machine.job(run_id(1))
    assert (job["service"], job["run"], job["policy"], job["state"]) == ("daily", 1, "processing", "scheduled")
    assert job["inputs"] == {"sales": SALES_V1.hex()} and job["replication"] == 2 and job["tenant"] == ALICE.public_key.hex()
    plain = chain.submit_job(ALICE, {"sales": SALES_V1})
    chain.block(plain)
    assert {k: chain.machine.job(plain.hash)[k] for k in ("service", "run", "policy")} == {
        "service": None, "run": None, "policy": "processing"}
    assert [j["service"] for j in chain.machine.jobs_by_tenant(ALICE.public_key)["jobs"]] == [None, "daily"]


def test_a_node_that_misses_the_deadline_is_replaced_and_the_run_verifies():
    chain = ready_chain(4)
    chain.block(deploy(chain, replicas=2, deadline_blocks=3))
    deployed = chain.height
    best = ranking(NODES[:4])
    first, second = (BY_PEER[p] for p in best[:2])
    chain.block(chain.result(first, run_id(1), R1))
    late = status(chain)["late"]
    assert late == [{"peer_id": second.peer_id, "job_id": run_id(1).hex(), "run": 1, "deadline": deployed + 3}]
    chain.empty_blocks(1)
    effects = chain.block()  # height deployed + 3: the deadline passes
    assert chain.height == deployed + 3
    assert placed(chain) == [best[0], best[2]]  # the slot keeps its place; the next-ranked node takes it
    (body,) = placement_bodies(effects)
    assert body.fields["action"] == "replace" and body.fields["moved"] == [{"from": best[1], "to": best[2]}]
    job = chain.machine.job(run_id(1))
    newcomer = [a for a in job["assignments"] if a["attempt"] == 2]
    assert [a["peer_id"] for a in newcomer] == [best[2]] and job["attempt"] == 2
    chain.block(chain.result(BY_PEER[best[2]], run_id(1), R1))
    job = chain.machine.job(run_id(1))
    assert job["state"] == "verified" and len(job["results"]) == 2
    assert status(chain)["last_verified"] == {"run": 1, "job_id": run_id(1).hex(), "height": chain.height,
                                              "result_digest": R1.hex()}


def test_joining_nodes_move_nothing_and_a_deregistered_node_is_replaced():
    chain = ready_chain(3)
    chain.block(deploy(chain, replicas=2))
    before = placed(chain)
    effects = chain.block(*(chain.register_node(n, capacity=5) for n in NODES[3:8]))
    assert placed(chain) == before and placement_bodies(effects) == []
    leaving = BY_PEER[before[0]]
    effects = chain.block(chain.register_node(leaving, capacity=0, roles=["storage"]))
    after = placed(chain)
    assert leaving.peer_id not in after and after[1] == before[1] and len(after) == 2
    expected = [p for p in ranking(NODES[:8], capacity=2) if p not in before]  # capacity differs: recompute
    assert after[0] in expected
    (body,) = placement_bodies(effects)
    assert body.fields["moved"] == [{"from": leaving.peer_id, "to": after[0]}]


def test_scale_up_adds_scale_down_drops_the_lowest_ranked_and_runs_keep_their_replication():
    chain = ready_chain(6)
    chain.block(deploy(chain, replicas=2))
    best = ranking(NODES[:6])
    effects = chain.block(scale(chain, 4))
    assert placed(chain) == best[:4]
    (body,) = placement_bodies(effects)
    assert body.fields["action"] == "scale" and body.fields["replicas"] == 4
    assert body.fields["moved"] == [{"from": None, "to": best[2]}, {"from": None, "to": best[3]}]
    assert chain.machine.job(run_id(1))["replication"] == 2
    effects = chain.block(scale(chain, 1))
    assert placed(chain) == best[:1]
    (body,) = placement_bodies(effects)
    assert sorted(m["from"] for m in body.fields["moved"]) == sorted(best[1:4])
    assert all(m["to"] is None for m in body.fields["moved"])
    assert sign(body, chain.height).fields["placements"] == best[:1]


def test_stop_cancels_active_runs_and_clears_placements():
    chain = ready_chain(4)
    chain.block(deploy(chain, replicas=2))
    before = placed(chain)
    effects = chain.block(stop(chain))
    job = chain.machine.job(run_id(1))
    assert (job["state"], job["reason"]) == ("cancelled", "service stopped")
    assert {a["status"] for a in job["assignments"]} == {"cancelled"}
    service = status(chain)
    assert service["state"] == "stopped" and service["placements"] == [] and service["late"] == []
    (body,) = placement_bodies(effects)
    assert body.fields["action"] == "stop" and body.fields["placements"] == []
    assert body.fields["moved"] == [{"from": p, "to": None} for p in before]
    sign(body, chain.height)


def test_a_policy_unavailable_decline_moves_the_slot_without_excluding_the_node():
    chain = ready_chain(4)
    chain.block(deploy(chain, replicas=2, policy="gpu-only"))
    best = ranking(NODES[:4])
    assert chain.machine.job(run_id(1))["policy"] == "gpu-only"
    decliner = BY_PEER[best[0]]
    effects = chain.block(chain.tx(decliner, "job.decline", {
        "job": run_id(1), "reason": "policy_unavailable", "detail": "no policy gpu-only here"}))
    assert rejections(chain) == []
    assert placed(chain) == [best[2], best[1]]
    job = chain.machine.job(run_id(1))
    assert sorted(a["peer_id"] for a in job["assignments"] if a["status"] == "pending") == sorted(best[1:3])
    assert [b.kind for b in effects.receipt_bodies] == ["service.placement", "job.schedule"]
    health = {n["peer_id"]: n["healthy"] for n in chain.machine.nodes()}
    assert health[decliner.peer_id] is True


def test_fewer_candidates_than_replicas_place_what_exists_and_fill_later():
    chain = ready_chain(1)
    effects = chain.block(deploy(chain, replicas=2))
    service = status(chain)
    assert len(service["placements"]) == 1 and service["waiting"].startswith("1 of 2 replicas placed")
    job = chain.machine.job(run_id(1))
    assert job["state"] == "submitted" and "waiting for the placement of service daily" in job["reason"]
    assert [b.kind for b in effects.receipt_bodies] == ["service.placement"]
    effects = chain.block(chain.register_node(NODES[1], capacity=2))
    (body,) = placement_bodies(effects)
    assert body.fields["action"] == "fill" and body.fields["moved"] == [{"from": None, "to": NODES[1].peer_id}]
    assert status(chain)["waiting"] is None
    assert chain.machine.job(run_id(1))["state"] == "scheduled"


def test_one_placement_body_per_service_per_block_and_the_schema_checks_it():
    chain = ready_chain(4)
    effects = chain.block(deploy(chain, name="a"), deploy(chain, name="b"), scale(chain, 3, name="a"))
    bodies = placement_bodies(effects)
    assert len(bodies) == 2 and len({b.subject for b in bodies}) == 2
    for body in bodies:
        sign(body, chain.height)
    bad = sign(bodies[0], chain.height).body
    for change, field in (({"action": "move"}, "action"), ({"replicas": 0}, "replicas"),
                          ({"moved": [{"from": None, "to": None}]}, r"moved\[0\]"),
                          ({"placements": [bodies[0].fields["placements"][0]] * 2}, "placements")):
        with pytest.raises(ReceiptError, match=field):
            check_body({**bad, **change})


def test_replaying_the_blocks_gives_the_same_state_dump():
    chain = ready_chain(5)
    chain.block(deploy(chain, replicas=2, deadline_blocks=20),
                deploy(chain, name="tick", trigger={"every_blocks": 5}, deadline_blocks=20))
    chain.block(scale(chain, 3))
    chain.empty_blocks(4)
    chain.block(stop(chain, name="tick"))
    other = StateMachine(duckdb.connect(":memory:"))
    replay(chain.blocks, other)
    assert other.dump() == chain.machine.dump()
    tables = decode(chain.machine.dump())
    assert len(tables["state_services"]["rows"]) == 2 and len(tables["state_service_placements"]["rows"]) == 3
    assert "policy" in tables["state_jobs"]["columns"]
    # A run whose node misses its deadline: the node moves out of every service it is placed in.
    chain.block(deploy(chain, name="late", replicas=1, deadline_blocks=2))
    (missing,) = placed(chain, name="late")
    chain.empty_blocks(2)
    assert missing not in placed(chain) + placed(chain, name="late")
    assert len(placed(chain)) == 3 and len(placed(chain, name="late")) == 1
    replay(chain.blocks[-3:], other)
    assert other.dump() == chain.machine.dump()

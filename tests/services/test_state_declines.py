"""``job.decline``: an assignee that could not run a job says so on chain; the state
machine gives the slot to another node in the same block, or fails the job with
the reason once its attempts (a chain rule) or the untried nodes are used up.
No result is claimed, so a decline can never make a job ``disputed``."""

from __future__ import annotations

import duckdb
import pytest

from node.app import StateMachine
from node.app.txtypes import JobDecline, parse_payload
from node.base.keys import Identity
from node.consensus.tx import PayloadError, Transaction
from tests.services.test_state_support import ALICE, NODES, Chain, content_digest, replay

SALES = content_digest("sales")


def decline(chain: Chain, node: Identity, job_id: bytes, reason: str = "input_unavailable",
            detail: str = "no peer gave a verified copy of the input") -> Transaction:
    return chain.tx(node, "job.decline", {"job": job_id, "reason": reason, "detail": detail})


def scheduled_job(nodes: int, replication: int = 2, deadline_blocks: int = 500) -> tuple[Chain, bytes]:
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, SALES), *(chain.register_node(n) for n in NODES[:nodes]))
    job = chain.submit_job(ALICE, {"sales": SALES}, replication=replication, deadline_blocks=deadline_blocks)
    chain.block(job)
    return chain, job.hash


def assignment_of(chain: Chain, job_id: bytes, node: Identity) -> dict:  # type: ignore[type-arg]
    job = chain.machine.job(job_id)
    assert job is not None
    return next(a for a in job["assignments"] if a["node"] == node.public_key.hex())


def test_a_decline_gives_the_slot_to_another_node_in_the_same_block():
    chain, job_id = scheduled_job(nodes=4)
    first = chain.assignees(job_id)
    assert len(first) == 2
    effects = chain.block(decline(chain, first[0], job_id, "local_fault", "IOException: IO Error: Cannot open file"))
    assert effects.rejected == []
    job = chain.machine.job(job_id)
    assert job["state"] == "scheduled" and job["attempt"] == 2
    declined = assignment_of(chain, job_id, first[0])
    assert declined["status"] == "declined"
    assert declined["note"] == "local_fault: IOException: IO Error: Cannot open file"
    replacement = [a for a in job["assignments"] if a["attempt"] == 2]
    assert len(replacement) == 1 and replacement[0]["assigned_height"] == chain.height  # not after a deadline
    assert replacement[0]["node"] not in {n.public_key.hex() for n in first}
    # A local fault keeps the node from new work for a while; the count is on chain.
    nodes = {n["node"]: n for n in chain.machine.nodes()}
    assert nodes[first[0].public_key.hex()]["declined"] == 1
    assert nodes[first[0].public_key.hex()]["healthy"] is False

    # The other first assignee and the replacement deliver equal results: verified, not disputed.
    new = next(n for n in NODES if n.public_key.hex() == replacement[0]["node"])
    chain.block(chain.result(first[1], job_id, b"\x11" * 32), chain.result(new, job_id, b"\x11" * 32))
    job = chain.machine.job(job_id)
    assert job["state"] == "verified", job
    assert {r["node"] for r in job["results"]} == {first[1].public_key.hex(), new.public_key.hex()}


def test_input_unavailable_everywhere_fails_the_job_after_max_attempts_with_the_reason():
    chain, job_id = scheduled_job(nodes=6, deadline_blocks=500)
    start = chain.height
    declined: set[bytes] = set()
    while chain.machine.job(job_id)["state"] in ("scheduled", "running"):
        assert chain.height - start < 10, "a job every assignee declines must end in a few blocks"
        node = next(n for n in chain.assignees(job_id) if n.public_key not in declined)
        declined.add(node.public_key)
        effects = chain.block(decline(chain, node, job_id))
        assert effects.rejected == []
    job = chain.machine.job(job_id)
    assert job["state"] == "failed"
    assert job["attempt"] == chain.machine.rules.max_attempts
    assert job["reason"].startswith("attempts exhausted: 0 of 2 results after 3 attempt(s)")
    assert "could not run it (input_unavailable x" in job["reason"], job["reason"]
    assert "no peer gave a verified copy" in job["reason"]
    assert job["results"] == [] and job["verdict"] is None
    # input_unavailable is not the nodes' fault: none of them is excluded.
    assert all(n["healthy"] for n in chain.machine.nodes())


def test_no_untried_node_left_fails_the_job_at_once():
    chain, job_id = scheduled_job(nodes=2, replication=2)
    first = chain.assignees(job_id)
    chain.block(decline(chain, first[0], job_id, "local_fault", "OSError: [Errno 28] No space left on device"))
    job = chain.machine.job(job_id)
    assert job["state"] == "failed" and job["attempt"] == 1
    assert job["reason"].startswith("no processing node left to run it: 1 open slot(s), 0 registered")
    assert "local_fault x1" in job["reason"] and "No space left on device" in job["reason"]
    assert [a["status"] for a in job["assignments"] if a["node"] == first[1].public_key.hex()] == ["cancelled"]


def test_declines_that_cannot_apply_are_rejected_with_a_reason():
    chain, job_id = scheduled_job(nodes=4)
    first = chain.assignees(job_id)
    idle = next(n for n in NODES[:4] if n not in first)
    effects = chain.block(decline(chain, idle, job_id))
    assert effects.rejected[0].reason == f"the sender is not assigned to job {job_id.hex()}"
    chain.block(decline(chain, first[0], job_id))
    again = chain.block(decline(chain, first[0], job_id))
    assert again.rejected[0].reason == f"the sender already declined job {job_id.hex()}"
    chain.block(chain.result(first[1], job_id, b"\x22" * 32))
    late = chain.block(decline(chain, first[1], job_id))
    assert late.rejected[0].reason == f"the sender already delivered its result for job {job_id.hex()}"
    # The mempool's pre-screen says the same before a block carries it.
    assert chain.machine.check_tx_against_state(decline(chain, first[0], job_id)) == (
        f"the sender already declined job {job_id.hex()}")


def test_the_payload_schema():
    chain, job_id = scheduled_job(nodes=2)
    node = chain.assignees(job_id)[0]
    parsed = parse_payload(decline(chain, node, job_id, "local_fault", "disk full"))
    assert parsed == JobDecline(job_id, "local_fault", "disk full")
    for payload, field in (
        ({"job": job_id, "reason": "bad_sql", "detail": "x"}, "reason"),
        ({"job": job_id, "reason": "local_fault", "detail": ""}, "detail"),
        ({"job": job_id, "reason": "local_fault", "detail": "x" * 301}, "detail"),
        ({"job": job_id, "reason": "local_fault", "detail": "line\nbreak"}, "detail"),
        ({"job": job_id[:31], "reason": "local_fault", "detail": "x"}, "job"),
        ({"job": job_id, "reason": "local_fault"}, "detail"),
    ):
        with pytest.raises(PayloadError, match=f"^{field}: "):
            parse_payload(chain.tx(node, "job.decline", payload))


def test_declines_replay_to_the_same_state():
    chain, job_id = scheduled_job(nodes=5)
    for _ in range(3):
        pending = chain.assignees(job_id)
        if not pending:
            break
        chain.block(decline(chain, pending[0], job_id, "local_fault" if chain.height % 2 else "input_unavailable"))
    chain.empty_blocks(2)
    other = StateMachine(duckdb.connect(":memory:"))
    replay(chain.blocks, other)
    assert other.dump() == chain.machine.dump()

"""Full job lifecycles through committed blocks: verified, disputed, reassigned, failed, waiting, cancelled."""

from __future__ import annotations

from node.app import ChainRules, job_seed
from node.base.codec import hash_tagged
from node.base.keys import Identity
from node.receipts.envelope import build_receipt
from tests.services.test_state_support import ALICE, BLOCK_MS, NODES, START_MS, Chain, block_seed, content_digest

SALES = content_digest("sales")
R1 = b"\x11" * 32
R2 = b"\x22" * 32


def ready_chain(node_count: int = 3, rules: ChainRules | None = None) -> Chain:
    chain = Chain(rules=rules) if rules else Chain()
    chain.block(*(chain.register_node(n, capacity=2) for n in NODES[:node_count]),
                chain.register_dataset(ALICE, SALES))
    return chain


def submit(chain: Chain, replication: int = 2, deadline_blocks: int = 3) -> bytes:
    tx = chain.submit_job(ALICE, {"sales": SALES}, replication=replication, deadline_blocks=deadline_blocks)
    chain.block(tx)
    return tx.hash


def test_submitted_scheduled_running_verified():
    chain = ready_chain()
    tx = chain.submit_job(ALICE, {"sales": SALES}, replication=2, deadline_blocks=3)
    effects = chain.block(tx)
    job_id, height, block = tx.hash, chain.height, chain.blocks[-1][1]
    job = chain.machine.job(job_id)
    assert job["id"] == job_id.hex() and job["state"] == "scheduled" and job["reason"] is None
    # Seed and logical clock come from the block that scheduled the job.
    assert job["seed"] == job_seed(block_seed(block), job_id).hex()
    assert job["seed"] == hash_tagged("metanode/job-seed/v1", block_seed(block) + job_id).hex()
    assert job["clock"] == (START_MS + height * BLOCK_MS) // 1000
    assert [a.attempt for a in effects.assignments] == [1, 1]
    assert {a.deadline for a in effects.assignments} == {height + 3}
    assert [(b.kind, b.subject) for b in effects.receipt_bodies] == [("job.schedule", job_id)]
    first, second = chain.assignees(job_id)

    effects = chain.block(chain.result(first, job_id, R1))
    assert chain.machine.job(job_id)["state"] == "running"
    assert len(effects.receipts) == 1 and effects.receipts[0].kind == "job.exec"
    effects = chain.block(chain.result(second, job_id, R1))
    job = chain.machine.job(job_id)
    assert job["state"] == "verified" and job["finished_height"] == chain.height
    assert job["verdict"] == {"state": "verified", "result_digests": [R1.hex()]}
    assert sorted(r["peer_id"] for r in job["results"]) == sorted([first.peer_id, second.peer_id])
    assert {a["status"] for a in job["assignments"]} == {"delivered"}
    assert [(f.job_id, f.state) for f in effects.finished] == [(job_id, "verified")]
    assert chain.machine.receipt_ids_for_block(chain.height) == effects.receipt_ids
    # The emitted bodies are valid receipts once signed.
    scheduler = Identity.from_label("scheduler")
    for body in effects.receipt_bodies:
        assert build_receipt(scheduler, body.kind, height=chain.height, subject=body.subject, prev=None,
                             fields=body.fields).kind == "job.verdict"


def test_different_digests_make_the_job_disputed_with_every_digest_recorded():
    chain = ready_chain()
    job_id = submit(chain, replication=3)
    a, b, c = chain.assignees(job_id)
    chain.block(chain.result(a, job_id, R1), chain.result(b, job_id, R2))
    effects = chain.block(chain.result(c, job_id, R1))
    job = chain.machine.job(job_id)
    assert job["state"] == "disputed"
    assert "2 distinct result digests" in job["reason"]
    assert job["verdict"]["result_digests"] == sorted([R1.hex(), R2.hex()])
    assert sorted(r["result"] for r in job["results"]) == sorted([R1.hex(), R1.hex(), R2.hex()])
    (body,) = effects.receipt_bodies
    assert body.fields["verdict"] == "disputed" and len(body.fields["results"]) == 3


def test_identical_failure_on_every_assignee_fails_the_job():
    chain = ready_chain()
    job_id = submit(chain)
    a, b = chain.assignees(job_id)
    chain.block(chain.result(a, job_id, R1, exit_status=1), chain.result(b, job_id, R1, exit_status=1))
    job = chain.machine.job(job_id)
    assert job["state"] == "failed" and "exit status 1" in job["reason"]


def test_missed_deadline_replaces_the_assignee_then_verified():
    rules = ChainRules(exclusion_blocks=5)
    chain = ready_chain(node_count=3, rules=rules)
    job_id = submit(chain, replication=2, deadline_blocks=3)
    deadline = chain.height + 3
    worker, slacker = chain.assignees(job_id)
    chain.block(chain.result(worker, job_id, R1))
    chain.empty_blocks(deadline - chain.height - 1)
    effects = chain.block()  # the deadline block: the slacker has missed it
    assert chain.height == deadline
    (replacement,) = effects.assignments
    assert replacement.attempt == 2 and replacement.deadline == deadline + 3
    assert replacement.node_key not in (worker.public_key, slacker.public_key)
    job = chain.machine.job(job_id)
    assert job["attempt"] == 2 and job["state"] == "running"
    statuses = {a["node"]: a["status"] for a in job["assignments"]}
    assert statuses[slacker.public_key.hex()] == "missed"
    assert statuses[worker.public_key.hex()] == "delivered"
    # The slacker is excluded for exclusion_blocks blocks; a late result is refused.
    health = {n["node"]: n for n in chain.machine.nodes()}
    assert health[slacker.public_key.hex()]["healthy"] is False
    assert health[slacker.public_key.hex()]["excluded_until"] == deadline + 5
    late = chain.block(chain.result(slacker, job_id, R1))
    assert "missed its deadline" in late.rejected[0].reason
    (new_node,) = chain.assignees(job_id)
    chain.block(chain.result(new_node, job_id, R1))
    assert chain.machine.job(job_id)["state"] == "verified"
    chain.empty_blocks(deadline + 5 - chain.height)
    assert {n["node"]: n["healthy"] for n in chain.machine.nodes()}[slacker.public_key.hex()] is True


def test_exhausted_attempts_fail_the_job_with_a_reason():
    rules = ChainRules(max_attempts=2, exclusion_blocks=1)
    chain = ready_chain(node_count=4, rules=rules)
    job_id = submit(chain, replication=1, deadline_blocks=2)
    chain.empty_blocks(2)
    job = chain.machine.job(job_id)
    assert job["attempt"] == 2 and job["state"] == "scheduled"
    effects = chain.empty_blocks(2)[-1]
    job = chain.machine.job(job_id)
    assert job["state"] == "failed"
    assert job["reason"].startswith("attempts exhausted: 0 of 1 results after 2 attempt(s)")
    assert [(f.job_id, f.state) for f in effects.finished] == [(job_id, "failed")]
    assert [a["status"] for a in job["assignments"]] == ["missed", "missed"]


def test_too_few_processing_nodes_waits_in_submitted_until_one_registers():
    chain = ready_chain(node_count=2)
    job_id = submit(chain, replication=3)
    job = chain.machine.job(job_id)
    assert job["state"] == "submitted" and job["seed"] is None
    assert job["reason"] == "waiting for processing nodes: the job needs 3 distinct nodes, 2 eligible"
    assert chain.machine.queue_depth() == {"submitted": 1, "scheduled": 0, "running": 0, "waiting_for_nodes": 1}
    chain.empty_blocks(2)
    assert chain.machine.job(job_id)["state"] == "submitted"
    effects = chain.block(chain.register_node(NODES[5], capacity=1))
    job = chain.machine.job(job_id)
    assert job["state"] == "scheduled" and job["reason"] is None
    assert job["scheduled_height"] == chain.height  # the seed comes from this later block
    assert job["seed"] == job_seed(block_seed(chain.blocks[-1][1]), job_id).hex()
    assert len(effects.assignments) == 3


def test_replacement_waits_when_no_fresh_node_is_eligible():
    chain = ready_chain(node_count=2)
    job_id = submit(chain, replication=2, deadline_blocks=2)
    first, second = chain.assignees(job_id)
    chain.block(chain.result(first, job_id, R1))
    chain.block()  # deadline: second missed, and there is no third node
    job = chain.machine.job(job_id)
    assert job["state"] == "running"
    assert job["reason"].startswith("waiting for 1 replacement processing node(s): 0 eligible")
    chain.block(chain.register_node(NODES[7], capacity=1))
    job = chain.machine.job(job_id)
    assert job["reason"] is None and job["attempt"] == 2
    assert [a["node"] for a in job["assignments"] if a["status"] == "pending"] == [NODES[7].public_key.hex()]


def test_results_are_accepted_only_from_current_assignees_with_the_job_seed():
    chain = ready_chain(node_count=4)
    job_id = submit(chain, replication=2, deadline_blocks=5)
    a, b = chain.assignees(job_id)
    outsider = next(n for n in NODES[:4] if n not in (a, b))
    effects = chain.block(
        chain.result(outsider, job_id, R1),
        chain.result(a, job_id, R1, seed=b"\x00" * 32),
        chain.result(a, job_id, R1),
        chain.result(a, job_id, R1),
    )
    reasons = [r.reason for r in effects.rejected]
    assert [r.index for r in effects.rejected] == [0, 1, 3]
    assert reasons[0].startswith("the sender is not assigned to job")
    assert reasons[1].startswith("receipt: seed is not the seed of job")
    assert reasons[2].startswith("the sender already delivered its result")
    assert len(effects.receipts) == 1
    assert chain.machine.rejections_for_block(chain.height)[0]["reason"] == reasons[0]


def test_cancel_withdraws_pending_assignments_and_refuses_later_results():
    chain = ready_chain()
    job_id = submit(chain)
    a, b = chain.assignees(job_id)
    chain.block(chain.result(a, job_id, R1))
    effects = chain.block(chain.cancel(ALICE, job_id))
    assert [(f.state, f.reason) for f in effects.finished] == [("cancelled", "cancelled by its tenant")]
    job = chain.machine.job(job_id)
    assert {a["status"] for a in job["assignments"]} == {"delivered", "cancelled"}
    effects = chain.block(chain.result(b, job_id, R1), chain.cancel(ALICE, job_id))
    assert "is cancelled, not waiting for results" in effects.rejected[0].reason
    assert "only submitted, scheduled, running jobs can be cancelled" in effects.rejected[1].reason
    # Nothing is pending after a cancel, so no deadline can later count against the nodes.
    chain.empty_blocks(6)
    assert all(n["missed"] == 0 for n in chain.machine.nodes())


def test_a_submitted_job_can_be_cancelled_while_waiting():
    chain = ready_chain(node_count=1)
    job_id = submit(chain, replication=2)
    chain.block(chain.cancel(ALICE, job_id))
    assert chain.machine.job(job_id)["state"] == "cancelled"
    chain.block(chain.register_node(NODES[8], capacity=1))  # enough nodes now, but the job is gone
    assert chain.machine.job(job_id)["assignments"] == []


def test_a_node_that_missed_a_deadline_gets_no_new_job_for_exclusion_blocks():
    rules = ChainRules(exclusion_blocks=4)
    chain = ready_chain(node_count=3, rules=rules)
    first = submit(chain, replication=1, deadline_blocks=2)
    (slacker,) = chain.assignees(first)
    chain.block()
    chain.block()  # deadline: missed
    missed_at = chain.height
    assert chain.machine.job(first)["attempt"] == 2
    # Cancel it so its replacement cannot miss a deadline too; the second job needs all three nodes.
    second_tx = chain.submit_job(ALICE, {"sales": SALES}, replication=3)
    chain.block(chain.cancel(ALICE, first), second_tx)
    second = second_tx.hash
    assert chain.machine.job(second)["reason"] == (
        "waiting for processing nodes: the job needs 3 distinct nodes, 2 eligible "
        "(1 excluded after missed deadlines)"
    )
    chain.empty_blocks(missed_at + 4 - chain.height - 1)
    assert chain.machine.job(second)["state"] == "submitted"
    effects = chain.block()  # exclusion over at missed_at + exclusion_blocks
    assert chain.height == missed_at + 4
    assert slacker.public_key in {a.node_key for a in effects.assignments if a.job_id == second}


def test_a_failure_reason_reported_by_the_nodes_is_in_the_jobs_reason():
    chain = ready_chain()
    job_id = submit(chain)
    a, b = chain.assignees(job_id)
    why = 'error: BinderException: Referenced column "nosuch" not found'
    chain.block(chain.result(a, job_id, R1, exit_status=1, error=why), chain.result(b, job_id, R1, exit_status=1, error=why))
    job = chain.machine.job(job_id)
    assert job["state"] == "failed" and job["reason"].endswith(": " + why)
    assert [r["error"] for r in job["results"]] == [why, why]

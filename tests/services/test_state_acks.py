"""Assignment acknowledgements (job.ack, rule ack_blocks) through committed blocks.

Under ``ack_blocks = N`` an assignee that does not acknowledge its assignment
(job.ack, or its job.result or job.decline) within N blocks is missed as if it
had missed its result deadline, and its slot goes to another node in the same
block: a dead node costs N blocks, not the job's whole deadline.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pytest

from node.app import ChainRules, StateMachine, parse_payload
from node.base.keys import Identity
from node.cli.analytics_follow import awaited, short_peer
from node.consensus.tx import PayloadError, Transaction
from tests.services.test_state_support import ALICE, NODES, Chain, content_digest, replay
from tests.services.test_svc_state_support import BY_PEER, R1, deploy, placed, ranking, run_id, status
from tests.services.test_svc_state_support import ready_chain as svc_ready_chain

SALES = content_digest("sales")
R2 = b"\x22" * 32
ACKS = ChainRules(ack_blocks=3)


def ready_chain(rules: ChainRules = ACKS, node_count: int = 4) -> Chain:
    chain = Chain(rules=rules)
    chain.block(*(chain.register_node(n, capacity=2) for n in NODES[:node_count]),
                chain.register_dataset(ALICE, SALES))
    return chain


def submit(chain: Chain, replication: int = 2, deadline_blocks: int = 20) -> bytes:
    tx = chain.submit_job(ALICE, {"sales": SALES}, replication=replication, deadline_blocks=deadline_blocks)
    chain.block(tx)
    return tx.hash


def ack(chain: Chain, node: Identity, *job_ids: bytes) -> Transaction:
    return chain.tx(node, "job.ack", {"jobs": list(job_ids)})


def rejections(chain: Chain) -> list[str]:
    return [r["reason"] for r in chain.machine.rejections_for_block(chain.height)]


def assignment(chain: Chain, job_id: bytes, node: Identity) -> dict[str, Any]:
    job = chain.machine.job(job_id)
    assert job is not None
    (found,) = [a for a in job["assignments"] if a["peer_id"] == node.peer_id]
    return found


def test_a_silent_assignee_is_missed_after_ack_blocks_and_replaced_in_that_block():
    chain = ready_chain()
    job_id = submit(chain)
    assigned = chain.height
    alive, dead = chain.assignees(job_id)
    assert {a["ack_deadline"] for a in chain.machine.job(job_id)["assignments"]} == {assigned + 3}
    assert assignment(chain, job_id, alive)["acked_height"] is None
    assert chain.machine.unacknowledged_assignments_of(alive.public_key) == [job_id]
    chain.block(ack(chain, alive, job_id))
    assert rejections(chain) == []
    assert assignment(chain, job_id, alive)["acked_height"] == chain.height
    assert chain.machine.unacknowledged_assignments_of(alive.public_key) == []
    chain.empty_blocks(1)
    assert chain.machine.job(job_id)["attempt"] == 1  # assigned + 2: still within the window
    effects = chain.block()  # assigned + 3: the ack deadline passes
    assert chain.height == assigned + 3
    job = chain.machine.job(job_id)
    missed = assignment(chain, job_id, dead)
    assert missed["status"] == "missed" and missed["note"] == f"no acknowledgement by height {assigned + 3}"
    assert assignment(chain, job_id, alive)["status"] == "pending"  # the acknowledged one keeps its slot
    (replacement,) = [a for a in job["assignments"] if a["attempt"] == 2]
    assert job["attempt"] == 2 and replacement["assigned_height"] == assigned + 3
    assert replacement["peer_id"] not in (alive.peer_id, dead.peer_id)
    assert replacement["deadline"] == assigned + 3 + 20 and replacement["ack_deadline"] == assigned + 6
    assert [(a.peer_id, a.attempt) for a in effects.assignments] == [(replacement["peer_id"], 2)]
    # Long before the result deadline (assigned + 20); the dead node is excluded like any that missed.
    node = next(n for n in chain.machine.nodes() if n["peer_id"] == dead.peer_id)
    assert node["missed"] == 1 and node["last_missed_height"] == assigned + 3 and not node["healthy"]
    # Its late result is refused, naming why; the others verify the job.
    chain.block(chain.result(dead, job_id, R1))
    assert rejections(chain) == [
        f"the sender's assignment (attempt 1) was missed: no acknowledgement by height {assigned + 3}"]
    newcomer = BY_PEER[replacement["peer_id"]]
    chain.block(chain.result(alive, job_id, R1), chain.result(newcomer, job_id, R1))
    assert chain.machine.job(job_id)["state"] == "verified"


def test_an_acknowledged_assignee_keeps_its_assignment_until_the_result_deadline():
    chain = ready_chain()
    job_id = submit(chain, deadline_blocks=8)
    assigned = chain.height
    first, second = chain.assignees(job_id)
    chain.block(ack(chain, first, job_id), ack(chain, second, job_id))
    chain.empty_blocks(6)
    assert chain.height == assigned + 7
    assert {a["status"] for a in chain.machine.job(job_id)["assignments"]} == {"pending"}
    chain.block()  # assigned + 8: the result deadline
    job = chain.machine.job(job_id)
    firsts = [a for a in job["assignments"] if a["attempt"] == 1]
    assert [a["status"] for a in firsts] == ["missed", "missed"] and {a["note"] for a in firsts} == {None}
    assert job["attempt"] == 2


def test_a_result_or_a_decline_without_an_ack_counts_as_the_ack():
    chain = ready_chain()
    job_id = submit(chain, replication=3)
    assigned = chain.height
    fast, decliner, slow = chain.assignees(job_id)
    chain.block(chain.result(fast, job_id, R1),
                chain.tx(decliner, "job.decline", {"job": job_id, "reason": "input_unavailable", "detail": "none"}))
    assert rejections(chain) == []
    assert assignment(chain, job_id, fast)["acked_height"] == chain.height
    assert assignment(chain, job_id, decliner)["acked_height"] == chain.height
    chain.block(ack(chain, slow, job_id))
    chain.empty_blocks(1)
    assert chain.height == assigned + 3  # the first assignees' ack deadline: none of them is missed
    statuses = {a["peer_id"]: a["status"] for a in chain.machine.job(job_id)["assignments"] if a["attempt"] == 1}
    assert statuses == {fast.peer_id: "delivered", decliner.peer_id: "declined", slow.peer_id: "pending"}


def test_an_ack_in_the_block_of_its_deadline_is_in_time():
    chain = ready_chain()
    job_id = submit(chain)
    assigned = chain.height
    first, second = chain.assignees(job_id)
    chain.empty_blocks(2)
    chain.block(ack(chain, first, job_id), ack(chain, second, job_id))  # assigned + 3
    assert chain.height == assigned + 3 and rejections(chain) == []
    assert {a["status"] for a in chain.machine.job(job_id)["assignments"]} == {"pending"}


def test_ack_refusals_name_the_job_and_change_nothing():
    chain = ready_chain(ChainRules(ack_blocks=10))
    job_id = submit(chain)
    other_job = submit(chain)
    first, _ = chain.assignees(job_id)
    outsider = next(n for n in NODES[:4] if n not in chain.assignees(job_id))
    unknown = content_digest("no such job")
    chain.block(ack(chain, outsider, job_id))
    assert rejections(chain) == [f"jobs[0]: the sender is not assigned to job {job_id.hex()}"]
    chain.block(ack(chain, first, unknown))
    assert rejections(chain) == [f"jobs[0]: job {unknown.hex()} does not exist"]
    chain.block(ack(chain, first, job_id))
    acked_at = chain.height
    chain.block(ack(chain, first, job_id))
    assert rejections(chain) == [f"jobs[0]: the sender already acknowledged job {job_id.hex()} at height {acked_at}"]
    # One bad job refuses the whole ack: the good one before it stays unacknowledged.
    holder = chain.assignees(other_job)[0]
    chain.block(ack(chain, holder, other_job, unknown))
    assert rejections(chain) == [f"jobs[1]: job {unknown.hex()} does not exist"]
    assert assignment(chain, other_job, holder)["acked_height"] is None
    assert assignment(chain, job_id, first)["acked_height"] == acked_at
    # Payload checks, before the state: duplicates, size, shape.
    for payload, message in (
        ({"jobs": [job_id, job_id]}, "jobs[1]: repeats an earlier job id"),
        ({"jobs": []}, "jobs: must be a list of 1 to 64 job ids"),
        ({"jobs": [content_digest(str(i)) for i in range(65)]}, "jobs: must be a list of 1 to 64 job ids"),
        ({"jobs": [b"short"]}, "jobs[0]: must be a 32-byte digest, got 5 bytes"),
        ({"jobs": job_id}, "jobs: must be a list of 1 to 64 job ids"),
    ):
        with pytest.raises(PayloadError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_payload(chain.tx(first, "job.ack", payload))
    chain.block(chain.tx(first, "job.ack", {"jobs": [job_id, job_id]}))
    assert rejections(chain) == ["invalid payload: jobs[1]: repeats an earlier job id"]


def test_a_missed_assignment_cannot_be_acknowledged_late():
    chain = ready_chain()
    job_id = submit(chain)
    assigned = chain.height
    first, _ = chain.assignees(job_id)
    chain.empty_blocks(3)
    chain.block(ack(chain, first, job_id))
    assert rejections(chain) == [
        f"jobs[0]: the sender's assignment (attempt 1) was missed: no acknowledgement by height {assigned + 3}"]


def test_silence_on_the_last_attempt_fails_the_job_saying_so():
    chain = ready_chain(ChainRules(ack_blocks=2, max_attempts=1))
    job_id = submit(chain)
    assigned = chain.height
    first, _ = chain.assignees(job_id)
    chain.block(ack(chain, first, job_id))
    chain.block()
    job = chain.machine.job(job_id)
    assert job["state"] == "failed"
    assert job["reason"] == ("attempts exhausted: 0 of 2 results after 1 attempt(s); "
                             f"1 assignee(s) did not acknowledge by height {assigned + 2}")


def test_with_ack_blocks_zero_nothing_changes():
    chain = ready_chain(ChainRules())
    job_id = submit(chain, deadline_blocks=5)
    assigned = chain.height
    assert {a["ack_deadline"] for a in chain.machine.job(job_id)["assignments"]} == {None}
    first, _ = chain.assignees(job_id)
    assert chain.machine.unacknowledged_assignments_of(first.public_key) == []
    chain.empty_blocks(4)
    assert chain.machine.job(job_id)["attempt"] == 1
    chain.block()
    assert chain.height == assigned + 5 and chain.machine.job(job_id)["attempt"] == 2
    # An ack is still accepted (it records the sign of life) and changes no deadline.
    newcomer = next(BY_PEER[a["peer_id"]] for a in chain.machine.job(job_id)["assignments"] if a["attempt"] == 2)
    chain.block(ack(chain, newcomer, job_id))
    assert rejections(chain) == [] and assignment(chain, job_id, newcomer)["acked_height"] == chain.height


def test_an_ack_deadline_after_the_result_deadline_changes_nothing():
    chain = ready_chain(ChainRules(ack_blocks=10))
    job_id = submit(chain, deadline_blocks=4)
    assigned = chain.height
    chain.empty_blocks(4)
    job = chain.machine.job(job_id)
    firsts = [a for a in job["assignments"] if a["attempt"] == 1]
    assert chain.height == assigned + 4 and {a["status"] for a in firsts} == {"missed"}
    assert {a["note"] for a in firsts} == {None}  # missed the result deadline, which came first


def test_a_placed_node_that_does_not_ack_a_run_is_re_placed():
    chain = svc_ready_chain(4, rules=ACKS)
    chain.block(deploy(chain, replicas=2, deadline_blocks=30))
    deployed = chain.height
    best = ranking(NODES[:4])
    first, silent = (BY_PEER[p] for p in best[:2])
    chain.block(ack(chain, first, run_id(1)))
    chain.empty_blocks(1)
    assert placed(chain) == best[:2]
    # service_status names when each pending assignee is replaced: the silent one at its ack deadline.
    assert [(late["peer_id"], late["deadline"]) for late in status(chain)["late"]] == [
        (silent.peer_id, deployed + 3), (first.peer_id, deployed + 30)]
    chain.block()  # deployed + 3: the silent node's ack deadline
    assert chain.height == deployed + 3
    assert placed(chain) == [best[0], best[2]]  # re-placed in its slot, like a missed deadline
    job = chain.machine.job(run_id(1))
    (newcomer,) = [a for a in job["assignments"] if a["attempt"] == 2]
    assert newcomer["peer_id"] == best[2] and newcomer["assigned_height"] == deployed + 3
    chain.block(chain.result(first, run_id(1), R1), chain.result(BY_PEER[best[2]], run_id(1), R1))
    assert chain.machine.job(run_id(1))["state"] == "verified"
    assert status(chain)["last_verified"]["run"] == 1


def test_replaying_blocks_with_acks_gives_the_same_state_dump():
    chain = ready_chain()
    job_id = submit(chain)
    first, _ = chain.assignees(job_id)
    chain.block(ack(chain, first, job_id))
    chain.empty_blocks(3)
    chain.block(chain.result(first, job_id, R2))
    other = StateMachine(duckdb.connect(":memory:"), rules=ACKS)
    replay(chain.blocks, other)
    assert other.dump() == chain.machine.dump()


def test_follow_names_the_silent_assignee_and_when_it_is_replaced():
    chain = ready_chain()
    job_id = submit(chain)
    assigned = chain.height
    alive, dead = chain.assignees(job_id)
    chain.block(ack(chain, alive, job_id))
    job = chain.machine.job(job_id)
    assert job is not None
    line = awaited(job, height=chain.height, seconds_per_block=2.0)
    assert line == (f"2/2 nodes assigned, 0 results in, {short_peer(dead.peer_id)} has not acknowledged; replaced at "
                    f"height {assigned + 3} (in ~4 s), waiting for {short_peer(alive.peer_id)} "
                    f"(reassigned in ~38 s, at height {assigned + 20})")


def test_new_chains_require_acknowledgements_and_init_can_turn_them_off(tmp_path):
    from click.testing import CliRunner

    from node.cli.main import cli
    from node.consensus.genesis import load_genesis
    from node.testnet import layout

    assert layout.testnet_genesis(layout.plan_testnet(2, seed="acks")).rules["ack_blocks"] == 6
    key = NODES[0].public_key.hex()
    for extra, expected in (((), 6), (("--rule", "ack_blocks=0"), 0), (("--rule", "ack_blocks=10"), 10)):
        out = tmp_path / f"genesis-{expected}.toml"
        done = CliRunner().invoke(cli, ["genesis", "init", "--chain-id", "acks", "--validator", key,
                                        "--out", str(out), *extra])
        assert done.exit_code == 0, done.output
        assert load_genesis(out).rules["ack_blocks"] == expected
    assert ChainRules().ack_blocks == 0  # a genesis that does not name the rule: no acknowledgement required

"""Governance on the chain state machine: proposals, votes, the threshold, expiry,
and admission of nodes and tenants (node.register, the scheduler, job.submit,
dataset.register) under closed policies. Real signed transactions, real blocks."""

from __future__ import annotations

import duckdb
import pytest

from node.app import StateError, StateMachine
from node.app.policy import Governance
from node.base.keys import Identity
from node.consensus.tx import Transaction
from tests.services.test_state_support import ALICE, BOB, NODES, STORAGE, Chain, content_digest, replay

VALIDATORS = [Identity.from_label(f"gov-validator-{i}") for i in range(4)]
OUTSIDER = Identity.from_label("gov-outsider")
A, B = NODES[0], NODES[1]


def governance(**kw: object) -> Governance:
    kw.setdefault("validators", tuple(v.public_key for v in VALIDATORS))
    return Governance(**kw)  # type: ignore[arg-type]


def propose(chain: Chain, sender: Identity, kind: str, key: bytes) -> Transaction:
    return chain.tx(sender, "gov.propose", {"action": {"kind": kind, "key": key}})


def vote(chain: Chain, sender: Identity, proposal: bytes) -> Transaction:
    return chain.tx(sender, "gov.vote", {"proposal": proposal})


def rejected(chain: Chain, *txs: Transaction) -> list[str]:
    return [r.reason for r in chain.block(*txs).rejected]


def proposal(chain: Chain, proposal_id: bytes) -> dict:
    view = chain.machine.governance_view()
    return next(p for p in view["proposals"] if p["id"] == proposal_id.hex())


def admitted_nodes(chain: Chain) -> list[str]:
    return [n["key"] for n in chain.machine.governance_view()["admitted"]["nodes"]]


def test_a_proposal_executes_when_more_than_two_thirds_of_the_validators_voted():
    chain = Chain(governance=governance(node_policy="by-vote"))
    tx = propose(chain, VALIDATORS[0], "admit_node", A.public_key)
    assert rejected(chain, tx) == []
    pending = proposal(chain, tx.hash)
    assert pending["status"] == "pending" and [v["key"] for v in pending["votes"]] == [VALIDATORS[0].public_key.hex()]
    assert pending["expires_height"] == 1 + 1000 and pending["action"]["kind"] == "admit_node"
    assert rejected(chain, vote(chain, VALIDATORS[1], tx.hash)) == []
    assert proposal(chain, tx.hash)["status"] == "pending"  # 2 of 4 is not more than two thirds
    assert admitted_nodes(chain) == []
    assert rejected(chain, vote(chain, VALIDATORS[2], tx.hash)) == []  # 3 of 4 is
    executed = proposal(chain, tx.hash)
    assert executed["status"] == "executed" and executed["closed_height"] == 3
    assert admitted_nodes(chain) == [A.public_key.hex()]
    late = rejected(chain, vote(chain, VALIDATORS[3], tx.hash))
    assert late == [f"proposal {tx.hash.hex()} is executed (at height 3); it takes no more votes"]
    assert chain.machine.governance_view()["votes_needed"] == 3


def test_with_one_validator_the_proposal_itself_executes_and_later_txs_of_the_block_see_it():
    chain = Chain(governance=governance(validators=(VALIDATORS[0].public_key,), node_policy="by-vote"))
    register_first = chain.register_node(A)
    tx = propose(chain, VALIDATORS[0], "admit_node", A.public_key)
    register_after = chain.register_node(A)
    reasons = rejected(chain, register_first, tx, register_after)
    assert len(reasons) == 1 and "is not admitted by the consortium" in reasons[0]
    assert proposal(chain, tx.hash)["closed_height"] == 1
    assert [n["node"] for n in chain.machine.nodes(processing_only=False)] == [A.public_key.hex()]


def test_refusals_non_validator_duplicate_vote_unknown_proposal_duplicate_action_and_no_op():
    chain = Chain(governance=governance(node_policy="allow-list", genesis_nodes=frozenset({B.public_key})))
    outsider = rejected(chain, propose(chain, OUTSIDER, "admit_node", A.public_key))
    assert outsider == [f"the sender {OUTSIDER.peer_id} is not a validator: only the current validators propose and vote"]
    tx = propose(chain, VALIDATORS[0], "admit_node", A.public_key)
    assert rejected(chain, tx) == []
    assert rejected(chain, vote(chain, OUTSIDER, tx.hash))[0].startswith(f"the sender {OUTSIDER.peer_id} is not")
    twice = rejected(chain, vote(chain, VALIDATORS[0], tx.hash))
    assert twice == [f"the sender already voted for proposal {tx.hash.hex()} at height 2"]
    unknown = b"\x07" * 32
    assert rejected(chain, vote(chain, VALIDATORS[1], unknown)) == [f"proposal {unknown.hex()} does not exist"]
    same = rejected(chain, propose(chain, VALIDATORS[1], "admit_node", A.public_key))
    assert same == [f"proposal {tx.hash.hex()} already proposes this action and is pending: vote for it"]
    assert rejected(chain, propose(chain, VALIDATORS[1], "admit_node", B.public_key)) == [
        f"action.key: node {B.peer_id} is already admitted"]
    assert rejected(chain, propose(chain, VALIDATORS[1], "remove_node", A.public_key)) == [
        f"action.key: node {A.peer_id} is not admitted"]
    assert rejected(chain, propose(chain, VALIDATORS[1], "admit_tenant", ALICE.public_key)) == [
        "action.kind: admit_tenant: the tenant admission policy is open (everyone is admitted); nothing to vote on"]
    # The mempool's pre-screen gives the same answer as the block.
    assert chain.machine.check_tx_against_state(vote(chain, VALIDATORS[0], tx.hash)) == twice[0]


def test_a_proposal_expires_after_proposal_blocks():
    chain = Chain(governance=governance(node_policy="by-vote", proposal_blocks=3))
    tx = propose(chain, VALIDATORS[0], "admit_node", A.public_key)
    chain.block(tx)  # height 1: open for votes at heights 1, 2 and 3
    chain.empty_blocks(1)
    assert rejected(chain, vote(chain, VALIDATORS[1], tx.hash)) == []  # height 3
    assert proposal(chain, tx.hash)["status"] == "pending"
    late = rejected(chain, vote(chain, VALIDATORS[2], tx.hash))  # height 4
    assert late == [f"proposal {tx.hash.hex()} is expired (at height 4); it takes no more votes"]
    assert admitted_nodes(chain) == []
    # Once expired, the same action may be proposed again.
    assert rejected(chain, propose(chain, VALIDATORS[1], "admit_node", A.public_key)) == []


def test_node_register_needs_admission_for_worker_roles_only():
    chain = Chain(governance=governance(node_policy="by-vote"))
    reasons = rejected(chain, chain.register_node(A), chain.register_node(B, capacity=0, roles=["validator", "scheduler"]))
    assert reasons == [
        f"node {A.peer_id} is not admitted by the consortium (node admission policy by-vote): it may not take "
        "the processing role until the validators vote to admit it (gov.propose admit_node)"]
    assert [n["node"] for n in chain.machine.nodes(processing_only=False)] == [B.public_key.hex()]
    for gateway in (["gateway"], ["storage"]):
        assert rejected(chain, chain.register_node(B, capacity=0, roles=gateway))[0].startswith(f"node {B.peer_id} is not")


def test_the_scheduler_assigns_only_admitted_processing_nodes():
    keys = frozenset({A.public_key, B.public_key, STORAGE.public_key})
    chain = Chain(governance=governance(node_policy="allow-list", genesis_nodes=keys))
    chain.block(chain.register_node(A), chain.register_node(B))
    remove = propose(chain, VALIDATORS[0], "remove_node", B.public_key)
    chain.block(remove, vote(chain, VALIDATORS[1], remove.hash), vote(chain, VALIDATORS[2], remove.hash))
    assert admitted_nodes(chain) == sorted([A.public_key.hex(), STORAGE.public_key.hex()])
    # B stays registered but is no longer a candidate: a job for two nodes waits.
    digest = content_digest("gov-data")
    chain.block(chain.register_dataset(ALICE, digest))
    job = chain.submit_job(ALICE, {"sales": digest}, replication=2)
    chain.block(job)
    waiting = chain.machine.job(job.hash)
    assert waiting["state"] == "submitted" and waiting["assignments"] == []
    solo = chain.submit_job(ALICE, {"sales": digest}, replication=1)
    chain.block(solo)
    assert chain.assignees(solo.hash) == [A]
    # After the vote that admits it again, B gets the waiting job.
    admit = propose(chain, VALIDATORS[3], "admit_node", B.public_key)
    chain.block(admit, vote(chain, VALIDATORS[0], admit.hash), vote(chain, VALIDATORS[1], admit.hash))
    assert chain.machine.job(job.hash)["state"] == "scheduled"
    assert sorted(chain.assignees(job.hash), key=lambda n: n.public_key) == sorted([A, B], key=lambda n: n.public_key)


def test_a_not_admitted_node_gets_no_assignment_until_voted_in():
    keys = frozenset({A.public_key, STORAGE.public_key})
    chain = Chain(governance=governance(node_policy="by-vote", genesis_nodes=keys))
    digest = content_digest("gov-data-2")
    chain.block(chain.register_node(A), chain.register_node(B))  # B refused
    chain.block(chain.register_dataset(ALICE, digest))
    job = chain.submit_job(ALICE, {"sales": digest}, replication=2)
    chain.block(job)
    assert chain.machine.job(job.hash)["assignments"] == []
    admit = propose(chain, VALIDATORS[0], "admit_node", B.public_key)
    chain.block(admit, vote(chain, VALIDATORS[1], admit.hash), vote(chain, VALIDATORS[2], admit.hash))
    assert chain.machine.job(job.hash)["assignments"] == []  # admitted, but not registered yet
    chain.block(chain.register_node(B))
    assert {a["node"] for a in chain.machine.job(job.hash)["assignments"]} == {A.public_key.hex(), B.public_key.hex()}


def test_tenants_need_admission_for_datasets_and_jobs_under_a_closed_tenant_policy():
    chain = Chain(governance=governance(tenant_policy="allow-list", genesis_tenants=frozenset({ALICE.public_key})))
    digest = content_digest("tenant-data")
    bob_refusal = (f"tenant {BOB.public_key.hex()} is not admitted by the consortium (tenant admission policy "
                   "allow-list): the validators must vote to admit it (gov.propose admit_tenant)")
    assert rejected(chain, chain.register_dataset(BOB, digest)) == [bob_refusal]
    assert rejected(chain, chain.register_dataset(ALICE, digest)) == []
    assert rejected(chain, chain.submit_job(BOB, {"sales": digest})) == [bob_refusal]
    admit = propose(chain, VALIDATORS[0], "admit_tenant", BOB.public_key)
    chain.block(admit, vote(chain, VALIDATORS[1], admit.hash), vote(chain, VALIDATORS[2], admit.hash))
    assert rejected(chain, chain.register_dataset(BOB, digest)) == []
    remove = propose(chain, VALIDATORS[0], "remove_tenant", ALICE.public_key)
    chain.block(remove, vote(chain, VALIDATORS[1], remove.hash), vote(chain, VALIDATORS[2], remove.hash))
    reasons = rejected(chain, chain.submit_job(ALICE, {"sales": digest}))
    assert len(reasons) == 1 and reasons[0].startswith(f"tenant {ALICE.public_key.hex()} is not admitted")
    assert [t["key"] for t in chain.machine.governance_view()["admitted"]["tenants"]] == [BOB.public_key.hex()]


def test_two_machines_applying_the_same_governance_blocks_reach_the_same_state():
    gov = governance(node_policy="by-vote", tenant_policy="by-vote", proposal_blocks=4,
                     genesis_nodes=frozenset({STORAGE.public_key}))
    chain = Chain(governance=gov)
    p1 = propose(chain, VALIDATORS[0], "admit_node", A.public_key)
    p2 = propose(chain, VALIDATORS[1], "admit_tenant", ALICE.public_key)
    p3 = propose(chain, VALIDATORS[2], "admit_node", B.public_key)  # never gets enough votes: expires
    chain.block(p1, p2, p3, chain.register_node(A))
    chain.block(vote(chain, VALIDATORS[1], p1.hash), vote(chain, VALIDATORS[0], p2.hash),
                vote(chain, VALIDATORS[2], p1.hash), vote(chain, VALIDATORS[0], p1.hash))
    chain.block(vote(chain, VALIDATORS[3], p2.hash), vote(chain, VALIDATORS[3], p2.hash), chain.register_node(A))
    digest = content_digest("det-data")
    chain.block(chain.register_dataset(ALICE, digest))
    chain.block(chain.submit_job(ALICE, {"sales": digest}, replication=1))
    chain.empty_blocks(3)
    assert proposal(chain, p3.hash)["status"] == "expired"
    other = StateMachine(duckdb.connect(":memory:"), governance=gov)
    replay(chain.blocks, other)
    assert other.dump() == chain.machine.dump()
    assert other.governance_view() == chain.machine.governance_view()
    # Another governance is another chain: its state is refused, not silently mixed.
    with pytest.raises(StateError, match="validators or admission policies"):
        StateMachine(chain.conn, governance=governance(node_policy="open"))

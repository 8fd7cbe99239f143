"""Chain rule changes by vote on the chain state machine: set_rule proposals, the rules of
each height (a change executed in block H takes effect from max(from_height, H + 2)),
job.submit and the scheduler under the rules in force at their block, refusals in words,
the view, and the rebuild from the blocks. Real signed transactions, real blocks, DuckDB."""

from __future__ import annotations

import duckdb
import pytest

from node.app import StateMachine
from node.app.chain_app import ChainApplication
from node.app.policy import Governance
from node.app.rules import WIDEST_RULES, ChainRules
from node.base.db import open_node_db
from node.base.keys import Identity
from node.consensus.store import ChainStore
from node.consensus.tx import Transaction, TxTypeRegistry
from node.receipts.envelope import build_receipt
from tests.services.test_state_support import ALICE, NODES, STORAGE, Chain, content_digest, replay

V = [Identity.from_label(f"rules-validator-{i}") for i in range(4)]
OUTSIDER = Identity.from_label("rules-outsider")
GOV = Governance(validators=tuple(sorted(v.public_key for v in V)))  # 3 votes of 4 execute


def set_rule(chain: Chain, sender: Identity, name: str, value: object, from_height: int | None = None) -> Transaction:
    action: dict[str, object] = {"kind": "set_rule", "name": name, "value": value}
    if from_height is not None:
        action["from_height"] = from_height
    return chain.tx(sender, "gov.propose", {"action": action})


def vote(chain: Chain, sender: Identity, proposal: bytes) -> Transaction:
    return chain.tx(sender, "gov.vote", {"proposal": proposal})


def carried(chain: Chain, proposal: Transaction) -> list[Transaction]:
    """The proposal with the two more votes that execute it (3 of 4)."""
    return [proposal, vote(chain, V[1], proposal.hash), vote(chain, V[2], proposal.hash)]


def rejected(chain: Chain, *txs: Transaction) -> list[str]:
    return [r.reason for r in chain.block(*txs).rejected]


def with_workers(chain: Chain, count: int = 4) -> bytes:
    """Register ``count`` processing nodes and ALICE's dataset; return its digest."""
    chain.block(*[chain.register_node(node) for node in NODES[:count]])
    digest = content_digest("rules-data")
    assert rejected(chain, chain.register_dataset(ALICE, digest)) == []
    return digest


def test_a_vote_raises_max_replication_from_its_activation_height_only():
    chain = Chain(rules=ChainRules(max_replication=2), governance=GOV)
    digest = with_workers(chain)
    raise_it = set_rule(chain, V[0], "max_replication", 4)
    assert rejected(chain, *carried(chain, raise_it)) == []
    executed = chain.height
    machine = chain.machine
    assert [machine.rules_at(h).max_replication for h in (executed, executed + 1, executed + 2, 10**6)] == [2, 2, 4, 4]
    # Block executed + 1: still the genesis bound; the refusal is recorded with its reason.
    early = chain.submit_job(ALICE, {"sales": digest}, replication=3)
    assert machine.check_tx_against_state(early) == "invalid payload: replication: must be in 1..2, got 3"
    assert rejected(chain, early) == ["invalid payload: replication: must be in 1..2, got 3"]
    assert machine.rejection_of(early.hash) == "invalid payload: replication: must be in 1..2, got 3"
    # From executed + 2 the new bound holds: the job is taken and gets 3 nodes.
    taken = chain.submit_job(ALICE, {"sales": digest}, replication=3)
    assert machine.check_tx_against_state(taken) is None
    assert rejected(chain, taken) == []
    assert chain.height == executed + 2
    job = machine.job(taken.hash)
    assert job["replication"] == 3 and len(job["assignments"]) == 3


def test_a_vote_lowers_max_replication_from_the_height_it_names():
    chain = Chain(governance=GOV)  # genesis: max_replication 8
    digest = with_workers(chain)
    start = chain.height + 4
    assert rejected(chain, *carried(chain, set_rule(chain, V[0], "max_replication", 2, from_height=start))) == []
    chain.empty_blocks(start - 2 - chain.height)
    assert rejected(chain, chain.submit_job(ALICE, {"sales": digest}, replication=3)) == []  # start - 1
    assert rejected(chain, chain.submit_job(ALICE, {"sales": digest}, replication=3)) == [
        "invalid payload: replication: must be in 1..2, got 3"]  # start
    assert chain.height == start
    assert rejected(chain, chain.submit_job(ALICE, {"sales": digest}, replication=2)) == []


def test_a_vote_lowering_max_attempts_changes_the_attempts_a_job_gets_from_that_height():
    chain = Chain(governance=GOV)  # genesis: 3 attempts
    digest = with_workers(chain)
    job = chain.submit_job(ALICE, {"sales": digest}, replication=1, deadline_blocks=2)
    submitted = chain.height + 1
    # Executed with the submission; takes effect one block after the first deadline.
    lower = set_rule(chain, V[0], "max_attempts", 1, from_height=submitted + 3)
    assert rejected(chain, job, *carried(chain, lower)) == []
    chain.empty_blocks(2)  # submitted + 2: attempt 1 missed; the rule is still 3, so attempt 2
    assert chain.machine.job(job.hash)["attempt"] == 2
    assert chain.machine.job(job.hash)["max_attempts"] == 1  # the job's answer says the rule of the next block
    chain.empty_blocks(2)  # submitted + 4: attempt 2 missed under max_attempts 1: no attempt 3
    found = chain.machine.job(job.hash)
    assert found["state"] == "failed" and found["attempt"] == 2
    assert found["reason"].startswith("attempts exhausted: 0 of 1 results after 2 attempt(s)")
    # A job submitted under the new rule fails at its first deadline.
    second = chain.submit_job(ALICE, {"sales": digest}, replication=1, deadline_blocks=2)
    chain.block(second)
    chain.empty_blocks(2)
    assert chain.machine.job(second.hash)["state"] == "failed"
    assert chain.machine.job(second.hash)["attempt"] == 1


def test_refusals_are_in_words():
    chain = Chain(governance=GOV)
    next_block = chain.height + 1
    assert rejected(chain, set_rule(chain, OUTSIDER, "max_attempts", 5)) == [
        f"the sender {OUTSIDER.peer_id} is not a validator: only the current validators propose and vote"]
    next_block = chain.height + 1
    assert rejected(chain, set_rule(chain, V[0], "max_attempts", 3)) == [
        f"action.value: max_attempts is already 3 at height {next_block + 2}"]
    next_block = chain.height + 1
    assert rejected(chain, set_rule(chain, V[0], "min_deadline_blocks", 20_000)) == [
        f"action.value: min_deadline_blocks = 20000 from height {next_block + 2} makes the rules inconsistent at "
        f"height {next_block + 2}: min_deadline_blocks must be at most max_deadline_blocks (10000), got 20000"]
    assert rejected(chain, set_rule(chain, V[0], "max_speed", 5)) == [
        "invalid payload: action.name: 'max_speed' is not a chain rule (one of max_replication, max_attempts, "
        "min_deadline_blocks, max_deadline_blocks, exclusion_blocks, max_capacity, max_inputs, max_query_bytes, "
        "max_batch_receipts, max_services, min_service_interval, ack_blocks, attest_once)"]
    assert rejected(chain, set_rule(chain, V[0], "max_capacity", 1025)) == [
        "invalid payload: action.value: max_capacity must be in 1..1024, got 1025"]
    pending = set_rule(chain, V[0], "exclusion_blocks", 5)
    assert rejected(chain, pending) == []
    assert rejected(chain, set_rule(chain, V[1], "exclusion_blocks", 5)) == [
        f"proposal {pending.hash.hex()} already proposes this action and is pending: vote for it"]


def test_a_change_is_checked_against_every_later_height_of_the_schedule():
    chain = Chain(governance=GOV)
    later = chain.height + 50
    assert rejected(chain, *carried(chain, set_rule(chain, V[0], "max_deadline_blocks", 40, from_height=later))) == []
    # min_deadline_blocks 45 is consistent with the rules of height 10, not with those of height `later`.
    assert rejected(chain, set_rule(chain, V[0], "min_deadline_blocks", 45, from_height=10)) == [
        f"action.value: min_deadline_blocks = 45 from height 10 makes the rules inconsistent at height {later}: "
        "min_deadline_blocks must be at most max_deadline_blocks (40), got 45"]
    # ... and a value the scheduled change already sets at its height is "already" there.
    assert rejected(chain, set_rule(chain, V[0], "max_deadline_blocks", 40, from_height=later)) == [
        f"action.value: max_deadline_blocks is already 40 at height {later}"]


def test_a_vote_for_a_change_made_inconsistent_since_is_refused():
    chain = Chain(governance=GOV)
    shortest = set_rule(chain, V[0], "min_deadline_blocks", 50)
    longest = set_rule(chain, V[3], "max_deadline_blocks", 40)
    assert rejected(chain, shortest, longest) == []  # both pending, each consistent alone
    assert rejected(chain, vote(chain, V[1], shortest.hash), vote(chain, V[2], shortest.hash)) == []
    # Any further vote for the other one is refused (as for a validator change that no longer applies).
    refused = rejected(chain, vote(chain, V[1], longest.hash))
    assert len(refused) == 1 and refused[0].startswith(
        f"proposal {longest.hash.hex()} can no longer be executed: action.value: max_deadline_blocks = 40 from height")
    assert refused[0].endswith("min_deadline_blocks must be at most max_deadline_blocks (40), got 50")


def test_a_from_height_that_has_passed_takes_effect_two_blocks_after_execution():
    chain = Chain(governance=GOV)
    proposal = set_rule(chain, V[0], "exclusion_blocks", 7, from_height=2)
    chain.block(proposal)
    chain.empty_blocks(3)
    chain.block(vote(chain, V[1], proposal.hash), vote(chain, V[2], proposal.hash))
    executed = chain.height
    assert chain.machine.rules_at(executed + 1).exclusion_blocks == 20
    assert chain.machine.rules_at(executed + 2).exclusion_blocks == 7
    view = chain.machine.rules_view()
    assert view["changes"] == [{"from_height": executed + 2, "name": "exclusion_blocks", "value": 7, "previous": 20,
                                "executed_height": executed, "proposal_id": proposal.hash.hex()}]


def test_the_view_shows_rules_in_force_the_schedule_and_the_proposals_with_votes():
    chain = Chain(rules=ChainRules(max_attempts=4), governance=GOV)
    done = set_rule(chain, V[0], "max_attempts", 2)
    waiting = set_rule(chain, V[3], "max_inputs", 8, from_height=1000)
    chain.block(*carried(chain, done), waiting)
    view = chain.machine.rules_view()
    assert view["height"] == 2 and view["votes_needed"] == 3
    assert view["rules"]["max_attempts"] == 4 and view["genesis"]["max_attempts"] == 4  # from height 3
    assert list(view["rules"]) == list(view["genesis"]) == list(view["ranges"])
    assert view["ranges"]["max_attempts"] == {"default": 3, "low": 1, "high": 100}
    assert view["changes"] == [{"from_height": 3, "name": "max_attempts", "value": 2, "previous": 4,
                                "executed_height": 1, "proposal_id": done.hash.hex()}]
    pending, executed = view["proposals"]
    assert pending["id"] == waiting.hash.hex() and pending["status"] == "pending" and pending["votes_counted"] == 1
    assert pending["action"] == {"kind": "set_rule", "name": "max_inputs", "value": 8, "from_height": 1000}
    assert executed["status"] == "executed" and executed["closed_height"] == 1
    chain.block()
    assert chain.machine.rules_view()["rules"]["max_attempts"] == 2
    # The validators' view lists only validator proposals.
    assert chain.machine.validators_view()["proposals"] == []


def changed(chain: Chain) -> None:
    chain.block(*carried(chain, set_rule(chain, V[0], "max_attempts", 1)))
    chain.block(*carried(chain, set_rule(chain, V[0], "exclusion_blocks", 3, from_height=6)))
    chain.empty_blocks(4)


HISTORY_RULES = [(0, ChainRules()), (3, ChainRules(max_attempts=1)), (6, ChainRules(max_attempts=1, exclusion_blocks=3))]


def test_rebuilding_from_the_blocks_gives_the_same_state_and_schedule():
    chain = Chain(governance=GOV)
    changed(chain)
    assert chain.machine.rule_history() == HISTORY_RULES
    other = StateMachine(duckdb.connect(":memory:"), governance=GOV)
    replay(chain.blocks, other)
    assert other.dump() == chain.machine.dump()
    assert other.rule_history() == HISTORY_RULES and other.rules_view() == chain.machine.rules_view()
    chain.machine.reset()
    assert chain.machine.rule_history() == [(0, ChainRules())]
    replay(chain.blocks, chain.machine)
    assert chain.machine.rule_history() == HISTORY_RULES and chain.machine.dump() == other.dump()


def test_reopening_loads_the_schedule_and_the_genesis_rules_guard_stays(tmp_path):
    conn = open_node_db(tmp_path)
    app = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32), governance=GOV)
    changed(Chain(conn, machine=app.state))
    reopened = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32), governance=GOV)
    assert reopened.state.rule_history() == HISTORY_RULES
    assert reopened.state.rules_at(7) == ChainRules(max_attempts=1, exclusion_blocks=3)
    assert reopened.rules == ChainRules()  # the genesis rules: what the stored digest guards
    with pytest.raises(Exception, match="other chain rules in its genesis"):
        ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32),
                         rules=ChainRules(max_attempts=1), governance=GOV)


def test_the_chains_payload_hooks_take_what_a_vote_could_allow():
    """The mempool (and block validity) cannot know the rules of the height a
    transaction lands at: a job above the genesis bound passes the hook."""
    conn = duckdb.connect(":memory:")
    app = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32),
                           rules=ChainRules(max_replication=2), governance=GOV)
    registry = TxTypeRegistry()
    app.register_tx_types(registry)
    chain = Chain(conn, machine=app.state)
    digest = content_digest("rules-hook")
    registry.check(chain.submit_job(ALICE, {"sales": digest}, replication=WIDEST_RULES.max_replication,
                                    deadline_blocks=WIDEST_RULES.max_deadline_blocks))



def test_a_block_carrying_a_batch_above_the_genesis_bound_neither_crashes_nor_enters_the_state():
    """The receipts a block carries do not depend on the rules in force (the hook
    took the batch); the state refuses it under the rule of its block."""
    conn = duckdb.connect(":memory:")
    app = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32),
                           rules=ChainRules(max_batch_receipts=1), governance=GOV)
    chain = Chain(conn, machine=app.state)
    envelopes = [build_receipt(STORAGE, "data.store", height=0, subject=content_digest(f"batch-{i}"), prev=None,
                               fields={"content": "dataset", "tenant": ALICE.public_key, "size": 1, "replicas": 1}
                               ).envelope for i in range(2)]
    batch = chain.tx(STORAGE, "receipts.batch", {"receipts": envelopes})
    assert len(app.receipts_in([batch.encoded], app.state.next_height())) == 2
    assert rejected(chain, batch) == ["invalid payload: receipts: must be a list of 1 to 1 envelopes"]

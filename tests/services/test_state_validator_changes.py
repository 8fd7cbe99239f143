"""Validator set changes by vote on the chain state machine: add_validator / remove_validator,
the set that decides each height (a change executed in block H decides from H + 2), votes
counted against the set of the block being applied, refusals, the history and its rebuild.
Real signed transactions, real blocks, DuckDB; ChainApplication where the consensus asks."""

from __future__ import annotations

import hashlib

import duckdb
import pytest

from node.app import StateMachine
from node.app.chain_app import ChainApplication
from node.app.policy import Governance
from node.base.db import open_node_db
from node.base.keys import Identity, peer_id_from_public_key
from node.consensus.store import ChainStore
from node.consensus.tx import Transaction
from node.consensus.validators import ValidatorSet
from tests.services.test_state_support import Chain, replay

V = [Identity.from_label(f"valset-validator-{i}") for i in range(5)]
NEWCOMER = Identity.from_label("valset-newcomer")
OTHER = Identity.from_label("valset-other")
OUTSIDER = Identity.from_label("valset-outsider")


def keys(*identities: Identity) -> tuple[bytes, ...]:
    return tuple(sorted(i.public_key for i in identities))


def governance(*validators: Identity, **kw: object) -> Governance:
    return Governance(validators=keys(*validators), **kw)  # type: ignore[arg-type]


def propose(chain: Chain, sender: Identity, kind: str, key: bytes) -> Transaction:
    return chain.tx(sender, "gov.propose", {"action": {"kind": kind, "key": key}})


def add(chain: Chain, sender: Identity, who: Identity) -> Transaction:
    return propose(chain, sender, "add_validator", who.public_key)


def remove(chain: Chain, sender: Identity, who: Identity) -> Transaction:
    return propose(chain, sender, "remove_validator", who.public_key)


def vote(chain: Chain, sender: Identity, proposal: bytes) -> Transaction:
    return chain.tx(sender, "gov.vote", {"proposal": proposal})


def rejected(chain: Chain, *txs: Transaction) -> list[str]:
    return [r.reason for r in chain.block(*txs).rejected]


def proposal(chain: Chain, proposal_id: bytes) -> dict:
    return next(p for p in chain.machine.validators_view()["proposals"] if p["id"] == proposal_id.hex())


def test_an_executed_add_decides_from_two_blocks_later_then_a_remove_likewise():
    chain = Chain(governance=governance(*V[:4]))
    first = add(chain, V[0], NEWCOMER)
    assert rejected(chain, first, vote(chain, V[1], first.hash), vote(chain, V[2], first.hash)) == []  # block 1
    assert proposal(chain, first.hash)["status"] == "executed" and proposal(chain, first.hash)["closed_height"] == 1
    machine = chain.machine
    assert [machine.validator_keys_at(h) for h in (0, 1, 2)] == [keys(*V[:4])] * 3
    assert machine.validator_keys_at(3) == keys(*V[:4], NEWCOMER)
    # Before height 3 the newcomer is not a validator: its proposal in block 2 is refused.
    early = rejected(chain, remove(chain, NEWCOMER, V[0]))
    assert early == [f"the sender {NEWCOMER.peer_id} is not a validator: only the current validators propose and vote"]
    second = remove(chain, NEWCOMER, V[0])
    assert rejected(chain, second) == []  # block 3: the newcomer decides and proposes
    assert rejected(chain, vote(chain, V[1], second.hash), vote(chain, V[2], second.hash)) == []  # block 4
    assert proposal(chain, second.hash)["status"] == "pending"  # 3 of 5: 4 are needed now
    assert rejected(chain, vote(chain, V[3], second.hash)) == []  # block 5
    assert proposal(chain, second.hash)["closed_height"] == 5
    assert machine.validator_history() == [
        (0, keys(*V[:4])), (3, keys(*V[:4], NEWCOMER)), (7, keys(*V[1:4], NEWCOMER))]
    assert [machine.validator_keys_at(h) for h in (6, 7, 100)] == [
        keys(*V[:4], NEWCOMER), keys(*V[1:4], NEWCOMER), keys(*V[1:4], NEWCOMER)]
    view = machine.validators_view()
    assert view["height"] == 6 and view["votes_needed"] == 4
    assert view["validators"] == [{"key": k.hex(), "peer_id": peer_id_from_public_key(k)}
                                  for k in keys(*V[:4], NEWCOMER)]
    assert view["changes"] == [
        {"from_height": 3, "executed_height": 1, "proposal_id": first.hash.hex(),
         "added": [{"key": NEWCOMER.public_key.hex(), "peer_id": NEWCOMER.peer_id}], "removed": []},
        {"from_height": 7, "executed_height": 5, "proposal_id": second.hash.hex(),
         "added": [], "removed": [{"key": V[0].public_key.hex(), "peer_id": V[0].peer_id}]},
    ]
    assert [p["action"]["kind"] for p in view["proposals"]] == ["remove_validator", "add_validator"]
    assert proposal(chain, second.hash)["action"]["peer_id"] == V[0].peer_id


def test_votes_needed_follow_the_set_and_only_current_validators_votes_count():
    chain = Chain(governance=governance(*V[:4]))
    pending = add(chain, V[0], NEWCOMER)
    chain.block(pending)  # block 1: V0's vote, 1 of 3 needed
    leave = remove(chain, V[1], V[3])
    chain.block(leave, vote(chain, V[0], leave.hash), vote(chain, V[2], leave.hash))  # block 2: decides from 4
    assert chain.machine.validator_keys_at(4) == keys(*V[:3])
    # Block 3: V3 still decides, so its vote is taken (2 of the 3 needed)...
    assert rejected(chain, vote(chain, V[3], pending.hash)) == []
    assert proposal(chain, pending.hash)["status"] == "pending"
    # ... but the view is of block 4, whose set has 3 validators (3 votes needed) and not V3.
    assert chain.machine.validators_view()["votes_needed"] == 3
    assert proposal(chain, pending.hash)["votes_counted"] == 1
    # Block 4: V3 is out; its vote is refused, and V1's brings only 2 current votes of 3.
    late = rejected(chain, vote(chain, V[3], pending.hash), vote(chain, V[1], pending.hash))
    assert late == [f"the sender {V[3].peer_id} is not a validator: only the current validators propose and vote"]
    assert proposal(chain, pending.hash)["status"] == "pending"
    assert [v["peer_id"] for v in proposal(chain, pending.hash)["votes"]] == [V[0].peer_id, V[3].peer_id, V[1].peer_id]
    assert rejected(chain, vote(chain, V[2], pending.hash)) == []  # block 5: 3 of 3
    assert proposal(chain, pending.hash)["closed_height"] == 5
    assert chain.machine.validator_keys_at(7) == keys(*V[:3], NEWCOMER)


def test_a_set_change_executes_the_pending_proposals_its_votes_already_carry():
    chain = Chain(governance=governance(*V))  # 5 validators: 4 votes needed
    carried = add(chain, V[0], NEWCOMER)
    chain.block(carried, vote(chain, V[1], carried.hash), vote(chain, V[2], carried.hash))  # block 1: 3 of 4
    leave = remove(chain, V[0], V[4])
    chain.block(leave, *(vote(chain, v, leave.hash) for v in V[1:4]))  # block 2: executed, decides from 4
    chain.block()  # block 3: still 5 validators
    assert proposal(chain, carried.hash)["status"] == "pending"
    chain.block()  # block 4: 4 validators, 3 needed: the three votes execute it before any transaction
    assert proposal(chain, carried.hash)["status"] == "executed" and proposal(chain, carried.hash)["closed_height"] == 4
    assert chain.machine.validator_history()[-1] == (6, keys(*V[:4], NEWCOMER))


def test_refusals_are_in_words():
    chain = Chain(governance=governance(*V[:4]))  # admission policies open: validator changes still go by vote
    outsider = rejected(chain, add(chain, OUTSIDER, OUTSIDER))
    assert outsider == [f"the sender {OUTSIDER.peer_id} is not a validator: only the current validators propose and vote"]
    assert rejected(chain, add(chain, V[0], V[1])) == [f"action.key: {V[1].peer_id} is already a validator"]
    assert rejected(chain, remove(chain, V[0], OUTSIDER)) == [f"action.key: {OUTSIDER.peer_id} is not a validator"]
    joined = add(chain, V[0], NEWCOMER)
    left = remove(chain, V[0], V[3])
    chain.block(joined, vote(chain, V[1], joined.hash), vote(chain, V[2], joined.hash),
                left, vote(chain, V[1], left.hash), vote(chain, V[2], left.hash))  # block 4: decides from 6
    assert chain.machine.validator_history()[-1] == (6, keys(*V[:3], NEWCOMER))  # one row, both changes
    assert len(chain.machine.validators_view()["changes"]) == 1
    assert chain.machine.validators_view()["changes"][0]["proposal_id"] == left.hash.hex()  # the later one
    assert rejected(chain, add(chain, V[1], NEWCOMER), remove(chain, V[1], V[3])) == [  # block 5
        f"action.key: {NEWCOMER.peer_id} becomes a validator at height 6 (a change already executed)",
        f"action.key: {V[3].peer_id} stops being a validator at height 6 (a change already executed)"]
    assert rejected(chain, add(chain, V[1], NEWCOMER), remove(chain, V[1], V[3])) == [  # block 6: in force
        f"action.key: {NEWCOMER.peer_id} is already a validator", f"action.key: {V[3].peer_id} is not a validator"]
    again = add(chain, V[1], OTHER)
    assert rejected(chain, again) == []
    assert rejected(chain, add(chain, V[2], OTHER)) == [
        f"proposal {again.hash.hex()} already proposes this action and is pending: vote for it"]
    # The mempool's pre-screen answers as the block does.
    assert chain.machine.check_tx_against_state(add(chain, V[1], V[2])) == f"action.key: {V[2].peer_id} is already a validator"


def test_the_last_validator_cannot_be_removed_and_a_void_proposal_takes_no_vote():
    solo = Chain(governance=governance(V[0]))
    assert rejected(solo, remove(solo, V[0], V[0])) == [f"action.key: removing {V[0].peer_id} would leave no validator"]
    pair = Chain(governance=governance(V[0], V[1]))  # 2 of 2 needed
    first, second = remove(pair, V[0], V[0]), remove(pair, V[1], V[1])
    assert rejected(pair, first, second) == []  # each alone leaves one validator
    assert rejected(pair, vote(pair, V[1], first.hash)) == []  # executed: V1 alone from height 4
    void = rejected(pair, vote(pair, V[0], second.hash))
    assert void == [f"proposal {second.hash.hex()} can no longer be executed: "
                    f"action.key: removing {V[1].peer_id} would leave no validator"]
    assert pair.machine.validator_history() == [(0, keys(V[0], V[1])), (4, keys(V[1]))]


def test_a_full_set_takes_no_more_validators():
    full = tuple(hashlib.sha256(b"valset-full-%d" % i).digest() for i in range(255)) + (V[0].public_key,)
    chain = Chain(governance=Governance(validators=full))
    assert rejected(chain, add(chain, V[0], NEWCOMER)) == [
        "action.kind: add_validator: the validator set is full (256 validators, the most a set may have)"]


def test_a_bad_key_is_a_payload_error():
    chain = Chain(governance=governance(*V[:4]))
    tx = chain.tx(V[0], "gov.propose", {"action": {"kind": "add_validator", "key": b"\x01" * 31}})
    assert rejected(chain, tx) == ["invalid payload: action.key: must be a 32-byte Ed25519 public key"]


def grown_and_shrunk(chain: Chain) -> None:
    """Blocks 1..7: NEWCOMER joins (decides from 3), V3 leaves (decides from 7)."""
    joined = add(chain, V[0], NEWCOMER)
    chain.block(joined, vote(chain, V[1], joined.hash), vote(chain, V[2], joined.hash))
    chain.block()
    left = remove(chain, NEWCOMER, V[3])
    chain.block(left, *(vote(chain, v, left.hash) for v in V[:3]))
    chain.empty_blocks(4)


HISTORY = [(0, keys(*V[:4])), (3, keys(*V[:4], NEWCOMER)), (5, keys(*V[:3], NEWCOMER))]


def test_the_application_answers_the_set_of_every_height_from_memory_and_after_reopening(tmp_path):
    gov = governance(*V[:4])
    conn = open_node_db(tmp_path)
    app = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32), governance=gov)
    chain = Chain(conn, machine=app.state)
    assert app.validator_set_at(0) == app.validator_set_at(2) == ValidatorSet(keys(*V[:4]))
    grown_and_shrunk(chain)
    assert app.validator_history() == HISTORY
    expected = {1: keys(*V[:4]), 2: keys(*V[:4]), 3: keys(*V[:4], NEWCOMER), 4: keys(*V[:4], NEWCOMER),
                5: keys(*V[:3], NEWCOMER), 9: keys(*V[:3], NEWCOMER)}
    for height, wanted in expected.items():
        assert app.validator_set_at(height) == ValidatorSet(wanted)
        assert app.validator_set_at(height) is app.validator_set_at(height)  # one object per set: cheap
    with pytest.raises(ValueError, match="non-negative"):
        app.validator_set_at(-1)
    # Reopened on the same database: the history is loaded from the state.
    reopened = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32), governance=gov)
    assert reopened.validator_history() == HISTORY
    assert reopened.validator_set_at(5) == ValidatorSet(keys(*V[:3], NEWCOMER))
    # Without validators (no genesis) there is no set to answer.
    bare = ChainApplication(duckdb.connect(":memory:"), ChainStore(duckdb.connect(":memory:")))
    with pytest.raises(ValueError, match="no validators"):
        bare.validator_set_at(1)


def test_rebuilding_from_the_blocks_gives_the_same_state_and_history():
    gov = governance(*V[:4])
    chain = Chain(governance=gov)
    grown_and_shrunk(chain)
    other = StateMachine(duckdb.connect(":memory:"), governance=gov)
    replay(chain.blocks, other)
    assert other.dump() == chain.machine.dump()
    assert other.validator_history() == chain.machine.validator_history() == HISTORY
    assert other.validators_view() == chain.machine.validators_view()
    # A reset forgets the changes with the rows; replaying brings both back.
    chain.machine.reset()
    assert chain.machine.validator_history() == [(0, keys(*V[:4]))]
    replay(chain.blocks, chain.machine)
    assert chain.machine.validator_history() == HISTORY and chain.machine.dump() == other.dump()


def test_a_block_that_fails_leaves_the_history_as_it_was():
    chain = Chain(governance=governance(V[0]))
    tx = add(chain, V[0], NEWCOMER)
    with pytest.raises(RuntimeError, match="boom"):
        def boom(effects: object) -> None:
            raise RuntimeError("boom")
        chain.machine.apply_block(1, b"\x01" * 32, 1_700_000_000_000, [tx], seed=bytes(64), on_applied=boom)
    assert chain.machine.validator_history() == [(0, keys(V[0]))]
    assert chain.machine.height() is None

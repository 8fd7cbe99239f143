"""Per-block answers of the state queries: ``assignments_to_run`` (one statement
per block for a processing node) agrees with ``job`` and the pending and
unacknowledged assignment queries; answers kept by ``follow_blocks`` are
forgotten by the state machine itself whenever it writes (every block, a
replay into another database, a block rolled back, a reset), so no reader
sees an answer of an earlier state, and cannot be changed by a caller."""

from __future__ import annotations

from typing import Any

import pytest

from node.app.rules import ChainRules
from tests.services.test_state_acks import ack, ready_chain, submit
from tests.services.test_state_support import ALICE, BLOCK_MS, NODES, START_MS, Chain, block_hash, block_seed, content_digest

SALES = content_digest("sales")


def test_assignments_to_run_names_what_a_node_runs_and_acknowledges() -> None:
    chain = ready_chain(ChainRules(ack_blocks=3))
    job_id = submit(chain)
    first, second = chain.assignees(job_id)
    job = chain.machine.job(job_id)
    assert job is not None
    (row,) = chain.machine.assignments_to_run(first.public_key)
    assert row == {"id": job["id"], "attempt": job["attempt"], "wants_ack": True, "state": job["state"],
                   "type": job["type"], "inputs": job["inputs"], "params": job["params"], "seed": job["seed"],
                   "clock": job["clock"], "policy": job["policy"]}
    assert [(bytes.fromhex(r["id"]), r["attempt"]) for r in chain.machine.assignments_to_run(first.public_key)] \
        == chain.machine.pending_assignments_of(first.public_key)
    chain.block(ack(chain, first, job_id))
    assert [r["wants_ack"] for r in chain.machine.assignments_to_run(first.public_key)] == [False]
    assert [r["wants_ack"] for r in chain.machine.assignments_to_run(second.public_key)] == [True]
    idle = [n for n in NODES[:4] if n not in (first, second)]
    assert all(chain.machine.assignments_to_run(n.public_key) == [] for n in idle)
    chain.block(chain.result(first, job_id, b"\x11" * 32))
    assert chain.machine.assignments_to_run(first.public_key) == []  # answered: no longer pending


def sales(chain: Chain) -> dict[str, Any]:
    found = chain.machine.dataset(ALICE.public_key, "sales.csv")
    assert found is not None
    return found


def following_chain() -> Chain:
    """A chain whose queries keep their answers (as a daemon's gateway,
    processing and storage roles ask); blocks are applied straight through
    ``StateMachine.apply_block``, with no callback telling the queries."""
    chain = Chain()
    chain.machine.follow_blocks()
    chain.machine.follow_blocks()  # again: nothing changes
    return chain


def test_kept_answers_last_until_the_next_block() -> None:
    chain = following_chain()
    chain.block(chain.register_dataset(ALICE, SALES), chain.register_node(NODES[0], capacity=2))
    assert chain.machine.height() == chain.height
    assert [n["pending"] for n in chain.machine.nodes()] == [0]
    assert chain.machine.queue_depth()["waiting_for_nodes"] == 0
    assert sales(chain)["version"] == 1
    chain.block(chain.register_node(NODES[1], capacity=2), chain.submit_job(ALICE, {"sales": SALES}, replication=2))
    assert chain.machine.height() == chain.height
    assert sorted(n["pending"] for n in chain.machine.nodes()) == [1, 1]
    assert chain.machine.queue_depth()["scheduled"] == 1
    chain.block(chain.register_dataset(ALICE, content_digest("sales v2")))
    assert sales(chain)["version"] == 2


def test_a_kept_answer_is_not_the_callers_to_change() -> None:
    chain = following_chain()
    chain.block(chain.register_dataset(ALICE, SALES), chain.register_node(NODES[0], capacity=2))
    mine = chain.machine.nodes(processing_only=False)
    mine[0]["roles"].append("changed by the caller")
    mine[0]["pending"] = 99
    assert chain.machine.nodes(processing_only=False) != mine
    found = sales(chain)
    found["version"] = 99
    assert sales(chain)["version"] == 1
    depth = chain.machine.queue_depth()
    depth["scheduled"] = 99
    assert chain.machine.queue_depth()["scheduled"] == 0


def test_without_follow_blocks_every_read_asks_the_database() -> None:
    chain = Chain()
    chain.block(chain.register_node(NODES[0], capacity=2))
    assert len(chain.machine.nodes()) == 1
    chain.block(chain.register_node(NODES[1], capacity=2))  # nothing told the queries of this block
    assert len(chain.machine.nodes()) == 2 and chain.machine.height() == chain.height


def test_a_read_inside_a_block_is_not_kept_past_it() -> None:
    # on_applied runs inside the block's transaction: what it reads is the new state.
    chain = following_chain()
    chain.block(chain.register_node(NODES[0], capacity=2))
    seen: list[int | None] = []
    height = chain.height + 1
    digest = block_hash(height, chain.parent, [])
    chain.machine.apply_block(height, digest, START_MS + height * BLOCK_MS, [], seed=block_seed(digest),
                              on_applied=lambda _: seen.append(chain.machine.height()))
    assert seen == [height] and chain.machine.height() == height


def test_a_block_rolled_back_leaves_no_answer_of_its_state() -> None:
    chain = following_chain()
    chain.block(chain.register_node(NODES[0], capacity=2))
    before = chain.machine.height()
    assert len(chain.machine.nodes()) == 1
    node = chain.register_node(NODES[1], capacity=2)
    height = chain.height + 1
    digest = block_hash(height, chain.parent, [node])

    def read_then_fail(_: Any) -> None:
        assert chain.machine.height() == height and len(chain.machine.nodes()) == 2  # the uncommitted state
        raise RuntimeError("the disk failed")

    with pytest.raises(RuntimeError, match="disk failed"):
        chain.machine.apply_block(height, digest, START_MS + height * BLOCK_MS, [node], seed=block_seed(digest),
                                  on_applied=read_then_fail)
    assert chain.machine.height() == before and len(chain.machine.nodes()) == 1


def test_a_replay_and_a_reset_are_seen_at_once() -> None:
    chain = following_chain()
    chain.block(chain.register_dataset(ALICE, SALES), chain.register_node(NODES[0], capacity=2))
    chain.block(chain.register_node(NODES[1], capacity=2))
    # Another machine following its blocks while catching up from a store's blocks, as a restarted daemon.
    replica = Chain()
    replica.machine.follow_blocks()
    assert replica.machine.height() is None and replica.machine.nodes() == []
    for height, digest, timestamp, txs in chain.blocks:
        replica.machine.apply_block(height, digest, timestamp, txs, seed=block_seed(digest))
        assert replica.machine.height() == height
    assert len(replica.machine.nodes()) == 2 and sales(replica)["version"] == 1
    replica.machine.reset()
    assert replica.machine.height() is None and replica.machine.nodes() == []
    assert replica.machine.dataset(ALICE.public_key, "sales.csv") is None

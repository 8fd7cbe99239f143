"""The state machine's per-block hints (node/app/state_hints.py StateHints) only skip
queries that would find nothing: a machine that uses them and one that starts
every block knowing nothing reach the same state after every block."""

from __future__ import annotations

import dataclasses

import duckdb
import pytest

from node.app import DEFAULT_RULES, StateMachine
from node.app.state_hints import StateHints
from tests.services.test_state_support import ALICE, NODES, Chain, block_seed, content_digest, random_scenario


def _lockstep(chain: Chain) -> tuple[StateMachine, int]:
    """Replay ``chain``'s blocks into two fresh machines, one forgetting its hints before
    every block; assert equal dumps after each; the hinted one and how many blocks it
    started knowing both that no deadline and no open slot could be due."""
    rules = chain.machine.rules
    hinted = StateMachine(duckdb.connect(":memory:"), rules=rules)
    blank = StateMachine(duckdb.connect(":memory:"), rules=rules)
    skipped = 0
    for height, digest, timestamp, txs in chain.blocks:
        hints = hinted._hints
        if hints.expiry_floor is not None and hints.expiry_floor > height and not hints.open_slots:
            skipped += 1
        blank._hints = StateHints()
        for machine in (hinted, blank):
            machine.apply_block(height, digest, timestamp, txs, seed=block_seed(digest))
        assert hinted.dump() == blank.dump(), f"states differ after block {height}"
    return hinted, skipped


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("ack_blocks", [0, 2])
def test_hints_leave_the_state_unchanged(seed: int, ack_blocks: int) -> None:
    rules = dataclasses.replace(DEFAULT_RULES, ack_blocks=ack_blocks)
    chain = random_scenario(seed, blocks=40, rules=rules)
    chain.empty_blocks(8)  # deadlines run out in blocks with nothing in them
    _lockstep(chain)


def test_idle_blocks_skip_and_deadlines_still_expire() -> None:
    chain = Chain()
    chain.block(*(chain.register_node(node) for node in NODES[:3]))
    digest = content_digest("hints")
    chain.block(chain.register_dataset(ALICE, digest))
    chain.empty_blocks(3)
    job = chain.submit_job(ALICE, {"data": digest}, replication=2, deadline_blocks=4)
    chain.block(job)
    chain.empty_blocks(6)  # nobody delivers: the assignments are missed, replacements assigned
    status = chain.machine.job(job.hash)
    assert status is not None and any(a["status"] == "missed" for a in status["assignments"])
    chain.empty_blocks(20)
    hinted, skipped = _lockstep(chain)
    assert hinted.job(job.hash) == chain.machine.job(job.hash)
    assert skipped >= 3  # the quiet stretches applied without the job queries

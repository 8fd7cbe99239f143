"""Who signs a scheduler decision, and when: one signer normally, the next after
ATTEST_FALLBACK_BLOCKS, a late-registered scheduler when every earlier one is
gone; the state is the work list, so a restart loses nothing."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import duckdb

from node.app.decisions import scheduler_keys, unattested_decisions
from node.base.codec import hash_tagged
from node.base.keys import Identity
from node.consensus.commits import BlockSummary
from node.roles.issuer import NodeIssuer
from node.roles.scheduler import (
    ATTEST_FALLBACK_BLOCKS,
    ATTEST_RESEND_BLOCKS,
    Attester,
    attest_due_height,
    attest_rank,
)
from tests.services.test_state_attestations import SCHED_A, SCHED_B, scheduled_chain
from tests.services.test_state_support import Chain

KEYS = [bytes([i]) * 32 for i in range(1, 5)]
DECISION = b"\xab" * 32


def test_ranks_are_a_permutation_everyone_computes_alike():
    ranks = [attest_rank(DECISION, KEYS, key) for key in KEYS]
    assert sorted(r for r in ranks if r is not None) == [0, 1, 2, 3]
    assert ranks == [attest_rank(DECISION, list(reversed(KEYS)), key) for key in KEYS]  # input order is irrelevant
    first = min(KEYS, key=lambda k: hash_tagged("metanode/attest-rank/v1", DECISION + k))
    assert attest_rank(DECISION, KEYS, first) == 0
    assert attest_rank(DECISION, KEYS, b"\x09" * 32) is None  # not a scheduler node: never signs
    # Other decisions fall to other nodes first (the load spreads).
    firsts = {next(k for k in KEYS if attest_rank(bytes([d]) * 32, KEYS, k) == 0) for d in range(32)}
    assert len(firsts) > 1


def test_rank_zero_is_due_at_once_and_each_next_rank_four_blocks_later():
    assert ATTEST_FALLBACK_BLOCKS == 4
    assert [attest_due_height(100, r) for r in range(4)] == [100, 104, 108, 112]


# -- an attester on a real state, signing with a real issuer ---------------------------

@dataclass
class Genesis:
    block_period_ms: int = 1000


@dataclass
class ChainView:
    """What the attester reads of the consensus service: started, the finalised height, the last block's time."""

    chain: Chain
    started: bool = True
    genesis: Genesis = field(default_factory=Genesis)
    recent: deque[BlockSummary] = field(default_factory=deque)

    @property
    def finalized_height(self) -> int:
        return self.chain.height

    def tip_at(self, timestamp_ms: int) -> None:
        self.recent.append(BlockSummary(self.chain.height, b"\0" * 32, 0, 0, timestamp_ms, 0, b""))


@dataclass
class Submitted:
    accepted: bool = True


class Outbox:
    """The node's transaction submitter: keeps what the attester submits (it goes into the test's blocks)."""

    def __init__(self, chain: Chain, identity: Identity) -> None:
        self.chain, self.identity = chain, identity
        self.txs: list[Any] = []
        self.accepting = True

    def submit(self, tx_type: str, payload: Any) -> Submitted:
        if self.accepting:
            self.txs.append(self.chain.tx(self.identity, tx_type, payload))
        return Submitted(self.accepting)

    def take(self) -> list[Any]:
        txs, self.txs = self.txs, []
        return txs


def attester(chain: Chain, identity: Identity) -> tuple[Attester, ChainView, Outbox]:
    view, outbox = ChainView(chain), Outbox(chain, identity)
    view.tip_at(int(time.time() * 1000))
    node = Attester(issuer=NodeIssuer(duckdb.connect(":memory:"), identity), node_txs=outbox, chain=view,  # type: ignore[arg-type]
                    max_batch=lambda: 64, decisions=lambda: unattested_decisions(chain.conn),
                    schedulers=lambda: scheduler_keys(chain.conn))
    return node, view, outbox


def test_one_scheduler_signs_the_other_covers_only_when_it_is_silent():
    chain, body, height = scheduled_chain()
    (decision,) = unattested_decisions(chain.conn)
    assert decision.body == body and decision.height == height
    first, second = sorted([SCHED_A, SCHED_B],
                           key=lambda i: attest_rank(decision.decision_id, scheduler_keys(chain.conn), i.public_key))
    a, _, a_out = attester(chain, first)
    b, _, b_out = attester(chain, second)
    assert (a.attest_once(), b.attest_once()) == (1, 0)  # rank 0 at once; rank 1 waits
    effects = chain.block(*a_out.take())
    assert effects.rejected == [] and len(effects.receipt_ids) == 1
    assert unattested_decisions(chain.conn) == []
    chain.empty_blocks(ATTEST_FALLBACK_BLOCKS)
    assert (a.attest_once(), b.attest_once()) == (0, 0) and not a.sent  # attested: forgotten, nobody signs again

    # A second job: its first signer stays silent (dead); the other signs 4 blocks after the decision.
    chain2, body2, height2 = scheduled_chain(Chain())
    (d2,) = unattested_decisions(chain2.conn)
    order = sorted([SCHED_A, SCHED_B],
                   key=lambda i: attest_rank(d2.decision_id, scheduler_keys(chain2.conn), i.public_key))
    backup, _, out = attester(chain2, order[1])
    for _ in range(ATTEST_FALLBACK_BLOCKS - 1):
        assert backup.attest_once() == 0
        chain2.block()
    assert chain2.height == height2 + ATTEST_FALLBACK_BLOCKS - 1 and backup.attest_once() == 0
    chain2.block()
    assert backup.attest_once() == 1
    assert chain2.block(*out.take()).rejected == [] and unattested_decisions(chain2.conn) == []


def test_a_lost_attestation_is_sent_again_the_same_envelope():
    chain, body, height = scheduled_chain()
    (decision,) = unattested_decisions(chain.conn)
    signer = min([SCHED_A, SCHED_B],
                 key=lambda i: attest_rank(decision.decision_id, scheduler_keys(chain.conn), i.public_key))
    node, _, out = attester(chain, signer)
    assert node.attest_once() == 1
    (lost,) = out.take()  # never reaches a block
    chain.empty_blocks(ATTEST_RESEND_BLOCKS - 1)
    assert node.attest_once() == 0
    chain.block()
    assert node.attest_once() == 1
    (again,) = out.take()
    assert again.payload == lost.payload and node.signed == 1  # the same receipt, not a second one
    assert chain.block(again).rejected == []


def test_a_busy_mempool_keeps_the_signed_envelope_for_later():
    chain, body, height = scheduled_chain()
    (decision,) = unattested_decisions(chain.conn)
    signer = min([SCHED_A, SCHED_B],
                 key=lambda i: attest_rank(decision.decision_id, scheduler_keys(chain.conn), i.public_key))
    node, _, out = attester(chain, signer)
    out.accepting = False
    assert node.attest_once() == 0 and node.signed == 1
    out.accepting = True
    chain.empty_blocks(ATTEST_RESEND_BLOCKS)
    assert node.attest_once() == 1 and node.signed == 1
    assert chain.block(*out.take()).rejected == []


def test_a_scheduler_registered_after_every_other_is_gone_attests_what_was_left():
    """The state is the work list: no in-memory queue to lose. Here the only
    scheduler of the decision's time never signs; a node that registers as a
    scheduler later finds the decision unattested and signs it."""
    chain, body, height = scheduled_chain()
    chain.empty_blocks(3 * ATTEST_FALLBACK_BLOCKS)  # both schedulers silent: nothing is lost, it waits
    (waiting,) = unattested_decisions(chain.conn)
    late = Identity.from_label("scheduler-late")
    node, _, out = attester(chain, late)
    assert node.attest_once() == 0  # not a scheduler node yet
    chain.block(chain.register_node(late, capacity=0, roles=["scheduler"]))
    # Three schedulers now; whatever its rank, every window has passed.
    assert node.attest_once() == 1
    effects = chain.block(*out.take())
    assert effects.rejected == [] and unattested_decisions(chain.conn) == []
    assert waiting.body == body


def test_nothing_is_signed_while_the_chain_tip_is_old():
    """A node syncing an old chain sees decisions that later blocks attest: it signs none of them."""
    chain, body, height = scheduled_chain()
    node, view, out = attester(chain, SCHED_A)
    node2, view2, _ = attester(chain, SCHED_B)
    view.recent.clear()
    view.tip_at(int(time.time() * 1000) - 3_600_000)
    view2.recent.clear()
    view2.tip_at(int(time.time() * 1000) - 3_600_000)
    chain.empty_blocks(2 * ATTEST_FALLBACK_BLOCKS)
    assert node.attest_once() == 0 and node2.attest_once() == 0 and node.signed == node2.signed == 0

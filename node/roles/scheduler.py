"""The scheduler role: attest the ``job.schedule``, ``job.verdict`` and ``service.placement`` decisions blocks make.

Scheduling itself is a pure function of the chain (node/app/scheduler.py) that
every node computes, and the state records each decision it implies, with
the body a receipt of it carries (node/app/decisions.py). A scheduler node
vouches for a decision with a receipt of its own, published on chain like
every other receipt; the chain takes ONE attestation per decision, from a
node registered as a scheduler, so the scheduler nodes take turns:

* the scheduler nodes of the applied state are ranked per decision by
  ``H("metanode/attest-rank/v1", decision_id || node_key)`` (ascending), a
  pure function every node computes alike, which spreads the signing;
* the node of rank r signs when the finalised height reaches the decision's
  height + r * :data:`ATTEST_FALLBACK_BLOCKS` and the decision is still
  unattested in the state: normally one receipt per decision, and a signer
  that is dead or slow is covered a few blocks later by the next;
* the receipts service runs it once per batch interval (node/roles/publisher.py);
* the work list is the state itself (every decision no receipt attested yet),
  so a node that restarts, or registers as a scheduler after a decision,
  still signs what nobody signed. A decision waits unattested, visible in
  ``state_decisions``, only while no scheduler node is registered at all;
  the first one to register then attests it;
* a sent attestation still unattested :data:`ATTEST_RESEND_BLOCKS` later
  (dropped, or its batch refused) is sent again, the same envelope;
* nothing is signed while the chain's last block is old (this node is
  syncing): the decisions it would see are attested in blocks it has not
  applied yet, and every receipt signed for them would be refused.

Attestations go in ``receipts.batch`` transactions of their own, so a refused
one (two signers racing) never takes an ``api.call`` or ``data.store`` receipt
down with it; the loser's receipt never reaches the log, a gap in its ``prev``
chain (docs/receipts.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from node.app.decisions import Unattested, scheduler_keys, unattested_decisions
from node.base.codec import hash_tagged
from node.base.config import NodeConfig
from node.base.verification import ReceiptError
from node.consensus.service import ConsensusService
from node.consensus.timer import now_ms
from node.roles.issuer import NodeIssuer
from node.roles.node_txs import NodeTransactions
from node.roles.role import RoleContext, Service

log = structlog.get_logger("metanode.scheduler")

ATTEST_RANK_TAG = "metanode/attest-rank/v1"
ATTEST_FALLBACK_BLOCKS = 4  # each rank waits this many blocks more than the one before it
ATTEST_RESEND_BLOCKS = 4  # a sent attestation still unattested this many blocks later is sent again
LIVE_MIN_MS = 10_000  # the last block is recent (this node is not syncing): within max(this, 3 periods)


def attest_rank(decision: bytes, schedulers: Sequence[bytes], node_key: bytes) -> int | None:
    """``node_key``'s rank (0 first) among ``schedulers`` for ``decision``, or None
    if it is not one of them. Pure: every node computes the same order."""
    if node_key not in schedulers:
        return None
    order = sorted(set(schedulers), key=lambda key: hash_tagged(ATTEST_RANK_TAG, decision + key))
    return order.index(node_key)


def attest_due_height(decision_height: int, rank: int) -> int:
    """The finalised height from which the signer of ``rank`` signs a decision of ``decision_height``."""
    return decision_height + rank * ATTEST_FALLBACK_BLOCKS


@dataclass
class SentAttestation:
    envelope: bytes  # signed once, then sent again as is (never re-signed: one receipt per decision and signer)
    sent_at: int  # the finalised height when it was last submitted


class Attester:
    """Signs and submits this node's turn of the unattested decisions (module docstring).

    ``decisions`` and ``schedulers`` read the applied state: every unattested
    decision, and the keys of the registered scheduler nodes."""

    def __init__(self, *, issuer: NodeIssuer, node_txs: NodeTransactions, chain: ConsensusService,
                 max_batch: Callable[[], int], decisions: Callable[[], list[Unattested]],
                 schedulers: Callable[[], list[bytes]]) -> None:
        self.issuer = issuer
        self.node_txs = node_txs
        self.chain = chain
        self.max_batch = max_batch
        self.decisions = decisions
        self.schedulers = schedulers
        self.sent: dict[bytes, SentAttestation] = {}  # by decision id, while it is unattested
        self.unsignable: set[bytes] = set()  # bodies no receipt can carry (logged once)
        self.signed = 0  # attestations signed
        self.waiting = 0  # unattested decisions seen at the last look

    def status(self) -> dict[str, int]:
        return {"decisions_unattested": self.waiting, "attestations_signed": self.signed,
                "attestations_in_flight": len(self.sent)}

    def live(self) -> bool:
        """Whether the last finalised block is recent (this node is not syncing an old chain)."""
        if not self.chain.recent:
            return False
        period = self.chain.genesis.block_period_ms
        return now_ms() - self.chain.recent[-1].timestamp_ms <= max(LIVE_MIN_MS, 3 * period)

    def due(self, finalized: int) -> list[tuple[Unattested, SentAttestation | None]]:
        """The unattested decisions this node signs or sends again now, oldest first."""
        decisions = self.decisions()
        self.waiting = len(decisions)
        open_ids = {d.decision_id for d in decisions}
        for did in [did for did in self.sent if did not in open_ids]:  # attested (by anyone) or gone
            del self.sent[did]
        self.unsignable &= open_ids
        if not decisions:  # the common idle case: no need to read the schedulers
            return []
        schedulers = self.schedulers()
        me = self.issuer.identity.public_key
        found = []
        for decision in decisions:
            if decision.decision_id in self.unsignable:
                continue
            rank = attest_rank(decision.decision_id, schedulers, me)
            if rank is None or finalized < attest_due_height(decision.height, rank):
                continue
            sent = self.sent.get(decision.decision_id)
            if sent is None or finalized >= sent.sent_at + ATTEST_RESEND_BLOCKS:
                found.append((decision, sent))
        return found

    def attest_once(self) -> int:
        """Sign and submit what is due; returns how many attestations were submitted."""
        if not self.chain.started or not self.live():
            return 0
        finalized = self.chain.finalized_height
        envelopes: list[tuple[bytes, bytes]] = []  # (decision id, envelope)
        for decision, sent in self.due(finalized):
            if sent is not None:
                envelopes.append((decision.decision_id, sent.envelope))
                continue
            body = decision.body
            try:
                receipt = self.issuer.issue(body.kind, height=finalized, subject=body.subject, fields=body.fields)
            except ReceiptError as exc:  # a body no receipt can carry: no scheduler node can attest it
                log.warning("decision cannot be signed", kind=body.kind, subject=body.subject.hex(), reason=str(exc))
                self.unsignable.add(decision.decision_id)
                continue
            self.sent[decision.decision_id] = SentAttestation(receipt.envelope, finalized)
            self.signed += 1
            envelopes.append((decision.decision_id, receipt.envelope))
        submitted = 0
        size = self.max_batch()
        for start in range(0, len(envelopes), size):
            batch = envelopes[start:start + size]
            if not self.node_txs.submit("receipts.batch", {"receipts": [env for _, env in batch]}).accepted:
                break  # mempool busy: they are sent again after the resend delay
            for did, _ in batch:
                self.sent[did].sent_at = finalized
            submitted += len(batch)
        return submitted


class SchedulerRole:
    name = "scheduler"

    def enabled(self, config: NodeConfig) -> bool:
        return "scheduler" in config.roles

    def build(self, context: RoleContext) -> list[Service]:
        conn = context.app.conn
        state = context.app.state
        attester = Attester(issuer=context.issuer, node_txs=context.node_txs, chain=context.chain,
                            max_batch=lambda: state.rules_at(state.next_height()).max_batch_receipts,
                            decisions=lambda: unattested_decisions(conn), schedulers=lambda: scheduler_keys(conn))
        # Run by the receipts service, once per batch interval (its status shows the attester's).
        context.publisher.attester = attester
        return []

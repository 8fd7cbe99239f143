"""Job states and what applying one block produced (:class:`BlockEffects`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.base.codec import hash_tagged, to_hex
from node.receipts.envelope import Receipt

SUBMITTED = "submitted"  # waiting for enough eligible processing nodes (reason says why)
SCHEDULED = "scheduled"  # assigned; no result committed yet
RUNNING = "running"  # at least one assignee's result is committed, not all r yet
VERIFIED = "verified"  # r equal result digests, exit status 0
DISPUTED = "disputed"  # r results that differ (all of them stay recorded)
FAILED = "failed"  # attempts exhausted, or the job failed identically on every assignee
CANCELLED = "cancelled"  # by its tenant
JOB_STATES = (SUBMITTED, SCHEDULED, RUNNING, VERIFIED, DISPUTED, FAILED, CANCELLED)
ACTIVE_STATES = (SUBMITTED, SCHEDULED, RUNNING)

PENDING = "pending"
DELIVERED = "delivered"
MISSED = "missed"
DECLINED = "declined"  # the assignee could not run it (job.decline) and said why; the slot is given again
WITHDRAWN = "cancelled"  # the job was cancelled while the assignment was pending

# Why an assignee could not run a job (job.decline): never a property of the job
# itself, so never a signed result. ``input_unavailable``: no copy of an input
# that matched its digest could be obtained; ``local_fault``: the node itself
# failed (disk, cage, I/O), and it gets no new work for ``exclusion_blocks``;
# ``policy_unavailable``: the node holds no DockLock policy of the job's
# ``policy`` name (the slot goes to another node; the node is not excluded).
INPUT_UNAVAILABLE = "input_unavailable"
LOCAL_FAULT = "local_fault"
POLICY_UNAVAILABLE = "policy_unavailable"
DECLINE_REASONS = (INPUT_UNAVAILABLE, LOCAL_FAULT, POLICY_UNAVAILABLE)
SERVICE_ACTIVE = "active"  # a service's states (node/app/services.py)
SERVICE_STOPPED = "stopped"
PROCESSING_POLICY = "processing"  # the policy name of a plain job (job.submit names none)

JOB_SEED_TAG = "metanode/job-seed/v1"


def job_seed(block_seed: bytes, job_id: bytes) -> bytes:
    """The job's seed: ``H("metanode/job-seed/v1", block_seed || job_id)``, where
    ``block_seed`` is the scheduling block's VRF seed (``BlockHeader.seed``): one
    value per height whatever the proposer puts in the block (docs/blocks.md)."""
    return hash_tagged(JOB_SEED_TAG, block_seed + job_id)


def job_clock(timestamp_ms: int) -> int:
    """The job's logical clock (seconds): the scheduling block's time."""
    return timestamp_ms // 1000


@dataclass(frozen=True)
class Assignment:
    """A job given to a processing node by this block (one per node)."""

    job_id: bytes
    node_key: bytes
    peer_id: str
    attempt: int
    deadline: int  # last height at which the node's result may be committed


@dataclass(frozen=True)
class JobFinished:
    """A job that reached a final state in this block."""

    job_id: bytes
    state: str
    reason: str | None


@dataclass(frozen=True)
class Rejection:
    """A committed transaction the state refused: it changed nothing."""

    index: int  # position in the block
    tx_hash: bytes
    tx_type: str
    reason: str


@dataclass(frozen=True)
class ReceiptBody:
    """An unsigned ``job.schedule`` / ``job.verdict`` / ``service.placement`` receipt body this block implies.

    It is a *decision* of the chain (node/app/decisions.py): the state records
    it, and one scheduler node attests it by signing it
    (``ReceiptIssuer.issue(kind, height=<a finalised height at least the
    block's>, subject=subject, fields=fields)``) in a ``receipts.batch`` of
    attestations; the chain refuses any other receipt of these kinds.
    """

    kind: str
    subject: bytes  # the job id (the service id for service.placement)
    fields: dict[str, Any]


@dataclass
class BlockEffects:
    """Everything one applied block changed that a shell may act on.

    ``receipts`` are the receipts that entered the chain in this block, in
    the order they must be appended to the receipt log.
    """

    height: int
    block_hash: bytes
    assignments: list[Assignment] = field(default_factory=list)
    finished: list[JobFinished] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    receipt_bodies: list[ReceiptBody] = field(default_factory=list)

    @property
    def receipt_ids(self) -> list[bytes]:
        return [receipt.id for receipt in self.receipts]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (hex digests), for logs and RPC answers."""
        return {
            "height": self.height,
            "block_hash": to_hex(self.block_hash),
            "assignments": [
                {"job": to_hex(a.job_id), "node": a.peer_id, "attempt": a.attempt, "deadline": a.deadline}
                for a in self.assignments
            ],
            "finished": [
                {"job": to_hex(f.job_id), "state": f.state, "reason": f.reason} for f in self.finished
            ],
            "rejected": [
                {"index": r.index, "tx": to_hex(r.tx_hash), "type": r.tx_type, "reason": r.reason}
                for r in self.rejected
            ],
            "receipts": [to_hex(receipt_id) for receipt_id in self.receipt_ids],
        }


@dataclass
class BlockContext:
    """The block being applied (internal to the state machine)."""

    height: int
    block_hash: bytes
    timestamp_ms: int
    seed: bytes  # the block's VRF seed (BlockHeader.seed)
    effects: BlockEffects
    # Jobs an assignee declined in this block (job.decline), with the last note
    # given for each, in transaction order: settled after the block's transactions.
    declines: dict[bytes, str] = field(default_factory=dict)
    # (job id, node key) of every job.decline applied in this block, in
    # transaction order: a placed node that declines a service run is replaced.
    declined_by: list[tuple[bytes, bytes]] = field(default_factory=list)
    # (tenant, dataset name) given a new latest version in this block (on_new_version triggers).
    new_versions: set[tuple[bytes, str]] = field(default_factory=set)
    # What this block's service transactions did, by service id: "deploy" | "scale" | "stop" (the last one).
    service_actions: dict[bytes, str] = field(default_factory=dict)
    # Placement moves those transactions made (service.stop clears them): (from node, to node).
    service_moves: dict[bytes, list[tuple[bytes | None, bytes | None]]] = field(default_factory=dict)

    @classmethod
    def start(cls, height: int, block_hash: bytes, timestamp_ms: int, seed: bytes) -> "BlockContext":
        return cls(height, block_hash, timestamp_ms, seed, BlockEffects(height, block_hash))

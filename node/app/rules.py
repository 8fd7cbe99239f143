"""Chain rules: the constants every node must share to reach the same state.

They bound payloads (checked by the transaction hooks) and drive the
scheduler (attempts, deadlines, exclusion after a missed deadline). A node
running other rules would compute another state from the same blocks, so the
state machine records the rules' digest with its tables and refuses to open a
state built under different rules (rebuild it from the blocks instead).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from node.base.codec import hash_value

RULES_TAG = "metanode/state-rules/v1"
REPLICATION_LIMIT = 8  # the payload schema's bound on r; rules may only lower it


@dataclass(frozen=True)
class ChainRules:
    """Consensus-critical constants of the job state machine and scheduler."""

    max_replication: int = REPLICATION_LIMIT  # the policy bound on a job's r
    max_attempts: int = 3  # assignment rounds per job (the first one included)
    min_deadline_blocks: int = 2
    max_deadline_blocks: int = 10_000
    exclusion_blocks: int = 20  # a node that missed a deadline gets no new job for this many blocks
    max_capacity: int = 64  # declared processing slots of one node (its rendezvous weight)
    max_inputs: int = 16  # datasets per job
    max_query_bytes: int = 16 * 1024  # SQL text of an sql job (UTF-8)
    max_batch_receipts: int = 64  # envelopes in one receipts.batch

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if type(value) is not int or value < 1:
                raise ValueError(f"chain rule {name} must be a positive integer, got {value!r}")
        if self.max_replication > REPLICATION_LIMIT:
            raise ValueError(f"chain rule max_replication may not exceed {REPLICATION_LIMIT}")
        if self.min_deadline_blocks > self.max_deadline_blocks:
            raise ValueError("chain rule min_deadline_blocks exceeds max_deadline_blocks")

    def digest(self) -> bytes:
        """A digest of every rule (stored with the state to detect a mismatch)."""
        return hash_value(RULES_TAG, asdict(self))


DEFAULT_RULES = ChainRules()

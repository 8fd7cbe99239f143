"""Chain rules: the constants every node must share to reach the same state.

They bound payloads (checked by the transaction hooks) and drive the
scheduler (attempts, deadlines, exclusion after a missed deadline). A node
running other rules would compute another state from the same blocks, so the
rules come from the genesis file (its ``[rules]`` table, in the genesis hash
when it changes a default: :meth:`ChainRules.from_genesis`), and the state
machine records the rules' digest with its tables and refuses to open a
state built under different rules (rebuild it from the blocks instead).

The rules' names, defaults and ranges are declared once, in
node/consensus/genesis_rules.py's :data:`~node.consensus.genesis_rules.RULES`
(the genesis validates them there, below this layer); this class gives them
their types and meaning here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from node.base.codec import hash_value
from node.consensus.genesis_rules import REPLICATION_LIMIT, RULES, rules_inconsistency

if TYPE_CHECKING:
    from node.consensus.genesis import Genesis

RULES_TAG = "metanode/state-rules/v1"
__all__ = ["DEFAULT_RULES", "LOWER_BOUND_RULES", "NEW_CHAIN_RULES", "REPLICATION_LIMIT", "RULES_TAG", "WIDEST_RULES",
           "ChainRules"]


@dataclass(frozen=True)
class ChainRules:
    """Consensus-critical constants of the job state machine and scheduler."""

    max_replication: int = RULES["max_replication"].default  # the policy bound on a job's r
    max_attempts: int = RULES["max_attempts"].default  # assignment rounds per job (the first one included)
    min_deadline_blocks: int = RULES["min_deadline_blocks"].default
    max_deadline_blocks: int = RULES["max_deadline_blocks"].default
    exclusion_blocks: int = RULES["exclusion_blocks"].default  # a node that missed a deadline gets no new job for this many blocks
    max_capacity: int = RULES["max_capacity"].default  # declared processing slots of one node (its rendezvous weight)
    max_inputs: int = RULES["max_inputs"].default  # datasets per job
    max_query_bytes: int = RULES["max_query_bytes"].default  # SQL text of an sql job (UTF-8)
    max_batch_receipts: int = RULES["max_batch_receipts"].default  # envelopes in one receipts.batch
    max_services: int = RULES["max_services"].default  # active services per tenant
    min_service_interval: int = RULES["min_service_interval"].default  # shortest every_blocks trigger
    ack_blocks: int = RULES["ack_blocks"].default  # an unacknowledged assignment is missed this many blocks after it (0: off)
    attest_once: int = RULES["attest_once"].default  # 1: one attestation per scheduler decision (node/app/decisions.py)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            rule = RULES[name]
            if type(value) is not int or not rule.low <= value <= rule.high:
                raise ValueError(f"chain rule {name} must be an integer in {rule.low}..{rule.high}, got {value!r}")
        problem = rules_inconsistency(asdict(self))
        if problem is not None:
            name, must_be = problem
            raise ValueError(f"chain rule {name} must be {must_be}, got {getattr(self, name)}")

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> ChainRules:
        """The rules of the chain ``genesis`` starts (its ``[rules]`` table, defaults for
        the rules it leaves out). The genesis validated them already."""
        return cls(**genesis.rules)

    def digest(self) -> bytes:
        """A digest of every rule (stored with the state to detect a mismatch)."""
        return hash_value(RULES_TAG, asdict(self))

    def values(self) -> dict[str, int]:
        """Every rule by name, in :data:`RULES` order."""
        return asdict(self)


if tuple(f.name for f in fields(ChainRules)) != tuple(RULES):  # a rule added on one side only
    raise ImportError("node.app.rules.ChainRules and node.consensus.genesis_rules.RULES name different rules")

DEFAULT_RULES = ChainRules()

NEW_CHAIN_RULES: dict[str, int] = {"ack_blocks": 6, "attest_once": 1}
"""Rules a new chain's genesis sets explicitly (``metanode genesis init``, the
testnet): their defaults keep older chains' behaviour and hash, but a new chain
wants them. ``ack_blocks = 6``: an assignee that has not acknowledged its
assignment 6 blocks after it is replaced, instead of at the job's deadline.
Six, not fewer: with a least block interval below the period
(``min_block_interval_ms``) blocks come faster while transactions wait, and a
busy but live node must still get its acknowledgement in (6 x 250 ms on the
testnet; 6 x the period, 3 s there, when the chain is idle). ``attest_once =
1``: each scheduler decision is attested by one receipt, and a batch carrying
any other job.schedule, job.verdict or service.placement receipt is refused and
left out of the receipt log (node/app/decisions.py)."""

# The rules a payload must be at least (the others bound it from above): a vote
# widens these by lowering them.
LOWER_BOUND_RULES = frozenset({"min_deadline_blocks", "min_service_interval"})

WIDEST_RULES = ChainRules(**{name: rule.low if name in LOWER_BOUND_RULES else rule.high
                             for name, rule in RULES.items()})
"""The loosest payload bounds a vote could ever set (each rule at the end of its
range that accepts the most payloads). The checks that cannot know at which
height a transaction will be applied (the mempool's payload hooks, the receipts
a block carries) use these; the state machine then refuses, with a recorded
reason, a transaction that breaks the rule in force at its block. (Only the
payload bounds matter here: ``max_attempts`` and ``exclusion_blocks`` bound no
payload.)"""

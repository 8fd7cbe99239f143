"""The chain rules a genesis may set: their names, defaults and ranges.

A genesis's ``[rules]`` table (node/consensus/genesis.py, docs/genesis.md)
sets some of :data:`RULES`; each rule left out takes its default. The rules
live here, below the application layer that gives them meaning
(``ChainRules.from_genesis`` in node/app/rules.py builds the state machine's
rules from a genesis), so the genesis can validate them without importing
upwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple


class Rule(NamedTuple):
    """One chain rule: its value when the genesis does not set it, and the values it may take."""

    default: int
    low: int
    high: int
    meaning: str


REPLICATION_LIMIT = 8  # the payload schema's bound on a job's r; the max_replication rule may only lower it
# The largest transaction (node/consensus/tx.py MAX_TX_BYTES): an SQL text longer than that never fits in one.
_TX_BYTES = 64 * 1024

# Every field of node/app/rules.py's ChainRules, in its order. The upper bounds keep
# each rule where the code that applies it stays cheap: max_capacity sizes the
# scheduler's exact integer comparisons (64 * 2 * max_capacity bits), the
# deadlines and the exclusion are block counts any chain reaches in days.
RULES: dict[str, Rule] = {
    "max_replication": Rule(REPLICATION_LIMIT, 1, REPLICATION_LIMIT, "the largest replication r a job may ask for"),
    "max_attempts": Rule(3, 1, 100, "assignment rounds per job, the first one included"),
    "min_deadline_blocks": Rule(2, 1, 1_000_000, "the shortest deadline a job may ask for, in blocks"),
    "max_deadline_blocks": Rule(10_000, 1, 1_000_000, "the longest deadline a job may ask for, in blocks"),
    "exclusion_blocks": Rule(20, 1, 1_000_000, "blocks a node that missed a deadline gets no new job"),
    "max_capacity": Rule(64, 1, 1024, "declared processing slots of one node (its rendezvous weight)"),
    "max_inputs": Rule(16, 1, 256, "datasets one job reads"),
    "max_query_bytes": Rule(16 * 1024, 1, _TX_BYTES, "bytes of an sql job's SQL text (UTF-8)"),
    "max_batch_receipts": Rule(64, 1, 1024, "receipt envelopes in one receipts.batch transaction"),
    "max_services": Rule(16, 1, 1024, "active services one tenant may run at once"),
    "min_service_interval": Rule(5, 1, 100_000, "the shortest every_blocks trigger a service may ask for, in blocks"),
    # 0 by default: a chain whose genesis predates the rule keeps its hash and its behaviour.
    "ack_blocks": Rule(0, 0, 1_000_000, "blocks an assignee has to acknowledge (job.ack) an assignment "
                                        "before it is missed and replaced (0: no acknowledgement required)"),
    # A boolean (0 or 1), 0 by default for the same reason: on a chain started before it every scheduler node
    # signed every decision, and its receipt log (sealed in its headers) holds all those receipts.
    "attest_once": Rule(0, 0, 1, "1: one attestation per scheduler decision (a receipts.batch with a job.schedule, "
                                 "job.verdict or service.placement receipt that attests no open decision is refused "
                                 "and left out of the receipt log); 0: every such receipt is kept"),
}


def rules_inconsistency(values: Mapping[str, int]) -> tuple[str, str] | None:
    """The first rule that contradicts another, as (its name, what it must be),
    or None. Each rule is in its own range already; this is what ranges cannot say."""
    shortest, longest = values["min_deadline_blocks"], values["max_deadline_blocks"]
    if shortest > longest:
        return "min_deadline_blocks", f"at most max_deadline_blocks ({longest})"
    return None


class GenesisRules(Mapping[str, int]):
    """The chain rules a genesis sets: every rule of :data:`RULES`, read-only
    (a genesis is immutable: its hash is cached)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, int] | None = None) -> None:
        given = dict(values or {})
        self._values = {name: given.pop(name, rule.default) for name, rule in RULES.items()}
        self._values.update(given)  # unknown names stay, for the genesis's validation to name them

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        return f"GenesisRules({self.changed()!r})"

    def changed(self) -> dict[str, int]:
        """The rules whose value is not the default (what the genesis hash covers)."""
        return {name: value for name, value in self._values.items()
                if name not in RULES or value != RULES[name].default}

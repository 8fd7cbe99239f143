"""Chain rule changes by vote: which rules are in force at which height.

The genesis's ``[rules]`` table (node/app/rules.py) is where a chain starts.
A governance proposal ``set_rule`` (:mod:`node.app.governance`) changes one
rule: ``name`` (a rule of :data:`~node.consensus.genesis_rules.RULES`), ``value``
(an integer in that rule's range) and, optionally, ``from_height``. Executed
while block ``H`` is applied, it sets the rule from height
``max(from_height, H + ACTIVATION_DELAY)`` on: the default and the minimum is
``H + 2``, as for a validator change (the rules of every height up to the
last applied + 2 are then known, and a block never changes its own rules or
its successor's). A ``from_height`` that has passed by the time the proposal
executes takes effect at ``H + 2``.

Stored in ``state_rule_changes``: one row per (``from_height``, ``name``)
with the ``value``, the proposal and the height that executed it. A later
change of the same rule from the same height replaces the row (the later
executed wins); a change at a height where the schedule holds later changes
of other rules is applied under them (each rule keeps its own latest value).

A change is refused (the proposal, a vote that would execute it, or the
carrying of its votes to a new validator set) when, at its activation height,
the rule already has that value, or when the rules would contradict each
other (``min_deadline_blocks`` above ``max_deadline_blocks``) at its
activation height or at any later height the schedule changes a rule. The
name and the range are checked by the payload schema (stateless).

:class:`RuleSchedule` keeps the rules of every height in memory (a few
entries): the state machine asks for them at every block, and the answer must
come from committed state alone. It is reloaded after each block that
executed a change, and after a reset.
"""

from __future__ import annotations

import bisect
from typing import Any

import duckdb

from node.app.fields import MAX_UINT, integer, type_name
from node.app.rules import ChainRules
from node.base.codec import to_hex
from node.consensus.genesis_rules import RULES, rules_inconsistency
from node.consensus.tx import PayloadError
from node.consensus.validators import ACTIVATION_DELAY

SET_RULE = "set_rule"
SET_RULE_FIELDS = ("name", "value")  # required, besides "kind"
SET_RULE_OPTIONAL = ("from_height",)

Change = tuple[int, str, int]  # (from_height, name, value)


def activation_height(executed_height: int, from_height: int | None) -> int:
    """The first block whose rules a change executed in block ``executed_height`` sets."""
    earliest = executed_height + ACTIVATION_DELAY
    return earliest if from_height is None else max(from_height, earliest)


def check_set_rule_fields(action: dict[str, Any]) -> None:
    """The stateless checks of a ``set_rule`` action (its fields are present):
    a known rule, a value in its range, a height. Raises PayloadError naming the field."""
    name = action["name"]
    if not isinstance(name, str) or name not in RULES:
        raise PayloadError(f"action.name: {name!r:.80} is not a chain rule (one of {', '.join(RULES)})")
    rule = RULES[name]
    value = action["value"]
    if type(value) is not int:
        raise PayloadError(f"action.value: must be an integer, got {type_name(value)}")
    if not rule.low <= value <= rule.high:
        raise PayloadError(f"action.value: {name} must be in {rule.low}..{rule.high}, got {value}")
    if "from_height" in action:
        integer(action["from_height"], "action.from_height", 0, MAX_UINT)


def stored_changes(conn: duckdb.DuckDBPyConnection) -> list[Change]:
    """Every stored change, by activation height then rule name."""
    return [(int(start), str(name), int(value)) for start, name, value in conn.execute(
        "SELECT from_height, name, value FROM state_rule_changes ORDER BY from_height, name"
    ).fetchall()]


def values_at(genesis: ChainRules, changes: list[Change], height: int) -> dict[str, int]:
    """The rules in force at ``height``: the genesis's, then ``changes`` (sorted) up to it."""
    values = genesis.values()
    for start, name, value in changes:
        if start > height:
            break
        values[name] = value
    return values


class RuleSchedule:
    """The rules of every height: the genesis rules, then each executed change
    from its activation height. Deterministic: read from the state tables only
    (:meth:`load`)."""

    def __init__(self, genesis: ChainRules) -> None:
        self.genesis = genesis
        self._starts: list[int] = [0]
        self._rules: list[ChainRules] = [genesis]

    def load(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Re-read the stored changes (after a block that executed one, or a reset)."""
        changes = stored_changes(conn)
        starts, rules = [0], [self.genesis]
        for start in sorted({start for start, _, _ in changes if start > 0}):
            # Valid by construction: each change was checked against every later height when executed.
            rules.append(ChainRules(**values_at(self.genesis, changes, start)))
            starts.append(start)
        self._starts, self._rules = starts, rules

    def rules_at(self, height: int) -> ChainRules:
        """The rules in force at block ``height``. Exact up to the last applied
        height + ``ACTIVATION_DELAY``; beyond, later blocks may still schedule changes."""
        if type(height) is not int or height < 0:
            raise ValueError(f"height must be a non-negative integer, got {height!r}")
        return self._rules[bisect.bisect_right(self._starts, height) - 1]

    def entries(self) -> list[tuple[int, ChainRules]]:
        """``(from_height, rules)`` of every stretch of heights, oldest first; the first is ``(0, genesis rules)``."""
        return list(zip(self._starts, self._rules))


def change_problem(conn: duckdb.DuckDBPyConnection, genesis: ChainRules, height: int,
                   name: str, value: int, from_height: int | None) -> str | None:
    """Why executing ``set_rule`` of ``name`` to ``value`` (asked from
    ``from_height``) in block ``height`` is refused, or None. Counts every
    change executed before, this block's earlier ones included."""
    start = activation_height(height, from_height)
    changes = stored_changes(conn)
    if values_at(genesis, changes, start)[name] == value:
        return f"action.value: {name} is already {value} at height {start}"
    changed = sorted([c for c in changes if (c[0], c[1]) != (start, name)] + [(start, name, value)])
    for boundary in sorted({start} | {c[0] for c in changes if c[0] > start}):
        values = values_at(genesis, changed, boundary)
        problem = rules_inconsistency(values)
        if problem is not None:
            other, must_be = problem
            return (f"action.value: {name} = {value} from height {start} makes the rules inconsistent at height "
                    f"{boundary}: {other} must be {must_be}, got {values[other]}")
    return None


def record_change(conn: duckdb.DuckDBPyConnection, executed_height: int, proposal_id: bytes,
                  name: str, value: int, from_height: int | None) -> int:
    """Store an executed change; return the height it takes effect from."""
    start = activation_height(executed_height, from_height)
    conn.execute("INSERT OR REPLACE INTO state_rule_changes VALUES (?, ?, ?, ?, ?)",
                 [start, name, value, proposal_id, executed_height])
    return start


def changes_view(conn: duckdb.DuckDBPyConnection, genesis: ChainRules) -> list[dict[str, Any]]:
    """Every executed change, oldest activation first: the rule, its new and
    previous value, the height it takes effect from, the block that executed
    it and its proposal."""
    changes = stored_changes(conn)
    rows = conn.execute(
        "SELECT from_height, name, value, executed_height, proposal_id FROM state_rule_changes "
        "ORDER BY from_height, name"
    ).fetchall()
    return [{
        "from_height": int(start), "name": str(name), "value": int(value),
        "previous": values_at(genesis, changes, int(start) - 1)[str(name)],
        "executed_height": int(executed), "proposal_id": to_hex(bytes(proposal_id)),
    } for start, name, value, executed, proposal_id in rows]


def rule_ranges() -> dict[str, dict[str, int]]:
    """Each rule's default and range (what a ``set_rule`` may set), by name."""
    return {name: {"default": rule.default, "low": rule.low, "high": rule.high} for name, rule in RULES.items()}

"""The simulated application: what each simulated node's chain means.

Like the daemon's application (node/app), it derives the validator set of
every height from the node's *own* finalised chain, and from nothing else:
no node asks the world or another node which set is in force. A transaction
is opaque bytes; the application admits those that start with ``ok/`` and
gives meaning to one kind of them, a validator-set change::

    ok/set/add/<member>/<serial>      ok/set/remove/<member>/<serial>

``member`` is an identity index (``sim-validator-<member>``), ``serial`` the
change's place in the scenario (so two changes never share bytes). A change
executed while applying block H decides blocks from ``H + ACTIVATION_DELAY``
on (contract C1), building on the latest set already scheduled, as
``state_validator_sets`` does in node/app. Refused, so a no-op, as there: an
add of a key that is (or will be) a validator, a remove of one that is not
(or will not be), a remove that would leave no validator, a change applied
before.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from node.consensus.block import Block, BlockHeader
from node.consensus.validators import ACTIVATION_DELAY, ValidatorSet

ADMITTED = b"ok/"  # the simulated application admits only transactions with this prefix
SET_CHANGE_PREFIX = b"ok/set/"


def admitted(header: BlockHeader, transactions: Sequence[bytes]) -> bool:
    """The application's proposal check: every transaction is admissible."""
    return all(tx.startswith(ADMITTED) for tx in transactions)


def set_change_tx(action: str, member: int, serial: int) -> bytes:
    """The transaction that asks for one validator-set change."""
    if action not in ("add", "remove"):
        raise ValueError(f"a set change adds or removes, not {action!r}")
    return b"ok/set/%s/%d/%d" % (action.encode(), member, serial)


def parse_set_change(tx: bytes) -> tuple[str, int] | None:
    """``(action, member)`` of a set-change transaction, None for any other
    (a malformed one included: it is an ordinary admitted transaction)."""
    if not tx.startswith(SET_CHANGE_PREFIX):
        return None
    parts = tx[len(SET_CHANGE_PREFIX):].split(b"/")
    if len(parts) != 3 or parts[0] not in (b"add", b"remove") or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0].decode(), int(parts[1])


class SimApplication:
    """One simulated node's application state: the validator-set history its
    finalised chain implies."""

    def __init__(self, genesis_set: ValidatorSet, member_keys: Sequence[bytes]) -> None:
        self._member_keys = tuple(member_keys)
        self._from_heights: list[int] = [0]
        self._sets: list[ValidatorSet] = [genesis_set]
        self.included: set[bytes] = set()  # set-change transactions seen in a block (executed or refused)
        self.applied_height = 0
        self.executed_at: dict[bytes, int] = {}  # change tx -> height of the block that executed it
        self.queries_beyond = 0  # validator_set_at asked past applied + ACTIVATION_DELAY

    def apply_final_block(self, block: Block) -> None:
        """Apply the next finalised block (in height order, once each)."""
        if block.height != self.applied_height + 1:
            raise ValueError(f"block {block.height} applied after {self.applied_height}")
        keys = set(self._sets[-1].keys)
        changed = False
        for tx in block.transactions:
            change = parse_set_change(tx)
            if change is None or tx in self.included:
                continue
            self.included.add(tx)
            action, member = change
            if member >= len(self._member_keys):
                continue
            key = self._member_keys[member]
            if action == "add" and key not in keys:
                keys.add(key)
            elif action == "remove" and key in keys and len(keys) > 1:
                keys.discard(key)
            else:
                continue
            changed = True
            self.executed_at[tx] = block.height
        self.applied_height = block.height
        if changed:
            self._from_heights.append(block.height + ACTIVATION_DELAY)
            self._sets.append(ValidatorSet(keys))

    def validator_set_at(self, height: int) -> ValidatorSet:
        """The set that decides block ``height``: defined up to
        ``applied_height + ACTIVATION_DELAY``; past that the latest scheduled
        set (a provisional answer, counted in ``queries_beyond``)."""
        if height > self.applied_height + ACTIVATION_DELAY:
            self.queries_beyond += 1
        return self._sets[bisect.bisect_right(self._from_heights, height) - 1]

    def history(self) -> list[tuple[int, ValidatorSet]]:
        """(from_height, set), oldest first; the first entry is (0, genesis set)."""
        return list(zip(self._from_heights, self._sets))

    def last_height_before(self, key: bytes, height: int) -> int | None:
        """The greatest height below ``height`` that ``key`` decided as a
        validator, None if it decided none (for the checker's messages)."""
        last = None
        ends = self._from_heights[1:] + [height]
        for start, end, validators in zip(self._from_heights, ends, self._sets):
            end = min(end, height)
            if start < end and key in validators:
                last = end - 1
        return last

    def decides_at_or_after(self, key: bytes, height: int) -> bool:
        """Whether ``key`` is in the set of ``height`` or of any later height
        scheduled so far."""
        ends = self._from_heights[1:] + [height + 1]
        return any(key in validators for end, validators in zip(ends, self._sets) if end > height)

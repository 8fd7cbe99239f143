"""What the committed state is known NOT to hold, carried by the state machine
(node/app/machine.py) from one committed block to the next so the next block
may skip per-block queries that would find nothing; the working state
(node/app/working.py) derives the next block's hints from this one's."""

from __future__ import annotations

from dataclasses import dataclass

from node.app.state_rows import AssignmentRow

NO_EXPIRY = 2**63 - 1  # a floor when nothing pending can expire (no assignment, no proposal)


@dataclass(frozen=True)
class StateHints:
    """What the committed state is known NOT to hold, so a block may skip a
    per-block query that would find nothing (an idle chain then applies a block
    without reading the job tables). Bounds only: the state a block leaves is
    the same with or without them. Kept in memory by the state machine, carried
    from one committed block to the next; the default knows nothing."""

    expiry_floor: int | None = None  # no pending assignment expires (deadline, unacked ack_deadline) below it
    open_slots: bool = True  # an active job may have open slots
    active_services: bool = True  # a service may be active
    proposal_floor: int | None = None  # no pending governance proposal expires below it


def assignment_expiry(a: AssignmentRow) -> int:
    """The height at which a pending assignment is missed unless it delivers (or acknowledges) first."""
    return a.deadline if a.ack_deadline is None or a.acked_height is not None else min(a.deadline, a.ack_deadline)

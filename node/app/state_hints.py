"""What the committed state is known NOT to hold (and a few small answers it
holds), carried by the state machine (node/app/machine.py) from one committed
block to the next so the next block may skip per-block queries; the working
state (node/app/working.py) derives the next block's hints from this one's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.app.model import ACTIVE_STATES
from node.app.state_rows import JOB_COLUMNS, AssignmentRow

NO_EXPIRY = 2**63 - 1  # a floor when nothing pending can expire (no assignment, no proposal)

MAX_KEPT_JOBS = 1024  # active jobs kept in memory from block to block (StateHints.jobs)
_STATE, _SEQ = JOB_COLUMNS.index("state"), JOB_COLUMNS.index("seq")

# (table, key) -> a row's values as the table holds them (row_writes.Stored)
StoredRows = Mapping[tuple[str, Any], tuple[Any, ...]]

# A job as the tables hold it: its state_jobs values, its assignments' and results' values (by node key).
KeptJob = tuple[tuple[Any, ...], tuple[tuple[Any, ...], ...], tuple[tuple[Any, ...], ...]]


@dataclass(frozen=True)
class StateHints:
    """What the committed state is known NOT to hold, so a block may skip a
    per-block query that would find nothing (an idle chain then applies a block
    without reading the job tables), and a few small answers it holds, so a
    block need not ask for them (its height, the next job sequence number,
    the registered nodes). The state a block leaves is the same with or without
    them. Kept in memory by the state machine, carried from one committed
    block to the next (a block rolled back leaves them as they were); the
    default knows nothing."""

    expiry_floor: int | None = None  # no pending assignment expires (deadline, unacked ack_deadline) below it
    open_slots: bool = True  # an active job may have open slots
    active_services: bool = True  # a service may be active
    proposal_floor: int | None = None  # no pending governance proposal expires below it
    # Small answers known exactly (None: not known), so a block need not read them:
    height: int | None = None  # the state's height (state_height), once a block is applied
    next_seq: int | None = None  # max(state_jobs.seq) + 1, 1 with no job
    nodes: tuple[tuple[Any, ...], ...] | None = None  # every state_nodes row's values, by node key
    # Active jobs by id, whole (a job.result, ack or decline then reads no table); one
    # missing is read from the tables.
    jobs: Mapping[bytes, KeptJob] | None = field(default=None, compare=False)


def assignment_expiry(a: AssignmentRow) -> int:
    """The height at which a pending assignment is missed unless it delivers (or acknowledges) first."""
    return a.deadline if a.ack_deadline is None or a.acked_height is not None else min(a.deadline, a.ack_deadline)


# -- the hints a block leaves, from the values the tables hold after its flush --------------
def jobs_after(kept_before: Mapping[bytes, KeptJob], loaded: Iterable[bytes], here: set[bytes],
               stored: StoredRows) -> dict[bytes, KeptJob]:
    """The active jobs of :attr:`StateHints.jobs` after a block: those kept
    before and not ``loaded`` by it (so not written: as they were), and those
    it held (``here``), as written or read (``stored``), unless final now."""
    loaded = set(loaded)
    kept = {job_id: entry for job_id, entry in kept_before.items() if job_id not in loaded}
    children: dict[bytes, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]] = {job_id: ([], []) for job_id in here}
    for (table, key), values in stored.items():
        if table == "state_assignments" and key[0] in children:
            children[key[0]][0].append(values)
        elif table == "state_results" and key[0] in children:
            children[key[0]][1].append(values)
    for job_id in here:
        row = stored.get(("state_jobs", job_id))  # every job held by the block was read or written
        if row is None or row[_STATE] not in ACTIVE_STATES:
            continue
        assignments, results = children[job_id]
        kept[job_id] = (row, tuple(sorted(assignments, key=_node_key)), tuple(sorted(results, key=_node_key)))
    if len(kept) > MAX_KEPT_JOBS:  # a backlog: the newest (by seq) only; the others are read when needed
        newest = sorted(kept, key=lambda job_id: kept[job_id][0][_SEQ])[-MAX_KEPT_JOBS:]
        kept = {job_id: kept[job_id] for job_id in newest}
    return kept


def seq_after(before: int | None, stored: StoredRows) -> int | None:
    """max(seq) + 1 of the jobs the table holds after a block, from ``before``
    (the same before it; None: not known) and the job rows it read or wrote."""
    if before is None:
        return None
    # Every job row the block wrote (a job's seq never changes once written).
    written = [values[_SEQ] + 1 for (table, _), values in stored.items() if table == "state_jobs"]
    return max([before, *written])


def nodes_after(stored: StoredRows) -> tuple[tuple[Any, ...], ...]:
    """Every state_nodes row's values after a block that read the whole table
    (every row written since is in ``stored``), by key."""
    return tuple(values for (table, _), values in sorted(
        ((k, v) for k, v in stored.items() if k[0] == "state_nodes"), key=lambda kv: kv[0][1]))


def _node_key(values: tuple[Any, ...]) -> Any:
    return values[1]  # an assignment's or result's (job_id, node_key, ...)

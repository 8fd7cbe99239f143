"""The state tables' rows as Python objects: one dataclass per ``state_``
table the working state (node/app/working.py) loads and writes back, and the
mapping between an object and its table row (column names in table order,
values as DuckDB takes and gives them).

A job and a service carry their child rows (assignments and results,
placements) as attributes that are not columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, field, fields
from typing import Any


@dataclass
class NodeRow:
    node_key: bytes
    peer_id: str
    moniker: str
    roles: str  # comma-joined, sorted
    capacity: int
    registered_height: int
    updated_height: int
    delivered: int
    missed: int
    last_missed_height: int | None  # last missed deadline, or last job.decline for a local fault
    declined: int = 0  # assignments it declined (job.decline)


@dataclass
class AssignmentRow:
    job_id: bytes
    node_key: bytes
    attempt: int
    assigned_height: int
    deadline: int
    status: str
    note: str | None = None  # why the node declined it ("<reason>: <detail>"), or missed it for want of an ack
    acked_height: int | None = None  # the block of its job.ack (or of its result or decline)
    ack_deadline: int | None = None  # unacknowledged at this height, it is missed (None: no ack required)


@dataclass
class ResultRow:
    job_id: bytes
    node_key: bytes
    height: int
    tx_hash: bytes
    receipt_id: bytes
    result: bytes
    witness: bytes
    exit: int
    error: str | None = None  # what the node reported when the job failed (its claim, not checked)


@dataclass
class JobRow:
    job_id: bytes
    seq: int
    tenant: bytes
    type: str
    inputs: bytes  # CBOR {input name: digest}
    params: bytes  # CBOR map
    replication: int
    deadline_blocks: int
    state: str
    reason: str | None
    attempt: int
    submitted_height: int
    scheduled_height: int | None = None
    schedule_block: bytes | None = None
    seed: bytes | None = None
    clock: int | None = None
    finished_height: int | None = None
    service_id: bytes | None = None  # the service a run belongs to (None: a plain job.submit job)
    run: int | None = None  # the run number within its service (1, 2, 3...)
    policy: str = "processing"  # the DockLock policy name the assignees run it under
    # Not columns: the job's rows in state_assignments / state_results, by node key.
    assignments: dict[bytes, AssignmentRow] = field(default_factory=dict, compare=False)
    results: dict[bytes, ResultRow] = field(default_factory=dict, compare=False)


@dataclass
class DecisionRow:
    decision_id: bytes
    kind: str  # job.schedule | job.verdict | service.placement
    subject: bytes
    height: int  # the block that first implied it
    fields: bytes  # the receipt's kind fields, canonical CBOR
    attested: bytes | None  # the receipt that attested it (None: not yet)


@dataclass
class PlacementRow:
    service_id: bytes
    slot: int  # 0, 1, 2...: the placement's order
    node_key: bytes
    since_height: int  # the block that placed the node in this slot


@dataclass
class ServiceRow:
    service_id: bytes
    tenant: bytes
    name: str
    type: str
    inputs: bytes  # CBOR {input name: dataset name}
    params: bytes  # CBOR map
    replicas: int
    policy: str
    on_new_version: bool
    every_blocks: int | None
    deadline_blocks: int
    state: str  # active | stopped
    deployed_height: int
    updated_height: int
    runs: int  # runs started (the last run's number)
    last_inputs: bytes | None  # CBOR {input name: digest} of the last run
    verified_job: bytes | None = None
    verified_run: int | None = None
    verified_height: int | None = None
    # Not a column: the rows in state_service_placements, in slot order.
    placements: list[PlacementRow] = field(default_factory=list, compare=False)


JOB_COLUMNS = tuple(f.name for f in fields(JobRow) if f.name not in ("assignments", "results"))
SERVICE_COLUMNS = tuple(f.name for f in fields(ServiceRow) if f.name != "placements")


def columns(row_type: type) -> tuple[str, ...]:
    """The table columns of ``row_type``, in table order."""
    if row_type is JobRow:
        return JOB_COLUMNS
    if row_type is ServiceRow:
        return SERVICE_COLUMNS
    return tuple(f.name for f in fields(row_type))


def bytes_row(values: Sequence[Any]) -> list[Any]:
    # DuckDB may hand BLOBs back as bytearray or memoryview.
    return [bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in values]


def row_values(row: Any) -> tuple[Any, ...]:
    """A row object's column values, in table order."""
    if isinstance(row, (JobRow, ServiceRow)):
        return tuple(getattr(row, name) for name in columns(type(row)))
    return astuple(row)


def placement_values(service: ServiceRow) -> tuple[tuple[Any, ...], ...]:
    """A service's placement rows' values, in slot order."""
    return tuple(row_values(p) for p in service.placements)

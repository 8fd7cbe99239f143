"""The rows one block reads and writes, held in memory between bulk queries.

DuckDB answers a point query or a one-row write in about a millisecond, so
applying transactions one SQL statement at a time costs tens of
milliseconds per transaction. Instead, a block's transactions are parsed
first, every row they can touch is loaded in a few bulk queries
(:meth:`WorkingState.prefetch`), the transitions run on these Python
objects, and :meth:`WorkingState.flush` writes the changed rows back with
one upsert per table. A job is loaded whole: its row with its assignments
and results.

Everything happens inside the block's DuckDB transaction; the objects are
thrown away with the block, so a rollback leaves nothing stale behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, field, fields
from typing import Any

import duckdb

from node.app.model import PENDING
from node.app.policy import OPEN_GOVERNANCE, Governance
from node.app.rules import DEFAULT_RULES, ChainRules


@dataclass(frozen=True)
class Reads:
    """The stored rows one transaction's check and change may read (its type's
    ``reads`` hook says which), loaded in bulk with the rest of the block's."""

    datasets: tuple[tuple[bytes, bytes], ...] = ()  # (tenant, digest): whether the tenant registered it
    dataset_names: tuple[tuple[bytes, str], ...] = ()  # (tenant, name): its latest version and digest
    jobs: tuple[bytes, ...] = ()  # loaded whole: row, assignments, results
    receipts: tuple[bytes, ...] = ()  # whether each is on chain
    decisions: tuple[bytes, ...] = ()  # scheduler decisions by id (node/app/decisions.py)


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


_PRIMARY_KEYS = {
    "state_services": ("service_id",),
    "state_nodes": ("node_key",),
    "state_jobs": ("job_id",),
    "state_assignments": ("job_id", "node_key"),
    "state_results": ("job_id", "node_key"),
    "state_decisions": ("decision_id",),
}
_UNIQUE_COLUMNS = {"state_jobs": ("seq",)}  # UNIQUE besides the primary key
_JOB_COLUMNS = tuple(f.name for f in fields(JobRow) if f.name not in ("assignments", "results"))


_SERVICE_COLUMNS = tuple(f.name for f in fields(ServiceRow) if f.name != "placements")


def _columns(row_type: type) -> tuple[str, ...]:
    if row_type is JobRow:
        return _JOB_COLUMNS
    if row_type is ServiceRow:
        return _SERVICE_COLUMNS
    return tuple(f.name for f in fields(row_type))


def _bytes_row(values: Sequence[Any]) -> list[Any]:
    # DuckDB may hand BLOBs back as bytearray or memoryview.
    return [bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in values]


def _values(row: Any) -> tuple[Any, ...]:
    if isinstance(row, (JobRow, ServiceRow)):
        return tuple(getattr(row, name) for name in _columns(type(row)))
    return astuple(row)


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


class WorkingState:
    """Cached state rows of one block (or one pre-screened transaction)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, governance: Governance = OPEN_GOVERNANCE,
                 validators: tuple[bytes, ...] | None = None, height: int = 0, *,
                 rules: ChainRules = DEFAULT_RULES, genesis_rules: ChainRules | None = None,
                 hints: StateHints = StateHints()) -> None:
        self.conn = conn
        self.hints = hints  # of the committed state this block starts from
        # expire_deadlines ran: no assignment pending before this block and not due in it expires below this
        self.expiry_floor_after: int | None = None
        self.open_slots_after: bool | None = None  # schedule_jobs ran: whether a job keeps open slots
        # (table, key) -> the row's values as the table holds them (read, or written by flush)
        self._stored: dict[tuple[str, Any], tuple[Any, ...]] = {}
        self.height = height  # the block being applied (for a pre-screen: the next block)
        self.governance = governance  # genesis validators and admission policies (node/app/governance.py)
        # The validators of the block being applied (the state's set, node/app/validator_sets.py):
        # who proposes and votes in it, and whose votes count.
        self.validators: tuple[bytes, ...] = governance.validators if validators is None else validators
        self.validator_sets_changed = False  # this block executed a validator change
        # The rules in force at this block, and the genesis rules that the stored
        # changes apply to (node/app/rule_changes.py).
        self.rules = rules
        self.genesis_rules = rules if genesis_rules is None else genesis_rules
        self.rules_changed = False  # this block executed a rule change
        self._nodes: dict[bytes, NodeRow] | None = None
        self._jobs: dict[bytes, JobRow | None] = {}
        self._datasets: set[tuple[bytes, bytes]] = set()  # known to exist
        self._datasets_checked: set[tuple[bytes, bytes]] = set()
        # (tenant, name) -> (latest version, its digest), None when the name has none yet
        self._latest_versions: dict[tuple[bytes, str], tuple[int, bytes] | None] = {}
        self._receipts: set[bytes] = set()  # known to be on chain
        self._receipts_checked: set[bytes] = set()
        self._next_seq: int | None = None
        self._dirty_nodes: set[bytes] = set()
        self._dirty_jobs: set[bytes] = set()
        # Services (with their placements), by id; which tenants' and whether all
        # active ones are loaded. Few rows: loaded whole, on first use.
        self._services: dict[bytes, ServiceRow] = {}
        self._service_tenants: set[bytes] = set()
        self._active_services_loaded = False
        self._dirty_services: set[bytes] = set()
        # Scheduler decisions by id (None: known not to exist); which were added or attested here.
        self._decisions: dict[bytes, DecisionRow | None] = {}
        self._dirty_decisions: set[bytes] = set()
        self._unchecked_decisions: set[bytes] = set()  # added here without asking whether they existed
        self._schedulers: frozenset[bytes] | None = None
        self._inserts: dict[str, list[tuple[Any, ...]]] = {
            "state_datasets": [], "state_receipts": [], "state_rejections": []
        }

    # -- loading ---------------------------------------------------------------
    def prefetch(self, reads: Iterable[Reads]) -> None:
        """Load, in bulk, every row that these (parsed) transactions may read."""
        datasets: set[tuple[bytes, bytes]] = set()
        names: set[tuple[bytes, str]] = set()
        jobs: set[bytes] = set()
        receipts: set[bytes] = set()
        decisions: set[bytes] = set()
        for read in reads:
            datasets.update(read.datasets)
            names.update(read.dataset_names)
            jobs.update(read.jobs)
            receipts.update(read.receipts)
            decisions.update(read.decisions)
        self._load_datasets(datasets)
        self._load_latest_versions(names)
        self.load_jobs(jobs)
        self._load_receipts(receipts)
        self._load_decisions(decisions)

    def _load_decisions(self, ids: set[bytes]) -> None:
        wanted = sorted(ids - self._decisions.keys())
        if not wanted:
            return
        for decision_id in wanted:
            self._decisions[decision_id] = None
        for decision in self._stored_decisions(wanted):
            self._decisions[decision.decision_id] = decision

    def _stored_decisions(self, ids: list[bytes]) -> list[DecisionRow]:
        return [DecisionRow(*_bytes_row(row)) for row in self.conn.execute(
            f"SELECT {', '.join(_columns(DecisionRow))} FROM state_decisions WHERE decision_id IN (SELECT unnest(?))",
            [ids]).fetchall()]

    def _load_datasets(self, keys: set[tuple[bytes, bytes]]) -> None:
        keys -= self._datasets_checked
        if not keys:
            return
        tenants = sorted({t for t, _ in keys})
        digests = sorted({d for _, d in keys})
        for tenant, digest in self.conn.execute(
            "SELECT DISTINCT tenant, digest FROM state_datasets "
            "WHERE tenant IN (SELECT unnest(?)) AND digest IN (SELECT unnest(?))",
            [tenants, digests],
        ).fetchall():
            self._datasets.add((bytes(tenant), bytes(digest)))
        self._datasets_checked |= keys

    def _load_latest_versions(self, keys: set[tuple[bytes, str]]) -> None:
        keys = {key for key in keys if key not in self._latest_versions}
        if not keys:
            return
        found: dict[tuple[bytes, str], tuple[int, bytes]] = {}
        for tenant, name, version, digest in self.conn.execute(
            "SELECT tenant, name, max(version), arg_max(digest, version) FROM state_datasets "
            "WHERE tenant IN (SELECT unnest(?)) AND name IN (SELECT unnest(?)) GROUP BY tenant, name",
            [sorted({t for t, _ in keys}), sorted({n for _, n in keys})],
        ).fetchall():
            found[(bytes(tenant), name)] = (int(version), bytes(digest))
        for key in keys:  # the query's cross product may answer pairs nobody asked for
            self._latest_versions[key] = found.get(key)

    def _load_receipts(self, ids: set[bytes]) -> None:
        ids -= self._receipts_checked
        if not ids:
            return
        for (rid,) in self.conn.execute(
            "SELECT receipt_id FROM state_receipts WHERE receipt_id IN (SELECT unnest(?))", [sorted(ids)]
        ).fetchall():
            self._receipts.add(bytes(rid))
        self._receipts_checked |= ids

    def load_jobs(self, job_ids: Iterable[bytes]) -> None:
        """Load whole jobs (row, assignments, results) not loaded yet."""
        wanted = sorted(set(job_ids) - self._jobs.keys())
        if not wanted:
            return
        for job_id in wanted:
            self._jobs[job_id] = None
        rows = self.conn.execute(
            f"SELECT {', '.join(_JOB_COLUMNS)} FROM state_jobs WHERE job_id IN (SELECT unnest(?))", [wanted]
        ).fetchall()
        for row in rows:
            job = JobRow(*_bytes_row(row))
            self._jobs[job.job_id] = job
            self._stored[("state_jobs", job.job_id)] = _values(job)
        for table, row_type, attr in (
            ("state_assignments", AssignmentRow, "assignments"),
            ("state_results", ResultRow, "results"),
        ):
            for row in self.conn.execute(
                f"SELECT {', '.join(_columns(row_type))} FROM {table} WHERE job_id IN (SELECT unnest(?))",
                [wanted],
            ).fetchall():
                child = row_type(*_bytes_row(row))
                getattr(self._jobs[child.job_id], attr)[child.node_key] = child
                self._stored[(table, (child.job_id, child.node_key))] = _values(child)

    # -- reading and changing ----------------------------------------------------
    def job(self, job_id: bytes) -> JobRow | None:
        self.load_jobs([job_id])
        return self._jobs[job_id]

    def loaded_jobs(self) -> list[JobRow]:
        """Every job held in memory (loaded or added), in no particular order."""
        return [job for job in self._jobs.values() if job is not None]

    def add_job(self, job: JobRow) -> None:
        self._jobs[job.job_id] = job
        self._dirty_jobs.add(job.job_id)

    def touch_job(self, job: JobRow) -> None:
        """Mark a job (its row, assignments and results) for writing back."""
        self._dirty_jobs.add(job.job_id)

    def next_seq(self) -> int:
        if self._next_seq is None:
            row = self.conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM state_jobs").fetchone()
            assert row is not None  # an aggregate always answers one row
            self._next_seq = int(row[0])
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def nodes(self) -> dict[bytes, NodeRow]:
        """Every registered node, by key."""
        if self._nodes is None:
            self._nodes = {}
            for row in self.conn.execute(f"SELECT {', '.join(_columns(NodeRow))} FROM state_nodes").fetchall():
                node = NodeRow(*_bytes_row(row))
                self._nodes[node.node_key] = node
                self._stored[("state_nodes", node.node_key)] = _values(node)
        return self._nodes

    def touch_node(self, node: NodeRow) -> None:
        self.nodes()[node.node_key] = node
        self._dirty_nodes.add(node.node_key)

    def has_dataset(self, tenant: bytes, digest: bytes) -> bool:
        self._load_datasets({(tenant, digest)})
        return (tenant, digest) in self._datasets

    def latest_dataset(self, tenant: bytes, name: str) -> tuple[int, bytes] | None:
        """(version, digest) of the newest registration of ``name`` by
        ``tenant``, counting this block's earlier ones; None if there is none."""
        self._load_latest_versions({(tenant, name)})
        return self._latest_versions[(tenant, name)]

    def add_dataset(
        self, tenant: bytes, name: str, digest: bytes, size: int, fmt: str, height: int, tx_hash: bytes
    ) -> int:
        """Register ``digest`` as the next version of ``name``; return that version."""
        latest = self.latest_dataset(tenant, name)
        version = 1 if latest is None else latest[0] + 1
        self._latest_versions[(tenant, name)] = (version, digest)
        self._datasets.add((tenant, digest))
        self._inserts["state_datasets"].append((tenant, name, version, digest, size, fmt, height, tx_hash))
        return version

    def _load_services(self, where: str, args: list[Any]) -> None:
        rows = self.conn.execute(f"SELECT {', '.join(_SERVICE_COLUMNS)} FROM state_services WHERE {where}",
                                 args).fetchall()
        fresh = [ServiceRow(*_bytes_row(row)) for row in rows]
        fresh = [service for service in fresh if service.service_id not in self._services]  # memory wins
        if not fresh:
            return
        for service in fresh:
            self._services[service.service_id] = service
        for row in self.conn.execute(
            f"SELECT {', '.join(_columns(PlacementRow))} FROM state_service_placements "
            "WHERE service_id IN (SELECT unnest(?)) ORDER BY service_id, slot",
            [sorted(service.service_id for service in fresh)],
        ).fetchall():
            placement = PlacementRow(*_bytes_row(row))
            self._services[placement.service_id].placements.append(placement)

    def services_of(self, tenant: bytes) -> list[ServiceRow]:
        """Every service of ``tenant`` (active or stopped), by name."""
        if tenant not in self._service_tenants:
            self._load_services("tenant = ?", [tenant])
            self._service_tenants.add(tenant)
        return sorted((s for s in self._services.values() if s.tenant == tenant), key=lambda s: s.name)

    def service(self, service_id: bytes) -> ServiceRow | None:
        if service_id not in self._services:
            self._load_services("service_id = ?", [service_id])
        return self._services.get(service_id)

    def active_services(self) -> list[ServiceRow]:
        """Every active service, by service id."""
        if not self._active_services_loaded:
            if self.hints.active_services:
                self._load_services("state = 'active'", [])
            self._active_services_loaded = True
        return sorted((s for s in self._services.values() if s.state == "active"), key=lambda s: s.service_id)

    def touch_service(self, service: ServiceRow) -> None:
        """Add or mark a service (its row and placements) for writing back."""
        self._services[service.service_id] = service
        self._dirty_services.add(service.service_id)

    def receipt_on_chain(self, receipt_id: bytes) -> bool:
        self._load_receipts({receipt_id})
        return receipt_id in self._receipts

    def receipt_envelope(self, receipt_id: bytes) -> bytes | None:
        """The envelope of a receipt on chain (or entered earlier in this block)."""
        for values in self._inserts["state_receipts"]:
            if values[0] == receipt_id:
                return bytes(values[-1])
        row = self.conn.execute("SELECT envelope FROM state_receipts WHERE receipt_id = ?", [receipt_id]).fetchone()
        return None if row is None else bytes(row[0])

    def add_receipt(self, values: tuple[Any, ...]) -> None:
        """Insert a state_receipts row (receipt_id, ...)."""
        self._receipts.add(values[0])
        self._inserts["state_receipts"].append(values)

    def decision(self, decision_id: bytes) -> DecisionRow | None:
        """A scheduler decision recorded by an earlier block or this one (None: no such decision)."""
        if decision_id in self._unchecked_decisions:
            self._check_added_decisions({decision_id})
        self._load_decisions({decision_id})
        return self._decisions[decision_id]

    def add_decision(self, decision: DecisionRow) -> None:
        """Record a decision this block implies. One already recorded (the same
        body implied again) keeps its first height and attestation; whether it
        was is asked once per block, at :meth:`flush` (or when it is read)."""
        did = decision.decision_id
        if self._decisions.get(did) is not None:
            return
        if did not in self._decisions:
            self._unchecked_decisions.add(did)
        self._decisions[did] = decision
        self._dirty_decisions.add(did)

    def _check_added_decisions(self, ids: set[bytes]) -> None:
        """Decisions added unchecked that an earlier block recorded take back their stored row."""
        self._unchecked_decisions -= ids
        for stored in self._stored_decisions(sorted(ids)):
            self._decisions[stored.decision_id] = stored

    def attest(self, decision_id: bytes, receipt_id: bytes) -> None:
        """Mark a (loaded, unattested) decision attested by ``receipt_id``."""
        decision = self.decision(decision_id)
        assert decision is not None and decision.attested is None  # checked
        decision.attested = receipt_id
        self._dirty_decisions.add(decision_id)

    def schedulers(self) -> frozenset[bytes]:
        """Keys of the nodes registered with the scheduler role in the state this
        block is applied to: read from the tables, which hold the state before
        the block until :meth:`flush` (a registration in the block counts from
        the next one, so the receipt log can be computed before the block applies)."""
        if self._schedulers is None:
            rows = self.conn.execute("SELECT node_key, roles FROM state_nodes").fetchall()
            self._schedulers = frozenset(bytes(key) for key, roles in rows if "scheduler" in roles.split(","))
        return self._schedulers

    def add_rejection(self, values: tuple[Any, ...]) -> None:
        self._inserts["state_rejections"].append(values)

    # -- writing back --------------------------------------------------------------
    def flush(self) -> None:
        """Write every changed row back (inside the caller's transaction)."""
        nodes = [self.nodes()[k] for k in sorted(self._dirty_nodes)]
        jobs = [job for job in (self._jobs[k] for k in sorted(self._dirty_jobs)) if job is not None]  # dirty: loaded
        self._write_rows("state_nodes", _columns(NodeRow), [(n.node_key, n) for n in nodes])
        self._write_rows("state_jobs", _JOB_COLUMNS, [(j.job_id, j) for j in jobs])
        self._write_rows("state_assignments", _columns(AssignmentRow),
                         [((j.job_id, key), a) for j in jobs for key, a in sorted(j.assignments.items())])
        self._write_rows("state_results", _columns(ResultRow),
                         [((j.job_id, key), r) for j in jobs for key, r in sorted(j.results.items())])
        services = [self._services[k] for k in sorted(self._dirty_services)]
        _upsert(self.conn, "state_services", _SERVICE_COLUMNS, [_values(s) for s in services])
        if services:  # placements are rewritten whole (slots shift when a node leaves)
            self.conn.execute("DELETE FROM state_service_placements WHERE service_id IN (SELECT unnest(?))",
                              [[s.service_id for s in services]])
            _insert(self.conn, "state_service_placements", [_values(p) for s in services for p in s.placements])
        if self._unchecked_decisions:
            self._check_added_decisions(set(self._unchecked_decisions))
        _upsert(self.conn, "state_decisions", _columns(DecisionRow),
                [_values(self._decisions[k]) for k in sorted(self._dirty_decisions)])
        for table, rows in self._inserts.items():
            _insert(self.conn, table, rows)
            rows.clear()
        self._dirty_decisions.clear()
        self._dirty_nodes.clear()
        self._dirty_jobs.clear()
        self._dirty_services.clear()

    def _write_rows(self, table: str, columns: Sequence[str], rows: list[tuple[Any, Any]]) -> None:
        """Write ``(key, row)`` pairs back: rows new to the table inserted, rows read
        from it updated only if they changed (DuckDB CPU for a few rows: insert ~1 ms,
        update ~2 ms, upsert ~4-6 ms; writing unchanged rows back cost an upsert each)."""
        new: list[tuple[Any, ...]] = []
        changed: list[tuple[Any, ...]] = []
        moved: list[tuple[Any, ...]] = []
        fixed = [columns.index(name) for name in _UNIQUE_COLUMNS.get(table, ())]
        for key, row in rows:
            values = _values(row)
            stored = self._stored.get((table, key))
            if stored is None:
                new.append(values)
            elif stored != values:
                # An UPDATE of a row known to be there costs less than an upsert; one that
                # would change a UNIQUE column (never done today) goes the general way.
                (moved if any(stored[i] != values[i] for i in fixed) else changed).append(values)
            self._stored[(table, key)] = values
        _write(self.conn, f"INSERT INTO {table} ({', '.join(columns)})", new)
        _update(self.conn, table, columns, changed)
        _upsert(self.conn, table, columns, moved)

    def hints_after(self, proposal_floor: int | None) -> StateHints:
        """The hints of the state this block leaves (after :meth:`flush`)."""
        floor = self.hints.expiry_floor if self.expiry_floor_after is None else self.expiry_floor_after
        if floor is not None:  # jobs in memory (every one written, every one found due) may lower it
            jobs = [job for job in self._jobs.values() if job is not None]
            floor = min([floor, *(assignment_expiry(a) for j in jobs for a in j.assignments.values() if a.status == PENDING)])
        active = any(s.state == "active" for s in self._services.values())
        return StateHints(
            expiry_floor=floor,
            open_slots=self.hints.open_slots if self.open_slots_after is None else self.open_slots_after,
            active_services=active if self._active_services_loaded else self.hints.active_services or active,
            proposal_floor=proposal_floor,
        )


def _upsert(conn: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
    keys = _PRIMARY_KEYS[table]
    updates = ", ".join(f"{name} = excluded.{name}" for name in columns if name not in keys)
    _write(conn, f"INSERT INTO {table} ({', '.join(columns)})", rows,
           f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}")


def _update(conn: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
    """Rewrite rows that are in ``table`` (matched on the primary key), UNIQUE columns left as they are."""
    if not rows:
        return
    keys, unique = _PRIMARY_KEYS[table], _UNIQUE_COLUMNS.get(table, ())
    sets = ", ".join(f'"{name}" = v."{name}"' for name in columns if name not in keys and name not in unique)
    match = " AND ".join(f'{table}."{name}" = v."{name}"' for name in keys)
    values = ", ".join(f'unnest(?) AS "{name}"' for name in columns)
    conn.execute(f"UPDATE {table} SET {sets} FROM (SELECT {values}) AS v WHERE {match}",
                 [[row[i] for row in rows] for i in range(len(columns))])


def _insert(conn: duckdb.DuckDBPyConnection, table: str, rows: list[tuple]) -> None:
    _write(conn, f"INSERT INTO {table}", rows)


def _write(conn: duckdb.DuckDBPyConnection, head: str, rows: list[tuple], tail: str = "") -> None:
    if not rows:
        return
    width = len(rows[0])
    conn.execute(
        f"{head} SELECT {', '.join(['unnest(?)'] * width)}{tail}",
        [[row[i] for row in rows] for i in range(width)],
    )

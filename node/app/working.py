"""The rows one block reads and writes, held in memory between bulk queries.

DuckDB answers a point query or a one-row write in about a millisecond, so
applying transactions one SQL statement at a time costs tens of
milliseconds per transaction. Instead, a block's transactions are parsed
first, every row they can touch is loaded in a few bulk queries
(:meth:`WorkingState.prefetch`), the transitions run on these Python
objects (node/app/state_rows.py), and :meth:`WorkingState.flush` writes
the new and changed rows back in bulk (node/app/row_writes.py). A job is
loaded whole: its row with its assignments and results.

Everything happens inside the block's DuckDB transaction; the objects are
thrown away with the block, so a rollback leaves nothing stale behind. What
the next block may take from this one (:meth:`WorkingState.hints_after`:
the height, the next job sequence number, the node rows, the active jobs
whole) is built after the flush from the values the tables then hold
(``_stored``: read, or written), never from the objects; the state machine
keeps it only once the block's transaction committed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb

from node.app.model import PENDING
from node.app.policy import OPEN_GOVERNANCE, Governance
from node.app.row_writes import Stored, insert, keys_in, write_rows
from node.app.rules import DEFAULT_RULES, ChainRules
from node.app.state_hints import KeptJob, StateHints, assignment_expiry, jobs_after, nodes_after, seq_after
from node.app.state_rows import (
    JOB_COLUMNS,
    SERVICE_COLUMNS,
    AssignmentRow,
    DecisionRow,
    JobRow,
    NodeRow,
    PlacementRow,
    ResultRow,
    ServiceRow,
    bytes_row,
    columns,
    placement_values,
    row_values,
)

_NO_HINTS = StateHints()  # the default: knows nothing about the committed state
_NODE_KEY, _NODE_ROLES = columns(NodeRow).index("node_key"), columns(NodeRow).index("roles")


@dataclass(frozen=True)
class Reads:
    """The stored rows one transaction's check and change may read (its type's
    ``reads`` hook says which), loaded in bulk with the rest of the block's."""

    datasets: tuple[tuple[bytes, bytes], ...] = ()  # (tenant, digest): whether the tenant registered it
    dataset_names: tuple[tuple[bytes, str], ...] = ()  # (tenant, name): its latest version and digest
    jobs: tuple[bytes, ...] = ()  # loaded whole: row, assignments, results
    receipts: tuple[bytes, ...] = ()  # whether each is on chain
    decisions: tuple[bytes, ...] = ()  # scheduler decisions by id (node/app/decisions.py)


class WorkingState:
    """Cached state rows of one block (or one pre-screened transaction)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, governance: Governance = OPEN_GOVERNANCE,
                 validators: tuple[bytes, ...] | None = None, height: int = 0, *,
                 rules: ChainRules = DEFAULT_RULES, genesis_rules: ChainRules | None = None,
                 hints: StateHints = _NO_HINTS) -> None:
        self.conn = conn
        self.hints = hints  # of the committed state this block starts from
        # expire_deadlines ran: no assignment pending before this block and not due in it expires below this
        self.expiry_floor_after: int | None = None
        self.open_slots_after: bool | None = None  # schedule_jobs ran: whether a job keeps open slots
        # (table, key) -> the row's values as the table holds them (read, or written by flush)
        self._stored: Stored = {}
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
        self._seq_before: int | None = None  # max(seq) + 1 before this block (None: not asked yet)
        self._nodes_before: tuple[tuple[Any, ...], ...] | None = None  # state_nodes as read (None: not read)
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
        where, args = keys_in("decision_id", ids)
        found = [DecisionRow(*bytes_row(row)) for row in self.conn.execute(
            f"SELECT {', '.join(columns(DecisionRow))} FROM state_decisions WHERE {where}", args).fetchall()]
        for decision in found:
            self._stored[("state_decisions", decision.decision_id)] = row_values(decision)
        return found

    def _load_datasets(self, keys: set[tuple[bytes, bytes]]) -> None:
        keys -= self._datasets_checked
        if not keys:
            return
        tenants, tenant_args = keys_in("tenant", sorted({t for t, _ in keys}))
        digests, digest_args = keys_in("digest", sorted({d for _, d in keys}))
        for tenant, digest in self.conn.execute(
            f"SELECT DISTINCT tenant, digest FROM state_datasets WHERE {tenants} AND {digests}",
            tenant_args + digest_args,
        ).fetchall():
            self._datasets.add((bytes(tenant), bytes(digest)))
        self._datasets_checked |= keys

    def _load_latest_versions(self, keys: set[tuple[bytes, str]]) -> None:
        keys = {key for key in keys if key not in self._latest_versions}
        if not keys:
            return
        found: dict[tuple[bytes, str], tuple[int, bytes]] = {}
        tenants, tenant_args = keys_in("tenant", sorted({t for t, _ in keys}))
        names, name_args = keys_in("name", sorted({n for _, n in keys}))
        for tenant, name, version, digest in self.conn.execute(
            "SELECT tenant, name, max(version), arg_max(digest, version) FROM state_datasets "
            f"WHERE {tenants} AND {names} GROUP BY tenant, name",
            tenant_args + name_args,
        ).fetchall():
            found[(bytes(tenant), name)] = (int(version), bytes(digest))
        for key in keys:  # the query's cross product may answer pairs nobody asked for
            self._latest_versions[key] = found.get(key)

    def _load_receipts(self, ids: set[bytes]) -> None:
        ids -= self._receipts_checked
        if not ids:
            return
        where, args = keys_in("receipt_id", sorted(ids))
        for (rid,) in self.conn.execute(f"SELECT receipt_id FROM state_receipts WHERE {where}", args).fetchall():
            self._receipts.add(bytes(rid))
        self._receipts_checked |= ids

    def load_jobs(self, job_ids: Iterable[bytes]) -> None:
        """Load whole jobs (row, assignments, results) not loaded yet."""
        wanted = sorted(set(job_ids) - self._jobs.keys())
        if not wanted:
            return
        kept = self.hints.jobs or {}
        asked = []
        for job_id in wanted:
            entry = kept.get(job_id)
            if entry is None:
                self._jobs[job_id] = None
                asked.append(job_id)
            else:  # as the tables hold it (StateHints.jobs): new objects, this block changes them
                self._load_kept_job(entry)
        if not asked:
            return
        where, args = keys_in("job_id", asked)
        found = []
        for row in self.conn.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM state_jobs WHERE {where}", args).fetchall():
            job = JobRow(*bytes_row(row))
            self._jobs[job.job_id] = job
            self._stored[("state_jobs", job.job_id)] = row_values(job)
            found.append(job.job_id)
        if not found:  # e.g. a block of job.submit only: its new jobs' ids
            return
        # Assignments and results are written only with their job's row: a job not found has none.
        where, args = keys_in("job_id", sorted(found))
        for table, row_type, attr in (
            ("state_assignments", AssignmentRow, "assignments"),
            ("state_results", ResultRow, "results"),
        ):
            for row in self.conn.execute(
                f"SELECT {', '.join(columns(row_type))} FROM {table} WHERE {where}", args
            ).fetchall():
                child = row_type(*bytes_row(row))
                getattr(self._jobs[child.job_id], attr)[child.node_key] = child
                self._stored[(table, (child.job_id, child.node_key))] = row_values(child)

    def _load_kept_job(self, entry: KeptJob) -> None:
        values, assignments, results = entry
        job = JobRow(*values)
        self._jobs[job.job_id] = job
        self._stored[("state_jobs", job.job_id)] = values
        for table, row_type, attr, rows in (
            ("state_assignments", AssignmentRow, "assignments", assignments),
            ("state_results", ResultRow, "results", results),
        ):
            for child_values in rows:
                child = row_type(*child_values)
                getattr(job, attr)[child.node_key] = child
                self._stored[(table, (child.job_id, child.node_key))] = child_values

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
            self._next_seq = self._stored_next_seq()
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _stored_next_seq(self) -> int:
        """max(seq) + 1 of the jobs the table holds before this block's flush."""
        if self._seq_before is None:
            if self.hints.next_seq is not None:
                self._seq_before = self.hints.next_seq
            else:
                row = self.conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM state_jobs").fetchone()
                assert row is not None  # an aggregate always answers one row
                self._seq_before = int(row[0])
        return self._seq_before

    def nodes(self) -> dict[bytes, NodeRow]:
        """Every registered node, by key."""
        if self._nodes is None:
            if self.hints.nodes is not None:
                rows = self.hints.nodes
            else:
                rows = tuple(tuple(bytes_row(row)) for row in self.conn.execute(
                    f"SELECT {', '.join(columns(NodeRow))} FROM state_nodes ORDER BY node_key").fetchall())
                self._nodes_before = rows
            self._nodes = {}
            for values in rows:
                node = NodeRow(*values)
                self._nodes[node.node_key] = node
                self._stored[("state_nodes", node.node_key)] = row_values(node)
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
        rows = self.conn.execute(f"SELECT {', '.join(SERVICE_COLUMNS)} FROM state_services WHERE {where}",
                                 args).fetchall()
        fresh = [ServiceRow(*bytes_row(row)) for row in rows]
        fresh = [service for service in fresh if service.service_id not in self._services]  # memory wins
        if not fresh:
            return
        for service in fresh:
            self._services[service.service_id] = service
            self._stored[("state_services", service.service_id)] = row_values(service)
        where, args = keys_in("service_id", sorted(service.service_id for service in fresh))
        for row in self.conn.execute(
            f"SELECT {', '.join(columns(PlacementRow))} FROM state_service_placements "
            f"WHERE {where} ORDER BY service_id, slot", args,
        ).fetchall():
            placement = PlacementRow(*bytes_row(row))
            self._services[placement.service_id].placements.append(placement)
        for service in fresh:
            self._stored[("state_service_placements", service.service_id)] = placement_values(service)

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

    def new_decision(self, decision_id: bytes) -> None:
        """The caller knows that no earlier block recorded this decision (added
        just before): whether one did is not asked. Were it wrong, the flush's
        INSERT would fail on the primary key (the block rolls back), never
        rewrite the stored decision."""
        self._unchecked_decisions.discard(decision_id)

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
            before = self.hints.nodes if self.hints.nodes is not None else self._nodes_before  # rows before the block
            if before is not None:
                rows = [(values[_NODE_KEY], values[_NODE_ROLES]) for values in before]
            else:
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
        write_rows(self.conn, self._stored, "state_nodes", columns(NodeRow), [(n.node_key, n) for n in nodes])
        write_rows(self.conn, self._stored, "state_jobs", JOB_COLUMNS, [(j.job_id, j) for j in jobs])
        write_rows(self.conn, self._stored, "state_assignments", columns(AssignmentRow),
                   [((j.job_id, key), a) for j in jobs for key, a in sorted(j.assignments.items())])
        write_rows(self.conn, self._stored, "state_results", columns(ResultRow),
                   [((j.job_id, key), r) for j in jobs for key, r in sorted(j.results.items())])
        services = [self._services[k] for k in sorted(self._dirty_services)]
        write_rows(self.conn, self._stored, "state_services", SERVICE_COLUMNS, [(s.service_id, s) for s in services])
        # A service's placements are rewritten whole (slots shift when a node leaves),
        # unless they are those it was loaded with.
        moved = [s for s in services
                 if self._stored.get(("state_service_placements", s.service_id)) != placement_values(s)]
        if moved:
            where, args = keys_in("service_id", [s.service_id for s in moved])
            self.conn.execute(f"DELETE FROM state_service_placements WHERE {where}", args)
            insert(self.conn, "state_service_placements", [row_values(p) for s in moved for p in s.placements])
            for s in moved:
                self._stored[("state_service_placements", s.service_id)] = placement_values(s)
        if self._unchecked_decisions:
            self._check_added_decisions(set(self._unchecked_decisions))
        write_rows(self.conn, self._stored, "state_decisions", columns(DecisionRow),
                   [(k, self._decisions[k]) for k in sorted(self._dirty_decisions)])
        for table, rows in self._inserts.items():
            insert(self.conn, table, rows)
            rows.clear()
        self._dirty_decisions.clear()
        self._dirty_nodes.clear()
        self._dirty_jobs.clear()
        self._dirty_services.clear()

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
            height=self.height,
            next_seq=seq_after(self._seq_before if self._seq_before is not None else self.hints.next_seq,
                               self._stored),
            # Not read, so not written: as before the block (else every row read or written since).
            nodes=self.hints.nodes if self._nodes is None else nodes_after(self._stored),
            jobs=jobs_after(self.hints.jobs or {}, self._jobs.keys(),
                            {job_id for job_id, job in self._jobs.items() if job is not None}, self._stored),
        )

"""Read-only queries of the chain state for the gateway, the CLI and the shells.

Every answer is a JSON-able dict or list: digests and keys as lowercase hex,
nodes also by peer id. Nothing here writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import duckdb

from node.app.model import ACTIVE_STATES, JOB_STATES, PENDING
from node.app.row_writes import keys_in
from node.app.rules import DEFAULT_RULES, ChainRules
from node.app.service_queries import ServiceQueries
from node.base.codec import decode, to_hex
from node.receipts.envelope import Receipt, decode_receipt

MAX_PAGE = 500
MAX_KEPT = 4096  # answers kept per block (see StateQueries.follow_blocks)
MAX_DATASET_PAGE = 1000
MAX_DATASET_REF = 128 + 1 + 19  # a name (as dataset.register allows), "@", a version
BAD_DATASET_REF = "expected a name, name@version or 64 hex characters"

_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_VERSIONED = re.compile(r"(.+)@([1-9][0-9]{0,17})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DATASET_COLUMNS = (
    "name, version, digest, size, format, height, tx_hash, "
    "version = max(version) OVER (PARTITION BY tenant, name) AS latest"
)

# ``service_id``, not the service's name: a correlated subquery for the name cost ~1.2 ms of CPU
# per statement even on jobs of no service; the names are looked up after (_with_service_names).
_JOB_COLUMNS = (
    "job_id, seq, tenant, type, inputs, params, replication, deadline_blocks, state, reason, attempt, "
    "submitted_height, scheduled_height, schedule_block, seed, clock, finished_height, service_id, run, policy"
)
_SERVICE_ID = [name.strip() for name in _JOB_COLUMNS.split(",")].index("service_id")
_RUN_FIELDS = "type, inputs, params, seed, clock, policy"  # what running an assigned job takes (assignments_to_run)


def _hex(value: Any) -> str | None:
    return None if value is None else to_hex(bytes(value))


def _limit(limit: int, maximum: int = MAX_PAGE) -> int:
    if type(limit) is not int or not 1 <= limit <= maximum:
        raise ValueError(f"limit must be an integer in 1..{maximum}, got {limit!r}")
    return limit


class DatasetRef(NamedTuple):
    """What a dataset reference names: a digest, or a name and (None: the
    latest) version. See :func:`parse_dataset_ref`."""

    digest: bytes | None
    name: str | None
    version: int | None


def parse_dataset_ref(ref: str) -> DatasetRef:
    """Read ``name`` (its latest version), ``name@version`` or a 64-hex digest.

    64 hex characters always mean a digest. ``a@b`` with ``b`` a positive
    integer means version ``b`` of ``a``; any other text is a whole name (names
    may hold ``@``). Raises ValueError (:data:`BAD_DATASET_REF`) for what no
    registration can be called: empty, too long, control characters,
    version 0.
    """
    if not isinstance(ref, str) or not 1 <= len(ref) <= MAX_DATASET_REF or _CONTROL.search(ref):
        raise ValueError(BAD_DATASET_REF)
    if _HEX_DIGEST.fullmatch(ref):
        return DatasetRef(bytes.fromhex(ref), None, None)
    versioned = _VERSIONED.fullmatch(ref)
    if versioned is not None:
        name, version = versioned.group(1), int(versioned.group(2))
    elif re.fullmatch(r".+@0+", ref):
        raise ValueError(BAD_DATASET_REF)  # versions start at 1
    else:
        name, version = ref, None
    if len(name) > 128:
        raise ValueError(BAD_DATASET_REF)
    return DatasetRef(None, name, version)


def _dataset_row(row: tuple) -> dict[str, Any]:
    name, version, digest, size, fmt, height, tx, latest = row
    return {"name": name, "version": version, "digest": _hex(digest), "size": size, "format": fmt,
            "height": height, "tx": _hex(tx), "latest": bool(latest)}


def _key(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError(f"{what} must be 32 bytes")
    return value


class StateQueries(ServiceQueries):
    """Queries over the state tables of ``conn`` (mixed into StateMachine)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, rules: ChainRules = DEFAULT_RULES) -> None:
        self._conn = conn
        self.rules = rules  # the genesis rules
        # Answers that change only when a block is applied, kept until the next one
        # (a DuckDB statement costs about a millisecond of CPU; nodes() was asked
        # for every job input). None: not asked to (follow_blocks), every read asks.
        self._memo: dict[tuple[Any, ...], Any] | None = None
        self._writing = 0  # inside changing_state: every read asks the database

    def follow_blocks(self) -> None:
        """Keep per-block answers (height, nodes, queue depth, datasets) in
        memory until the state changes. Only for a state written by
        :meth:`StateMachine.apply_block` and ``reset`` alone (a daemon's), as
        they forget the kept answers (:meth:`changing_state`) whenever they
        write: after every block, including those of a catch-up or replay,
        before the ``on_effects`` callbacks run, and after a block that failed
        and was rolled back. Calling it again does nothing."""
        if self._memo is None:
            self._memo = {}

    def state_changed(self) -> None:
        """Forget the kept answers: the state tables changed."""
        if self._memo is not None:
            self._memo.clear()

    def block_committed(self, height: int) -> None:
        """The state machine's word, after a block's transaction COMMITTED (never
        after one rolled back), that the state is now at ``height``: the next
        ``height()`` is answered from memory instead of reading the table again
        (~0.8 ms of CPU per block in a daemon). Forgets every other kept answer.
        Only a caller that knows the commit happened may say so; without it
        the height is read once per block, as before."""
        self.state_changed()
        if self._memo is not None and not self._writing:
            self._memo[("height",)] = height

    @contextmanager
    def changing_state(self) -> Iterator[None]:
        """Around a write of the state tables: nothing is kept or answered
        from memory inside it (the state changes statement by statement: the
        block's own ``height()`` read first would be stale by its end), and
        the kept answers are forgotten before and after it, committed or
        rolled back."""
        self.state_changed()
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
            self.state_changed()

    def _kept(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        if self._memo is None or self._writing:
            return compute()
        if key in self._memo:
            return self._memo[key]
        answer = compute()
        if len(self._memo) < MAX_KEPT:  # callers choose keys (dataset refs): bounded within a block
            self._memo[key] = answer
        return answer

    def rules_at(self, height: int) -> ChainRules:
        """The rules in force at block ``height`` (the state machine knows the
        changes voted since the genesis; plain queries know the genesis rules)."""
        return self.rules

    def height(self) -> int | None:
        """The height of the last applied block (None before the first)."""
        return self._kept(("height",), self._read_height)

    def _read_height(self) -> int | None:
        row = self._conn.execute("SELECT height FROM state_height").fetchone()
        return None if row is None else row[0]

    def head(self) -> dict[str, Any] | None:
        """The last applied block: height, hash and time."""
        row = self._conn.execute("SELECT height, block_hash, timestamp_ms FROM state_height").fetchone()
        if row is None:
            return None
        return {"height": row[0], "block_hash": _hex(row[1]), "timestamp_ms": row[2]}

    # -- jobs --------------------------------------------------------------------
    def job(self, job_id: bytes) -> dict[str, Any] | None:
        """Everything about one job: state and reason, assignments per attempt,
        committed results and the verdict; None if there is no such job."""
        row = self._conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM state_jobs WHERE job_id = ?", [_key(job_id, "job id")]
        ).fetchone()
        if row is None:
            return None
        (job,) = self._job_summaries([row])
        assignments = self._conn.execute(
            "SELECT a.attempt, a.node_key, n.peer_id, a.assigned_height, a.deadline, a.status, a.note, "
            "a.acked_height, a.ack_deadline "
            "FROM state_assignments a JOIN state_nodes n USING (node_key) WHERE a.job_id = ? "
            "ORDER BY a.attempt, a.node_key",
            [job_id],
        ).fetchall()
        job["assignments"] = [
            {"attempt": attempt, "node": _hex(key), "peer_id": peer, "assigned_height": assigned,
             "deadline": deadline, "status": status, "note": note, "acked_height": acked, "ack_deadline": ack_deadline}
            for attempt, key, peer, assigned, deadline, status, note, acked, ack_deadline in assignments
        ]
        results = self._conn.execute(
            "SELECT r.node_key, n.peer_id, r.height, r.tx_hash, r.receipt_id, r.result, r.witness, r.exit, r.error "
            "FROM state_results r JOIN state_nodes n USING (node_key) WHERE r.job_id = ? ORDER BY r.node_key",
            [job_id],
        ).fetchall()
        job["results"] = [
            {"node": _hex(key), "peer_id": peer, "height": height, "tx": _hex(tx), "receipt": _hex(rid),
             "result": _hex(result), "witness": _hex(witness), "exit": exit_status, "error": error}
            for key, peer, height, tx, rid, result, witness, exit_status, error in results
        ]
        job["verdict"] = (
            {"state": job["state"], "result_digests": sorted({r["result"] for r in job["results"]})}
            if job["state"] in ("verified", "disputed") else None
        )
        # The assignment rounds a job gets under the rules of the next block (a vote may change them).
        applied = self.height()
        job["max_attempts"] = self.rules_at(1 if applied is None else applied + 1).max_attempts
        return job

    def jobs_by_tenant(
        self, tenant: bytes, *, limit: int = 50, before: int | None = None, state: str | None = None
    ) -> dict[str, Any]:
        """A tenant's jobs, newest first, ``limit`` per page.

        Pass the answer's ``next`` as ``before`` for the following page (None
        when there is none). ``state`` filters by job state.
        """
        clauses: list[str] = ["tenant = ?"]
        args: list[Any] = [_key(tenant, "tenant")]
        if before is not None:
            if type(before) is not int:
                raise ValueError("before must be an integer (the previous page's next)")
            clauses.append("seq < ?")
            args.append(before)
        if state is not None:
            if state not in JOB_STATES:
                raise ValueError(f"state must be one of {', '.join(JOB_STATES)}, got {state!r}")
            clauses.append("state = ?")
            args.append(state)
        rows = self._conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM state_jobs WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?",
            [*args, _limit(limit) + 1],
        ).fetchall()
        page = self._job_summaries(rows[:limit])
        return {"jobs": page, "next": page[-1]["seq"] if len(rows) > limit else None}

    def _job_summaries(self, rows: list[tuple]) -> list[dict[str, Any]]:
        """:func:`_job_summary` of rows of ``_JOB_COLUMNS``, their ``service_id``
        replaced by the service's name (None: a plain job, or no such service), in
        one more statement only when a row names a service."""
        sids = {bytes(row[_SERVICE_ID]) for row in rows if row[_SERVICE_ID] is not None}
        names: dict[bytes, str] = {}
        if sids:
            where, args = keys_in("service_id", sorted(sids))
            names = {bytes(sid): name for sid, name in self._conn.execute(
                f"SELECT service_id, name FROM state_services WHERE {where}", args
            ).fetchall()}
        return [_job_summary((*row[:_SERVICE_ID], None if row[_SERVICE_ID] is None else names.get(bytes(row[_SERVICE_ID])),
                              *row[_SERVICE_ID + 1:])) for row in rows]

    def pending_assignments_of(self, node_key: bytes) -> list[tuple[bytes, int]]:
        """``(job id, attempt)`` of every assignment of ``node_key`` still waiting
        for its result, in job id order: what a processing node runs. Only the
        keys, since it is asked on every block and most are already in hand."""
        rows = self._conn.execute(
            "SELECT job_id, attempt FROM state_assignments WHERE node_key = ? AND status = ? ORDER BY job_id, attempt",
            [_key(node_key, "node key"), PENDING],
        ).fetchall()
        return [(bytes(job_id), attempt) for job_id, attempt in rows]

    def pending_runs_of(self, node_key: bytes) -> list[tuple[bytes, int, bool]]:
        """``(job id, attempt, wants_ack)`` of every assignment of ``node_key``
        still waiting for its result, in job id order: :meth:`assignments_to_run`
        without the job's columns, from the assignments alone (~0.65 ms of CPU
        where the join costs ~1.8: a processing node asks on every block, and
        loads the jobs it does not hold yet with :meth:`jobs_to_run`)."""
        rows = self._conn.execute(
            "SELECT job_id, attempt, ack_deadline IS NOT NULL AND acked_height IS NULL FROM state_assignments "
            "WHERE node_key = ? AND status = ?",
            [_key(node_key, "node key"), PENDING],
        ).fetchall()
        return sorted((bytes(job_id), attempt, bool(wants_ack)) for job_id, attempt, wants_ack in rows)

    def jobs_to_run(self, job_ids: Collection[bytes]) -> dict[bytes, dict[str, Any]]:
        """What running each of ``job_ids`` takes, by job id (missing: no such
        job): the job's ``state``, ``type``, ``inputs`` (name -> digest hex),
        ``params``, ``seed`` (hex), ``clock`` and ``policy``, as
        :meth:`assignments_to_run` spells them. One statement."""
        ids = sorted({_key(job_id, "job id") for job_id in job_ids})
        if not ids:
            return {}
        where, args = keys_in("job_id", ids)
        rows = self._conn.execute(f"SELECT job_id, state, {_RUN_FIELDS} FROM state_jobs WHERE {where}", args).fetchall()
        return {bytes(job_id): {"state": state, **_run_fields(job_type, inputs, params, seed, clock, policy)}
                for job_id, state, job_type, inputs, params, seed, clock, policy in rows}

    def assignments_to_run(self, node_key: bytes) -> list[dict[str, Any]]:
        """Every pending assignment of ``node_key``, in job id order, with what
        running it takes, in one statement (a processing node asks on every
        block): ``id`` (hex), ``attempt``, ``wants_ack`` (it waits for this
        node's ``job.ack``), the job's ``state``, ``type``, ``inputs`` (name ->
        digest hex), ``params``, ``seed`` (hex), ``clock`` and ``policy`` (None:
        a plain job), as :meth:`job` spells them."""
        rows = self._conn.execute(
            "SELECT a.job_id, a.attempt, a.ack_deadline IS NOT NULL AND a.acked_height IS NULL, "
            "j.state, j.type, j.inputs, j.params, j.seed, j.clock, j.policy "
            "FROM state_assignments a JOIN state_jobs j ON j.job_id = a.job_id "
            "WHERE a.node_key = ? AND a.status = ? ORDER BY a.job_id, a.attempt",
            [_key(node_key, "node key"), PENDING],
        ).fetchall()
        return [
            {"id": _hex(job_id), "attempt": attempt, "wants_ack": bool(wants_ack), "state": state,
             **_run_fields(job_type, inputs, params, seed, clock, policy)}
            for job_id, attempt, wants_ack, state, job_type, inputs, params, seed, clock, policy in rows
        ]

    def unacknowledged_assignments_of(self, node_key: bytes) -> list[bytes]:
        """Job ids of the pending assignments of ``node_key`` that wait for its
        acknowledgement (``job.ack``: those made while the rule ack_blocks was
        above 0 and not acknowledged yet), in job id order."""
        rows = self._conn.execute(
            "SELECT job_id FROM state_assignments WHERE node_key = ? AND status = ? "
            "AND ack_deadline IS NOT NULL AND acked_height IS NULL ORDER BY job_id",
            [_key(node_key, "node key"), PENDING],
        ).fetchall()
        return [bytes(job_id) for (job_id,) in rows]

    def queue_depth(self) -> dict[str, int]:
        """How many jobs are in each active state, and how many wait for nodes."""
        return dict(self._kept(("queue_depth",), self._read_queue_depth))

    def _read_queue_depth(self) -> dict[str, int]:
        # One statement (two cost ~1.0 ms of CPU, this one ~0.6): count(reason) counts the waiting ones.
        counts = dict.fromkeys(ACTIVE_STATES, 0)
        waiting = 0
        for state, count, with_reason in self._conn.execute(
            f"SELECT state, count(*), count(reason) FROM state_jobs "
            f"WHERE state IN ({', '.join('?' * len(ACTIVE_STATES))}) GROUP BY state",
            list(ACTIVE_STATES),
        ).fetchall():
            counts[state] = count
            waiting += with_reason
        return {**counts, "waiting_for_nodes": waiting}

    # -- datasets and nodes -----------------------------------------------------
    def datasets_by_tenant(
        self, tenant: bytes, *, name: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """A tenant's dataset registrations by name, then version: each row
        {name, version, digest, size, format, height, tx, latest}. ``name``
        keeps only that name's versions."""
        if type(offset) is not int or offset < 0:
            raise ValueError("offset must be a non-negative integer")
        where, args = "tenant = ?", list[Any]([_key(tenant, "tenant")])
        if name is not None:
            where += " AND name = ?"
            args.append(name)
        rows = self._conn.execute(
            f"SELECT {_DATASET_COLUMNS} FROM state_datasets WHERE {where} "
            "ORDER BY name, version LIMIT ? OFFSET ?",
            [*args, _limit(limit, MAX_DATASET_PAGE), offset],
        ).fetchall()
        return [_dataset_row(row) for row in rows]

    def dataset(self, tenant: bytes, ref: str | DatasetRef) -> dict[str, Any] | None:
        """The registration ``ref`` names (see :func:`parse_dataset_ref`), or None.

        A name alone means its latest version. A digest registered several
        times answers the newest registration: the highest height, and within
        one block the first name, then the highest version. Raises ValueError
        for a ref that cannot name one.
        """
        parsed = parse_dataset_ref(ref) if isinstance(ref, str) else ref
        args: list[Any]
        if parsed.digest is not None:
            where, args = "digest = ?", [parsed.digest]
        elif parsed.version is None:
            where, args = "name = ?", [parsed.name]
        else:
            where, args = "name = ? AND version = ?", [parsed.name, parsed.version]
        kept = self._kept(("dataset", _key(tenant, "tenant"), where, *args), lambda: self._read_dataset(tenant, where, args))
        return None if kept is None else dict(kept)

    def _read_dataset(self, tenant: bytes, where: str, args: list[Any]) -> dict[str, Any] | None:
        # ``latest`` looks at all of the tenant's versions of a name: filter after the window.
        rows = self._conn.execute(
            f"SELECT * FROM (SELECT {_DATASET_COLUMNS} FROM state_datasets WHERE tenant = ?) WHERE {where} "
            "ORDER BY height DESC, name, version DESC LIMIT 1",
            [_key(tenant, "tenant"), *args],
        ).fetchall()
        return _dataset_row(rows[0]) if rows else None

    def dataset_names(self, tenant: bytes) -> list[str]:
        """The names a tenant registered datasets under, sorted."""
        return [name for (name,) in self._conn.execute(
            "SELECT DISTINCT name FROM state_datasets WHERE tenant = ? ORDER BY name", [_key(tenant, "tenant")]
        ).fetchall()]

    def nodes(self, *, processing_only: bool = True) -> list[dict[str, Any]]:
        """Registered nodes with roles, capacity and health.

        Health is as the next block's scheduler sees it: ``excluded_until``
        is the first height at which a node that missed a deadline (or declined
        a job for a local fault) gets new work again (None, and ``healthy``,
        when it is not excluded). ``declined``: assignments it could not run.
        """
        kept = self._kept(("nodes", processing_only), lambda: self._read_nodes(processing_only))
        return [{**node, "roles": list(node["roles"])} for node in kept]  # the caller's to change

    def _read_nodes(self, processing_only: bool) -> list[dict[str, Any]]:
        next_height = (self.height() or 0) + 1
        exclusion_blocks = self.rules_at(next_height).exclusion_blocks
        where = "WHERE capacity > 0" if processing_only else ""
        # The nodes, then one row per node with pending assignments (is_count 1) and how many: in
        # one statement, ~1.0 ms of CPU where a correlated count per node cost ~2.2 ms.
        rows = self._conn.execute(
            "SELECT 0, node_key, peer_id, moniker, roles, capacity, registered_height, delivered, missed, declined, "
            f"last_missed_height, NULL FROM state_nodes {where} "
            "UNION ALL SELECT 1, node_key, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, count(*) "
            "FROM state_assignments WHERE status = ? GROUP BY node_key",
            [PENDING],
        ).fetchall()
        pending_of = {bytes(row[1]): row[11] for row in rows if row[0] == 1}
        answer = []
        for (_, key, peer, moniker, roles, capacity, registered, delivered, missed, declined,
             last_missed, _) in sorted((row for row in rows if row[0] == 0), key=lambda row: bytes(row[1])):
            pending = pending_of.get(bytes(key), 0)
            excluded = last_missed is not None and next_height - last_missed < exclusion_blocks
            answer.append({
                "node": _hex(key), "peer_id": peer, "moniker": moniker, "roles": roles.split(","),
                "capacity": capacity, "registered_height": registered, "pending": pending,
                "delivered": delivered, "missed": missed, "declined": declined, "last_missed_height": last_missed,
                "healthy": not excluded,
                "excluded_until": last_missed + exclusion_blocks if excluded else None,
            })
        return answer

    # -- receipts and rejections -----------------------------------------------
    def receipt_ids_for_block(self, height: int) -> list[bytes]:
        """Ids of the receipts that entered the chain at ``height``, in log order."""
        return [bytes(rid) for (rid,) in self._conn.execute(
            "SELECT receipt_id FROM state_receipts WHERE height = ? ORDER BY position", [height]
        ).fetchall()]

    def receipts_for_block(self, height: int) -> list[Receipt]:
        """The receipts that entered the chain at ``height``, in log order
        (what ``ReceiptLog.append_receipts`` takes)."""
        return [decode_receipt(bytes(envelope)) for (envelope,) in self._conn.execute(
            "SELECT envelope FROM state_receipts WHERE height = ? ORDER BY position", [height]
        ).fetchall()]

    def rejection_of(self, tx_hash: bytes) -> str | None:
        """Why the state refused the committed transaction ``tx_hash``, or None if it did not."""
        row = self._conn.execute("SELECT reason FROM state_rejections WHERE tx_hash = ?", [tx_hash]).fetchone()
        return None if row is None else str(row[0])

    def rejections_for_block(self, height: int) -> list[dict[str, Any]]:
        """The committed transactions of ``height`` that the state refused, and why."""
        rows = self._conn.execute(
            "SELECT idx, tx_hash, type, sender, reason FROM state_rejections WHERE height = ? ORDER BY idx",
            [height],
        ).fetchall()
        return [
            {"index": idx, "tx": _hex(tx), "type": tx_type, "sender": _hex(sender), "reason": reason}
            for idx, tx, tx_type, sender, reason in rows
        ]


def _run_fields(job_type: str, inputs: Any, params: Any, seed: Any, clock: int | None,
                policy: str | None) -> dict[str, Any]:
    return {"type": job_type, "inputs": {name: to_hex(digest) for name, digest in decode(bytes(inputs)).items()},
            "params": decode(bytes(params)), "seed": _hex(seed), "clock": clock, "policy": policy}


def _job_summary(row: tuple) -> dict[str, Any]:
    (job_id, seq, tenant, job_type, inputs, params, replication, deadline_blocks, state, reason, attempt,
     submitted, scheduled, schedule_block, seed, clock, finished, service, run, policy) = row
    return {
        "id": _hex(job_id), "seq": seq, "tenant": _hex(tenant), "type": job_type,
        "inputs": {name: to_hex(digest) for name, digest in decode(bytes(inputs)).items()},
        "params": decode(bytes(params)), "replication": replication, "deadline_blocks": deadline_blocks,
        "state": state, "reason": reason, "attempt": attempt, "submitted_height": submitted,
        "scheduled_height": scheduled, "schedule_block": _hex(schedule_block), "seed": _hex(seed),
        "clock": clock, "finished_height": finished,
        "service": service, "run": run, "policy": policy,  # service None, run None: a plain job.submit job
    }

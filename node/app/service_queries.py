"""Read-only queries about services (mixed into :class:`node.app.queries.StateQueries`).

JSON-able answers: keys and digests as lowercase hex, nodes also by peer id.
"""

from __future__ import annotations

from typing import Any

import duckdb

from node.app.model import ACTIVE_STATES, PENDING, SERVICE_ACTIVE, VERIFIED
from node.base.codec import decode, to_hex

RECENT_RUNS = 10

_SERVICE_COLUMNS = (
    "service_id, tenant, name, type, inputs, params, replicas, policy, on_new_version, every_blocks, "
    "deadline_blocks, state, deployed_height, updated_height, runs, verified_job, verified_run, verified_height"
)


def _hex(value: Any) -> str | None:
    return None if value is None else to_hex(bytes(value))


def _trigger(on_new_version: bool, every_blocks: int | None) -> dict[str, Any]:
    return {"on_new_version": True} if on_new_version else {"every_blocks": every_blocks}


def _tenant_key(value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError("tenant must be 32 bytes")
    return value


class ServiceQueries:
    """The service queries; the class mixing them in provides ``_conn``."""

    _conn: duckdb.DuckDBPyConnection

    def services_by_tenant(self, tenant: bytes) -> list[dict[str, Any]]:
        """A tenant's services (active and stopped), by name: summaries
        ``{name, service_id, type, replicas, state, trigger, placements (count),
        runs, verified_run, verified_job}``."""
        rows = self._conn.execute(
            "SELECT s.name, s.service_id, s.type, s.replicas, s.state, s.on_new_version, s.every_blocks, "
            "(SELECT count(*) FROM state_service_placements p WHERE p.service_id = s.service_id), "
            "s.runs, s.verified_run, s.verified_job FROM state_services s WHERE s.tenant = ? ORDER BY s.name",
            [_tenant_key(tenant)],
        ).fetchall()
        return [
            {"name": name, "service_id": _hex(sid), "type": job_type, "replicas": replicas, "state": state,
             "trigger": _trigger(on_new, every), "placements": placed, "runs": runs,
             "verified_run": verified_run, "verified_job": _hex(verified_job)}
            for name, sid, job_type, replicas, state, on_new, every, placed, runs, verified_run, verified_job in rows
        ]

    def service(self, tenant: bytes, name: str) -> dict[str, Any] | None:
        """Everything about the tenant's service ``name`` (None if it has none):
        template, trigger, placements (slot order), the 10 newest runs, the
        latest verified run, the pending assignees of its active runs with the
        height at which each is replaced (``late``), and why fewer nodes than
        replicas are placed (``waiting``)."""
        if not isinstance(name, str):
            raise ValueError("name must be text")
        row = self._conn.execute(
            f"SELECT {_SERVICE_COLUMNS} FROM state_services WHERE tenant = ? AND name = ?",
            [_tenant_key(tenant), name],
        ).fetchone()
        if row is None:
            return None
        (sid, owner, name, job_type, inputs, params, replicas, policy, on_new, every, deadline, state,
         deployed, updated, runs, verified_job, verified_run, verified_height) = row
        sid = bytes(sid)
        placements = [
            {"peer_id": peer, "node_key": _hex(key), "slot": slot, "since_height": since}
            for slot, key, peer, since in self._conn.execute(
                "SELECT p.slot, p.node_key, n.peer_id, p.since_height FROM state_service_placements p "
                "JOIN state_nodes n USING (node_key) WHERE p.service_id = ? ORDER BY p.slot",
                [sid],
            ).fetchall()
        ]
        return {
            "service_id": _hex(sid), "name": name, "tenant": _hex(owner), "type": job_type,
            "inputs": decode(bytes(inputs)), "params": decode(bytes(params)), "replicas": replicas,
            "policy": policy, "trigger": _trigger(on_new, every), "deadline_blocks": deadline, "state": state,
            "deployed_height": deployed, "updated_height": updated, "runs": runs, "placements": placements,
            "recent_runs": self._recent_runs(sid),
            "last_verified": self._last_verified(verified_job, verified_run, verified_height),
            "late": self._late(sid),
            "waiting": (
                f"{len(placements)} of {replicas} replicas placed: not enough eligible processing nodes "
                "(registered, admitted, capacity > 0, not excluded after a missed deadline)"
                if state == SERVICE_ACTIVE and len(placements) < replicas else None
            ),
        }

    def _recent_runs(self, sid: bytes) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT j.run, j.job_id, j.state, j.reason, j.submitted_height, j.inputs, "
            "(SELECT count(*) FROM state_results r WHERE r.job_id = j.job_id) "
            "FROM state_jobs j WHERE j.service_id = ? ORDER BY j.run DESC LIMIT ?",
            [sid, RECENT_RUNS],
        ).fetchall()
        return [
            {"run": run, "job_id": _hex(job_id), "state": state, "reason": reason, "submitted_height": submitted,
             "inputs": {key: to_hex(digest) for key, digest in decode(bytes(inputs)).items()}, "results": results}
            for run, job_id, state, reason, submitted, inputs, results in rows
        ]

    def _last_verified(self, job_id: Any, run: int | None, height: int | None) -> dict[str, Any] | None:
        if job_id is None:
            return None
        row = self._conn.execute("SELECT min(result) FROM state_results WHERE job_id = ?", [bytes(job_id)]).fetchone()
        return {"run": run, "job_id": _hex(job_id), "height": height,
                "result_digest": _hex(row[0]) if row is not None else None}

    def _late(self, sid: bytes) -> list[dict[str, Any]]:
        # An assignee that has not acknowledged is replaced at its ack deadline when that comes first.
        replaced_at = ("CASE WHEN a.ack_deadline IS NOT NULL AND a.acked_height IS NULL AND a.ack_deadline < a.deadline "
                       "THEN a.ack_deadline ELSE a.deadline END")
        rows = self._conn.execute(
            f"SELECT n.peer_id, j.job_id, j.run, {replaced_at} AS replaced_at FROM state_assignments a "
            "JOIN state_jobs j USING (job_id) JOIN state_nodes n ON n.node_key = a.node_key "
            f"WHERE j.service_id = ? AND a.status = ? AND j.state IN ({', '.join('?' * len(ACTIVE_STATES))}) "
            "ORDER BY replaced_at, j.run, n.peer_id",
            [sid, PENDING, *ACTIVE_STATES],
        ).fetchall()
        return [{"peer_id": peer, "job_id": _hex(job_id), "run": run, "deadline": deadline}
                for peer, job_id, run, deadline in rows]

    def service_holders(self, job_id: bytes) -> list[dict[str, Any]]:
        """The nodes whose committed result is a verified job's digest, least
        loaded first (``pending``: the node's pending assignments), ties by peer
        id: where to fetch a service's result. Empty unless the job is verified."""
        if not isinstance(job_id, bytes) or len(job_id) != 32:
            raise ValueError("job id must be 32 bytes")
        rows = self._conn.execute(
            "SELECT n.peer_id, r.node_key, "
            "(SELECT count(*) FROM state_assignments a WHERE a.node_key = r.node_key AND a.status = ?) AS pending "
            "FROM state_results r JOIN state_jobs j USING (job_id) JOIN state_nodes n ON n.node_key = r.node_key "
            "WHERE r.job_id = ? AND j.state = ? AND r.exit = 0 ORDER BY pending, n.peer_id",
            [PENDING, job_id, VERIFIED],
        ).fetchall()
        return [{"peer_id": peer, "node_key": _hex(key), "pending": pending} for peer, key, pending in rows]

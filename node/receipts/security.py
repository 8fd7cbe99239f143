"""The chain's security facts, read from a node database: what ``security_report`` and
``metanode security export-audit --data-dir`` report.

``metanode security export-audit`` (node/cli/security.py) builds its report
from two kinds of facts, and keeps them apart because they deserve different
trust:

* **Chain facts**, the same on every node that follows the chain, each backed
  by receipts (or a transaction) anyone can verify offline with
  ``metanode receipt verify``: cage denials (a ``job.exec`` whose run the
  cage refused: its SQL gate, or seccomp's SIGSYS), limit kills (a
  ``job.exec`` stopped at its output limit, or a ``job.decline`` naming a CPU,
  memory or wall-clock limit: unsigned, because those depend on the host, so
  backed by the decline transaction and the job's ``job.schedule``
  receipts), and disputed jobs (``job.verdict`` disputed, with the
  ``job.exec`` receipts that disagree). :func:`chain_findings` reads them
  from a node database, live (the RPC) or stopped (``--data-dir``).
* **Node facts**, which only the node itself can tell: the confinement
  layers it runs under and the digests of its cage policies, and counters
  since it started: RPC calls refused by its rate limit, HTTP requests
  refused for a missing or bad signature (p2p callers are authenticated by
  the Noise handshake before any call reaches the node's RPC layer, so a
  failed one is a failed dial, not counted here), and cage runs by outcome.
  Refused calls are not receipted (a receipt records an operation the node
  performed), so these are counters, not receipts, and a range does not
  filter them.

Heights are those of the block that carried the fact onto the chain (the
receipt's or the transaction's block). A time range is turned into heights
with the blocks' own timestamps.

This module reads the node database's tables by name (the receipt log's
``receipt_envelopes``, the chain store's ``chain_blocks`` and ``chain_txs``, the
state machine's ``state_receipts``, ``state_results``, ``state_jobs`` and
``state_rejections``; node/app/tables.py) and imports none of their code, so
that both the node (node/roles/security.py) and the CLI can use it. A table
that is missing (a node without a chain) gives no facts, never an error.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

SIGSYS = int(signal.SIGSYS)
# Cage outcome statuses (node/cage/job.py JobOutcome) that are the cage refusing
# what a job tried, and those that are a job stopped at one of its limits.
DENIAL_STATUSES = frozenset({"refused", "killed"})
LIMIT_STATUSES = frozenset({"output_limit", "cpu_limit", "memory_limit", "timeout"})
FINDING_KINDS = ("auth_failures", "rate_limited", "cage_denials", "limit_kills", "disputed_jobs")


@dataclass(frozen=True)
class HeightRange:
    """Inclusive block heights; None is unbounded."""

    since: int | None = None
    until: int | None = None

    def where(self, column: str) -> tuple[str, list[int]]:
        clauses, params = [], []
        if self.since is not None:
            clauses.append(f"{column} >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{column} <= ?")
            params.append(self.until)
        return (" AND " + " AND ".join(clauses)) if clauses else "", params

    def to_json(self) -> dict[str, int | None]:
        return {"since_height": self.since, "until_height": self.until}


def _tables(conn: duckdb.DuckDBPyConnection) -> set[str]:
    return {str(row[0]) for row in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def resolve_range(conn: duckdb.DuckDBPyConnection, since_height: int | None = None, until_height: int | None = None,
                  since_ms: int | None = None, until_ms: int | None = None) -> HeightRange:
    """The heights a height and/or time range covers: a time bound becomes the
    first block at or after it (since) or the last at or before it (until),
    by the blocks' timestamps. A time range no block falls in gives an empty range."""
    since, until = since_height, until_height
    if (since_ms is not None or until_ms is not None) and "chain_blocks" in _tables(conn):
        if since_ms is not None:
            row = conn.execute("SELECT min(height) FROM chain_blocks WHERE timestamp_ms >= ?", [since_ms]).fetchone()
            first = int(row[0]) if row and row[0] is not None else None
            # No block at or after it: nothing can be in range.
            since = max(since or 0, first if first is not None else 2**62)
        if until_ms is not None:
            row = conn.execute("SELECT max(height) FROM chain_blocks WHERE timestamp_ms <= ?", [until_ms]).fetchone()
            last = int(row[0]) if row and row[0] is not None else -1
            until = last if until is None else min(until, last)
    return HeightRange(since, until)


def _finding(kind: str, *, node: str | None, height: int | None, detail: str, source: str, job_id: str | None = None,
             receipts: list[str] | None = None, tx: str | None = None, count: int = 1) -> dict[str, Any]:
    return {"finding": kind, "node": node, "height": height, "job_id": job_id, "count": count, "source": source,
            "detail": detail, "receipts": receipts or [], "tx": tx}


def exec_finding_kind(exit_code: int, error: str | None) -> str | None:
    """Which finding a failed ``job.exec`` is, from its signed exit and the
    error its node reported on chain (``status: detail``); None for a job's
    own error (bad SQL, a value out of range), which is no security fact."""
    status = (error or "").split(":", 1)[0].strip()
    if exit_code == -SIGSYS or status in DENIAL_STATUSES:
        return "cage_denials"
    if status in LIMIT_STATUSES or exit_code < 0:
        return "limit_kills"
    return None


def chain_findings(conn: duckdb.DuckDBPyConnection, heights: HeightRange) -> dict[str, Any]:
    """The chain's security facts in ``heights``, from a node database
    (read-only use): ``{"findings": {kind: [...]}, "receipts": {id: {...}},
    "policies": {issuer peer id: [policy digests its job.exec receipts name]}}``."""
    from node.receipts.envelope import decode_receipt

    tables = _tables(conn)
    findings: dict[str, list[dict[str, Any]]] = {kind: [] for kind in FINDING_KINDS}
    cited: dict[str, dict[str, Any]] = {}
    policies: dict[str, set[str]] = {}
    if not {"state_receipts", "state_results", "state_jobs", "receipt_envelopes"} <= tables:
        return {"findings": findings, "receipts": cited, "policies": {}}

    def cite(receipt_id: bytes, kind: str, issuer: str, height: int | None) -> str:
        rid = receipt_id.hex()
        cited[rid] = {"id": rid, "kind": kind, "issuer": issuer, "height": height}
        return rid

    where, params = heights.where("r.height")
    rows = conn.execute(
        "SELECT r.receipt_id, r.height, r.envelope, s.error FROM state_receipts r "
        f"LEFT JOIN state_results s ON s.receipt_id = r.receipt_id WHERE r.kind = 'job.exec'{where} ORDER BY r.height, r.position",
        params).fetchall()
    for rid, height, envelope, error in rows:
        receipt = decode_receipt(bytes(envelope))
        fields = receipt.fields
        policies.setdefault(receipt.issuer_node, set()).add(fields["policy"].hex())
        kind = exec_finding_kind(int(fields["exit"]), error)
        if kind is None:
            continue
        findings[kind].append(_finding(
            kind, node=receipt.issuer_node, height=int(height), job_id=receipt.subject.hex(), source="receipts",
            detail=f"exit {fields['exit']}: {error or 'no error reported'}"[:300],
            receipts=[cite(bytes(rid), "job.exec", receipt.issuer_node, int(height))]))
    findings["limit_kills"].extend(_declined_at_limits(conn, heights, cite))
    findings["disputed_jobs"].extend(_disputed(conn, heights, cite))
    return {"findings": findings, "receipts": cited, "policies": {k: sorted(v) for k, v in sorted(policies.items())}}


def _job_receipts(conn: duckdb.DuckDBPyConnection, job_id: bytes, kinds: tuple[str, ...], cite: Callable[..., str]) -> list[str]:
    rows = conn.execute(
        "SELECT e.id, e.kind, e.issuer, s.height FROM receipt_envelopes e LEFT JOIN state_receipts s ON s.receipt_id = e.id "
        f"WHERE e.subject = ? AND e.kind IN ({', '.join('?' for _ in kinds)}) ORDER BY s.height, e.kind, e.id",
        [job_id, *kinds]).fetchall()
    return [cite(bytes(rid), kind, issuer, None if height is None else int(height)) for rid, kind, issuer, height in rows]


def _declined_at_limits(conn: duckdb.DuckDBPyConnection, heights: HeightRange, cite: Callable[..., str]) -> list[dict[str, Any]]:
    """``job.decline`` transactions (accepted by the state) whose node ran the job into a limit."""
    from node.base.keys import peer_id_from_public_key
    from node.consensus.tx import TxError, decode_tx

    if not {"chain_txs", "state_rejections"} <= _tables(conn):
        return []
    where, params = heights.where("t.height")
    # A store of schema 5 or older (audited read-only, not migrated) still copies each tx's bytes.
    copied = bool(conn.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'chain_txs' "
                               "AND column_name = 'tx'").fetchone()[0])  # type: ignore[index]
    place = "t.tx, 0, octet_length(t.tx)" if copied else "b.block, t.tx_offset, t.tx_length"
    rows = conn.execute(
        f"SELECT t.hash, t.height, {place} FROM chain_txs t JOIN chain_blocks b "
        "ON b.height = t.height WHERE t.type = 'job.decline' "
        f"AND t.hash NOT IN (SELECT tx_hash FROM state_rejections){where} ORDER BY t.height, t.idx", params).fetchall()
    found = []
    for tx_hash, height, block, offset, length in rows:
        try:
            tx = decode_tx(bytes(block)[offset:offset + length])
        except TxError:
            continue
        payload = tx.payload if isinstance(tx.payload, Mapping) else {}
        detail = str(payload.get("detail", ""))
        if detail.split(":", 1)[0].strip() not in LIMIT_STATUSES:
            continue
        job = payload.get("job")
        job_id = bytes(job) if isinstance(job, (bytes, bytearray)) else b""
        found.append(_finding(
            "limit_kills", node=peer_id_from_public_key(tx.sender), height=int(height), job_id=job_id.hex() or None,
            source="chain", detail=f"declined ({payload.get('reason')}): {detail}"[:300], tx=bytes(tx_hash).hex(),
            receipts=_job_receipts(conn, job_id, ("job.schedule",), cite) if job_id else []))
    return found


def _disputed(conn: duckdb.DuckDBPyConnection, heights: HeightRange, cite: Callable[..., str]) -> list[dict[str, Any]]:
    where, params = heights.where("finished_height")
    rows = conn.execute(f"SELECT job_id, finished_height, reason FROM state_jobs WHERE state = 'disputed'{where} "
                        "ORDER BY finished_height, job_id", params).fetchall()
    return [_finding("disputed_jobs", node=None, height=None if height is None else int(height), job_id=bytes(job_id).hex(),
                     source="receipts", detail=str(reason or "the replicas' result digests differ")[:300],
                     receipts=_job_receipts(conn, bytes(job_id), ("job.verdict", "job.exec"), cite))
            for job_id, height, reason in rows]



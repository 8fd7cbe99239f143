"""Decisions and services are written back like jobs (node/app/row_writes.py):
a new row is inserted, a changed one updated (only its changed columns, no
upsert), an unchanged one not written; the tables end as an upsert of every
row would leave them. A service's placements are rewritten only when they
changed."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest

from node.app import tables
from node.app.row_writes import write_rows
from node.app.state_rows import DecisionRow, JobRow, PlacementRow, ServiceRow, columns, row_values
from node.app.working import Reads, WorkingState


class Recording:
    """A connection that remembers the SQL of every statement."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn, self.sql = conn, []

    def execute(self, sql: str, *args: Any) -> Any:
        self.sql.append(" ".join(sql.split()))
        return self.conn.execute(sql, *args)

    def writes(self, table: str) -> list[str]:
        return [s for s in self.sql if s.split()[0] in ("INSERT", "UPDATE", "DELETE") and f" {table} " in f"{s} "]


def _db() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(":memory:")
    tables.create_tables(conn)
    return conn


def _rows(conn: duckdb.DuckDBPyConnection, table: str, key: str) -> list[tuple]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()


D_CHANGED, D_SAME, D_NEW = (bytes([i]) * 32 for i in (1, 2, 3))


def _decision(did: bytes, height: int = 5, attested: bytes | None = None) -> DecisionRow:
    return DecisionRow(did, "job.schedule", b"s" * 32, height, b"\xa1af" + did[:1], attested)


def test_decisions_new_changed_and_unchanged() -> None:
    conn = _db()
    for did in (D_CHANGED, D_SAME):
        conn.execute("INSERT INTO state_decisions VALUES (?, ?, ?, ?, ?, ?)", list(row_values(_decision(did))))
    rec = Recording(conn)
    ws = WorkingState(rec, height=9)  # type: ignore[arg-type]
    ws.prefetch([Reads(decisions=(D_CHANGED,))])
    ws.attest(D_CHANGED, b"r" * 32)  # changed: attested
    ws.add_decision(_decision(D_SAME, height=9))  # implied again: keeps its stored row, not written
    ws.add_decision(_decision(D_NEW, height=9))  # new
    rec.sql.clear()
    ws.flush()
    writes = rec.writes("state_decisions")
    assert not any("ON CONFLICT" in s or "OR REPLACE" in s for s in writes)
    assert [s.split()[0] for s in writes] == ["INSERT", "UPDATE"]
    assert writes[1].startswith('UPDATE state_decisions SET "attested" = ?')  # only the changed column
    assert _rows(conn, "state_decisions", "decision_id") == [
        row_values(_decision(D_CHANGED, attested=b"r" * 32)), row_values(_decision(D_SAME)),
        row_values(_decision(D_NEW, height=9))]
    rec.sql.clear()
    ws.flush()  # nothing dirty: nothing written
    assert rec.writes("state_decisions") == []


def test_a_decision_said_new_that_an_earlier_block_recorded_fails_the_flush_never_rewrites_it() -> None:
    conn = _db()
    conn.execute("INSERT INTO state_decisions VALUES (?, ?, ?, ?, ?, ?)",
                 list(row_values(_decision(D_SAME, attested=b"r" * 32))))
    ws = WorkingState(conn, height=9)
    ws.add_decision(_decision(D_SAME, height=9))
    ws.new_decision(D_SAME)
    with pytest.raises(duckdb.ConstraintException):
        ws.flush()


S_CHANGED, S_SAME, S_NEW = (bytes([i]) * 32 for i in (4, 5, 6))
TENANT = b"t" * 32


def _service(sid: bytes, name: str, replicas: int = 2) -> ServiceRow:
    return ServiceRow(sid, TENANT, name, "sql", b"\xa0", b"\xa0", replicas, "processing", True, None, 5, "active",
                      3, 3, 1, None)


def _store_service(conn: duckdb.DuckDBPyConnection, service: ServiceRow, nodes: list[bytes]) -> None:
    conn.execute(f"INSERT INTO state_services VALUES ({', '.join('?' * len(row_values(service)))})",
                 list(row_values(service)))
    for slot, node in enumerate(nodes):
        conn.execute("INSERT INTO state_service_placements VALUES (?, ?, ?, ?)", [service.service_id, slot, node, 3])


def test_services_new_changed_and_unchanged_and_their_placements() -> None:
    conn = _db()
    _store_service(conn, _service(S_CHANGED, "a"), [b"n1" * 16, b"n2" * 16])
    _store_service(conn, _service(S_SAME, "b"), [b"n3" * 16])
    rec = Recording(conn)
    ws = WorkingState(rec, height=9)  # type: ignore[arg-type]
    changed, same = ws.service(S_CHANGED), ws.service(S_SAME)
    assert changed is not None and same is not None
    changed.replicas, changed.updated_height = 3, 9  # placements as loaded
    ws.touch_service(changed)
    ws.touch_service(same)  # touched, unchanged
    new = _service(S_NEW, "c")
    new.placements = [PlacementRow(S_NEW, 0, b"n4" * 16, 9)]
    ws.touch_service(new)
    rec.sql.clear()
    ws.flush()
    writes = rec.writes("state_services")
    assert not any("ON CONFLICT" in s for s in writes)
    assert sorted(s.split()[0] for s in writes) == ["INSERT", "UPDATE"]
    update = next(s for s in writes if s.startswith("UPDATE"))
    assert update.startswith('UPDATE state_services SET "replicas" = ?, "updated_height" = ? WHERE')
    placements = rec.writes("state_service_placements")
    assert [s.split()[0] for s in placements] == ["DELETE", "INSERT"]  # the new service's only
    expected_changed = _service(S_CHANGED, "a", replicas=3)
    expected_changed.updated_height = 9
    assert _rows(conn, "state_services", "service_id") == [
        row_values(expected_changed), row_values(_service(S_SAME, "b")), row_values(new)]
    assert [tuple(r[:3]) for r in _rows(conn, "state_service_placements", "service_id, slot")] == [
        (S_CHANGED, 0, b"n1" * 16), (S_CHANGED, 1, b"n2" * 16), (S_SAME, 0, b"n3" * 16), (S_NEW, 0, b"n4" * 16)]
    # A placement that moves rewrites that service's placements.
    changed.placements = changed.placements[1:]
    changed.placements[0].slot = 0
    ws.touch_service(changed)
    rec.sql.clear()
    ws.flush()
    assert [s.split()[0] for s in rec.writes("state_service_placements")] == ["DELETE", "INSERT"]
    assert rec.writes("state_services") == []
    assert [tuple(r[:3]) for r in _rows(conn, "state_service_placements", "service_id, slot")][:1] == [
        (S_CHANGED, 0, b"n2" * 16)]


def _job(i: int, state: str = "submitted") -> JobRow:
    return JobRow(bytes([i]) * 32, i, TENANT, "sql", b"\xa0", b"\xa0", 1, 5, state, None, 0, 1)


@pytest.mark.parametrize("changed", [1, 2, 3, 5])
def test_changed_rows_are_updated_alike_one_by_one_or_joined(changed: int) -> None:
    """One UPDATE per row up to PER_ROW_UPDATES, one joined to unnest lists beyond: the same rows."""
    conn = _db()
    jobs = [_job(i) for i in range(1, 7)]
    stored: dict = {}
    write_rows(conn, stored, "state_jobs", columns(JobRow), [(j.job_id, j) for j in jobs])
    for i, job in enumerate(jobs[:changed]):
        job.state, job.attempt = "scheduled", 1
        if i % 2:
            job.reason = f"r{i}"
    rec = Recording(conn)
    write_rows(rec, stored, "state_jobs", columns(JobRow), [(j.job_id, j) for j in jobs])  # type: ignore[arg-type]
    assert all(s.startswith("UPDATE") for s in rec.sql) and rec.sql
    assert not any('"tenant"' in s or '"seq"' in s for s in rec.sql)  # unchanged and UNIQUE columns left alone
    assert _rows(conn, "state_jobs", "job_id") == [row_values(j) for j in jobs]

"""The cheaper per-block reads of the state give the answers of the statements
they replaced: nodes with their pending counts, the queue depth, a tenant's
jobs (with the names of their services), a processing node's assignments read
in two parts (the jobs' columns only for jobs it does not hold yet); and the
height the state machine tells the queries after a commit is the only answer
kept past the block, never after a block rolled back."""

from __future__ import annotations

import types
from typing import Any

import duckdb
import pytest

from node.app.machine import StateMachine
from node.app.model import ACTIVE_STATES, PENDING
from node.app.queries import _job_summary
from node.app.rules import ChainRules
from node.roles.processing import ProcessingService
from tests.services.test_state_acks import ack, ready_chain, submit
from tests.services.test_state_support import (
    ALICE,
    BLOCK_MS,
    BOB,
    NODES,
    START_MS,
    Chain,
    block_hash,
    block_seed,
    content_digest,
    random_scenario,
)
from tests.services.test_svc_state_support import deploy
from tests.services.test_svc_state_support import ready_chain as service_chain

# -- the statements replaced, as they were ------------------------------------------------

OLD_JOB_COLUMNS = (
    "job_id, seq, tenant, type, inputs, params, replication, deadline_blocks, state, reason, attempt, "
    "submitted_height, scheduled_height, schedule_block, seed, clock, finished_height, "
    "(SELECT s.name FROM state_services s WHERE s.service_id = state_jobs.service_id), run, policy"
)


def old_jobs_by_tenant(conn: duckdb.DuckDBPyConnection, tenant: bytes, limit: int, before: int | None,
                       state: str | None) -> dict[str, Any]:
    clauses, args = ["tenant = ?"], list[Any]([tenant])
    if before is not None:
        clauses.append("seq < ?")
        args.append(before)
    if state is not None:
        clauses.append("state = ?")
        args.append(state)
    rows = conn.execute(f"SELECT {OLD_JOB_COLUMNS} FROM state_jobs WHERE {' AND '.join(clauses)} "
                        "ORDER BY seq DESC LIMIT ?", [*args, limit + 1]).fetchall()
    page = [_job_summary(row) for row in rows[:limit]]
    return {"jobs": page, "next": page[-1]["seq"] if len(rows) > limit else None}


def old_pending_counts(conn: duckdb.DuckDBPyConnection, processing_only: bool) -> list[tuple[str, int]]:
    where = "WHERE n.capacity > 0" if processing_only else ""
    rows = conn.execute(
        "SELECT n.node_key, (SELECT count(*) FROM state_assignments a WHERE a.node_key = n.node_key AND a.status = ?) "
        f"FROM state_nodes n {where} ORDER BY n.node_key", [PENDING]).fetchall()
    return [(bytes(key).hex(), pending) for key, pending in rows]


def old_queue_depth(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    counts = dict.fromkeys(ACTIVE_STATES, 0)
    for state, count in conn.execute("SELECT state, count(*) FROM state_jobs WHERE state IN (?, ?, ?) GROUP BY state",
                                     list(ACTIVE_STATES)).fetchall():
        counts[state] = count
    row = conn.execute("SELECT count(*) FROM state_jobs WHERE reason IS NOT NULL AND state IN (?, ?, ?)",
                       list(ACTIVE_STATES)).fetchone()
    assert row is not None
    (waiting,) = row
    return {**counts, "waiting_for_nodes": waiting}


def processing_service(machine: StateMachine, node: Any) -> ProcessingService:
    unused: Any = None  # what assigned_to_me and pending_assignments do not touch
    chain: Any = types.SimpleNamespace(finalized_height=0)
    app: Any = types.SimpleNamespace(state=machine)
    return ProcessingService(identity=node, chain=chain, app=app, pool=unused, issuer=unused, node_txs=unused,
                             resolve_input=unused, artifacts=unused, policies=["processing"])


def same_runs(service: ProcessingService, machine: StateMachine) -> None:
    """The role's two-part read lists what assignments_to_run lists, and it runs the same jobs."""
    mine = service.assigned_to_me()
    joined = machine.assignments_to_run(service.key)
    assert [{**row, "state": None} for row in mine] == [{**row, "state": None} for row in joined]
    assert all(row["state"] in ("scheduled", "running") for row in mine)  # a pending assignment's job runs
    assert [r["id"] for r in service.pending_assignments(mine)] == [r["id"] for r in service.pending_assignments(joined)]


# -- the same answers ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", [3, 11, 29])
def test_every_block_of_a_random_history_answers_as_the_old_statements(seed: int) -> None:
    history = random_scenario(seed, blocks=30)
    replica = Chain()
    services = {node.public_key: processing_service(replica.machine, node) for node in NODES}
    conn = replica.conn
    for height, digest, timestamp, txs in history.blocks:
        replica.machine.apply_block(height, digest, timestamp, txs, seed=block_seed(digest))
        for processing_only in (True, False):
            nodes = replica.machine.nodes(processing_only=processing_only)
            assert [(n["node"], n["pending"]) for n in nodes] == old_pending_counts(conn, processing_only)
        assert replica.machine.queue_depth() == old_queue_depth(conn)
        for tenant in (ALICE, BOB):
            for limit, before, state in ((50, None, None), (2, None, None), (3, 7, None), (5, None, "verified")):
                assert replica.machine.jobs_by_tenant(tenant.public_key, limit=limit, before=before, state=state) \
                    == old_jobs_by_tenant(conn, tenant.public_key, limit, before, state)
        for service in services.values():
            same_runs(service, replica.machine)


def test_a_service_run_is_listed_with_its_service_name() -> None:
    chain = service_chain()
    chain.block(deploy(chain))
    chain.block(chain.submit_job(ALICE, {"sales": content_digest("sales v1")}))  # a plain job beside the runs
    listed = chain.machine.jobs_by_tenant(ALICE.public_key)
    assert listed == old_jobs_by_tenant(chain.conn, ALICE.public_key, 50, None, None)
    assert sorted(str(job["service"]) for job in listed["jobs"]) == ["None", "daily"]
    run = next(job for job in listed["jobs"] if job["service"] == "daily")
    found = chain.machine.job(bytes.fromhex(run["id"]))
    assert found is not None and found["service"] == "daily" and found["run"] == 1


def test_the_processing_role_reads_a_job_once_while_it_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = ready_chain(ChainRules(ack_blocks=3))
    job_id = submit(chain)
    first, second = chain.assignees(job_id)
    service = processing_service(chain.machine, first)
    asked: list[set[bytes]] = []
    read = chain.machine.jobs_to_run

    def counted(ids: Any) -> dict[bytes, dict[str, Any]]:
        asked.append(set(ids))
        return read(ids)

    monkeypatch.setattr(chain.machine, "jobs_to_run", counted)
    same_runs(service, chain.machine)
    assert asked == [{job_id}]
    chain.block(ack(chain, first, job_id))  # the ack changes wants_ack, not the job's columns
    same_runs(service, chain.machine)
    assert [row["wants_ack"] for row in service.assigned_to_me()] == [False]
    assert asked == [{job_id}]
    chain.block(chain.result(second, job_id, b"\x11" * 32))  # the job runs now: still pending here
    job = chain.machine.job(job_id)
    assert job is not None and job["state"] == "running"
    same_runs(service, chain.machine)
    assert asked == [{job_id}]
    chain.block(chain.result(first, job_id, b"\x11" * 32))  # answered: no longer pending, forgotten
    assert service.assigned_to_me() == [] and service._run_fields == {}
    again = submit(chain)
    if first in chain.assignees(again):
        same_runs(service, chain.machine)
        assert asked[-1] == {again}


# -- the height told after a commit ---------------------------------------------------------

def following_chain() -> Chain:
    chain = Chain()
    chain.machine.follow_blocks()
    return chain


def commit(chain: Chain, *txs: Any) -> None:
    chain.block(*txs)
    chain.machine.block_committed(chain.height)  # as StateMachine.apply_block would after its commit


def test_the_height_told_after_a_commit_is_answered_without_a_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = following_chain()
    commit(chain, chain.register_node(NODES[0], capacity=2))
    assert len(chain.machine.nodes()) == 1
    commit(chain, chain.register_node(NODES[1], capacity=2))
    monkeypatch.setattr(chain.machine, "_read_height", lambda: pytest.fail("the height was read again"))
    assert chain.machine.height() == chain.height == 2
    assert len(chain.machine.nodes()) == 2  # every other kept answer was dropped by the block


def test_no_height_is_told_or_kept_after_a_block_rolled_back() -> None:
    chain = following_chain()
    commit(chain, chain.register_node(NODES[0], capacity=2))
    height = chain.height + 1
    node = chain.register_node(NODES[1], capacity=2)
    digest = block_hash(height, chain.parent, [node])

    def fail(_: Any) -> None:
        assert chain.machine.height() == height  # inside the block: the uncommitted state, read
        raise RuntimeError("the disk failed")

    with pytest.raises(RuntimeError):
        chain.machine.apply_block(height, digest, START_MS + height * BLOCK_MS, [node], seed=block_seed(digest),
                                  on_applied=fail)
    assert chain.machine.height() == height - 1 and len(chain.machine.nodes()) == 1


def test_without_follow_blocks_the_told_height_is_not_kept() -> None:
    chain = Chain()
    chain.block(chain.register_node(NODES[0], capacity=2))
    chain.machine.block_committed(99)  # ignored: nothing is kept for a state that others may write
    assert chain.machine.height() == chain.height


def test_a_reset_after_a_told_height_reads_the_table() -> None:
    chain = following_chain()
    commit(chain, chain.register_node(NODES[0], capacity=2))
    chain.machine.reset()
    assert chain.machine.height() is None and chain.machine.nodes() == []

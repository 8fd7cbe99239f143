"""What the state machine keeps in memory from one committed block to the next
(StateHints: its height, the next job sequence number, the registered nodes,
the active jobs, and the bounds) is exact: equal to the tables after every block, left as it
was by a block whose transaction rolled back, and a machine that keeps it
reaches the same state as one that forgets it before every block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import pytest

from node.app import StateMachine, state_hints
from node.app import machine as machine_module
from node.app.model import ACTIVE_STATES
from node.app.state_hints import StateHints
from node.app.state_rows import JOB_COLUMNS, AssignmentRow, NodeRow, ResultRow, columns
from node.base.db import transaction
from tests.services.test_state_support import ALICE, NODES, Chain, block_seed, content_digest, random_scenario


class Boom(Exception):
    pass


def _explode(effects: object) -> None:
    raise Boom  # after the block's rows and height are written, before the COMMIT


@contextmanager
def _failing_commit(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """The block's transaction, failing where its COMMIT would run: after everything, rolled back."""
    with transaction(conn):
        yield conn
        raise Boom


def _fail_once(machine: StateMachine, block: tuple, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    height, digest, timestamp, txs = block
    with pytest.raises(Boom):
        if how == "on_applied":
            machine.apply_block(height, digest, timestamp, txs, seed=block_seed(digest), on_applied=_explode)
        else:
            with monkeypatch.context() as patch:
                patch.setattr(machine_module, "transaction", _failing_commit)
                machine.apply_block(height, digest, timestamp, txs, seed=block_seed(digest))


def _assert_hints_exact(machine: StateMachine, conn: duckdb.DuckDBPyConnection, height: int) -> None:
    hints = machine._hints
    assert hints.height == height
    (next_seq,) = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM state_jobs").fetchone()
    assert hints.next_seq in (None, next_seq)
    if hints.nodes is not None:
        assert hints.nodes == _table(conn, f"SELECT {', '.join(columns(NodeRow))} FROM state_nodes ORDER BY node_key")
    for job_id, (job, assignments, results) in (hints.jobs or {}).items():
        assert job[JOB_COLUMNS.index("state")] in ACTIVE_STATES  # only active jobs are kept
        assert (job,) == _table(conn, f"SELECT {', '.join(JOB_COLUMNS)} FROM state_jobs WHERE job_id = ?", [job_id])
        for table, row_type, rows in (("state_assignments", AssignmentRow, assignments),
                                      ("state_results", ResultRow, results)):
            assert rows == _table(conn, f"SELECT {', '.join(columns(row_type))} FROM {table} "
                                        "WHERE job_id = ? ORDER BY node_key", [job_id])


def _table(conn: duckdb.DuckDBPyConnection, sql: str, args: list | None = None) -> tuple:
    return tuple(tuple(bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in row)
                 for row in conn.execute(sql, args or []).fetchall())


@pytest.mark.parametrize(("seed", "max_jobs", "how"), [(4, None, "on_applied"), (5, None, "commit"),
                                                        (6, 2, "on_applied"), (7, 2, "commit")])
def test_a_rolled_back_block_leaves_the_kept_answers_and_the_state_as_they_were(
    seed: int, max_jobs: int | None, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if max_jobs is not None:  # more active jobs than are kept: the newest kept, the others read
        monkeypatch.setattr(state_hints, "MAX_KEPT_JOBS", max_jobs)
    chain = random_scenario(seed, blocks=35)
    chain.empty_blocks(6)
    conn = duckdb.connect(":memory:")
    kept = StateMachine(conn, rules=chain.machine.rules)
    blank = StateMachine(duckdb.connect(":memory:"), rules=chain.machine.rules)
    used_jobs = 0
    for height, digest, timestamp, txs in chain.blocks:
        before, dump = kept._hints, kept.dump()
        used_jobs += bool(before.jobs)
        _fail_once(kept, (height, digest, timestamp, txs), how, monkeypatch)  # every block fails once first
        assert kept._hints is before and kept.dump() == dump
        blank._hints = StateHints()
        for machine in (kept, blank):
            machine.apply_block(height, digest, timestamp, txs, seed=block_seed(digest))
        assert kept.dump() == blank.dump(), f"states differ after block {height}"
        _assert_hints_exact(kept, conn, height)
        assert max_jobs is None or len(kept._hints.jobs or {}) <= max_jobs
    assert kept._hints.next_seq is not None and kept._hints.nodes is not None  # they were used
    assert used_jobs  # some blocks began with active jobs kept


def test_jobs_submitted_after_a_rolled_back_block_get_the_sequence_numbers_a_fresh_machine_gives() -> None:
    chain = Chain()
    chain.block(*(chain.register_node(node) for node in NODES[:3]))
    digest = content_digest("memory")
    chain.block(chain.register_dataset(ALICE, digest))
    chain.block(chain.submit_job(ALICE, {"data": digest}))  # seq 1: the machine learns the next is 2
    assert chain.machine._hints.next_seq == 2
    jobs = [chain.submit_job(ALICE, {"data": digest}) for _ in range(3)]
    height = chain.height + 1
    with pytest.raises(Boom):
        chain.machine.apply_block(height, b"\x07" * 32, 1, jobs, seed=block_seed(b"\x07" * 32), on_applied=_explode)
    assert chain.machine._hints.next_seq == 2  # seqs 2-4 were handed out in the block rolled back
    chain.block(*jobs)
    seqs = [row[0] for row in chain.conn.execute("SELECT seq FROM state_jobs ORDER BY seq").fetchall()]
    assert seqs == [1, 2, 3, 4]
    fresh = StateMachine(duckdb.connect(":memory:"), rules=chain.machine.rules)
    for h, d, t, txs in chain.blocks:
        fresh.apply_block(h, d, t, txs, seed=block_seed(d))
    assert fresh.dump() == chain.machine.dump()


def test_a_node_change_rolled_back_is_not_kept() -> None:
    chain = Chain()
    chain.block(*(chain.register_node(node) for node in NODES[:2]))
    nodes_before = chain.machine._hints.nodes
    assert nodes_before is not None and len(nodes_before) == 2
    again = chain.register_node(NODES[0], capacity=5)
    with pytest.raises(Boom):
        chain.machine.apply_block(chain.height + 1, b"\x08" * 32, 1, [again], seed=block_seed(b"\x08" * 32),
                                  on_applied=_explode)
    assert chain.machine._hints.nodes == nodes_before
    chain.block(again)
    capacities = dict(chain.conn.execute("SELECT node_key, capacity FROM state_nodes").fetchall())
    assert capacities[NODES[0].public_key] == 5
    _assert_hints_exact(chain.machine, chain.conn, chain.height)


def test_a_job_result_rolled_back_is_not_kept_and_the_job_is_read_as_committed() -> None:
    chain = Chain()
    chain.block(*(chain.register_node(node) for node in NODES[:3]))
    digest = content_digest("kept-job")
    chain.block(chain.register_dataset(ALICE, digest))
    job = chain.submit_job(ALICE, {"data": digest}, replication=2)
    chain.block(job)
    kept = chain.machine._hints.jobs
    assert kept is not None and job.hash in kept
    first, second = chain.assignees(job.hash)
    result = chain.result(first, job.hash, b"\x01" * 32)
    with pytest.raises(Boom):
        chain.machine.apply_block(chain.height + 1, b"\x09" * 32, 1, [result], seed=block_seed(b"\x09" * 32),
                                  on_applied=_explode)
    assert chain.machine._hints.jobs is kept  # the job as committed: no result
    chain.block(result, chain.result(second, job.hash, b"\x01" * 32))
    status = chain.machine.job(job.hash)
    assert status is not None and status["state"] == "verified"
    assert job.hash not in (chain.machine._hints.jobs or {})  # final: no longer kept
    _assert_hints_exact(chain.machine, chain.conn, chain.height)


@pytest.mark.parametrize("seed", [8, 9])
def test_a_pre_screen_with_the_kept_answers_answers_as_one_without(seed: int) -> None:
    """check_tx_against_state (the gateway's and mempool's pre-screen) reads the
    committed state through the kept answers: it must refuse exactly what a
    machine that forgets them refuses, before every block of a random history."""
    chain = random_scenario(seed, blocks=35)
    machine = StateMachine(duckdb.connect(":memory:"), rules=chain.machine.rules)
    checked = 0
    for height, digest, timestamp, txs in chain.blocks:
        kept = machine._hints
        with_hints = [machine.check_tx_against_state(tx) for tx in txs]
        machine._hints = StateHints()
        assert with_hints == [machine.check_tx_against_state(tx) for tx in txs], f"before block {height}"
        machine._hints = kept
        checked += len(txs)
        machine.apply_block(height, digest, timestamp, txs, seed=block_seed(digest))
    assert checked and machine._hints.jobs is not None

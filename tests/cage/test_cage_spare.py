"""The fork server's spare child: forked before its job, used for exactly
one job, confined only after it has the job, replaced if it dies."""

from __future__ import annotations

import os
import signal
import time

import psutil
from conftest import HERE, all_policies

from node.cage.job import JobSpec
from node.cage.pool import CagePool
from node.cage.results import decode_result


def fn_job(function: str, **kwargs) -> JobSpec:
    return JobSpec(kind="python-fn", function=function, policy="processing", **kwargs)


def spare_pids(pool: CagePool) -> list[int]:
    """The children of the pool's fork servers waiting for a job (asleep on
    their job pipe). Between jobs a fork server may also still have the
    last job's child, killed and not yet reaped, or a spare that rehearses."""
    waiting = []
    for server in pool._servers:
        for child in psutil.Process(server.process.pid).children():
            try:
                if child.status() == psutil.STATUS_SLEEPING:
                    waiting.append(child.pid)
            except psutil.NoSuchProcess:
                pass
    return waiting


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_every_job_runs_in_a_fresh_process_without_the_last_jobs_state(pool):
    first = pool.run(fn_job("hostile.leave_state"))
    assert first.ok, first.detail
    [[left_by]] = decode_result(first.result)["rows"]
    second = pool.run(fn_job("hostile.find_state"))
    assert second.ok, second.detail
    [[pid, python_state, duckdb_tables]] = decode_result(second.result)["rows"]
    assert pid != left_by
    assert python_state == 0 and duckdb_tables == 0


def test_a_spare_that_died_while_waiting_is_replaced(pool):
    assert wait_for(lambda: len(spare_pids(pool)) == 1)
    [spare] = spare_pids(pool)
    os.kill(spare, signal.SIGKILL)
    assert wait_for(lambda: is_gone(spare))
    outcome = pool.run(JobSpec(kind="sql", policy="processing", sql="SELECT 42 AS answer"))
    assert outcome.ok, outcome.detail
    assert decode_result(outcome.result)["rows"] == [[42]]
    assert wait_for(lambda: len(spare_pids(pool)) == 1 and spare_pids(pool) != [spare])


def test_closing_the_pool_leaves_no_spare_behind():
    pool = CagePool(all_policies(), python_path=[str(HERE)], function_modules=["cage_hostile_functions"])
    try:
        assert wait_for(lambda: len(spare_pids(pool)) == 1)
        [spare] = spare_pids(pool)
        server = pool._servers[0].process.pid
    finally:
        pool.close()
    assert not psutil.pid_exists(server)
    assert wait_for(lambda: is_gone(spare))



def test_a_job_that_may_fork_is_reaped_before_its_outputs_are_described(pool, tmp_path):
    # Under a policy that allows fork, the supervisor reaps every process of
    # the job before hashing the output directory (not after the outcome).
    out = tmp_path / "out"
    out.mkdir()
    outcome = pool.run(JobSpec(kind="python-fn", function="hostile.write_output", policy="forking",
                               output_dir=str(out), params={"text": "forked"}))
    assert outcome.ok, outcome.detail
    [entry] = outcome.witness["outputs"]
    assert entry["path"] == "report.txt" and entry["size"] == len("forked")
    assert wait_for(lambda: len(spare_pids(pool)) == 1)

"""Local faults never decide a job (issue 13, cases 7 and 8).

* What a processing node signs: only outcomes that are the job's own (its result,
  or a failure any node replays identically). Real cage runs are classified; the
  issue's node-local failures (``IOException ... Permission denied``, ``No files
  found that match the pattern``, a run over other bytes than the job's digests,
  limits that depend on the host) are "could not run".
* On a four-node testnet of real daemons: a node whose input blob path is a
  directory (a fault root cannot bypass) declines the job on chain; another node
  takes the slot at once and the job is verified, never disputed.
* A dataset whose every stored copy is corrupt: the job fails with an
  ``input_unavailable`` reason on chain within a bounded number of blocks,
  instead of being reassigned forever.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from node.cage.job import JobOutcome
from node.cage.pool import CagePool
from node.roles.processing import job_spec, local_failure
from node.sdk.client import Client
from node.testnet import layout, processes
from tests.services.test_job_faults import CSV, QUERY, assert_alive, wait_registered
from tests.support import run_cli

SEED = "00" * 32


def sql_job(query: str) -> dict:  # type: ignore[type-arg]
    return {"type": "sql", "params": {"query": query}, "seed": SEED, "clock": 1_700_000_000}


@pytest.fixture(scope="module")
def cage() -> CagePool:  # type: ignore[misc]
    with CagePool() as pool:
        yield pool


@pytest.fixture
def sales(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "sales.csv"
    path.write_text(CSV)
    return path, hashlib.sha256(CSV.encode()).hexdigest()


def run(cage: CagePool, job: dict, path: Path) -> JobOutcome:  # type: ignore[type-arg]
    return cage.run(job_spec(job, {"sales": str(path)}))


def test_the_jobs_own_outcomes_are_signed(cage, sales):
    path, digest = sales
    for query, status in ((QUERY, "ok"),
                          ("SELECT nosuch FROM sales", "error"),  # BinderException: replays identically
                          ("SELECT CAST(product AS INTEGER) FROM sales", "error"),  # ConversionException
                          ("SELECT * FROM read_csv('/etc/passwd')", "refused")):  # the SQL gate
        outcome = run(cage, sql_job(query), path)
        assert outcome.status == status, (query, outcome.detail)
        assert local_failure(outcome, {"sales": digest}) is None, (query, outcome.detail)
    trend = {"type": "trend-analysis", "seed": SEED, "clock": 1_700_000_000,
             "params": {"input": "sales", "time_column": "day", "value_column": "product", "window": "7d"}}
    outcome = run(cage, trend, path)
    assert outcome.status == "error" and outcome.detail.startswith("ValueError: params.value_column")
    assert local_failure(outcome, {"sales": digest}) is None


def test_node_local_failures_are_never_signed(cage, sales, tmp_path):
    path, digest = sales
    ok = run(cage, sql_job(QUERY), path)
    # The two failures the issue saw signed as job results.
    for detail in (f'IOException: IO Error: Cannot open file "{tmp_path}/blobs/d5/cd22": Permission denied',
                   f'IOException: IO Error: No files found that match the pattern "{path}"',
                   "PermissionException: Permission Error: Cannot access file",
                   "InternalException: INTERNAL Error: Attempted to access index 3",
                   "OSError: [Errno 28] No space left on device",
                   "RuntimeError: the worker must be single-threaded to confine itself",
                   "worker failed before the job started"):
        failed = dataclasses.replace(ok, status="error", detail=detail, result=None, result_digest=None)
        assert local_failure(failed, {"sales": digest}) == f"error: {detail}"
    # Limits that depend on the host, and a worker lost or killed by someone else.
    for status, detail in (("cpu_limit", "CPU limit of 30 s"), ("timeout", "wall-clock limit of 60 s"),
                           ("memory_limit", "MemoryError"), ("crashed", "worker exited with status 1"),
                           ("killed", "killed by signal SIGKILL")):
        failed = dataclasses.replace(ok, status=status, detail=detail, result=None, result_digest=None)
        assert local_failure(failed, {"sales": digest}) == f"{status}: {detail}"
    # A forbidden system call and an oversized output are the job's own.
    for status, detail in (("killed", "killed by seccomp (SIGSYS)"), ("output_limit", "output exceeds 64 MB")):
        failed = dataclasses.replace(ok, status=status, detail=detail, result=None, result_digest=None)
        assert local_failure(failed, {"sales": digest}) is None


def test_a_run_over_other_bytes_than_the_jobs_digest_is_not_signed(cage, sales, tmp_path):
    path, digest = sales
    changed = tmp_path / "changed.csv"
    changed.write_text(CSV.replace("apples,3", "apples,4"))
    outcome = run(cage, sql_job(QUERY), changed)  # e.g. the copy changed between fetching and the cage opening it
    assert outcome.status == "ok"
    problem = local_failure(outcome, {"sales": digest})
    assert problem is not None and "other than the job's digests (sales)" in problem


# -- process level ---------------------------------------------------------------------

@pytest.mark.timeout(900)
def test_local_faults_on_a_testnet_never_decide_a_job(tmp_path):
    directory = tmp_path / "net"
    plans = layout.plan_testnet(4, seed="local-faults")
    layout.write_testnet(directory, plans)
    key = tmp_path / "tenant.key"
    assert run_cli("keys", "init", "--out", str(key)).returncode == 0
    gateway, faulty = plans[0].address, plans[3]
    processes.up(directory)
    try:
        wait_registered(gateway, key, 4)
        client = Client(gateway, key)

        def blob(plan, digest: str) -> Path:  # type: ignore[no-untyped-def]
            return directory / f"{plan.name}-data" / "blobs" / digest[:2] / digest[2:]

        # (a) The faulty node's copy of the input is a directory: it can neither use nor fetch one.
        first = tmp_path / "first.csv"
        first.write_text(CSV)
        digest = client.upload_dataset(first, name="first")["digest"]
        path = blob(faulty, digest)
        if path.is_file():
            path.unlink()
        path.mkdir(parents=True)
        status = None
        for attempt in range(6):  # r = 3 of 4 nodes: the faulty one is usually among the first assignees
            job_id = client.submit_job(job_type="sql", data_source={"first": digest}, replication=3,
                                       parameters={"query": QUERY.replace("sales", "first") + f" -- {attempt}"},
                                       deadline_blocks=1000)
            status = client.wait_for_completion(job_id, timeout=240)
            assert status["state"] == "verified", status  # never disputed, never failed
            mine = [a for a in status["assignments"] if a["peer_id"] == faulty.identity.peer_id]
            if mine:
                break
        assert status is not None and mine, "the faulty node was never assigned"
        assert mine[0]["status"] == "declined" and mine[0]["note"].startswith("local_fault: input"), mine
        assert "IsADirectoryError" in mine[0]["note"]
        computed_by = {r["peer_id"] for r in status["results"]}
        assert len(computed_by) == 3 and faulty.identity.peer_id not in computed_by
        replacement = [a for a in status["assignments"] if a["attempt"] == 2]
        assert len(replacement) == 1 and replacement[0]["assigned_height"] < mine[0]["deadline"]
        log = processes.log_file(directory, faulty.name).read_text(errors="replace")
        assert "job declined: could not run here" in log

        # (b) Every stored copy of an input corrupt: the job fails with that reason, in bounded blocks.
        second = tmp_path / "second.csv"
        second.write_text(CSV + "2026-01-04,figs,2\n")
        digest = client.upload_dataset(second, name="second")["digest"]
        corrupted = 0
        for plan in plans:
            path = blob(plan, digest)
            if path.is_file():
                raw = bytearray(path.read_bytes())
                raw[len(raw) // 2] ^= 0x01
                path.write_bytes(bytes(raw))
                corrupted += 1
        assert corrupted == 2  # the replicas
        job_id = client.submit_job(job_type="sql", data_source={"second": digest}, replication=2,
                                   parameters={"query": QUERY.replace("sales", "second")}, deadline_blocks=1000)
        status = client.wait_for_completion(job_id, timeout=300)
        assert status["state"] == "failed", status
        assert "could not run it (input_unavailable x" in status["reason"], status["reason"]
        assert "no peer gave a verified copy" in status["reason"]
        assert status["results"] == [] and status["verdict"] is None
        assert status["finished_height"] - status["scheduled_height"] < 200  # not the 1000-block deadline
        assert {a["status"] for a in status["assignments"]} <= {"declined", "cancelled"}
        assert all(a["note"].startswith("input_unavailable: ") for a in status["assignments"] if a["status"] == "declined")
        assert_alive(directory, [p.name for p in plans])
    finally:
        processes.down(directory)

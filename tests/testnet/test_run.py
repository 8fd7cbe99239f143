"""`metanode testnet run` end to end on loopback: the shipped ci-short manifest
(kill, pause, restart under transactions and analytics jobs) passes every
check, every job verified with every receipt verifying offline; the fork check itself
tells agreeing chains from forked ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.testnet import layout, processes
from node.testnet.runner import _fork_check
from tests.support import run_cli

MANIFESTS = Path(__file__).resolve().parents[2] / "testnet" / "manifests"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ci_short_manifest_runs_green(tmp_path):
    directory = tmp_path / "net"
    done = run_cli("testnet", "run", str(MANIFESTS / "ci-short.toml"), "--dir", str(directory), timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for event in ("kill node3 (SIGKILL", "start node3", "pause node2 (SIGSTOP", "resume node2 (SIGCONT)", "stop node1 (SIGTERM", "start node1"):
        assert event in out
    assert re.search(r"PASS  no fork: 4 nodes agree on every block 1\.\.\d+", out)
    assert "PASS  catch-up" in out
    submitted, committed = map(int, re.search(r"transactions: (\d+) submitted, (\d+) committed", out).groups())
    assert submitted > 0 and committed == submitted
    # The analytics jobs of [load] job_rate: every one verified, every receipt of each verifies offline.
    line = re.search(r"^jobs: (\d+) submitted \((.*?)\) by 2 tenants; (.*)$", out, re.M)
    assert line, out[-3000:]
    jobs = int(line.group(1))
    assert jobs >= 4  # 0.3/s for 24 s, less the tenants' dataset registration
    assert re.search(r"\d+ sql", line.group(2)) and re.search(r"\d+ trend-analysis", line.group(2))
    counts = dict((s, int(n)) for n, s in re.findall(r"(\d+) (verified|failed|cancelled|disputed|submitted|scheduled|running|not on chain)", line.group(3)))
    assert counts["verified"] == jobs and counts["failed"] == counts["disputed"] == counts["cancelled"] == 0, line.group(0)
    receipts = int(re.search(r"(\d+) receipts verified offline", line.group(3)).group(1))
    assert receipts >= 4 * jobs  # schedule, two executions and the verdict of each job at least
    kinds = {k: int(n) for n, k in re.findall(r"(\d+) (job\.\w+|api\.call)", line.group(3))}
    assert kinds["job.exec"] >= 2 * jobs and kinds["job.verdict"] >= jobs and kinds["job.schedule"] >= jobs, kinds
    assert re.search(r"submit-to-final p50 [\d.]+ s, p95 [\d.]+ s", line.group(3))
    assert re.search(r"^PASS  jobs: every job final, every receipt verifies offline", out, re.M)
    assert out.rstrip().endswith("result: PASS")
    # Every daemon was stopped on the way out.
    assert all(processes.running_pid(directory, str(n["name"])) is None for n in layout.read_manifest(directory))


def test_fork_check_finds_the_first_diverging_height():
    same = (["a1", "a2", "a3"], set())
    forked = (["a1", "b2", "b3"], set())
    assert _fork_check({"node0": same, "node1": same}, 3).ok
    result = _fork_check({"node0": same, "node1": same, "node2": forked}, 3)
    assert not result.ok and "fork at height 2" in result.detail and "node2" in result.detail
    assert not _fork_check({"node0": same}, 3).ok  # one answering node proves nothing

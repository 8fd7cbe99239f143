"""`metanode testnet run` end to end on loopback: the shipped ci-short manifest
(kill, pause, restart under load) passes every check; the fork check itself
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

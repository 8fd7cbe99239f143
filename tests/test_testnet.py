"""The local testnet and the demo, through the real CLI."""

from __future__ import annotations

import json

from node.testnet.layout import plan_testnet
from tests.support import run_cli


def test_plan_is_deterministic_given_a_seed():
    a = plan_testnet(4, non_validators=1, base_port=40000, seed="s")
    b = plan_testnet(4, non_validators=1, base_port=40000, seed="s")
    assert [p.address for p in a] == [p.address for p in b]
    assert [p.address for p in plan_testnet(4, base_port=40000, seed="t")] != [p.address for p in a[:4]]
    assert "validator" not in a[4].roles and all("validator" in p.roles for p in a[:4])


def test_init_up_status_down(tmp_path):
    net = tmp_path / "net"
    done = run_cli("testnet", "init", "--validators", "3", "--dir", str(net), "--seed", "t1")
    assert done.returncode == 0, done.stderr
    assert all(oct((net / f"node{i}.key").stat().st_mode & 0o777) == "0o600" for i in range(3))
    again = run_cli("testnet", "init", "--validators", "3", "--dir", str(net))
    assert again.returncode == 2 and "already holds a testnet" in again.stderr
    started = run_cli("testnet", "up", "--dir", str(net), timeout=180)
    try:
        # `up` waits for the mesh, showing progress on stderr (stdout stays the pids).
        assert started.returncode == 0, started.stderr
        assert "testnet up: 3 nodes meshed" in started.stderr and started.stdout.count(" pid ") == 3
        rows = json.loads(run_cli("testnet", "status", "--dir", str(net), "--json").stdout)
        ids = {r["peer_id"] for r in rows}
        assert all(r["live"] and ids - {r["peer_id"]} <= set(r["peer_ids"]) for r in rows)
        assert all(r["pid"] for r in rows)
        table = run_cli("testnet", "status", "--dir", str(net)).stdout
        assert table.count(" yes ") == 3
        logs = run_cli("testnet", "logs", "--dir", str(net), "node0").stdout
        assert "daemon started" in logs
    finally:
        stopped = run_cli("testnet", "down", "--dir", str(net))
    assert stopped.returncode == 0 and stopped.stdout.count("stopped") == 3
    rows = json.loads(run_cli("testnet", "status", "--dir", str(net), "--json").stdout)
    assert not any(r["live"] or r["pid"] for r in rows)


def test_demo_runs_end_to_end():
    done = run_cli("demo", "--nodes", "2", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo complete" in done.stdout
    assert done.stdout.count("metanode rpc node_status --node") == 2
    # Both jobs verified on two nodes each, their tables printed, a receipt verified offline.
    assert done.stdout.count("verified, computed identically by") == 2
    assert "product  year  units    revenue" in done.stdout and "219546.20" in done.stdout
    assert "group   period" in done.stdout and "direction" in done.stdout
    assert "valid: signature, inclusion proof" in done.stdout
    assert done.stderr == ""  # nothing noisy from libp2p on a user's terminal


def test_status_of_missing_testnet_is_a_usage_error(tmp_path):
    done = run_cli("testnet", "status", "--dir", str(tmp_path / "nothing"))
    assert done.returncode == 2 and "no testnet" in done.stderr

"""``metanode mesh status`` against a running four-node testnet: every node the
entry knows, with the figures its Prometheus metrics carry (the same ones
``metanode testnet status`` reads), an unreachable node shown as such, JSON
and table output, and one-line errors for a bad or dead entry node."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest

from node.testnet import layout, processes
from tests.support import free_port, rpc_json, run_cli, wait_until

pytestmark = pytest.mark.timeout(600)


def scrape_height(port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return int(float(next(line.split()[1] for line in text.splitlines() if line.startswith("metanode_height "))))


def mesh_json(entry: str) -> dict:  # type: ignore[type-arg]
    done = run_cli("mesh", "status", "--node", entry, "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_mesh_status_of_a_testnet(tmp_path):
    directory = tmp_path / "net"
    plans = layout.plan_testnet(4, seed="mesh-status")
    layout.write_testnet(directory, plans)
    metrics_port = free_port()
    config = directory / "node1.toml"
    config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    entry, ids = plans[1].address, {p.identity.peer_id for p in plans}
    processes.up(directory)
    try:
        def formed() -> dict | None:  # type: ignore[type-arg]
            report = mesh_json(entry)
            nodes = report["nodes"]
            ready = len(nodes) == 4 and all(n["live"] and n["registered"] and n["height"] for n in nodes)
            return report if ready and all(ids - {n["peer_id"]} <= set(n["peer_ids"]) for n in nodes) else None

        report = wait_until(formed, 240, interval=2, what="four live, registered, meshed nodes in mesh status")
        assert report["entry"] == plans[1].identity.peer_id
        by_id = {n["peer_id"]: n for n in report["nodes"]}
        for plan in plans:
            node = by_id[plan.identity.peer_id]
            assert node["moniker"] == plan.name and node["roles"] == list(plan.roles), node
            assert node["validator"] and node["address"] and node["connected_to_entry"]
            assert node["round"] is not None and node["mempool"] is not None and node["jobs"] == 0
            assert node["peers"] >= 3 and node["entry"] == (plan is plans[1])

        # The figures are the node's Prometheus gauges: scraped before and after, they bracket the RPC's.
        before = scrape_height(metrics_port)
        figures = rpc_json(entry, "node_metrics")
        after = scrape_height(metrics_port)
        assert before <= figures["height"] <= after and {"round", "peers", "mempool_transactions", "jobs"} <= set(figures)
        assert by_id[plans[1].identity.peer_id]["height"] <= figures["height"]

        # `testnet status` reads the same figures (heights read later are never lower).
        rows = json.loads(run_cli("testnet", "status", "--dir", str(directory), "--json").stdout)
        for row in rows:
            node = by_id[row["peer_id"]]
            assert row["live"] and row["height"] >= node["height"] and ids - {row["peer_id"]} <= set(row["peer_ids"])
            assert {"round", "mempool", "jobs", "peers"} <= set(row) and row["jobs"] == 0
        assert " yes " in run_cli("testnet", "status", "--dir", str(directory)).stdout

        # A dead node: listed from the chain's registration, marked unreachable; the command still succeeds.
        dead = plans[3]
        os.kill(processes.running_pid(directory, dead.name), signal.SIGKILL)  # type: ignore[arg-type]
        wait_until(lambda: processes.running_pid(directory, dead.name) is None, 30, what="the killed node gone")
        report = mesh_json(entry)
        by_id = {n["peer_id"]: n for n in report["nodes"]}
        gone = by_id[dead.identity.peer_id]
        assert not gone["live"] and gone["error"] and gone["height"] is None
        assert gone["moniker"] == dead.name and set(gone["roles"]) == set(dead.roles) and gone["validator"]  # roles as registered on chain
        assert all(n["live"] for n in report["nodes"] if n["peer_id"] != dead.identity.peer_id)
        text = run_cli("mesh", "status", "--node", entry, timeout=120)
        assert text.returncode == 0, text.stderr
        assert "4 nodes, 3 live" in text.stdout and "unreachable" in text.stdout and "Traceback" not in text.stderr
        dead_line = next(line for line in text.stdout.splitlines() if dead.identity.peer_id in line)
        assert dead_line.split()[:2] == [dead.name, "NO"]
        rows = json.loads(run_cli("testnet", "status", "--dir", str(directory), "--json").stdout)
        assert [r["live"] for r in rows] == [True, True, True, False]

        # The entry itself unreachable: exit 3 and one line; a malformed address: exit 2.
        refused = run_cli("mesh", "status", "--node", dead.address, timeout=120)
        assert refused.returncode == 3 and refused.stderr.startswith("error: could not reach"), refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        bad = run_cli("mesh", "status", "--node", "not-an-address")
        assert bad.returncode == 2 and "--node" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        processes.down(directory)

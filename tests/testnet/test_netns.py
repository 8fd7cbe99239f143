"""Network namespaces for testnets: one namespace per node on a bridge, links
cut and restored, everything removed afterwards; four validators in
namespaces survive a disconnect (and netem delay/loss where the kernel has it)
without forking, and catch up.

These need root and iproute2 (`ip netns`), and netem needs the kernel's
sch_netem module; where one is missing the test is skipped and says which."""

from __future__ import annotations

import subprocess
import sys

import pytest

from node.testnet.manifest import parse_manifest
from node.testnet.netbase import STATE_FILE, cleanup_recorded, netem_unavailable_reason, netns_unavailable_reason
from node.testnet.netns import NetnsNetwork
from node.testnet.runner import run_manifest

pytestmark = [pytest.mark.netns, pytest.mark.skipif(netns_unavailable_reason() is not None, reason=f"netns tests skipped: {netns_unavailable_reason()}")]

SERVER = "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 7777)); s.listen(); print('ready', flush=True)\nwhile True:\n    c,_=s.accept(); c.sendall(b'hi'); c.close()"
CLIENT = "import socket,sys; s=socket.create_connection((sys.argv[1], 7777), timeout=1.5); print(s.recv(2).decode())"


def existing_names() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout + subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def reachable(net: NetnsNetwork, src: str, dst: str) -> bool:
    done = subprocess.run([*net.exec_prefix(src), sys.executable, "-c", CLIENT, net.ip(dst)], capture_output=True, text=True, timeout=20)
    return done.returncode == 0 and done.stdout.strip() == "hi"


def test_namespaces_on_a_bridge_disconnect_and_teardown(tmp_path):
    net = NetnsNetwork.create(tmp_path, ["node0", "node1"])
    server = None
    try:
        assert (tmp_path / STATE_FILE).exists()
        assert net.ip("node0") != net.ip("node1") and net.ip("node0").startswith("10.77.")
        server = subprocess.Popen([*net.exec_prefix("node0"), sys.executable, "-c", SERVER, net.ip("node0")], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        assert reachable(net, "node1", "node0")
        # The server listens only inside node0's namespace, not in the root one.
        assert subprocess.run(["ip", "netns", "exec", net.namespace("node1"), "ip", "-o", "addr"], capture_output=True, text=True).stdout.count(net.ip("node0")) == 0
        net.disconnect("node0")
        assert not reachable(net, "node1", "node0")
        net.reconnect("node0")
        assert reachable(net, "node1", "node0")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        net.teardown()
    left = existing_names()
    assert net.bridge not in left and net.namespace("node0") not in left and net.host_veth("node1") not in left
    assert not (tmp_path / STATE_FILE).exists()


def test_a_crashed_runs_namespaces_are_removed_by_the_next(tmp_path):
    net = NetnsNetwork.create(tmp_path, ["node0"])  # never torn down: as if the runner died
    assert net.namespace("node0") in existing_names()
    removed = cleanup_recorded(tmp_path)
    assert net.bridge in removed
    left = existing_names()
    assert net.bridge not in left and net.namespace("node0") not in left


def manifest(perturbations: list[dict]) -> dict:
    return {
        "testnet": {"validators": 4, "netns": True, "block_period_ms": 500},
        "load": {"tx_rate": 2, "duration_s": 18},
        "perturbation": perturbations,
    }


def run_and_check(tmp_path, doc: dict, expected_events: list[str]):
    lines: list[str] = []
    report = run_manifest(parse_manifest(doc, "netns-test"), tmp_path / "net", log=lines.append)
    text = report.text()
    assert report.ok, text + "\n" + "\n".join(lines)
    for event in expected_events:
        assert event in text
    assert {c.name for c in report.checks} == {"catch-up", "no fork", "transactions"}
    assert report.txs_submitted > 0 and report.txs_committed == report.txs_submitted
    assert len(set(report.final_heights.values())) >= 1 and all(h is not None for h in report.final_heights.values())
    assert "started 4 nodes" in lines[0] and "netns" in lines[0]
    assert not (tmp_path / "net" / STATE_FILE).exists()  # namespaces removed on the way out
    return report


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_four_validators_in_namespaces_survive_a_disconnect(tmp_path):
    report = run_and_check(tmp_path, manifest([{"at_s": 3, "node": "node3", "action": "disconnect", "duration_s": 6}]),
                           ["disconnect node3", "reconnect node3"])
    assert report.unreachable_attempts > 0  # the cut was real: clients could not reach node3 meanwhile


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(netem_unavailable_reason() is not None, reason=f"netem skipped: {netem_unavailable_reason()}")
def test_four_validators_survive_netem_delay_and_loss(tmp_path):
    run_and_check(tmp_path, manifest([
        {"at_s": 2, "node": "node1", "action": "delay", "delay_ms": 100, "duration_s": 6},
        {"at_s": 4, "node": "node2", "action": "loss", "loss_pct": 5, "delay_ms": 50, "duration_s": 8},
        {"at_s": 10, "node": "node3", "action": "disconnect", "duration_s": 4},
    ]), ["netem node1: delay 100 ms", "netem node2: delay 50 ms, loss 5%", "disconnect node3"])

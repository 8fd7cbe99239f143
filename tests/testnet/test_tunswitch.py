"""The userspace TUN switch (node.testnet.tunswitch) that stands in for the
bridge + netem where the kernel has no sch_netem: real TCP between real
namespaces through it; a configured delay shows in the round-trip time;
loss drops packets (counted) while TCP still delivers every byte; 100% loss
and disconnect cut traffic and restore/reconnect bring it back; teardown and
a crashed run's cleanup leave no namespace and no switch process; four
validators survive delay, loss and a disconnect through it.

The packet logic (FIFO per link, seeded loss, bounded queues) is also tested
on pipes without root. The rest needs root, iproute2 and /dev/net/tun, and is
skipped with the reason otherwise."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.testnet.manifest import parse_manifest
from node.testnet.netbase import STATE_FILE, NetnsError, cleanup_recorded, netem_unavailable_reason
from node.testnet.tunswitch import LOG_FILE, MAX_QUEUE, Port, Switch, TunNetwork, tun_unavailable_reason

REASON = tun_unavailable_reason()
needs_tun = pytest.mark.skipif(REASON is not None, reason=f"tun switch tests skipped: {REASON}")

# One script for both ends: "serve" answers "p" connections byte for byte (ping-pong)
# and "s" connections with the length and sha256 of all they sent; "ping"/"send" are clients.
PEER = r"""
import hashlib, random, socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "serve":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen()
    print("ready", flush=True)
    while True:
        c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); c.settimeout(120)
        try:
            kind = c.recv(1)
            if kind == b"p":
                while (b := c.recv(1)): c.sendall(b)
            elif kind == b"s":
                h, n = hashlib.sha256(), 0
                while (b := c.recv(65536)): h.update(b); n += len(b)
                c.sendall(f"{n} {h.hexdigest()}".encode())
        except OSError:
            pass
        c.close()
timeout = float(sys.argv[5])
try:
    c = socket.create_connection((host, port), timeout=timeout)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "ping":
        c.sendall(b"p"); rtts = []
        for _ in range(int(sys.argv[4])):
            t = time.perf_counter(); c.sendall(b"x"); assert c.recv(1) == b"x"; rtts.append(time.perf_counter() - t)
        print(" ".join(f"{r:.6f}" for r in rtts))
    else:
        data = random.Random(7).randbytes(int(sys.argv[4]))
        t = time.perf_counter(); c.sendall(b"s" + data); c.shutdown(socket.SHUT_WR)
        answer = b""
        while (b := c.recv(100)): answer += b
        print(f"{len(data)} {hashlib.sha256(data).hexdigest()}|{answer.decode()}|{time.perf_counter() - t:.6f}")
except OSError as exc:
    print(f"failed: {exc!r}"); sys.exit(1)
"""
PORT = 7788


def client(net: TunNetwork, src: str | None, dst: str, mode: str, amount: int, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a client in ``src``'s namespace (None: the root namespace) against ``dst``'s server."""
    prefix = net.exec_prefix(src) if src else []
    return subprocess.run([*prefix, sys.executable, "-c", PEER, mode, net.ip(dst), str(PORT), str(amount), str(timeout)],
                          capture_output=True, text=True, timeout=timeout + 60)


def rtts(net: TunNetwork, src: str, dst: str, rounds: int = 5) -> list[float]:
    done = client(net, src, dst, "ping", rounds)
    assert done.returncode == 0, done.stdout + done.stderr
    return [float(x) for x in done.stdout.split()]


def transfer(net: TunNetwork, src: str | None, dst: str, size: int, timeout: float = 60.0) -> tuple[str, str]:
    """(what the client sent, what the server received) as "length sha256"."""
    done = client(net, src, dst, "send", size, timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    sent, received, _ = done.stdout.strip().split("|")
    return sent, received


def reachable(net: TunNetwork, src: str | None, dst: str) -> bool:
    return client(net, src, dst, "send", 10, timeout=2.0).returncode == 0


def existing_names() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout + subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z")
    except OSError:
        return False


@pytest.fixture
def net(tmp_path):
    """Two nodes on the switch, a server listening in node0."""
    network = TunNetwork.create(tmp_path, ["node0", "node1"], seed=42)
    server = subprocess.Popen([*network.exec_prefix("node0"), sys.executable, "-c", PEER, "serve", network.ip("node0"), str(PORT)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        yield network
    finally:
        server.kill()
        server.wait()
        network.teardown()


# -- packet logic on pipes (no root needed) -------------------------------------
def packet(src: str, dst: str, payload: bytes) -> bytes:
    """A minimal IPv4 header (the switch reads only the version and the destination)."""
    return bytes([0x45]) + bytes(11) + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + payload


@pytest.fixture
def pipes():
    """Three ports whose 'TUN' fds are pipes: what the switch writes to port i is read from reads[i]."""
    reads, ports = [], []
    for i, name in enumerate(("host", "node0", "node1")):
        r, w = os.pipe()
        os.set_blocking(r, False)
        reads.append(r)
        ports.append(Port(i, name, ipaddress.IPv4Address(f"10.77.9.{[254, 1, 2][i]}").packed, w))
    yield ports, reads
    for fd in reads + [p.fd for p in ports]:
        os.close(fd)


def drain(fd: int) -> list[bytes]:
    out = []
    try:
        while chunk := os.read(fd, 65536):
            out.append(chunk)
    except BlockingIOError:
        pass
    return out


def test_delivery_stays_fifo_per_link_when_the_delay_drops(pipes):
    ports, reads = pipes
    switch = Switch(ports, seed=1)
    node0, node1 = ports[1], ports[2]
    node0.delay_s = 0.050
    switch.route(node0, packet("10.77.9.1", "10.77.9.2", b"first"), now=100.0)
    node0.delay_s = 0.0  # restore: the next packet must still wait for the first
    switch.route(node0, packet("10.77.9.1", "10.77.9.2", b"second"), now=100.001)
    switch.deliver_due(100.01)
    assert drain(reads[2]) == []
    switch.deliver_due(100.05)
    assert b"".join(drain(reads[2])) == packet("10.77.9.1", "10.77.9.2", b"first") + packet("10.77.9.1", "10.77.9.2", b"second")
    assert node0.counters["delayed"] == 1 and node1.counters["delivered"] == 2
    # Another link (host -> node1) is not held behind node0's queue.
    node0.delay_s = 0.050
    switch.route(node0, packet("10.77.9.1", "10.77.9.2", b"slow"), now=200.0)
    switch.route(ports[0], packet("10.77.9.254", "10.77.9.2", b"fast"), now=200.001)
    assert b"".join(drain(reads[2])) == packet("10.77.9.254", "10.77.9.2", b"fast")


def test_loss_is_seeded_and_both_ends_count(pipes):
    ports, reads = pipes

    def decisions(seed: int) -> list[int]:
        for p in ports:
            p.counters = dict.fromkeys(p.counters, 0)
        switch = Switch(ports, seed=seed)
        ports[1].loss, ports[2].loss = 0.2, 0.1
        kept = []
        for i in range(500):
            before = ports[2].counters["delivered"]
            switch.route(ports[1], packet("10.77.9.1", "10.77.9.2", i.to_bytes(2, "big")), now=1.0)
            kept.append(ports[2].counters["delivered"] - before)
            drain(reads[2])
        return kept

    first = decisions(5)
    assert first == decisions(5)  # same seed, same drops: a run can be replayed
    assert first != decisions(6)
    lost_at_sender, lost_at_receiver = ports[1].counters["lost"], ports[2].counters["lost"]
    assert lost_at_sender > 0 and lost_at_receiver > 0  # each end's loss applies
    assert lost_at_sender + lost_at_receiver + ports[2].counters["delivered"] == 500


def test_down_ports_ipv6_and_unknown_addresses_are_dropped_and_queues_are_bounded(pipes):
    ports, reads = pipes
    switch = Switch(ports, seed=1)
    node0, node1 = ports[1], ports[2]
    node1.down = True
    switch.route(node0, packet("10.77.9.1", "10.77.9.2", b"x"), now=1.0)
    assert node1.counters["cut"] == 1 and drain(reads[2]) == []
    node1.down = False
    switch.route(node0, bytes([0x60]) + bytes(39), now=1.0)  # IPv6
    switch.route(node0, packet("10.77.9.1", "10.77.9.77", b"x"), now=1.0)  # nobody has it
    assert node0.counters["unroutable"] == 2
    node0.delay_s = 1.0
    for _ in range(MAX_QUEUE + 5):
        switch.route(node0, packet("10.77.9.1", "10.77.9.2", b"q"), now=1.0)
    assert node1.queued == MAX_QUEUE and node1.counters["overflow"] == 5
    node1.down = True  # packets in flight to a port that goes down are dropped on arrival
    switch.deliver_due(3.0)
    assert node1.queued == 0 and node1.counters["cut"] == 1 + MAX_QUEUE and drain(reads[2]) == []


def test_control_requests_are_checked(pipes):
    switch = Switch(pipes[0], seed=1)
    assert switch.control({"op": "set", "port": "node0", "delay_ms": 50, "loss_pct": 5})["ok"]
    assert switch.stats()["ports"]["node0"]["delay_ms"] == 50 and switch.stats()["ports"]["node0"]["loss_pct"] == 5
    assert "loss_pct: expected a number 0..100" in switch.control({"op": "set", "port": "node0", "loss_pct": 101})["error"]
    assert "delay_ms" in switch.control({"op": "set", "port": "node0", "delay_ms": "50"})["error"]
    assert "unknown port 'node9'" in switch.control({"op": "link", "port": "node9", "up": False})["error"]
    assert "boolean 'up'" in switch.control({"op": "link", "port": "node0"})["error"]
    assert "unknown op" in switch.control({"op": "explode", "port": "node0"})["error"]
    assert not switch.control(["op"])["ok"]


# -- real namespaces -------------------------------------------------------------
@needs_tun
def test_tcp_between_namespaces_and_from_the_root_namespace(net, tmp_path):
    recorded = json.loads((tmp_path / STATE_FILE).read_text())
    assert recorded["backend"] == "tunswitch" and recorded["switch_pid"] > 0 and net.namespace("node0") in recorded["names"]
    sent, received = transfer(net, "node1", "node0", 2_000_000)
    assert sent == received
    sent, received = transfer(net, None, "node0", 100_000)  # the runner's namespace reaches nodes too
    assert sent == received
    stats = net.stats()["ports"]
    assert stats["node1"]["sent"] > 1000 and stats["node0"]["delivered"] > 1000 and stats["host"]["sent"] > 0
    assert all(stats[p]["lost"] == stats[p]["cut"] == stats[p]["overflow"] == 0 for p in stats)


@needs_tun
def test_delay_shows_in_the_round_trip_time(net):
    net.degrade("node0", delay_ms=50, loss_pct=0)
    # 50 ms on node0's link each way: every round trip to it takes at least 100 ms.
    assert min(rtts(net, "node1", "node0")) >= 0.100
    assert net.stats()["ports"]["node0"]["delayed"] >= 10
    net.restore("node0")
    # Read after the restore: the closing handshake of the last connection may still
    # have been entering the delay when the client returned (it is counted then).
    delayed = net.stats()["ports"]["node0"]["delayed"]
    assert len(rtts(net, "node1", "node0")) == 5
    assert net.stats()["ports"]["node0"]["delayed"] == delayed  # nothing held after restore


@needs_tun
def test_full_loss_blocks_traffic_and_restore_brings_it_back(net):
    assert reachable(net, "node1", "node0")
    net.degrade("node0", delay_ms=0, loss_pct=100)
    assert not reachable(net, "node1", "node0")
    assert not reachable(net, None, "node0")
    assert net.stats()["ports"]["node0"]["lost"] > 0
    net.restore("node0")
    assert reachable(net, "node1", "node0")


@needs_tun
def test_five_percent_loss_is_counted_and_tcp_delivers_every_byte(net):
    net.degrade("node0", delay_ms=0, loss_pct=5)
    sent, received = transfer(net, "node1", "node0", 1_000_000, timeout=120)
    assert sent == received
    stats = net.stats()["ports"]["node0"]
    assert stats["lost"] > 0 and stats["loss_pct"] == 5
    # Roughly 5% of what crossed node0's link (data in, ACKs out) was dropped.
    crossed = stats["delivered"] + net.stats()["ports"]["node1"]["delivered"] + stats["lost"]
    assert 0.01 < stats["lost"] / crossed < 0.15


@needs_tun
def test_disconnect_and_reconnect(net):
    net.disconnect("node0")
    assert not reachable(net, "node1", "node0")
    assert not reachable(net, None, "node0")
    assert net.stats()["ports"]["node0"]["cut"] > 0 and net.stats()["ports"]["node0"]["down"]
    net.reconnect("node0")
    sent, received = transfer(net, "node1", "node0", 100_000)
    assert sent == received
    with pytest.raises(NetnsError, match="no node 'node7'"):
        net.disconnect("node7")
    with pytest.raises(NetnsError, match="loss_pct: expected a number 0..100"):
        net.degrade("node0", delay_ms=0, loss_pct=250)


@needs_tun
def test_teardown_leaves_no_namespace_and_no_switch(tmp_path):
    net = TunNetwork.create(tmp_path, ["node0", "node1"])
    pid = json.loads((tmp_path / STATE_FILE).read_text())["switch_pid"]
    assert alive(pid) and net.namespace("node1") in existing_names() and net.bridge in existing_names()
    net.teardown()
    net.teardown()  # idempotent
    left = existing_names()
    assert not alive(pid)
    assert net.namespace("node0") not in left and net.namespace("node1") not in left and net.bridge not in left
    assert not (tmp_path / STATE_FILE).exists()
    assert net.final_stats is not None and set(net.final_stats["ports"]) == {"host", "node0", "node1"}
    assert "final counters" in (tmp_path / LOG_FILE).read_text()
    with pytest.raises(NetnsError, match="not running"):
        net.degrade("node0", delay_ms=10, loss_pct=0)


@needs_tun
def test_a_crashed_runs_switch_and_namespaces_are_removed(tmp_path):
    net = TunNetwork.create(tmp_path, ["node0"])  # never torn down: as if the runner hung
    pid = json.loads((tmp_path / STATE_FILE).read_text())["switch_pid"]
    assert alive(pid)
    removed = cleanup_recorded(tmp_path)
    assert net.namespace("node0") in removed and not alive(pid)
    left = existing_names()
    assert net.namespace("node0") not in left and net.bridge not in left
    net.teardown()  # finds its switch gone: no error, nothing left to do


@needs_tun
def test_the_switch_exits_when_its_runner_dies(tmp_path):
    # A runner killed with SIGKILL cannot tear down; its switch notices (stdin closes) and exits.
    script = ("import sys, time; from pathlib import Path; from node.testnet.tunswitch import TunNetwork\n"
              "TunNetwork.create(Path(sys.argv[1]), ['node0', 'node1']); print('up', flush=True); time.sleep(600)")
    runner = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    assert runner.stdout.readline().strip() == "up"
    recorded = json.loads((tmp_path / STATE_FILE).read_text())
    runner.kill()
    runner.wait()
    deadline = time.monotonic() + 30
    while alive(recorded["switch_pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(recorded["switch_pid"])
    assert f"mn-{recorded['tag']}-0" in existing_names()  # namespaces wait for the next run's cleanup
    cleanup_recorded(tmp_path)
    assert f"mn-{recorded['tag']}-0" not in existing_names()


@needs_tun
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(netem_unavailable_reason() is None, reason="netem works here: the runner uses the bridge (tests/testnet/test_netns.py)")
def test_four_validators_survive_delay_loss_and_disconnect_through_the_switch(tmp_path):
    from node.testnet.runner import run_manifest

    doc = {
        "testnet": {"validators": 4, "netns": True, "block_period_ms": 500},
        "load": {"tx_rate": 2, "duration_s": 18},
        "perturbation": [
            {"at_s": 2, "node": "node1", "action": "delay", "delay_ms": 100, "duration_s": 6},
            {"at_s": 4, "node": "node2", "action": "loss", "loss_pct": 5, "delay_ms": 50, "duration_s": 8},
            {"at_s": 10, "node": "node3", "action": "disconnect", "duration_s": 4},
        ],
    }
    lines: list[str] = []
    directory = tmp_path / "net"
    report = run_manifest(parse_manifest(doc, "tunswitch-test"), directory, log=lines.append)
    text = report.text()
    assert report.ok, text + "\n" + "\n".join(lines)
    assert "tunswitch node1: delay 100 ms" in text and "tunswitch node2: delay 50 ms, loss 5%" in text and "disconnect node3 (switch port" in text
    assert report.txs_submitted > 0 and report.txs_committed == report.txs_submitted
    assert not (directory / STATE_FILE).exists()
    final = json.loads((directory / LOG_FILE).read_text().split("final counters ", 1)[1].splitlines()[0])["ports"]
    assert final["node1"]["delayed"] > 0 and final["node2"]["lost"] > 0 and final["node3"]["cut"] > 0

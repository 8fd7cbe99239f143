"""Issue 13's acceptance, at process level: a stranger cannot stop a validator.

Four real validator daemons on loopback (node/testnet/layout). From this
process, node/testnet/adversary.py attacks ONE of them in two overlapping
waves:

  A. 2,000 silent TCP connections, 300 authenticated libp2p connections and
     3,000 idle RPC streams at once (the issue's "done when" load);
  B. 300 slowloris streams, garbage and oversize frames, a flood of
     JSON-RPC batches of 100 calls, and 40 subscribers that vanish while
     blocks are being notified.

While each wave runs, the testnet keeps finalising, the attacked validator
stays up, and an honest ``metanode rpc node_status --node ADDR --timeout 2``
to it succeeds (the 2 s is the call's own deadline, not a wall-clock
assertion). Afterwards every node's descriptors and RSS return near where
they were, and no node logged a traceback.

The attacker connects from 127.0.1.x source addresses (a small botnet) and
the honest client from 127.0.0.1, as they would come from different hosts.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from node.testnet import adversary, attack_connections, attack_kit, attack_rpc, attack_streams, layout, node_gauges, processes
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ATTACKED = "node0"
# After the attack, a node's descriptors must come back to within this many
# of where they were: room for what a healthy node opens and closes on its
# own (a DuckDB WAL or temp file, a persistent peer reconnecting, a blob
# being fetched), and less than 1% of the ~5,000 the attack made it face.
FD_TOLERANCE = 16
# RSS must come back to within this of where it was. CPython keeps freed
# memory in its own arenas and the allocator rarely gives it back to the OS,
# so a node that held thousands of streams for a moment shows some of that
# peak for good even with nothing leaked: 64 MiB allows for that and for the
# chain's own growth over the test; the issue's leak (166 -> 211 MB for
# 1,000 streams, never returning) grows with every wave and would not fit.
RSS_TOLERANCE_KB = 64 * 1024


def _rpc(address: str, method: str, timeout: float = 10) -> Any:
    from node.p2p.client import call_node

    return trio.run(lambda: call_node(address, method, timeout=timeout))


async def _honest_status(address: str) -> tuple[int, str]:
    """``metanode rpc node_status`` through the real CLI, with a 2 s deadline on the call."""
    done = await trio.run_process(
        [sys.executable, "-m", "node", "rpc", "node_status", "--node", address, "--timeout", "2"],
        capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, (done.stderr or b"").decode(errors="replace").strip()[-300:]


async def _watched_height(address: str) -> int:
    """The watching node's height, read by a separate process: this test process runs
    the attacks too, and under their load it can miss the watcher's keepalive pings
    (then the watcher rightly drops it); the measurement must not depend on that."""
    for _ in range(3):
        done = await trio.run_process([sys.executable, "-m", "node", "rpc", "chain_head", "--node", address, "--timeout", "10"],
                                      capture_stdout=True, capture_stderr=True, check=False)
        if done.returncode == 0:
            return int(json.loads(done.stdout)["height"])
        await trio.sleep(1.0)
    raise AssertionError(f"the watching node {address} did not answer chain_head: {done.stderr.decode()[-300:]}")


@dataclass
class Wave:
    """What one wave saw: the attacks' reports and the honest side's view."""

    reports: dict[str, attack_kit.AttackReport] = field(default_factory=dict)
    honest: list[tuple[int, str]] = field(default_factory=list)  # (exit status, stderr tail) per call
    alive: list[dict[str, bool]] = field(default_factory=list)  # every node's life, at each honest call
    start_height: int = 0  # of the watching node, when the wave began
    height_during: int = 0  # of the watching node, at the last honest call
    attacked_start: int = 0  # of the attacked node, when the wave began


async def _wave(attacks: dict[str, adversary.AttackFn], address: str, watch: str, pids: dict[str, int],
                hold_s: float, honest_calls: int, lead: tuple[str, ...] = (), lead_s: float = 3.0) -> Wave:
    """Run ``attacks`` together against ``address``; meanwhile check the chain
    (through ``watch``), every node's life and honest calls. The attacks named
    in ``lead`` start ``lead_s`` seconds before the others: an attack that
    needs a stranger's connection slot must get one before a flood fills them
    (the node refusing it then would be right, and the test would not attack)."""
    wave = Wave()
    stop = trio.Event()
    wave.start_height = await node_gauges.chain_height(watch, timeout=10)
    wave.attacked_start = await node_gauges.chain_height(address, timeout=10)

    async def run_attack(name: str, attack: adversary.AttackFn) -> None:
        wave.reports[name] = await attack(address, stop)

    async with trio.open_nursery() as nursery:
        for name in lead:
            nursery.start_soon(run_attack, name, attacks[name])
        if lead:
            await trio.sleep(lead_s)
        for name, attack in attacks.items():
            if name not in lead:
                nursery.start_soon(run_attack, name, attack)
        # Let every attack reach full strength, then call as an honest user would.
        await trio.sleep(hold_s / 3)
        for _ in range(honest_calls):
            wave.honest.append(await _honest_status(address))
            wave.alive.append({n: node_gauges.sample_process(p).alive for n, p in pids.items()})
            await trio.sleep(1.0)
        wave.height_during = await _watched_height(watch)
    return wave


def test_a_stranger_cannot_stop_a_validator(tmp_path: Path) -> None:
    attack_kit.raise_fd_limit()
    directory = tmp_path / "net"
    plans = layout.plan_testnet(4, seed="adversary")
    layout.write_testnet(directory, plans)
    address = {p.name: p.address for p in plans}
    target, watch = address[ATTACKED], address["node1"]
    processes.up(directory)
    try:
        wait_until(lambda: all(_rpc(a, "chain_head")["height"] >= 2 for a in address.values()), 90,
                   what="four validators finalising")
        pids = {name: processes.running_pid(directory, name) for name in address}
        assert all(pids.values()), pids
        time.sleep(2)  # settle: peers meshed, first blocks stored
        before = {name: node_gauges.sample_process(pid) for name, pid in pids.items()}  # type: ignore[arg-type]

        scale = adversary.ISSUE_SCALE
        wave_a = {
            "silent_tcp": lambda a, s: attack_connections.silent_tcp(a, scale.silent_tcp, hold_s=25, stop=s),
            "authenticated": lambda a, s: attack_connections.authenticated_connections(a, scale.authenticated, hold_s=25, stop=s),
            "idle_streams": lambda a, s: attack_streams.idle_streams(a, scale.idle_streams, per_connection=1000, hold_s=25, stop=s),
        }
        wave_b = {
            "slowloris": lambda a, s: attack_streams.slowloris(a, scale.slowloris, per_connection=100, hold_s=15, stop=s),
            "garbage": lambda a, s: attack_rpc.garbage_frames(a, 12, stop=s),
            "batch_flood": lambda a, s: attack_rpc.batch_flood(a, scale.batch_frames, stop=s),
            "vanishing_subscribers": lambda a, s: attack_rpc.vanishing_subscribers(a, scale.subscribers, stop=s),
        }
        int_pids = {n: int(p) for n, p in pids.items() if p}
        results: dict[str, Wave] = {}
        # idle_streams leads wave A: it holds its connections' streams, and
        # needs a stranger slot before the authenticated flood fills them.
        for label, attacks, hold_s, lead in (("A", wave_a, 25.0, ("idle_streams",)), ("B", wave_b, 15.0, ())):
            wave = results[label] = trio.run(_wave, attacks, target, watch, int_pids, hold_s, 3, lead)
            print(f"wave {label}:", json.dumps({"honest": wave.honest, "heights": [wave.start_height, wave.height_during],
                                                "reports": {k: r.summary() for k, r in wave.reports.items()}}))
            # The attacked validator (and every other) stayed up throughout.
            assert all(all(a.values()) for a in wave.alive), (label, wave.alive)
            assert node_gauges.sample_process(int_pids[ATTACKED]).alive, f"{ATTACKED} died in wave {label}"
            # Every honest call succeeded within its 2 s deadline.
            assert [rc for rc, _ in wave.honest] == [0] * 3, (label, wave.honest)
            # The testnet kept finalising while the wave ran...
            assert wave.height_during >= wave.start_height + 3, (label, wave.start_height, wave.height_during)
            # ...and the attacked validator kept following it.
            wait_until(lambda: _rpc(target, "chain_head")["height"] > wave.attacked_start, 30,
                       what=f"{ATTACKED} to advance after wave {label}")

        # The batch flood reached the node and was answered (calls or -32002
        # refusals) without taking it down. That batches cost one token per
        # call is tests/p2p/test_rate_limits.py's check: here, on two shared
        # cores, the node may answer slower than its rate limit refills, and
        # then it rightly refuses nothing. If the busy attacker process missed
        # a keepalive and the node dropped the flood's connection before any
        # answer, the flood is sent again on its own.
        flood = results["B"].reports["batch_flood"]
        if not flood.outcomes:
            flood = trio.run(lambda: attack_rpc.batch_flood(target, scale.batch_frames))
        assert sum(flood.outcomes.values()) > 0 and set(flood.outcomes) <= {"ok", "error -32002"}, flood.summary()
        # Every attack reached the node (the test attacked, not just tried).
        reports_a = results["A"].reports
        assert reports_a["silent_tcp"].opened >= scale.silent_tcp // 2, reports_a["silent_tcp"].summary()
        assert reports_a["authenticated"].attempted >= scale.authenticated, reports_a["authenticated"].summary()
        assert reports_a["idle_streams"].extra["connections_opened"] >= 1, reports_a["idle_streams"].summary()

        # Afterwards: descriptors and RSS come back near where they were.
        def recovered() -> bool:
            now = {name: node_gauges.sample_process(pid) for name, pid in int_pids.items()}
            return all(now[n].alive and now[n].fds <= before[n].fds + FD_TOLERANCE
                       and now[n].rss_kb <= before[n].rss_kb + RSS_TOLERANCE_KB for n in now)

        try:
            wait_until(recovered, 30, interval=1, what="descriptors and RSS to return")
        finally:
            after = {name: node_gauges.sample_process(pid) for name, pid in int_pids.items()}
            print("before:", before)
            print("after: ", after)
        for name in int_pids:
            assert after[name].fds <= before[name].fds + FD_TOLERANCE, (name, before[name], after[name])
            assert after[name].rss_kb <= before[name].rss_kb + RSS_TOLERANCE_KB, (name, before[name], after[name])
    finally:
        processes.down(directory)
    # No node logged a traceback (or stopped) at any point.
    for name in address:
        log = processes.log_file(directory, name).read_text(errors="replace")
        assert "Traceback" not in log, f"{name} logged a traceback:\n{_excerpt(log, 'Traceback')}"
        assert "daemon stopped" not in log.split("shutting down")[0], f"{name} stopped before it was asked to"


def _excerpt(log: str, needle: str, lines: int = 30) -> str:
    at = log.find(needle)
    start = log.rfind("\n", 0, max(0, at - 2000)) + 1
    return "\n".join(log[start:].splitlines()[:lines])

"""Adversary benchmark: what each attack of issue 13 costs an honest client.

Starts a 4-validator testnet (real daemon processes) and, from this process,
runs one phase per attack against ONE validator (node0), plus a first phase
with no attack: the baseline of the same run. In every phase, for the same
window, an honest client

  * calls ``node_status`` on node0 over a fresh connection each time (as
    ``metanode rpc`` does), one call after another, each with a 2 s
    deadline: latency p50 / p99 and the calls that failed;
  * submits signed noop transactions to node0 at a fixed offered rate
    (JSON-RPC batches of tx_submit): committed tx/s is counted from the
    blocks node1 notifies during the window.

The attacks and their sizes are node/testnet/adversary.py's (the same code
tests/test_adversary.py runs); each attacker connects from 127.0.1.x, the
honest client from 127.0.0.1.

    python bench/adversary.py                  # issue 13's sizes, 10 s per phase
    python bench/adversary.py --seconds 20 --only silent_tcp,idle_streams
    python bench/adversary.py --smoke          # tiny sizes and three attacks (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.base.keys import Identity  # noqa: E402
from node.base.logging import configure_client_logging  # noqa: E402
from node.consensus.tx import sign_tx  # noqa: E402
from node.p2p.client import call_node, connect_to_node  # noqa: E402
from node.testnet import adversary, attack_kit, layout, node_gauges, processes  # noqa: E402

BATCH = 20
SENDERS = 16
HONEST_TIMEOUT_S = 2.0
SMOKE_SCALE = adversary.Scale(silent_tcp=50, authenticated=10, idle_streams=100, idle_per_connection=50,
                              slowloris=20, slowloris_per_connection=10, garbage=12, batch_frames=5, subscribers=4)


def presign(phase: str, count: int, chain_id: str) -> list[bytes]:
    """Fresh senders per phase, nonces contiguous per sender: a phase's
    rejected transaction never wedges the next phase's senders."""
    senders = [Identity.from_label(f"bench-adversary-{phase}-{i}") for i in range(SENDERS)]
    nonces = [0] * SENDERS
    txs = []
    for i in range(count):
        s = i % SENDERS
        txs.append(sign_tx(senders[s], chain_id=chain_id, nonce=nonces[s], tx_type="noop", payload={"i": i}).encoded)
        nonces[s] += 1
    return txs


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


class BlockCounter:
    """Counts transactions in the blocks node1 notifies, per window."""

    def __init__(self) -> None:
        self.blocks: list[tuple[float, int]] = []  # (arrival, tx_count)

    async def run(self, address: str) -> None:
        async with connect_to_node(address) as client:
            await client.call("chain_subscribe")
            async for note in client.notifications:
                self.blocks.append((trio.current_time(), int(note["params"]["block"]["tx_count"])))

    def committed(self, start: float, end: float) -> int:
        return sum(n for at, n in self.blocks if start <= at < end)


async def honest_calls(target: str, end: float) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    while trio.current_time() < end:
        try:
            latencies.append(await node_gauges.timed_call(target, "node_status", timeout=HONEST_TIMEOUT_S))
        except BaseException as exc:  # noqa: BLE001 - every failure of an honest call is a figure
            if isinstance(exc, trio.Cancelled):
                raise
            failures[type(exc).__name__] += 1
        await trio.sleep(0.05)
    return latencies, failures


async def feed(target: str, txs: list[bytes], rate: float, end: float) -> Counter[str]:
    """Offer ``txs`` at ``rate`` until ``end``; reconnect when the node drops us."""
    outcome: Counter[str] = Counter()
    batches = [txs[i:i + BATCH] for i in range(0, len(txs), BATCH)]
    interval, next_at, index = BATCH / rate, trio.current_time(), 0
    while index < len(batches) and trio.current_time() < end:
        try:
            async with connect_to_node(target, timeout=HONEST_TIMEOUT_S) as client:
                while index < len(batches) and trio.current_time() < end:
                    await trio.sleep_until(next_at)
                    next_at += interval
                    answers = await client.call_batch([("tx_submit", {"tx": t.hex()}) for t in batches[index]], timeout=5)
                    index += 1
                    for a in answers:
                        outcome["accepted" if "result" in a else f"error {a['error'].get('code')}"] += 1
        except BaseException as exc:  # noqa: BLE001 - a dropped honest client is a figure, then it reconnects
            if isinstance(exc, trio.Cancelled):
                raise
            outcome[f"connection {type(exc).__name__}"] += 1
            await trio.sleep(0.2)
    return outcome


async def attacker_main(name: str, target: str, smoke: bool) -> None:
    """The attacker process: run one attack until stdin closes, then print its report."""
    scale = SMOKE_SCALE if smoke else adversary.ISSUE_SCALE
    attack = adversary.attacks(scale, hold_s=3600)[name]
    stop = trio.Event()

    async def stop_on_eof() -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some(1024):
            pass
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_eof)
        print("ready", flush=True)
        report = await attack(target, stop)
        nursery.cancel_scope.cancel()
    print(json.dumps(report.summary()), flush=True)


class AttackerProcess:
    """One attack in a process of its own, so the attacker's event loop and
    CPU are not the honest client's: on a shared machine the attacker still
    competes for the cores, as a real one on the same host would."""

    def __init__(self, name: str, target: str, smoke: bool) -> None:
        self.argv = [sys.executable, str(Path(__file__).resolve()), "--attacker", name, "--target", target,
                     *(["--smoke"] if smoke else [])]
        self.out = b""
        self.ready = trio.Event()

    async def run(self, stopped: trio.Event, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        proc = await trio.lowlevel.open_process(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, proc.stdout)
                await stopped.wait()
                await proc.stdin.aclose()
                with trio.move_on_after(60):
                    await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def _read(self, stdout: Any) -> None:
        while chunk := await stdout.receive_some(65536):
            self.out += chunk
            if b"ready\n" in self.out:
                self.ready.set()
        self.ready.set()  # a process that died before "ready" must not hang the bench

    def report(self) -> dict[str, Any] | None:
        lines = [line for line in self.out.decode(errors="replace").splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else None


async def phase(name: str, target: str, counter: BlockCounter, *, smoke: bool,
                seconds: float, warmup: float, rate: float, txs: list[bytes]) -> dict[str, Any]:
    stop = trio.Event()
    attacker = AttackerProcess(name, target, smoke) if name != "none" else None
    calls: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        if attacker is not None:
            await nursery.start(attacker.run, stop)
            with trio.move_on_after(60):
                await attacker.ready.wait()
            await trio.sleep(warmup)  # let the attack reach its strength before measuring
        start = trio.current_time()
        end = start + seconds

        async def measure() -> None:
            calls["latencies"], calls["failures"] = await honest_calls(target, end)

        async def offer() -> None:
            calls["txs"] = await feed(target, txs, rate, end)

        async with trio.open_nursery() as honest:
            honest.start_soon(measure)
            honest.start_soon(offer)
        await trio.sleep_until(end + 1.0)  # blocks of the window's last submissions
        committed = counter.committed(start, end + 1.0)
        stop.set()
    latencies = calls["latencies"]
    return {
        "attack": name,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": quantile(latencies, 0.99) * 1000,
        "calls": len(latencies) + sum(calls["failures"].values()),
        "failed_calls": sum(calls["failures"].values()),
        "failures": dict(calls["failures"]),
        "tx_s": committed / (seconds + 1.0),
        "offered_tx_s": rate,
        "submissions": dict(calls["txs"]),
        "report": attacker.report() if attacker is not None else None,
    }


async def run(addresses: list[str], names: list[str], *, smoke: bool, seconds: float, warmup: float,
              rate: float, pause: float) -> list[dict[str, Any]]:
    target, watch = addresses[0], addresses[1]
    counter = BlockCounter()
    rows = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(counter.run, watch)
        for name in ["none", *names]:
            txs = presign(name, int(rate * seconds) + BATCH, layout.CHAIN_ID)
            print(f"phase {name} ...", file=sys.stderr, flush=True)
            row = await phase(name, target, counter, smoke=smoke, seconds=seconds, warmup=warmup, rate=rate, txs=txs)
            row["node0_alive"] = await _alive(target)
            rows.append(row)
            await trio.sleep(pause)  # let the node recover before the next phase
        nursery.cancel_scope.cancel()
    return rows


async def _alive(address: str) -> bool:
    try:
        await call_node(address, "chain_head", timeout=10)
        return True
    except Exception:
        return False


SMOKE_ATTACKS = ("silent_tcp", "garbage", "batch_flood")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window of each phase")
    parser.add_argument("--rate", type=float, default=200.0, help="offered transactions per second, to node0")
    parser.add_argument("--only", default="", help="comma-separated attacks (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line (bench/run_all.py)")
    parser.add_argument("--attacker", help=argparse.SUPPRESS)  # internal: be the attacker process of one phase
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attacker:
        configure_client_logging()
        attack_kit.raise_fd_limit()
        trio.run(attacker_main, args.attacker, args.target, args.smoke)
        return
    warmup, pause = 3.0, 3.0
    if args.smoke:
        args.seconds, args.rate, warmup, pause = 1.0, 40.0, 0.5, 0.3
    every = list(adversary.attacks(SMOKE_SCALE, 1.0))
    # The smoke run keeps the bench's own machinery alive (phases, attacker processes,
    # JSON) with three attacks; tests/test_adversary.py runs every attack at issue 13's sizes.
    names = [n.strip() for n in args.only.split(",") if n.strip()] or (list(SMOKE_ATTACKS) if args.smoke else every)
    unknown = sorted(set(names) - set(every))
    if unknown:
        parser.error(f"--only: unknown attack {', '.join(unknown)} (known: {', '.join(every)})")
    configure_client_logging()
    attack_kit.raise_fd_limit()
    directory = Path(tempfile.mkdtemp(prefix="metanode-bench-adversary-"))
    plans = layout.plan_testnet(4, seed="bench-adversary")
    layout.write_testnet(directory, plans)
    addresses = [p.address for p in plans]
    processes.up(directory)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if all(trio.run(node_gauges.chain_height, a) >= 2 for a in addresses):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"testnet did not start; logs in {directory}")
            time.sleep(0.5)
        rows = trio.run(lambda: run(addresses, names, smoke=args.smoke, seconds=args.seconds, warmup=warmup, rate=args.rate, pause=pause))
    finally:
        processes.down(directory)
    tracebacks = {p.name: processes.log_file(directory, p.name).read_text(errors="replace").count("Traceback") for p in plans}
    doc = {"metric": "adversary", "smoke": args.smoke, "seconds": args.seconds, "offered_tx_s": args.rate,
           "load": os.getloadavg()[0], "rows": rows, "tracebacks": tracebacks, "logs": str(directory)}
    if args.json:
        print(json.dumps(doc))
        return
    base = rows[0]
    print(f"adversary benchmark: 4 validator daemons on loopback, {os.cpu_count()} cores, node0 attacked; "
          f"honest node_status calls (fresh connection, {HONEST_TIMEOUT_S:g} s deadline) and {args.rate:g} tx/s "
          f"offered to node0 for {args.seconds:g} s per phase")
    print(f"{'attack':24} {'p50 ms':>8} {'p99 ms':>8} {'failed':>9} {'tx/s':>7} {'vs none':>8}  node0  attack saw")
    for r in rows:
        ratio = r["tx_s"] / base["tx_s"] if base["tx_s"] else math.nan
        seen = r["report"] or {}
        saw = f"opened {seen.get('opened', '-')}, closed by node {seen.get('closed_by_node', '-')}" if seen else "-"
        print(f"{r['attack']:24} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['failed_calls']:>4}/{r['calls']:<4} "
              f"{r['tx_s']:7.1f} {ratio:8.2f}  {'up' if r['node0_alive'] else 'DOWN':5}  {saw}")
    print(f"tracebacks in node logs: {tracebacks} (logs in {directory})")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()

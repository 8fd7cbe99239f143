"""Consensus benchmark: four validator daemons on loopback under a transaction load.

Starts a 4-validator testnet (real daemon processes), then from this separate
process drives signed transactions at all four nodes (JSON-RPC batches of
tx_submit over p2p) at a target rate, and measures from block notifications:

  * committed transactions per second (sustained over the load window);
  * finality latency, submit to commit (p50, p99);
  * rounds per height (1.0 = every block decided in round 0);
  * validator CPU per committed transaction (the four daemons' user + system
    CPU time over the load window, from /proc, per committed tx and per
    validator), also counted in Ed25519 verifies;

beside the single-core Ed25519 verify rate measured in the same run, the
baseline every validator's work is bounded by.

    python bench/consensus.py                      # 1,200 tx/s offered for 20 s
    python bench/consensus.py --rate 2000 --seconds 30
    python bench/consensus.py --smoke              # tiny load (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import nacl.signing
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.base.keys import Identity  # noqa: E402
from node.base.logging import configure_client_logging  # noqa: E402
from node.consensus.tx import sign_tx  # noqa: E402
from node.p2p.client import call_node, connect_to_node  # noqa: E402
from node.testnet import layout, processes  # noqa: E402

BATCH = 50
SENDERS = 48


def ed25519_verify_rate(seconds: float = 1.0) -> float:
    key = nacl.signing.SigningKey(b"\x01" * 32)
    signed = key.sign(b"m" * 200)
    verify = key.verify_key.verify
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            verify(signed)
        count += 100
    return count / seconds


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def presign(total: int, chain_id: str) -> list[bytes]:
    """Round-robin over senders so every sender's nonces stay contiguous and in order."""
    senders = [Identity.from_label(f"bench-sender-{i}") for i in range(SENDERS)]
    nonces = [0] * SENDERS
    txs = []
    for i in range(total):
        s = i % SENDERS
        txs.append(sign_tx(senders[s], chain_id=chain_id, nonce=nonces[s], tx_type="noop", payload={"i": i}).encoded)
        nonces[s] += 1
    return txs


async def drive(addresses: list[str], txs: list[bytes], rate: float) -> dict[str, float]:
    from node.consensus.block import tx_hash

    submitted: dict[bytes, float] = {}
    committed: dict[bytes, float] = {}
    rounds: list[int] = []
    rejected = 0
    reasons: Counter[str] = Counter()
    load_done = trio.Event()

    async def watch(client) -> None:  # type: ignore[no-untyped-def]
        await client.call("chain_subscribe")
        async for note in client.notifications:
            now = time.perf_counter()
            block = note["params"]["block"]
            if block["tx_count"] == 0:
                if load_done.is_set() and len(committed) >= len(submitted):
                    return
                continue
            full = await client.call("chain_block", {"height": block["height"]})
            rounds.append(block["commit_round"])
            for h in full["tx_hashes"]:
                committed.setdefault(bytes.fromhex(h), now)
            if load_done.is_set() and len(committed) >= len(submitted):
                return

    async def feed(client, batches: list[list[bytes]], interval: float) -> None:  # type: ignore[no-untyped-def]
        nonlocal rejected
        next_at = time.perf_counter()
        for batch in batches:
            await trio.sleep_until(trio.current_time() + max(0.0, next_at - time.perf_counter()))
            next_at += interval
            sent_at = time.perf_counter()
            for t in batch:
                submitted[tx_hash(t)] = sent_at
            answers = await client.call_batch([("tx_submit", {"tx": t.hex()}) for t in batch])
            rejected += sum(1 for a in answers if "error" in a)
            for a in answers:
                if "error" in a:
                    reasons[a["error"].get("data", {}).get("reason", "?")] += 1

    batches = [txs[i:i + BATCH] for i in range(0, len(txs), BATCH)]
    per_node = [batches[i::len(addresses)] for i in range(len(addresses))]
    interval = BATCH * len(addresses) / rate
    started = time.perf_counter()
    async with connect_to_node(addresses[0]) as watcher:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, watcher)
            async with trio.open_nursery() as feeders:
                for address, mine in zip(addresses, per_node):
                    feeders.start_soon(_feed_node, address, mine, interval, feed)
            load_done.set()
            with trio.move_on_after(60):
                while len(committed) < len(submitted) - rejected:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    latencies = [committed[h] - submitted[h] for h in committed if h in submitted]
    window = max(committed.values()) - started if committed else float("nan")
    return {
        "offered_tx_s": rate,
        "committed": len(committed),
        "rejected": rejected,
        "tx_s": len(committed) / window if committed else 0.0,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else float("nan"),
        "rounds_per_height": (sum(r + 1 for r in rounds) / len(rounds)) if rounds else float("nan"),
        "window_s": window,
        "blocks_with_txs": len(rounds),
        "rejections": dict(reasons),
    }


async def _feed_node(address: str, batches: list[list[bytes]], interval: float, feed) -> None:  # type: ignore[no-untyped-def]
    async with connect_to_node(address) as client:
        await feed(client, batches, interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1200.0, help="offered transactions per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration")
    parser.add_argument("--smoke", action="store_true", help="tiny load for CI")
    parser.add_argument("--json", action="store_true", help="print only the JSON line (bench/run_all.py)")
    args = parser.parse_args()
    if args.smoke:
        args.rate, args.seconds = 100.0, 2.0
    configure_client_logging()
    verify_rate = ed25519_verify_rate()
    directory = Path(tempfile.mkdtemp(prefix="metanode-bench-consensus-"))
    plans = layout.plan_testnet(4, seed="bench", validator_roles=("validator",))
    layout.write_testnet(directory, plans)
    # The load generator is one trusted client per node sending far more calls than the
    # per-peer RPC rate limit lets a stranger make: the bench measures the chain, not the limiter.
    for config in directory.glob("node*.toml"):
        with config.open("a") as out:
            out.write("\n[limits]\nrpc_rate_per_peer = 100000.0\nrpc_burst_per_peer = 200000\n"
                      "rpc_rate_total = 100000.0\nrpc_burst_total = 200000\n")
    addresses = [p.address for p in plans]
    txs = presign(int(args.rate * args.seconds), "metanode-testnet")
    processes.up(directory)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if all(trio.run(call_node, a, "chain_head")["height"] >= 2 for a in addresses):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"testnet did not start; logs in {directory}")
            time.sleep(0.5)
        pids = [pid for n in layout.read_manifest(directory)
                if (pid := processes.running_pid(directory, str(n["name"]))) is not None]
        cpu_before, wall_before = cpu_seconds(pids), time.perf_counter()
        result = trio.run(drive, addresses, txs, args.rate)
        validator_cpu, wall = cpu_seconds(pids) - cpu_before, time.perf_counter() - wall_before
        # Includes the work on refused transactions: compare runs with none refused.
        per_tx_ms = validator_cpu / len(pids) / result["committed"] * 1000 if result["committed"] and pids else float("nan")
        result["validator_cpu_ms_per_tx"] = per_tx_ms
        result["validator_cores"] = validator_cpu / len(pids) / wall if pids else float("nan")
    finally:
        processes.down(directory)
    if args.json:
        print(json.dumps({"metric": "consensus", "smoke": args.smoke, "offered_seconds": args.seconds,
                          **result, "ed25519_verify_s": verify_rate}))
        return
    print(f"consensus benchmark: 4 validator daemons on loopback, {os.cpu_count()} cores, "
          f"{args.rate:.0f} tx/s offered for {args.seconds:g} s ({len(txs)} noop txs, batches of {BATCH})")
    print(f"{'figure':38} {'value':>12}  baseline / goal")
    print(f"{'committed tx/s (sustained)':38} {result['tx_s']:12.1f}  goal >= 1,000 tx/s")
    print(f"{'finality p50, submit to commit (ms)':38} {result['p50_ms']:12.1f}  goal < 1,000 ms")
    print(f"{'finality p99 (ms)':38} {result['p99_ms']:12.1f}")
    print(f"{'rounds per height':38} {result['rounds_per_height']:12.2f}  1.00 = all decided in round 0")
    print(f"{'committed / rejected txs':38} {result['committed']:>6} / {result['rejected']:<5}")
    print(f"{'validator CPU per committed tx (ms)':38} {result['validator_cpu_ms_per_tx']:12.3f}  "
          f"= {result['validator_cpu_ms_per_tx'] * verify_rate / 1000:.1f} Ed25519 verifies; "
          f"{result['validator_cores']:.2f} cores per validator")
    print(f"{'Ed25519 verify, one core (/s)':38} {verify_rate:12.0f}  baseline")
    print(f"{'committed tx/s per verify/s':38} {result['tx_s'] / verify_rate:12.4f}")
    print(json.dumps({"metric": "consensus", **result, "ed25519_verify_s": verify_rate}))


if __name__ == "__main__":
    main()

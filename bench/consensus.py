"""Consensus benchmark: four validator daemons on loopback under a transaction load.

Starts a 4-validator testnet (real daemon processes), then from this separate
process drives signed transactions at all four nodes (JSON-RPC batches of
tx_submit over p2p) in two phases, each at a fixed offered rate:

  * finality: ``--offered`` tx/s (default 1,000) for ``--offered-seconds``:
    finality latency, submit to commit (p50, p99), from block notifications;
  * throughput: ``--rate`` tx/s (default 4,000, above the goal) for
    ``--seconds``: committed transactions per second, sustained;

and in each, rounds per height (1.0 = every block decided in round 0) and
each validator daemon's user + system CPU seconds over the phase (from
/proc/PID/stat, children included) per committed transaction: the figure that
predicts throughput on N machines (one validator per core: tx/s ~ 1 / that).
The baseline, measured in the same run before the testnet starts, is one
Ed25519 verify on one core: CPU per transaction is also given in verifies.

    python bench/consensus.py                            # 1,000 tx/s for 10 s, then 4,000 tx/s for 20 s
    python bench/consensus.py --offered 1000 --rate 5000 --seconds 30
    python bench/consensus.py --smoke                    # tiny load (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nacl.signing
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.base.keys import Identity  # noqa: E402
from node.base.logging import configure_client_logging  # noqa: E402
from node.consensus.service import TX_PROTOCOL  # noqa: E402
from node.consensus.tx import sign_tx  # noqa: E402
from node.p2p.client import call_node, connect_to_node  # noqa: E402
from node.testnet import layout, processes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proc_cpu  # noqa: E402

BATCH = 50
SENDERS = 48


def ed25519_verify_rate(seconds: float = 1.0) -> float:
    """Verifies per CPU-second on one core: timed by this process's CPU clock, so a busy
    machine does not inflate it (the validators' CPU per tx is CPU time too)."""
    key = nacl.signing.SigningKey(b"\x01" * 32)
    signed = key.sign(b"m" * 200)
    verify = key.verify_key.verify
    count, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        for _ in range(100):
            verify(signed)
        count += 100
    return count / (time.process_time() - start)


def presign(total: int, rate: float, chain_id: str, phase: str) -> list[bytes]:
    """Round-robin over senders so every sender's nonces stay contiguous and in order
    (each phase has its own senders, so both start at nonce 0). At most ~8 tx/s per sender,
    so a second of finality keeps each sender far below the mempool's per-sender limit."""
    count = max(SENDERS, math.ceil(rate / 8))
    senders = [Identity.from_label(f"bench-sender-{phase}-{i}") for i in range(count)]
    nonces = [0] * count
    txs = []
    for i in range(total):
        s = i % count
        txs.append(sign_tx(senders[s], chain_id=chain_id, nonce=nonces[s], tx_type="noop", payload={"i": i}).encoded)
        nonces[s] += 1
    return txs


async def drive(addresses: list[str], txs: list[bytes], rate: float) -> dict[str, Any]:
    from node.consensus.block import tx_hash

    submitted: dict[bytes, float] = {}
    committed: dict[bytes, float] = {}
    rounds: list[int] = []
    rejected = 0
    reasons: Counter[str] = Counter()
    load_done = trio.Event()

    async def watch(client) -> None:
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

    async def feed(client, batches: list[list[bytes]], interval: float) -> None:
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
                    reasons[(a["error"].get("data") or {}).get("reason") or str(a["error"].get("message", "?"))[:60]] += 1

    feeding: list[float] = []

    async def feed_node(address: str, mine: list[list[bytes]]) -> None:
        async with connect_to_node(address) as client:
            await feed(client, mine, interval)
        feeding.append(time.perf_counter())

    batches = [txs[i:i + BATCH] for i in range(0, len(txs), BATCH)]
    per_node = [batches[i::len(addresses)] for i in range(len(addresses))]
    interval = BATCH * len(addresses) / rate
    started = time.perf_counter()
    async with connect_to_node(addresses[0]) as watcher:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, watcher)
            async with trio.open_nursery() as feeders:
                for address, mine in zip(addresses, per_node):
                    feeders.start_soon(feed_node, address, mine)
            load_done.set()
            with trio.move_on_after(60):
                while len(committed) < len(submitted) - rejected:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    latencies = [committed[h] - submitted[h] for h in committed if h in submitted]
    window = max(committed.values()) - started if committed else float("nan")
    return {
        "offered_tx_s": rate,
        # What the client managed to send: below the offered rate, the client (same cores) was the limit.
        "submitted_tx_s": len(submitted) / (max(feeding) - started) if feeding else float("nan"),
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


def run_phase(addresses: list[str], pids: dict[str, int], txs: list[bytes], rate: float, verify_s: float) -> dict[str, Any]:
    """One load at ``rate``; each validator's CPU over it, per committed tx
    (including the work on refused transactions: compare runs with none refused)."""
    gossip_before = gossip_counters(addresses)
    window = proc_cpu.Window(pids)
    result: dict[str, Any] = trio.run(drive, addresses, txs, rate)
    usage = window.stop()
    gossip = gossip_counters(addresses) - gossip_before
    committed = result["committed"] or float("nan")
    nodes = usage["nodes"]
    per_node = {name: (n["own"] + n["below"]) / committed for name, n in nodes.items()}
    mean = statistics.mean(per_node.values()) if per_node else float("nan")
    result["cpu_s_per_tx"] = per_node
    result["validator_cpu_s_per_tx"] = mean
    result["validator_verifies_per_tx"] = mean / verify_s
    result["validator_cores"] = {name: (n["own"] + n["below"]) / usage["wall_s"] for name, n in nodes.items()}
    result["machine_cpu"] = {k: usage[k] for k in ("cores", "machine", "daemons", "bench_client", "other", "steal")}
    # Transaction gossip: every transaction goes out once to each other validator; the frames it
    # takes are what it costs on the transport (a frame per transaction was a third of the work).
    sent, frames = gossip["sent:" + TX_PROTOCOL], gossip["frames:" + TX_PROTOCOL]
    result["tx_gossip"] = {"sent": sent, "frames": frames, "txs_per_frame": sent / frames if frames else float("nan"),
                           "dropped": gossip["dropped_full:" + TX_PROTOCOL]}
    return result


def gossip_counters(addresses: list[str]) -> Counter[str]:
    """The validators' gossip-link counters, summed (consensus_state's ``gossip``)."""
    total: Counter[str] = Counter()
    for address in addresses:
        total.update(trio.run(call_node, address, "consensus_state").get("gossip", {}))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offered", type=float, default=1000.0, help="tx/s offered in the finality phase (0: skip it)")
    parser.add_argument("--offered-seconds", type=float, default=10.0, help="length of the finality phase")
    parser.add_argument("--rate", type=float, default=4000.0, help="tx/s offered in the throughput phase")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the throughput phase")
    parser.add_argument("--smoke", action="store_true", help="tiny load for CI")
    parser.add_argument("--json", action="store_true", help="print only the JSON line (bench/run_all.py)")
    args = parser.parse_args()
    if args.smoke:
        args.offered, args.offered_seconds, args.rate, args.seconds = 50.0, 1.0, 100.0, 2.0
    if args.offered < 0 or args.rate <= 0 or args.seconds <= 0 or (args.offered and args.offered_seconds <= 0):
        parser.error("need --rate > 0, --seconds > 0, --offered >= 0 and, with --offered, --offered-seconds > 0")
    configure_client_logging()
    verify_rate = ed25519_verify_rate()
    verify_s = 1 / verify_rate
    directory = Path(tempfile.mkdtemp(prefix="metanode-bench-consensus-"))
    plans = layout.plan_testnet(4, seed="bench", validator_roles=("validator",))
    genesis = layout.testnet_genesis(plans)
    layout.write_testnet(directory, plans, genesis)
    # The load generator is one trusted client per node sending far more calls than the
    # per-peer RPC rate limit lets a stranger make: the bench measures the chain, not the limiter.
    for config in directory.glob("node*.toml"):
        with config.open("a") as out:
            out.write("\n[limits]\nrpc_rate_per_peer = 100000.0\nrpc_burst_per_peer = 200000\n"
                      "rpc_rate_total = 100000.0\nrpc_burst_total = 200000\n")
    addresses = [p.address for p in plans]
    phases = [("finality", args.offered, args.offered_seconds)] if args.offered else []
    phases.append(("throughput", args.rate, args.seconds))
    txs = {name: presign(int(rate * seconds), rate, "metanode-testnet", name) for name, rate, seconds in phases}
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
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
        pids = {str(n["name"]): pid for n in layout.read_manifest(directory)
                if (pid := processes.running_pid(directory, str(n["name"]))) is not None}
        for name, rate, _ in phases:
            results[name] = run_phase(addresses, pids, txs[name], rate, verify_s)
    finally:
        processes.down(directory)
        if len(results) < len(phases):
            print(f"consensus bench: failed; logs kept in {directory}", file=sys.stderr)
    shutil.rmtree(directory, ignore_errors=True)
    throughput = results["throughput"]
    finality = results.get("finality", throughput)
    # CPU per tx from the fixed load below capacity (nothing refused, idle work spread over a steady stream);
    # the overloaded throughput phase also pays for the transactions its mempools refuse.
    doc = {"metric": "consensus", "smoke": args.smoke, "cores": os.cpu_count(), "load_average": load_before,
           "ed25519_verify_s": verify_rate, "ed25519_verify_us": verify_s * 1e6, "block_period_ms": genesis.block_period_ms,
           "min_block_interval_ms": genesis.min_interval_ms,
           **{k: throughput[k] for k in ("offered_tx_s", "submitted_tx_s", "tx_s", "committed", "rejected", "rounds_per_height")},
           **{k: finality[k] for k in ("validator_cpu_s_per_tx", "validator_verifies_per_tx", "cpu_s_per_tx")},
           "finality_offered_tx_s": finality["offered_tx_s"], "p50_ms": finality["p50_ms"], "p99_ms": finality["p99_ms"],
           "phases": results}
    if args.json:
        print(json.dumps(doc))
        return
    print(f"consensus benchmark: 4 validator daemons on loopback, {os.cpu_count()} cores, load average before the testnet "
          f"{doc['load_average'][0]:.2f}; baseline one Ed25519 verify {verify_s * 1e6:.1f} us ({verify_rate:,.0f}/s, one core)")
    for name, rate, seconds in phases:
        r = results[name]
        print(f"\n{name} phase: {rate:,.0f} tx/s offered for {seconds:g} s ({len(txs[name])} noop txs, batches of {BATCH}); "
              f"client sent {r['submitted_tx_s']:,.0f} tx/s")
        print(f"  {'committed tx/s (sustained)':40} {r['tx_s']:12.1f}")
        print(f"  {'finality p50 / p99, submit to commit (ms)':40} {r['p50_ms']:12.1f} / {r['p99_ms']:.1f}")
        print(f"  {'rounds per height':40} {r['rounds_per_height']:12.2f}  (1.00 = all decided in round 0)")
        print(f"  {'committed / rejected txs':40} {r['committed']:>12} / {r['rejected']} {r['rejections'] or ''}")
        print(f"  {'validator CPU per committed tx (us)':40} {r['validator_cpu_s_per_tx'] * 1e6:12.1f}  "
              f"= {r['validator_verifies_per_tx']:.2f} Ed25519 verifies (goal <= 2.5)")
        for node, cpu in r["cpu_s_per_tx"].items():
            print(f"    {node:38} {cpu * 1e6:12.1f}  us/tx; {r['validator_cores'][node]:.2f} cores")
        g = r["tx_gossip"]
        print(f"  {'tx gossip: txs sent / frames (per frame)':40} {g['sent']:>12} / {g['frames']} ({g['txs_per_frame']:.1f}); "
              f"dropped {g['dropped']}")
        m = r["machine_cpu"]
        print(f"  machine CPU: {m['machine']:.2f} of {m['cores']:.0f} cores = daemons {m['daemons']:.2f} + bench client "
              f"{m['bench_client']:.2f} + other processes {m['other']:.2f} (steal {m['steal']:.2f})")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()

"""``metanode demo``: the main job, from nothing to a working cluster.

Today: a local cluster of real validator daemons that find each other over
BPCI (Noise + yamux), finalise blocks with IBFT, commit a signed transaction
sent to one node, agree on it block for block, and answer JSON-RPC over
p2p throughout. Later issues grow this into the full analytics demo.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import click

from node.errors import UserError


@click.command()
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(1, 16))
@click.option("--keep", is_flag=True, help="Leave the testnet running and print how to explore it.")
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False, path_type=Path), help="Testnet directory (default: a temporary one).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the cluster to form.")
def demo(nodes: int, keep: bool, directory: Path | None, timeout: float) -> None:
    """Start a local cluster, call every node over JSON-RPC, and shut it down."""
    import trio

    from node.logging import configure_client_logging
    from node.testnet import layout, processes
    from node.testnet.health import cluster_status, node_health

    configure_client_logging()

    temporary = directory is None
    directory = directory or Path(tempfile.mkdtemp(prefix="metanode-demo-"))
    plans = layout.plan_testnet(nodes, validator_roles=("validator", "scheduler", "gateway", "processing", "storage"))
    layout.write_testnet(directory, plans)
    click.echo(f"[1/4] wrote a {nodes}-validator testnet to {directory} (keys, configs, genesis)")
    processes.up(directory)
    click.echo(f"[2/4] started {nodes} daemons; waiting for them to find each other over BPCI")
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = trio.run(cluster_status, directory)
            everyone = {r["peer_id"] for r in rows}
            # Each node must see every other node (our own RPC client shows up as a peer too).
            if all(r["live"] and everyone - {r["peer_id"]} <= set(r["peer_ids"]) for r in rows):
                break
            if time.monotonic() > deadline:
                raise UserError(f"the cluster did not form within {timeout:g} s; logs are in {directory}")
            time.sleep(0.5)
        click.echo("[3/4] every node answers JSON-RPC over p2p:\n")
        for plan in plans:
            health = trio.run(node_health, plan.address)
            assert health is not None
            status = health["status"]
            click.echo(f"  $ metanode rpc node_status --node {plan.address}")
            click.echo("    " + json.dumps({k: status[k] for k in ("peer_id", "moniker", "roles", "version", "uptime_s")}))
            for peer in health["peers"]:
                latency = "-" if peer["latency_ms"] is None else f"{peer['latency_ms']:.2f} ms"
                click.echo(f"    peer {peer['peer_id']} {peer['direction']:8} keepalive rtt {latency}")
            cage = status.get("cage") or {}
            click.echo(f"    confined under policy {cage.get('policy')!r}: {', '.join(cage.get('layers', []))}\n")
        click.echo("[4/5] IBFT consensus: a signed transaction sent to the last node, committed by all")
        trio.run(_show_consensus, [p.address for p in plans])
        if nodes >= 2:
            click.echo("[5/5] analytics: upload a dataset, run a SQL job on two nodes, verify its receipt offline")
            trio.run(_show_analytics, [p.address for p in plans], directory)
    finally:
        if not keep:
            processes.down(directory)
            if temporary:
                shutil.rmtree(directory, ignore_errors=True)
    if keep:
        click.echo(f"The testnet keeps running. Explore it with:\n"
                   f"  metanode testnet status --dir {directory}\n"
                   f"  metanode rpc net_peers --node {plans[0].address}\n"
                   f"  metanode testnet logs --dir {directory} node0\n"
                   f"  metanode testnet down --dir {directory}")
    else:
        click.echo("demo complete: cluster formed, transaction final on every node, job verified, all daemons stopped.")


def sample_sales_csv() -> str:
    """Daily units of four products over 60 days, deterministic (no randomness)."""
    rows = ["day,product,units"]
    for day in range(60):
        for i, product in enumerate(("apples", "pears", "plums", "figs")):
            rows.append(f"2026-{1 + day // 30:02d}-{1 + day % 30:02d},{product},{(day * (i + 3) + 7 * i) % 23 + i}")
    return "\n".join(rows) + "\n"


async def _show_analytics(addresses: list[str], directory: Path) -> None:
    import trio

    from node.client import AsyncClient
    from node.keys import Identity

    data = directory / "sales.csv"
    data.write_text(sample_sales_csv())
    tenant = Identity.generate()
    async with AsyncClient.connect(addresses[0], tenant) as client:
        with trio.fail_after(120):
            while (await client.health())["processing_nodes"] < min(2, len(addresses)):
                await trio.sleep(0.5)
        dataset = await client.upload_dataset(data, name="sales")
        click.echo(f"  uploaded sales.csv: {dataset['row_count']} rows, digest {dataset['digest'][:16]}..., registered on chain")
        query = "SELECT product, sum(units) AS units FROM sales GROUP BY product ORDER BY units DESC"
        job_id = await client.submit_job(job_type="sql", data_source={"sales": dataset["digest"]},
                                         parameters={"query": query}, replication=2)
        click.echo(f"  $ metanode analytics submit --type sql --data sales.csv --query \"{query}\" --replication 2 --follow")
        status = await client.wait_for_completion(job_id, timeout=180, on_change=lambda s: click.echo(f"    job {job_id[:16]}... {s['state']}"))
        for r in status["results"]:
            click.echo(f"    {r['peer_id']} computed result {r['result'][:16]}... (exit {r['exit']})")
        if status["state"] != "verified":
            raise UserError(f"the job ended {status['state']}: {status.get('reason')}")
        receipt = status["results"][0]["receipt"]
        ok = await client.verify_receipt(receipt, directory / "genesis.toml")
        click.echo(f"    job.exec receipt {receipt[:16]}... verified offline against genesis.toml: {ok}\n")
        if not ok:
            raise UserError("the job's receipt did not verify")


async def _show_consensus(addresses: list[str]) -> None:
    import trio

    from node.consensus.tx import sign_tx
    from node.keys import Identity
    from node.p2p.client import call_node
    from node.testnet.layout import CHAIN_ID

    with trio.fail_after(60):
        while (await call_node(addresses[0], "chain_head"))["height"] < 1:
            await trio.sleep(0.2)
    client = Identity.generate()
    tx = sign_tx(client, chain_id=CHAIN_ID, nonce=0, tx_type="noop", payload={"hello": "metanode"})
    started = time.perf_counter()
    done = await call_node(addresses[-1], "tx_submit", {"tx": tx.encoded.hex(), "mode": "commit", "timeout": 30}, timeout=40)
    elapsed = time.perf_counter() - started
    click.echo(f"  $ metanode rpc tx_submit '{{\"tx\": \"...\", \"mode\": \"commit\"}}' --node {addresses[-1]}")
    click.echo(f"    tx {done['hash'][:16]}... final in block {done['height']} after {elapsed * 1000:.0f} ms")
    hashes = set()
    for address in addresses:
        block = await call_node(address, "chain_block", {"height": done["height"]})
        hashes.add(block["hash"])
    seals = len(block["seals"])
    click.echo(f"    block {done['height']} has {seals} commit seals; all {len(addresses)} nodes hold the same block {next(iter(hashes))[:16]}...")
    if len(hashes) != 1:
        raise UserError(f"nodes disagree on block {done['height']}: {sorted(hashes)}")
    state = await call_node(addresses[0], "consensus_state")
    click.echo(f"    chain height {state['height']}, round {state['round']}, next proposer {state['proposer_peer_id']}\n")

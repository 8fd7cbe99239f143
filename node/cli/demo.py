"""``metanode demo``: the main job, from nothing to a verified result.

A local cluster of real daemons (every node a validator with every role)
find each other over BPCI (Noise + yamux), finalise blocks with IBFT and
commit a signed transaction. Then a tenant uploads the bundled sample
dataset, runs a trend analysis and a SQL job on two processing nodes each,
follows them to verified, prints the result tables, bundles one receipt
and verifies it offline against the genesis file.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import click

from node.base.errors import UserError


@click.command()
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(1, 16))
@click.option("--keep", is_flag=True, help="Leave the testnet running and print how to explore it.")
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False, path_type=Path), help="Testnet directory (default: a temporary one).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the cluster to form.")
def demo(nodes: int, keep: bool, directory: Path | None, timeout: float) -> None:
    """Start a local cluster, call every node over JSON-RPC, and shut it down."""
    import trio

    from node.base.logging import configure_client_logging
    from node.testnet import layout, processes
    from node.testnet.health import cluster_status, node_health

    configure_client_logging()

    temporary = directory is None
    directory = directory or Path(tempfile.mkdtemp(prefix="metanode-demo-"))
    plans = layout.plan_testnet(nodes, validator_roles=("validator", "scheduler", "gateway", "processing", "storage"))
    layout.write_testnet(directory, plans)
    step = Steps(demo_steps(nodes))
    step(f"wrote a {nodes}-validator testnet to {directory} (keys, configs, genesis)")
    processes.up(directory)
    step(f"started {nodes} daemons; waiting for them to find each other over BPCI")
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
        step("every node answers JSON-RPC over p2p:\n")
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
        step("IBFT consensus: a signed transaction sent to the last node, committed by all")
        trio.run(_show_consensus, [p.address for p in plans])
        if nodes >= 2:
            step("analytics: upload a dataset, run a trend analysis and a SQL job on two nodes each, verify a receipt offline")
            trio.run(_show_analytics, [p.address for p in plans], directory)
    finally:
        if not keep:
            processes.down(directory)
            if temporary:
                shutil.rmtree(directory, ignore_errors=True)
    if keep:
        key = directory / "tenant.key"
        if not key.exists():  # a one-node demo runs no analytics step, which writes it
            from node.base.keys import Identity

            Identity.generate().write(key)
        click.echo(f"The testnet keeps running. Explore it with:\n"
                   f"  export METANODE_NODE={plans[0].address} METANODE_KEY={key} METANODE_GENESIS={directory / 'genesis.toml'}\n"
                   f"  metanode testnet status --dir {directory}\n"
                   f"  metanode mesh status --node $METANODE_NODE\n"
                   f"  metanode analytics list\n"
                   f"  metanode analytics submit --dataset DIGEST --name sales --type sql --query \"SELECT count(*) FROM sales\" --follow\n"
                   f"  metanode analytics trace --job-id ID --genesis {directory / 'genesis.toml'} --include-witness\n"
                   f"  metanode receipt verify --job-id ID\n"
                   f"  metanode security export-audit --format json\n"
                   f"  metanode testnet logs --dir {directory} node0\n"
                   f"  metanode testnet down --dir {directory}\n"
                   f"Or see it all in your browser (the cluster, the jobs, their charts, receipts verified there):\n"
                   f"  {console_command(plans[0].address, key, directory / 'genesis.toml')}")
    else:
        analytics = ", both jobs verified on two nodes each, receipt verified offline" if "analytics" in step.names else ""
        click.echo(f"demo complete: cluster formed, transaction final on every node{analytics}, all daemons stopped.")


def console_command(address: str, key: Path, genesis: Path) -> str:
    """The ``metanode console`` line for a kept demo cluster: its first node, the tenant, the genesis."""
    return f"metanode console --node {address} --key {key} --genesis {genesis}"


STEPS = ("wrote", "started", "rpc", "consensus", "analytics")


def demo_steps(nodes: int) -> list[str]:
    """The steps the demo runs for a cluster of ``nodes``: the analytics step
    needs two processing nodes (replication 2), so one node skips it."""
    return [name for name in STEPS if name != "analytics" or nodes >= 2]


class Steps:
    """Prints each step as ``[i/N] text``, N the number of steps this run has."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.done = 0

    def label(self) -> str:
        return f"[{self.done}/{len(self.names)}]"

    def __call__(self, text: str) -> None:
        self.done += 1
        if self.done > len(self.names):
            raise AssertionError(f"the demo ran more steps than {self.names}")
        click.echo(f"{self.label()} {text}")


def data_dir_of(directory: Path, node: str) -> Path:
    """A testnet node's data directory as its config names it (node0-data, not node0)."""
    from node.base.config import load_config

    return Path(load_config(directory / f"{node}.toml").data_dir)


TREND_PARAMS = {"input": "sales", "time_column": "day", "value_column": "units", "group_by": "product",
                "window": "30d", "granularity": "week"}
SQL_QUERY = ("SELECT product, year(day) AS year, sum(units) AS units, "
             "CAST(sum(units * price_cents) / 100 AS DECIMAL(18, 2)) AS revenue FROM sales GROUP BY ALL ORDER BY product, year")


async def _show_analytics(addresses: list[str], directory: Path) -> None:
    import trio

    from node.base.keys import Identity
    from node.cli.present import format_table
    from node.consensus.genesis import load_genesis
    from node.receipts.verify import BundleInvalid, BundleVerifier
    from node.sdk.client import AsyncClient
    from node.testnet.sample_data import sales_path

    tenant = Identity.generate()
    tenant.write(directory / "tenant.key")
    async with AsyncClient.connect(addresses[0], tenant) as client:
        with trio.fail_after(120):
            while (await client.health())["processing_nodes"] < min(2, len(addresses)):
                await trio.sleep(0.5)
        data = sales_path()
        dataset = await client.upload_dataset(data, name="sales")
        click.echo(f"  $ metanode analytics submit --data {data} ...")
        click.echo(f"    uploaded sales.csv (daily units of 4 products over 2 years): {dataset['row_count']} rows, "
                   f"{dataset['size']:,} bytes, digest {dataset['digest'][:16]}..., registered on chain")
        jobs = {
            "trend analysis (window 30d, by week)": await client.submit_job(
                job_type="trend-analysis", data_source={"sales": dataset["digest"]}, parameters=TREND_PARAMS, replication=2),
            "SQL: units and revenue per product and year": await client.submit_job(
                job_type="sql", data_source={"sales": dataset["digest"]}, parameters={"query": SQL_QUERY}, replication=2),
        }
        for title, job_id in jobs.items():
            click.echo(f"    submitted {title}: job {job_id[:16]}... (replication 2)")
        finished: dict[str, dict] = {}

        async def follow(title: str, job_id: str) -> None:
            finished[title] = await client.wait_for_completion(
                job_id, timeout=240, on_change=lambda s: click.echo(f"    job {job_id[:16]}... {s['state']}"))

        async with trio.open_nursery() as nursery:
            for title, job_id in jobs.items():
                nursery.start_soon(follow, title, job_id)
        for title in jobs:
            status = finished[title]
            if status["state"] != "verified":
                raise UserError(f"the {title} job ended {status['state']}: {status.get('reason')}")
            click.echo(f"\n  {title}: verified, computed identically by")
            for r in status["results"]:
                click.echo(f"    {r['peer_id']}  result {r['result'][:16]}...")
            table = status["result"]
            rows = table["rows"]
            if "trend" in title:  # the last four weeks of each product, and its two-year slope
                rows = [row for row in rows if str(row[1]) >= "2026-12-07"]
            click.echo("\n" + "\n".join("    " + line for line in format_table(table["columns"], rows, max_rows=24).splitlines()))
        job_id = jobs["SQL: units and revenue per product and year"]
        receipt = finished["SQL: units and revenue per product and year"]["results"][0]["receipt"]
        bundle = bytes.fromhex((await client.rpc.call("receipt_bundle", {"id": receipt}))["bundle"])
        bundle_path = directory / f"receipt-{receipt[:16]}.bundle"
        bundle_path.write_bytes(bundle)
        try:
            BundleVerifier(load_genesis(directory / "genesis.toml")).verify(bundle)
        except BundleInvalid as exc:
            raise UserError(f"the job's receipt did not verify: {exc}") from None
        click.echo(f"\n  $ metanode receipt bundle {receipt} --node {addresses[0]} --out {bundle_path}")
        click.echo(f"  $ metanode receipt verify {bundle_path} --genesis {directory / 'genesis.toml'}")
        click.echo("    valid: signature, inclusion proof to the sealed block, commit seals, validator chain from genesis")
        click.echo(f"    (or fetch and verify in one step: metanode receipt verify --receipt-hash {receipt} --node NODE --genesis GENESIS;"
                   " every receipt of the job: --job-id ID)")
        head = await client.rpc.call("chain_block", {"height": (await client.rpc.call("chain_head"))["height"]})
        click.echo(f"\n  the audit log: {head['receipts_size']} receipts in the Merkle log, root {head['receipts_root'][:16]}... "
                   f"sealed in block {head['height']};")
        click.echo(f"    each node keeps it in DATA_DIR/node.duckdb (here {data_dir_of(directory, 'node0') / 'node.duckdb'}); export it with")
        click.echo(f"    $ metanode audit export --node {addresses[0]} --format csv --out audit.csv\n")


async def _show_consensus(addresses: list[str]) -> None:
    import trio

    from node.base.keys import Identity
    from node.consensus.tx import sign_tx
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

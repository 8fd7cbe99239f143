"""``metanode demo``: the main job, from nothing to a working cluster.

Today: a local two-node cluster of real daemon processes that find each
other over BPCI (Noise + yamux), answered over JSON-RPC on p2p. Later
issues grow this into the full analytics demo.
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
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(2, 16))
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
    click.echo(f"[1/3] wrote a {nodes}-node testnet to {directory}")
    processes.up(directory)
    click.echo(f"[2/3] started {nodes} daemons; waiting for them to find each other over BPCI")
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
        click.echo("[3/3] every node answers JSON-RPC over p2p:\n")
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
        click.echo("demo complete: cluster formed, every node answered, all daemons stopped.")

"""``metanode testnet``: a local multi-node testnet of real daemon processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from node.cli.present import LIVE_MARKS, Column, echo_table
from node.testnet import layout, processes


@click.group()
def testnet() -> None:
    """Create, start, stop and inspect a local testnet."""


@testnet.command("init")
@click.option("--validators", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--non-validators", default=0, show_default=True, type=click.IntRange(0, 63))
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--base-port", default=None, type=click.IntRange(1024, 65000), help="First TCP port (default: free ports).")
@click.option("--seed", default=None, help="Derive keys from this seed (INSECURE; reproducible testnets).")
@click.option("--json", "as_json", is_flag=True, help="Print [{name, roles, address}] as JSON.")
def init(validators: int, non_validators: int, directory: Path, base_port: int | None, seed: str | None, as_json: bool) -> None:
    """Write keys (0600) and one config per node, peers filled in."""
    plans = layout.plan_testnet(validators, non_validators=non_validators, base_port=base_port, seed=seed)
    layout.write_testnet(directory, plans)
    if as_json:
        click.echo(json.dumps([{"name": p.name, "roles": list(p.roles), "address": p.address} for p in plans], indent=2))
        return
    echo_table([Column("node"), Column("roles"), Column("address")],
               [[plan.name, ",".join(plan.roles), plan.address] for plan in plans])
    click.echo(f"wrote {len(plans)} nodes to {directory}; start them with: metanode testnet up --dir {directory}")


@testnet.command("up")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every node answers and peers with the others.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait with --wait.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print {node: pid} as JSON; no progress lines.")
def up(directory: Path, wait: bool, timeout: float, quiet: bool, as_json: bool) -> None:
    """Start every node in the background (logs: DIR/NODE.log)."""
    from node.base.logging import configure_client_logging
    from node.cli.present import progress

    configure_client_logging()  # libp2p's dial errors while nodes start are not the user's business
    say = progress(enabled=not (quiet or as_json))
    pids = processes.up(directory)
    if not as_json:
        for name, pid in pids.items():
            click.echo(f"{name} pid {pid}")
    if wait:
        wait_formed(directory, timeout, say)
    if as_json:
        click.echo(json.dumps(pids))


def wait_formed(directory: Path, timeout: float, say: object) -> None:
    """Progress while the nodes come up: how many answer, and their peers."""
    import time

    import trio

    from node.base.errors import UserError
    from node.testnet.health import cluster_status

    deadline, last = time.monotonic() + timeout, None
    while True:
        rows = trio.run(cluster_status, directory)
        live = [r for r in rows if r["live"]]
        everyone = {r["peer_id"] for r in rows}
        meshed = [r for r in live if everyone - {r["peer_id"]} <= set(r.get("peer_ids", []))]
        line = f"  {len(live)}/{len(rows)} nodes answering, {len(meshed)}/{len(rows)} peered with every other node"
        if line != last:
            say(line)  # type: ignore[operator]
            last = line
        if len(meshed) == len(rows):
            say(f"testnet up: {len(rows)} nodes meshed")  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise UserError(f"the testnet did not form within {timeout:g} s: {line.strip()}; see `metanode testnet logs --dir {directory}`")
        time.sleep(0.5)


@testnet.command("down")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print {node: stopped | killed | not running} as JSON.")
def down(directory: Path, as_json: bool) -> None:
    """Stop every node (SIGTERM, then SIGKILL after 10 s)."""
    outcomes = processes.down(directory)
    if as_json:
        click.echo(json.dumps(outcomes))
        return
    for name, outcome in outcomes.items():
        click.echo(f"{name} {outcome}")


@testnet.command("status")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def status(directory: Path, as_json: bool) -> None:
    """Per node: whether it answers, peers, height, round, mempool, active jobs, roles, peer id
    (the figures `metanode mesh status` shows)."""
    import trio

    from node.base.logging import configure_client_logging
    from node.testnet.health import cluster_status

    configure_client_logging()  # a stopped node is a row marked NO, not libp2p errors on stderr
    rows = trio.run(cluster_status, directory)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    echo_table(STATUS_COLUMNS, [status_row(row) for row in rows], marks=LIVE_MARKS)


STATUS_COLUMNS = [Column("node"), Column("live"), Column("pid", right=True), Column("peers", right=True), Column("height", right=True),
                  Column("round", right=True), Column("mempool", right=True), Column("jobs", right=True), Column("roles"), Column("peer id")]


def status_row(row: dict[str, Any]) -> list[str]:
    """One node of ``cluster_status`` as the cells of STATUS_COLUMNS ("-" where a figure is unknown)."""
    shown = {k: "-" if row[k] is None else str(row[k]) for k in ("peers", "height", "round", "mempool", "jobs")}
    return [row["name"], "yes" if row["live"] else "NO", str(row["pid"] or "-"), shown["peers"], shown["height"], shown["round"],
            shown["mempool"], shown["jobs"], ",".join(row["roles"]), row["peer_id"]]


@testnet.command("logs")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.argument("node", required=False)
@click.option("--lines", "-n", default=40, show_default=True)
def logs(directory: Path, node: str | None, lines: int) -> None:
    """Print the last lines of one node's log (or of every node's)."""
    names = [node] if node else [str(n["name"]) for n in layout.read_manifest(directory)]
    for name in names:
        path = processes.log_file(directory, name)
        if not path.exists():
            click.echo(f"== {name}: no log yet")
            continue
        click.echo(f"== {name} ({path})")
        for line in path.read_text(errors="replace").splitlines()[-lines:]:
            click.echo(line)


@testnet.command("validate")
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False, path_type=Path))
def validate(manifest_path: Path) -> None:
    """Check a testnet manifest (TOML) and summarise it."""
    from node.testnet.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    spec, load = manifest.testnet, manifest.load
    click.echo(f"{manifest_path}: ok: {spec.validators} validators, {spec.non_validators} non-validators, "
               f"{'netns' if spec.netns else 'loopback'}, block period {spec.block_period_ms} ms; "
               f"load {load.tx_rate:g} tx/s" + (f" and {load.job_rate:g} jobs/s" if load.job_rate else "") + f" for {load.duration_s:g} s")
    for p in manifest.perturbations:
        click.echo(f"  at {p.at_s:7.1f}s  {p.describe()}")


@testnet.command("run")
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False, path_type=Path), help="Where nodes keep keys, data and logs (default: a new temporary directory).")
def run(manifest_path: Path, directory: Path | None) -> None:
    """Run a manifest: testnet, load, perturbations; then check for forks,
    lost transactions and nodes that did not catch up, and (with [load]
    job_rate) that every job is final and every receipt verifies offline.
    The report ends with the figures (a `jobs:` line: per state, latency).
    Exits 1 if a check fails."""
    import tempfile

    from node.base.errors import UserError
    from node.testnet.manifest import load_manifest
    from node.testnet.runner import run_manifest

    manifest = load_manifest(manifest_path)
    directory = directory or Path(tempfile.mkdtemp(prefix="metanode-testnet-"))
    report = run_manifest(manifest, directory, log=click.echo)
    click.echo(report.text())
    if not report.ok:
        raise UserError(f"testnet run failed; node logs are in {directory}")

"""``metanode mesh deploy`` (start a local mesh) and ``metanode mesh status``.

``mesh deploy --port 21001`` is the planning document's name for starting a
local mesh: ``testnet init --base-port 21001`` and ``testnet up`` in one
command (every node a validator with every role), ending with how to use
and stop it; ``metanode testnet`` keeps the finer controls.

``mesh status``: the cluster as one node sees it, every node probed.

Starting from one node, it lists every node that node knows (registered on
chain, genesis validators, persistent peers; then those its peers know) and
asks each for the figures its Prometheus metrics carry: height, round, peers,
mempool, active jobs, and the replicas a storage node should hold and does
not have now (missing or quarantined, being fetched again): those datasets
are listed under the table. Nodes that do not answer are shown as such. The
gathering lives in node/sdk/mesh.py, shared with ``metanode testnet status``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from node.base.errors import EXIT_USAGE, UserError
from node.cli.present import LIVE_MARKS, Column, echo_table


@click.group()
def mesh() -> None:
    """Inspect a running cluster through one of its nodes."""


@mesh.command("deploy")
@click.option("--port", "base_port", required=True, type=click.IntRange(1024, 65000),
              help="TCP port of the first node; node i listens on PORT+i (127.0.0.1).")
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(1, 64), help="Validators, each with every role.")
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Keys, configs, data and logs (default: ./metanode-mesh-PORT). A directory that already holds "
                   "this mesh is started again.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds to wait for every node to answer and peer with the others.")
@click.option("--json", "as_json", is_flag=True, help="Print {dir, genesis, nodes: [{name, address, pid}]} as JSON; no progress lines.")
def deploy(base_port: int, nodes: int, directory: Path | None, timeout: float, as_json: bool) -> None:
    """Start a local mesh of NODES daemons on ports PORT.. (testnet init + up)."""
    from node.base.logging import configure_client_logging
    from node.cli.present import progress
    from node.cli.testnet import wait_formed
    from node.testnet import layout, processes

    configure_client_logging()
    directory = (directory or Path(f"metanode-mesh-{base_port}")).absolute()
    if (directory / layout.MANIFEST).exists():
        entries = layout.read_manifest(directory)
        ports = sorted(int(str(n["address"]).split("/tcp/")[1].split("/")[0]) for n in entries)
        if ports[0] != base_port or len(entries) != nodes:
            raise UserError(f"{directory} holds a mesh of {len(entries)} nodes from port {ports[0]}, not {nodes} from {base_port}; "
                            "choose another --dir", exit_code=EXIT_USAGE)
        fresh = False
    else:
        busy = [port for port in range(base_port, base_port + nodes) if not _port_free(port)]
        if busy:
            raise UserError(f"port{'s' if len(busy) > 1 else ''} {', '.join(map(str, busy))} already in use on 127.0.0.1 "
                            "(another mesh?); choose another --port", exit_code=EXIT_USAGE)
        plans = layout.plan_testnet(nodes, base_port=base_port)
        layout.write_testnet(directory, plans)
        entries = layout.read_manifest(directory)
        fresh = True
    say = progress(enabled=not as_json)
    say(f"{'wrote' if fresh else 'reusing'} a {nodes}-node mesh in {directory}; starting it")
    pids = processes.up(directory)
    wait_formed(directory, timeout, say)
    genesis = directory / layout.GENESIS
    if as_json:
        click.echo(json.dumps({"dir": str(directory), "genesis": str(genesis),
                               "nodes": [{"name": n["name"], "address": n["address"], "pid": pids[str(n["name"])]} for n in entries]},
                              indent=2))
        return
    echo_table([Column("node"), Column("pid", right=True), Column("address")],
               [[str(n["name"]), str(pids[str(n["name"])]), str(n["address"])] for n in entries])
    click.echo(f"mesh up: {nodes} nodes in {directory}\n"
               f"  use it:  export METANODE_NODE={entries[0]['address']} METANODE_GENESIS={genesis}\n"
               f"           metanode mesh status; metanode analytics health --key KEY\n"
               f"  stop it: metanode testnet down --dir {directory}")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@mesh.command("status")
@click.option("--node", "node_addr", required=True, envvar="METANODE_NODE",
              help="Any node of the cluster: /ip4/HOST/tcp/PORT/p2p/PEER_ID (or $METANODE_NODE).")
@click.option("--timeout", default=3.0, show_default=True, type=click.FloatRange(0.1, 120),
              help="Seconds to wait for each node.")
@click.option("--json", "as_json", is_flag=True, help="Print {entry, nodes: [...]} as JSON.")
def status(node_addr: str, timeout: float, as_json: bool) -> None:
    """Per node: peer id, moniker, roles, validator, live, height, round, peers, mempool, jobs,
    replicas missing; then every under-replicated dataset and the nodes missing it.

    Exit code 0 when the entry node answers (whatever the others do), 3 when it does not."""
    import trio

    from node.base.errors import sole_exception
    from node.base.logging import configure_client_logging
    from node.sdk.mesh import mesh_status

    configure_client_logging()
    try:
        report = trio.run(lambda: mesh_status(node_addr, timeout=timeout))
    except BaseException as exc:
        inner = sole_exception(exc)
        if isinstance(inner, UserError) and inner is not exc:
            raise inner from None
        raise
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(summary(report))
    echo_table(TABLE_COLUMNS, table_rows(report["nodes"]), marks=LIVE_MARKS)
    click.echo(TABLE_NOTE)
    for line in under_replicated_lines(report):
        click.echo(line)


def summary(report: dict) -> str:
    nodes = report["nodes"]
    live = [n for n in nodes if n["live"]]
    validators = [n for n in nodes if n["validator"]]
    heights = sorted(n["height"] for n in live if n["height"] is not None)
    span = f"heights {heights[0]}..{heights[-1]}" if heights else "no heights"
    return (f"mesh seen from {report['entry']}: {len(nodes)} nodes, {len(live)} live; "
            f"{len(validators)} validators ({sum(1 for n in validators if n['live'])} live); {span}")


TABLE_COLUMNS = [Column("moniker"), Column("live"), Column("val"), Column("height", right=True), Column("round", right=True),
                 Column("peers", right=True), Column("mempool", right=True), Column("jobs", right=True),
                 Column("missing", right=True), Column("roles"), Column("peer id"), Column("")]
TABLE_NOTE = ("* the node asked; jobs = submitted + scheduled + running; "
              "missing = replicas the node should hold and does not have now")


def under_replicated_lines(report: dict) -> list[str]:
    """One line per dataset some node should hold and does not, naming those nodes."""
    datasets = report.get("under_replicated") or []
    if not datasets:
        return ["no under-replicated datasets"]
    names = {n["peer_id"]: n["moniker"] or n["peer_id"] for n in report["nodes"]}
    lines = [f"under-replicated datasets ({len(datasets)}):"]
    for item in datasets:
        missing = ", ".join(
            f"{names.get(m['peer_id'], m['peer_id'])} ({m.get('missing_s')} s, {m.get('attempts')} fetch attempts"
            + (f": {m['last_error'][:80]}" if m.get("last_error") else "") + ")"
            for m in item["missing_on"])
        lines.append(f"  {item['digest']}  {item.get('size')} bytes  missing on {missing}")
    return lines


def table_rows(nodes: list) -> list[list[str]]:
    """One row per node under TABLE_COLUMNS; an unreachable node's last cell says why."""
    rows = []
    for n in nodes:
        shown = {k: "-" if n.get(k) is None else str(n[k])
                 for k in ("height", "round", "peers", "mempool", "jobs", "under_replicated")}
        moniker = (n["moniker"] or "?") + ("*" if n["entry"] else "")
        note = ""
        if not n["live"]:
            error = n.get("error") or "no answer"
            note = f"(unreachable: {error if len(error) <= 100 else error[:97] + '...'})"
        rows.append([moniker, "yes" if n["live"] else "NO", "yes" if n["validator"] else "-", shown["height"], shown["round"],
                     shown["peers"], shown["mempool"], shown["jobs"], shown["under_replicated"],
                     ",".join(n["roles"] or []) or "-", n["peer_id"], note])
    return rows

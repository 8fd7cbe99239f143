"""``metanode mesh status``: the cluster as one node sees it, every node probed.

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

import click

from node.base.errors import UserError
from node.cli.present import LIVE_MARKS, Column, echo_table


@click.group()
def mesh() -> None:
    """Inspect a running cluster through one of its nodes."""


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

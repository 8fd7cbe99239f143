"""``metanode security export-audit``: the security report of a cluster, as JSON or CSV.

From a running node (``--node``): the chain's facts in the range (cage
denials, limit kills, disputed jobs, each with the receipts that back it)
from that node's ``security_report``, and every node's own facts
(confinement layers, policy digests, counters since start: rate-limit
refusals, HTTP authentication failures, cage runs) from each node the entry
node knows (``mesh_nodes``). From a stopped node's data directory
(``--data-dir``): the chain's facts only, and per node the policy digests its
``job.exec`` receipts name. The node side and the meaning of each fact are
in node/roles/security.py and node/receipts/security.py; the format is docs/audit-report.md.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from node.base.errors import EXIT_USAGE, ErrorCode, UserError

CSV_COLUMNS = ("finding", "node", "height", "job_id", "count", "source", "detail", "receipts", "tx")
# As node/receipts/security.py (not imported from there: it loads DuckDB, which --node does not need).
FINDING_KINDS = ("auth_failures", "rate_limited", "cage_denials", "limit_kills", "disputed_jobs")
DENIAL_STATUSES = ("refused", "killed")
LIMIT_STATUSES = ("output_limit", "cpu_limit", "memory_limit", "timeout")
COUNTER_NOTE = ("counted by the node since it started (refused calls are not receipted); "
                "not filtered by the range")


@click.group()
def security() -> None:
    """Security reports: confinement, refusals, cage denials, limit kills, disputes."""


def parse_time(text: str, option: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time (UTC when no zone is
    given) or of a number of seconds since the epoch."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{option} {text!r}: expected an ISO 8601 time (2026-05-01T12:00:00Z) or seconds since the epoch",
                        exit_code=EXIT_USAGE) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


@security.command("export-audit")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True,
              help="json: one report object; csv: one row per finding, with a header row.")
@click.option("--node", "node_addr", envvar="METANODE_NODE", default=None,
              help="A running node of the cluster (or $METANODE_NODE); every node it knows is asked for its own facts.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="A stopped node's data directory instead: the chain's facts only.")
@click.option("--since-height", type=click.IntRange(min=0), default=None, help="Lowest block height.")
@click.option("--until-height", type=click.IntRange(min=0), default=None, help="Highest block height.")
@click.option("--since", "since_text", default=None, metavar="TIME", help="Earliest block time (ISO 8601, or epoch seconds).")
@click.option("--until", "until_text", default=None, metavar="TIME", help="Latest block time (ISO 8601, or epoch seconds).")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False), help="Write the report here (default: stdout).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 600), help="Seconds to wait for each node.")
def export_audit(fmt: str, node_addr: str | None, data_dir: str | None, since_height: int | None, until_height: int | None,
                 since_text: str | None, until_text: str | None, out_path: str | None, timeout: float) -> None:
    """The security report of the cluster (or of a stopped node's chain) for a
    height or time range: each node's confinement layers and policy digests;
    authentication failures and rate-limit refusals (node counters); cage
    denials, limit kills and disputed jobs with the receipts that back each
    (check any with `metanode receipt verify --receipt-hash ID`)."""
    if data_dir is not None and node_addr is not None and os.environ.get("METANODE_NODE") != node_addr:
        raise UserError("give one of --node ADDR (a running node) or --data-dir DIR (a stopped node)", exit_code=EXIT_USAGE)
    if data_dir is None and node_addr is None:
        raise UserError("give --node ADDR (a running node, or set METANODE_NODE) or --data-dir DIR (a stopped node)",
                        exit_code=EXIT_USAGE)
    if since_height is not None and until_height is not None and since_height > until_height:
        raise UserError(f"--since-height {since_height} is above --until-height {until_height}", exit_code=EXIT_USAGE)
    since_ms = parse_time(since_text, "--since") if since_text is not None else None
    until_ms = parse_time(until_text, "--until") if until_text is not None else None
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise UserError(f"--since {since_text} is after --until {until_text}", exit_code=EXIT_USAGE)
    asked = {"since_height": since_height, "until_height": until_height, "since_ms": since_ms, "until_ms": until_ms}
    if out_path is not None and not Path(out_path).absolute().parent.is_dir():
        raise UserError(f"--out {out_path}: directory {Path(out_path).absolute().parent} does not exist", exit_code=EXIT_USAGE)
    if data_dir is not None:
        report = report_from_data_dir(data_dir, asked)
    else:
        report = report_from_node(node_addr, asked, timeout)  # type: ignore[arg-type]
    text = json.dumps(report, indent=2) + "\n" if fmt == "json" else findings_csv(report)
    if out_path is None:
        click.echo(text, nl=False)
        return
    from node.cli.receipts import write_atomically

    write_atomically(out_path, text.encode())
    total = sum(len(v) for v in report["findings"].values())
    click.echo(f"wrote the security report ({total} findings, {len(report['nodes'])} nodes, "
               f"{len(report['receipts'])} receipts) to {out_path}", err=True)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def assemble(asked: dict[str, Any], source: dict[str, Any], nodes: list[dict[str, Any]], chain: dict[str, Any] | None) -> dict[str, Any]:
    """The report object (docs/audit-report.md): range, nodes, findings, receipts."""
    findings: dict[str, list[dict[str, Any]]] = {kind: [] for kind in FINDING_KINDS}
    receipts: dict[str, Any] = {}
    policies_seen: dict[str, list[str]] = {}
    if chain is not None:
        for kind, items in chain["findings"].items():
            findings.setdefault(kind, []).extend(items)
        receipts = chain["receipts"]
        policies_seen = chain.get("policies", {})
    for node in nodes:
        node["job_policies_seen"] = policies_seen.get(node.get("peer_id", ""), [])
        counters = node.get("counters") or {}
        since = counters.get("since")
        for kind, count, what in (("rate_limited", counters.get("rate_limited"), "RPC calls refused by the node's rate limit"),
                                  ("auth_failures", counters.get("auth_failures"),
                                   "HTTP requests refused for a missing or bad signature (401)")):
            if count:
                findings[kind].append({"finding": kind, "node": node["peer_id"], "height": None, "job_id": None, "count": count,
                                       "source": "counters", "detail": f"{count} {what} since {since}; {COUNTER_NOTE}",
                                       "receipts": [], "tx": None})
        runs = counters.get("cage_runs") or {}
        for status, count in sorted(runs.items()):
            kind = "cage_denials" if status in DENIAL_STATUSES else "limit_kills" if status in LIMIT_STATUSES else None
            if kind and count:
                findings[kind].append({"finding": kind, "node": node["peer_id"], "height": None, "job_id": None, "count": count,
                                       "source": "counters", "detail": f"{count} cage runs ended {status} on this node since {since}; "
                                       f"{COUNTER_NOTE}", "receipts": [], "tx": None})
    known = {n.get("peer_id") for n in nodes}
    for peer, digests in policies_seen.items():
        if peer not in known:  # a node known only from its receipts (a data directory, or not reachable)
            nodes.append({"peer_id": peer, "live": None, "confinement": None, "policies": None, "counters": None,
                          "job_policies_seen": digests})
    heights = chain["range"] if chain is not None else {"since_height": asked["since_height"], "until_height": asked["until_height"]}
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "range": {"since_height": heights["since_height"], "until_height": heights["until_height"],
                  "since": _iso(asked["since_ms"]), "until": _iso(asked["until_ms"])},
        "nodes": nodes,
        "findings": findings,
        "receipts": sorted(receipts.values(), key=lambda r: (r["height"] is None, r["height"] or 0, r["kind"], r["id"])),
    }


def report_from_data_dir(data_dir: str, asked: dict[str, Any]) -> dict[str, Any]:
    from node.receipts.audit import open_audit_db
    from node.receipts.security import chain_findings, resolve_range

    conn = open_audit_db(data_dir)
    try:
        heights = resolve_range(conn, **asked)
        chain = {"range": heights.to_json(), **chain_findings(conn, heights)}
    finally:
        conn.close()
    return assemble(asked, {"data_dir": str(data_dir)}, [], chain)


def report_from_node(node_addr: str, asked: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The entry node's chain facts and its own, then every other node's own facts."""
    import trio

    from node.base.errors import UnreachableError, sole_exception
    from node.base.logging import configure_client_logging
    from node.p2p.client import call_node, connect_to_node
    from node.p2p.rpc_client import RpcCallError

    configure_client_logging()
    params = {k: v for k, v in asked.items() if v is not None}

    async def others(addresses: dict[str, list[str]], entry: str) -> list[dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}

        async def ask(peer: str, addrs: list[str]) -> None:
            error = "no address known"
            for addr in addrs:
                try:
                    with trio.fail_after(timeout * 2):
                        answer = await call_node(addr, "security_report", {"chain": False}, timeout=timeout)
                    found[peer] = answer["node"]
                    return
                except (RpcCallError, UserError, OSError, trio.TooSlowError, KeyError, TypeError) as exc:
                    error = str(exc) or type(exc).__name__
            found[peer] = {"peer_id": peer, "live": False, "error": error.splitlines()[0][:200] if error else "no answer",
                           "confinement": None, "policies": None, "counters": None}

        async with trio.open_nursery() as nursery:
            for peer, addrs in sorted(addresses.items()):
                if peer != entry:
                    nursery.start_soon(ask, peer, addrs)
        return [found[p] for p in sorted(found)]

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with connect_to_node(node_addr, timeout=timeout) as rpc:
            try:
                first = await rpc.call("security_report", params, timeout=max(timeout, 60.0))
            except RpcCallError as exc:
                if exc.code == ErrorCode.METHOD_NOT_FOUND:
                    raise UserError(f"{node_addr} does not serve security_report (an older node?)") from None
                raise UserError(f"{node_addr}: security_report failed: {exc.message} (code {exc.code})") from None
            known = await rpc.call("mesh_nodes", timeout=timeout)
        peers = set(known.get("validators", [])) | {n["peer_id"] for n in known.get("registered", [])}
        addresses = {peer: list(known.get("addresses", {}).get(peer, [])) for peer in peers}
        return first, [first["node"], *await others(addresses, first["node"]["peer_id"])]

    try:
        first, nodes = trio.run(main)
    except BaseException as exc:
        inner = sole_exception(exc)
        if isinstance(inner, (ConnectionError, trio.TooSlowError)):
            raise UnreachableError(f"lost {node_addr}: {inner or 'timed out'}") from None
        if inner is not exc:
            raise inner from None
        raise
    if first.get("chain") is None:
        raise UserError(f"{node_addr} keeps no chain: ask a node that follows the chain (a validator, or any node with a genesis)")
    return assemble(asked, {"node": node_addr}, nodes, first["chain"])


def findings_csv(report: dict[str, Any]) -> str:
    """One row per finding (CSV_COLUMNS), with a header row; receipts space-separated."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for kind in FINDING_KINDS:
        for item in report["findings"].get(kind, []):
            writer.writerow(["" if item.get(c) is None else " ".join(item[c]) if c == "receipts" else item[c]
                             for c in CSV_COLUMNS])
    return buffer.getvalue()

"""``metanode analytics``: submit jobs, follow them, list them, check the cluster."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from node.errors import UserError

NODE_OPTION = click.option("--node", "node_addr", required=True, envvar="METANODE_NODE", help="Gateway multiaddr ending in /p2p/ID (or $METANODE_NODE).")
KEY_OPTION = click.option("--key", "key_path", envvar="METANODE_KEY", help="Tenant key file (or $METANODE_KEY).")


def _run(key_path: str | None, node_addr: str, body: Any) -> Any:
    import trio

    from node.client import AsyncClient, require_key
    from node.errors import sole_exception
    from node.logging import configure_client_logging
    from node.p2p.rpc import RpcCallError

    configure_client_logging()
    identity = require_key(key_path)

    async def main() -> Any:
        async with AsyncClient.connect(node_addr, identity) as client:
            return await body(client)

    try:
        return trio.run(main)
    except BaseException as exc:
        inner = sole_exception(exc)
        if isinstance(inner, RpcCallError):
            raise UserError(f"{inner.message} (code {inner.code}): {json.dumps(inner.data)}") from None
        if isinstance(inner, trio.TooSlowError):
            raise UserError("timed out; the job keeps going: check it with `metanode analytics status`") from None
        if inner is not exc:
            raise inner from None
        raise


@click.group()
def analytics() -> None:
    """Submit analytics jobs and follow them to a verified result."""


def _params(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"--param {pair!r}: expected NAME=VALUE", exit_code=2)
        out[name] = int(value) if value.lstrip("-").isdigit() else value
    return out


@analytics.command("submit")
@NODE_OPTION
@KEY_OPTION
@click.option("--type", "job_type", required=True, type=click.Choice(["sql", "summary", "trend-analysis"]))
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False), help="Upload this CSV/Parquet file first.")
@click.option("--dataset", "dataset", help="An already registered dataset's digest (64 hex).")
@click.option("--name", "input_name", default=None, help="The input's name in the job (default: the file's stem, or 'data').")
@click.option("--query", default=None, help="The SELECT for --type sql.")
@click.option("--param", "params", multiple=True, help="A job parameter NAME=VALUE (repeatable).")
@click.option("--replication", default=1, show_default=True, type=click.IntRange(1, 8))
@click.option("--follow", is_flag=True, help="Follow the job through its states until it is final.")
@click.option("--json", "as_json", is_flag=True)
def submit(node_addr: str, key_path: str | None, job_type: str, data_file: str | None, dataset: str | None,
           input_name: str | None, query: str | None, params: tuple[str, ...], replication: int, follow: bool, as_json: bool) -> None:
    """Upload (if --data) and submit a job; with --follow, wait for its verdict."""
    from pathlib import Path

    if (data_file is None) == (dataset is None):
        raise UserError("give exactly one of --data FILE or --dataset DIGEST", exit_code=2)
    parameters = _params(params)
    name = input_name or (Path(data_file).stem if data_file else "data")
    if job_type == "sql":
        if not query:
            raise UserError("--type sql needs --query \"SELECT ...\"", exit_code=2)
        parameters["query"] = query
    else:
        parameters.setdefault("input", name)

    async def body(client: Any) -> Any:
        digest = dataset
        if data_file is not None:
            if not as_json:
                click.echo(f"uploading {data_file} ...", err=True)
            digest = (await client.upload_dataset(data_file, name=name))["digest"]
        job_id = await client.submit_job(job_type=job_type, data_source={name: digest}, parameters=parameters, replication=replication)
        if not follow:
            return {"job_id": job_id, "dataset": digest}
        changes = (lambda s: None) if as_json else (lambda s: click.echo(f"job {job_id[:16]}... {s['state']}" + (f" ({s['reason']})" if s.get("reason") else ""), err=True))
        return await client.wait_for_completion(job_id, on_change=changes)

    out = _run(key_path, node_addr, body)
    click.echo(json.dumps(out, indent=2, sort_keys=True) if as_json or not follow else _summary(out))
    if follow and out.get("state") != "verified":
        sys.exit(1)


def _summary(status: dict[str, Any]) -> str:
    lines = [f"job {status['id']}: {status['state']}" + (f" ({status['reason']})" if status.get("reason") else "")]
    for r in status.get("results", []):
        lines.append(f"  {r['peer_id']}  result {r['result']}  exit {r['exit']}  receipt {r['receipt']}")
    return "\n".join(lines)


@analytics.command("status")
@NODE_OPTION
@KEY_OPTION
@click.option("--job-id", required=True)
@click.option("--follow", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def status(node_addr: str, key_path: str | None, job_id: str, follow: bool, as_json: bool) -> None:
    """Show a job's state, assignments, results and verdict."""

    async def body(client: Any) -> Any:
        if follow:
            return await client.wait_for_completion(job_id)
        found = await client.status(job_id)
        if found is None:
            raise UserError(f"job {job_id} not found (not committed yet, or not yours)")
        return found

    out = _run(key_path, node_addr, body)
    click.echo(json.dumps(out, indent=2, sort_keys=True) if as_json else _summary(out))


@analytics.command("list")
@NODE_OPTION
@KEY_OPTION
@click.option("--state", default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
def list_jobs(node_addr: str, key_path: str | None, state: str | None, limit: int) -> None:
    """Your jobs, newest first."""
    jobs = _run(key_path, node_addr, lambda client: client.jobs(state=state, limit=limit))
    for job in jobs:
        click.echo(f"{job['id']}  {job['type']:15} {job['state']:10} {job.get('reason') or ''}")


@analytics.command("health")
@NODE_OPTION
@KEY_OPTION
def health(node_addr: str, key_path: str | None) -> None:
    """Validators, height, processing nodes and queue depth."""
    click.echo(json.dumps(_run(key_path, node_addr, lambda client: client.health()), indent=2, sort_keys=True))


@analytics.command("trace")
@NODE_OPTION
@KEY_OPTION
@click.option("--job-id", required=True)
@click.option("--genesis", type=click.Path(exists=True, dir_okay=False), help="Verify every receipt offline against this genesis file.")
@click.option("--json", "as_json", is_flag=True)
def trace(node_addr: str, key_path: str | None, job_id: str, genesis: str | None, as_json: bool) -> None:
    """Every receipt of a job in order (submission, schedule, executions, verdict) and whether each verifies."""

    async def body(client: Any) -> Any:
        if await client.status(job_id) is None:
            raise UserError(f"job {job_id} not found (not committed yet, or not yours)")
        receipts = await client.rpc.call("receipt_trace", {"job_id": job_id})
        for r in receipts:
            r["verified"] = await client.verify_receipt(r["id"], genesis) if genesis else None
        return receipts

    receipts = _run(key_path, node_addr, body)
    if as_json:
        click.echo(json.dumps(receipts, indent=2))
    else:
        for r in receipts:
            mark = "" if r["verified"] is None else ("  verified offline" if r["verified"] else "  DOES NOT VERIFY")
            click.echo(f"#{r['index']:<6} height {r['height']:<6} {r['kind']:13} by {r['issuer']}  {r['id']}{mark}")
    if genesis and not all(r["verified"] for r in receipts):
        sys.exit(1)

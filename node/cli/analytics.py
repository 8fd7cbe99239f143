"""``metanode analytics``: submit jobs, follow them, list them, check the cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from node.base.errors import UserError

NODE_OPTION = click.option("--node", "node_addr", required=True, envvar="METANODE_NODE", help="Gateway multiaddr ending in /p2p/ID (or $METANODE_NODE).")
KEY_OPTION = click.option("--key", "key_path", envvar="METANODE_KEY", help="Tenant key file (or $METANODE_KEY).")
QUIET_OPTION = click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr (for scripts).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout; no progress lines.")


def _progress(quiet: bool, as_json: bool) -> Any:
    """Progress lines go to stderr, so stdout stays the answer; off for --quiet / --json."""
    from node.cli.present import progress

    return progress(enabled=not (quiet or as_json))


def _state_line(job_id: str, status: dict[str, Any]) -> str:
    done = sum(1 for r in status.get("results", []))
    wanted = status.get("replication") or len({a["node"] for a in status.get("assignments", []) if a.get("attempt") == status.get("attempt")})
    extra = f" ({status['reason']})" if status.get("reason") else ""
    if status["state"] in ("scheduled", "running") and wanted:
        extra += f" [{done}/{wanted} results]"
    return f"job {job_id[:16]}... {status['state']}{extra}"


def _run(key_path: str | None, node_addr: str, body: Any) -> Any:
    import trio

    from node.base.errors import sole_exception
    from node.base.logging import configure_client_logging
    from node.p2p.rpc import RpcCallError
    from node.sdk.client import AsyncClient, require_key

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


class JobTypeChoice(click.Choice[str]):
    """``--type``'s choices: the job types of the registry (node/app/jobtypes.py),
    read when the option is parsed or shown, so the CLI offers exactly what this
    build's chain accepts (sorted by name)."""

    def __init__(self) -> None:  # no fixed list: see choices
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from node.app.jobtypes import job_type_names

        return tuple(sorted(job_type_names()))


class JobTypeOption(click.Option):
    """``--type``, whose help lists each registered job type's summary line."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from node.app.jobtypes import JOB_TYPES

        self.help = "; ".join(f"{name}: {JOB_TYPES[name].summary}" for name in sorted(JOB_TYPES))
        return super().get_help_record(ctx)


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
@click.option("--type", "job_type", cls=JobTypeOption, required=True, type=JobTypeChoice())
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False), help="Upload this CSV/Parquet file first.")
@click.option("--dataset", "dataset", help="One of your registered datasets: its name or its digest (64 hex).")
@click.option("--name", "input_name", default=None, help="The input's name in the job (default: the file's stem, or the dataset's name).")
@click.option("--query", default=None, help="The SELECT for --type sql.")
@click.option("--param", "params", multiple=True, help="A job parameter NAME=VALUE (repeatable).")
@click.option("--replication", default=1, show_default=True, type=click.IntRange(1, 8))
@click.option("--follow", is_flag=True, help="Follow the job through its states until it is final, then print its result.")
@QUIET_OPTION
@JSON_OPTION
def submit(node_addr: str, key_path: str | None, job_type: str, data_file: str | None, dataset: str | None,
           input_name: str | None, query: str | None, params: tuple[str, ...], replication: int, follow: bool,
           quiet: bool, as_json: bool) -> None:
    """Upload (if --data) and submit a job; with --follow, wait for its verdict."""
    if (data_file is None) == (dataset is None):
        raise UserError("give exactly one of --data FILE or --dataset NAME|DIGEST", exit_code=2)
    from node.app.jobtypes import job_type as registered_job_type

    entry = registered_job_type(job_type)
    parameters = _params(params)
    if entry.sql_param is not None:  # the type runs SQL text: --query gives it
        if not query:
            raise UserError(f"--type {job_type} needs --query \"SELECT ...\"", exit_code=2)
        parameters[entry.sql_param] = query

    say = _progress(quiet, as_json)

    async def body(client: Any) -> Any:
        if dataset is not None:
            found = await client.find_dataset(dataset)
            digest, name = found["digest"], input_name or found["name"]
        else:
            assert data_file is not None  # exactly one of --data and --dataset (checked above)
            name = input_name or Path(data_file).stem
        if entry.input_param is not None:  # the type reads one input: it is the one uploaded or named
            parameters.setdefault(entry.input_param, name)
        if data_file is not None:
            size = Path(data_file).stat().st_size
            say(f"uploading {data_file} ({size:,} bytes) ...")
            shown = [0]

            def uploaded(done: int, total: int) -> None:
                if total and done * 10 // total > shown[0]:  # a line per tenth, not per chunk
                    shown[0] = done * 10 // total
                    say(f"  {done:,}/{total:,} bytes")

            info = await client.upload_dataset(data_file, name=name, progress=uploaded)
            digest = info["digest"]
            say(f"dataset {name} registered: {digest} ({info.get('row_count', '?')} rows)")
        job_id = await client.submit_job(job_type=job_type, data_source={name: digest}, parameters=parameters, replication=replication)
        say(f"job {job_id} submitted")
        if not follow:
            return {"job_id": job_id, "dataset": digest}
        return await client.wait_for_completion(job_id, on_change=lambda s: say(_state_line(job_id, s)))

    out = _run(key_path, node_addr, body)
    if as_json or not follow:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
    else:
        click.echo(_summary(out))
        if out.get("result"):
            from node.cli.present import format_table

            click.echo("")
            click.echo(format_table(out["result"]["columns"], out["result"]["rows"], max_rows=50))
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
@click.option("--follow", is_flag=True, help="Wait until the job is final, showing each state change.")
@QUIET_OPTION
@JSON_OPTION
def status(node_addr: str, key_path: str | None, job_id: str, follow: bool, quiet: bool, as_json: bool) -> None:
    """Show a job's state, assignments, results and verdict."""
    say = _progress(quiet, as_json)

    async def body(client: Any) -> Any:
        if follow:
            return await client.wait_for_completion(job_id, include_result=False, on_change=lambda s: say(_state_line(job_id, s)))
        found = await client.status(job_id)
        if found is None:
            raise UserError(f"job {job_id} not found (not committed yet, or not yours)")
        return found

    out = _run(key_path, node_addr, body)
    click.echo(json.dumps(out, indent=2, sort_keys=True) if as_json else _summary(out))


@analytics.command("result")
@NODE_OPTION
@KEY_OPTION
@click.option("--job-id", required=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), help="Write to this file instead of stdout.")
def result(node_addr: str, key_path: str | None, job_id: str, fmt: str, out_path: str | None) -> None:
    """A verified job's result: the table several nodes computed identically.

    The gateway fetches it from a node that computed it and checks it against
    the result digest the chain recorded; `analytics trace --genesis` verifies
    the receipts that name that digest."""
    from node.cli.present import format_result

    answer = _run(key_path, node_addr, lambda client: client.result(job_id))
    text = format_result(answer, fmt)
    if out_path:
        Path(out_path).write_text(text + "\n")
        click.echo(f"{answer['row_count']} rows written to {out_path} (result {answer['result_digest']})", err=True)
    else:
        click.echo(text)


@analytics.command("cancel")
@NODE_OPTION
@KEY_OPTION
@click.option("--job-id", required=True)
@click.option("--follow", is_flag=True, help="Wait until the cancellation is on chain.")
def cancel(node_addr: str, key_path: str | None, job_id: str, follow: bool) -> None:
    """Cancel one of your jobs that is not final yet."""

    async def body(client: Any) -> Any:
        found = await client.status(job_id)
        if found is None:
            raise UserError(f"job {job_id} not found (not committed yet, or not yours)")
        if found["state"] in ("verified", "disputed", "failed", "cancelled"):
            raise UserError(f"job {job_id} is already {found['state']}")
        sent = await client.cancel_job(job_id)
        return await client.wait_for_completion(job_id, include_result=False) if follow else sent

    out = _run(key_path, node_addr, body)
    click.echo(f"job {job_id}: {out['state']}" if follow else f"cancellation submitted (tx {out['tx']})")


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


@analytics.command("datasets")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def datasets(node_addr: str, key_path: str | None, as_json: bool) -> None:
    """Your datasets in this node's catalog: name, digest, format, rows, bytes."""
    found = _run(key_path, node_addr, lambda client: client.datasets())
    if as_json:
        click.echo(json.dumps(found, indent=2, sort_keys=True))
        return
    for d in found:
        click.echo(f"{d['name']:24} {d['digest']}  {d['format']:7} {d.get('row_count') or '?':>9} rows {d['size']:>12,} bytes")


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
@click.option("--include-witness", is_flag=True, help="Show each execution's witness and check it against its job.exec receipt.")
@JSON_OPTION
def trace(node_addr: str, key_path: str | None, job_id: str, genesis: str | None, include_witness: bool, as_json: bool) -> None:
    """Every receipt of a job in order (submission, schedule, executions, verdict) and whether each verifies."""

    async def body(client: Any) -> Any:
        if await client.status(job_id) is None:
            raise UserError(f"job {job_id} not found (not committed yet, or not yours)")
        receipts = await client.rpc.call("receipt_trace", {"job_id": job_id})
        for r in receipts:
            r["verified"] = await client.verify_receipt(r["id"], genesis) if genesis else None
        if include_witness:
            await _attach_witnesses(client, job_id, receipts)
        return receipts

    receipts = _run(key_path, node_addr, body)
    if as_json:
        click.echo(json.dumps(receipts, indent=2))
    else:
        for r in receipts:
            mark = "" if r["verified"] is None else ("  verified offline" if r["verified"] else "  DOES NOT VERIFY")
            click.echo(f"#{r['index']:<6} height {r['height']:<6} {r['kind']:13} by {r['issuer']}  {r['id']}{mark}")
            if "witness" in r:
                click.echo(_witness_lines(r["witness"]))
    bad_witness = include_witness and any(r.get("witness", {}).get("matches_receipt") is False for r in receipts)
    if (genesis and not all(r["verified"] for r in receipts)) or bad_witness:
        sys.exit(1)


async def _attach_witnesses(client: Any, job_id: str, receipts: list[dict[str, Any]]) -> None:
    """Each job.exec receipt gets its execution's witness and whether the two agree
    field by field (node/receipts/execution.py: witness_mismatches)."""
    import base64

    from node.cage.witness import WitnessError, decode_witness_file
    from node.receipts.envelope import decode_receipt
    from node.receipts.execution import witness_mismatches

    executions = {e["receipt"]: e for e in (await client.witness(job_id))["executions"]}
    for r in receipts:
        if r["kind"] != "job.exec":
            continue
        e = executions.get(r["id"])
        if e is None or not e["available"]:
            r["witness"] = {"available": False, "digest": e["witness_digest"] if e else None}
            continue
        envelope = bytes.fromhex((await client.rpc.call("receipt_get", {"id": r["id"]}))["envelope"])
        try:
            record, digest, _ = decode_witness_file(base64.b64decode(e["file"]))
            mismatches = witness_mismatches(decode_receipt(envelope), record, digest)
        except (WitnessError, ValueError, KeyError, TypeError) as exc:
            mismatches = [f"witness file unreadable: {exc}"]
        r["witness"] = {"available": True, "digest": e["witness_digest"], "matches_receipt": not mismatches,
                        "mismatches": mismatches, "record": e["witness"]}


def _witness_lines(w: dict[str, Any]) -> str:
    if not w["available"]:
        return f"         witness {w['digest']}: not available from the nodes that ran it"
    rec = w["record"]
    head = f"         witness {w['digest']}: " + ("matches the receipt" if w["matches_receipt"] else "DOES NOT MATCH: " + "; ".join(w["mismatches"]))
    lines = [head, f"           exit {rec['exit']['status']}  seed {rec.get('seed', '')[:16]}...  result {str(rec.get('result_digest'))[:16]}..."]
    for item in rec.get("inputs", []):
        lines.append(f"           read    {item.get('name')}  {item.get('size')} bytes  sha256 {str(item.get('sha256'))[:16]}...")
    for item in rec.get("outputs", []):
        lines.append(f"           wrote   {item.get('name')}  {item.get('size')} bytes")
    for item in rec.get("denials", []):
        lines.append(f"           denied  {item}")
    return "\n".join(lines)

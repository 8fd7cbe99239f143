"""``metanode analytics``: upload datasets, submit jobs, follow them, list them, check the cluster.

stdout carries the answer (a job id, a table, or with ``--json`` the JSON
every command that prints data offers); stderr carries what happens meanwhile
(the upload's progress bar, the inferred schema and parameters, the follow
line), which ``--quiet`` and ``--json`` switch off. Option values are checked
in words before anything is sent (node/cli/analytics_options.py); the upload
display and the datasets listing are node/cli/analytics_datasets.py; the
``--follow`` line is node/cli/analytics_follow.py.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import click

from node.base.errors import EXIT_USAGE, UserError
from node.cli.analytics_options import (
    JOB_ID_OPTION,
    JSON_OPTION,
    KEY_OPTION,
    NODE_OPTION,
    QUIET_OPTION,
    DataFile,
    DataFileType,
    DatasetRef,
    DatasetRefType,
    InputName,
    JobTypeChoice,
    JobTypeOption,
    parse_params,
    value_option,
)

__all__ = ["analytics", "JobTypeChoice", "JobTypeOption"]


def _progress(quiet: bool, as_json: bool) -> Callable[[str], None]:
    """Progress lines go to stderr, so stdout stays the answer; off for --quiet / --json."""
    from node.cli.present import progress

    return progress(enabled=not (quiet or as_json))


def _rpc_error_text(exc: Any) -> str:
    """An RPC error in words: its message, then what its data says (reason, the parameter)."""
    data = exc.data
    if isinstance(data, dict):
        reason = data.get("reason")
        param = data.get("param")
        if isinstance(reason, str) and reason in exc.message:  # the message already says it
            return f"{exc.message} (code {exc.code})"
        if isinstance(reason, str) and reason:
            where = f"{param}: " if isinstance(param, str) and param not in reason else ""
            return f"{exc.message}: {where}{reason} (code {exc.code})"
    if isinstance(data, dict) and data and all(isinstance(v, (str, int, float)) for v in data.values()):
        detail = ": " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data.items())
    else:
        detail = f": {json.dumps(data)}" if data not in (None, {}) else ""
    return f"{exc.message}{detail} (code {exc.code})"


def _run(key_path: str | None, node_addr: str, body: Callable[[Any], Awaitable[Any]]) -> Any:
    """Connect as the tenant, run ``body(client)`` under trio, and turn what can
    go wrong (an RPC error, a timeout) into one line and an exit code."""
    import logging

    import trio

    from node.base.errors import UnreachableError, sole_exception
    from node.p2p.rpc_client import RpcCallError
    from node.sdk.client import AsyncClient, require_key

    # Errors are reported once, as one line, below (as `metanode rpc` does): the
    # client's dialer logs nothing worth a user's eye, and structlog costs an import.
    logging.getLogger().setLevel(logging.ERROR)
    identity = require_key(key_path)

    async def main() -> Any:
        async with AsyncClient.connect(node_addr, identity) as client:
            return await body(client)

    try:
        return trio.run(main)
    except BaseException as exc:
        inner = sole_exception(exc)
        if isinstance(inner, RpcCallError):
            raise UserError(_rpc_error_text(inner)) from None
        if isinstance(inner, (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError)):
            raise UnreachableError(f"lost {node_addr}: {inner}") from None
        if isinstance(inner, trio.TooSlowError):
            raise UserError("timed out; the job keeps going: check it with `metanode analytics status`") from None
        if inner is not exc:
            raise inner from None
        raise


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@click.group()
def analytics() -> None:
    """Upload datasets, submit analytics jobs and follow them to a verified result."""


# -- submit ---------------------------------------------------------------------------------------

async def _upload(client: Any, spec: DataFile, *, on_bad_rows: str, say: Callable[[str], None], show_bar: bool) -> dict[str, Any]:
    """Upload one --data file (a progress bar on a terminal); its catalog row and registration.
    Refused rows become a UserError listing them by line number."""
    from node.cli.analytics_datasets import UploadBar, bad_rows_message, upload_lines
    from node.p2p.rpc_client import RpcCallError

    name = spec.input_name or spec.path.stem
    try:
        with UploadBar(spec.path, enabled=show_bar) as bar:
            info: dict[str, Any] = await client.upload_dataset(spec.path, name=name, on_bad_rows=on_bad_rows, progress=bar)
    except RpcCallError as exc:
        if isinstance(exc.data, dict) and "bad_rows" in exc.data:
            raise UserError(bad_rows_message(spec.path, exc.data)) from None
        raise UserError(f"{spec.path}: {_rpc_error_text(exc)}") from None
    for line in upload_lines(spec.path, info):
        say(line)
    return info


async def _resolve(client: Any, ref: DatasetRef) -> dict[str, Any]:
    """One of the tenant's datasets by name (its latest version), name@version or
    digest; the SDK registers one stored but not registered yet (an HTTP upload)."""
    from node.p2p.rpc_client import RpcCallError

    try:
        found: dict[str, Any] = await client.find_dataset(ref.ref)
        return found
    except RpcCallError as exc:
        raise UserError(f"--dataset {ref.ref}: {_rpc_error_text(exc)}") from None


@analytics.command("submit")
@NODE_OPTION
@KEY_OPTION
@value_option("--type", "job_type", cls=JobTypeOption, required=True, type=JobTypeChoice())
@value_option("--data", "data_files", multiple=True, type=DataFileType(),
              help="Upload this CSV, Parquet or JSON Lines file as an input (repeatable; NAME=FILE names the input).")
@value_option("--dataset", "dataset_refs", multiple=True, type=DatasetRefType(),
              help="One of your registered datasets as an input: NAME (its latest version), NAME@VERSION or its digest "
                   "(repeatable; INPUT=REF names the input).")
@value_option("--name", "input_name", type=InputName(), default=None,
              help="The input's name in the job, with one --data/--dataset (default: the file's stem or the dataset's name).")
@click.option("--query", default=None, help="The SELECT for --type sql.")
@value_option("--param", "params", multiple=True, help="A job parameter NAME=VALUE (repeatable).")
@value_option("--on-bad-rows", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="A --data file with rows that do not fit its columns: refuse it (listing them), or store the good rows.")
@value_option("--replication", default=1, show_default=True, type=click.IntRange(1, 8))
@click.option("--follow", is_flag=True, help="Follow the job until it is final, then print its result.")
@QUIET_OPTION
@JSON_OPTION
def submit(node_addr: str, key_path: str | None, job_type: str, data_files: tuple[DataFile, ...],
           dataset_refs: tuple[DatasetRef, ...], input_name: str | None, query: str | None, params: tuple[str, ...],
           on_bad_rows: str, replication: int, follow: bool, quiet: bool, as_json: bool) -> None:
    """Upload (--data) or name (--dataset) the inputs and submit a job; with --follow, wait for its verdict."""
    if bool(data_files) == bool(dataset_refs):
        raise UserError("give exactly one of --data FILE or --dataset NAME|DIGEST (either may be repeated)",
                        exit_code=EXIT_USAGE)
    if input_name is not None and len(data_files) + len(dataset_refs) > 1:
        raise UserError("--name names the one input; with several, write --data NAME=FILE or --dataset NAME=REF",
                        exit_code=EXIT_USAGE)
    from node.app.jobtypes import job_type as registered_job_type

    entry = registered_job_type(job_type)
    parameters = parse_params(params)
    if entry.sql_param is not None:  # the type runs SQL text: --query gives it
        if not query:
            raise UserError(f"--type {job_type} needs --query \"SELECT ...\"", exit_code=EXIT_USAGE)
        parameters[entry.sql_param] = query
    say = _progress(quiet, as_json)

    async def body(client: Any) -> Any:
        from node.sdk.datasets import input_name_for

        inputs: dict[str, str] = {}
        for spec in data_files:
            info = await _upload(client, spec, on_bad_rows=on_bad_rows, say=say, show_bar=not (quiet or as_json))
            inputs[_input_name(input_name or spec.input_name or input_name_for(spec.path.stem), inputs)] = info["digest"]
        for ref in dataset_refs:
            found = await _resolve(client, ref)
            inputs[_input_name(input_name or ref.input_name or input_name_for(found["name"]), inputs)] = found["digest"]
        if entry.input_param is not None and len(inputs) == 1:  # the type reads one input: the one given
            parameters.setdefault(entry.input_param, next(iter(inputs)))
        prepared = await _prepare(client, job_type=job_type, data_source=inputs, parameters=parameters,
                                  replication=replication)
        for note in prepared.notes:
            say(f"{job_type}: {note}")
        started = time.monotonic()
        job_id = await client.submit_prepared(prepared)
        if not follow:
            return {"job_id": job_id, "inputs": inputs, "params": prepared.payload["params"], "notes": list(prepared.notes)}
        say(f"job {job_id} submitted")
        from node.cli.analytics_follow import FollowDisplay, follow_job

        return await follow_job(client, job_id, display=FollowDisplay(not (quiet or as_json)), started=started)

    out = _run(key_path, node_addr, body)
    if as_json:
        _echo_json(out)
    elif not follow:
        click.echo(out["job_id"])
        say(f"follow it with: metanode analytics status --job-id {out['job_id']} --follow")
    else:
        click.echo(_summary(out))
        if out.get("result"):
            from node.cli.present import format_table

            click.echo("")
            click.echo(format_table(out["result"]["columns"], out["result"]["rows"], max_rows=50))
    if follow and out.get("state") != "verified":
        sys.exit(1)


def _input_name(name: str, taken: dict[str, str]) -> str:
    if name in taken:
        raise UserError(f"two inputs named {name!r}: name them with --data NAME=FILE or --dataset NAME=REF",
                        exit_code=EXIT_USAGE)
    return name


async def _prepare(client: Any, **job: Any) -> Any:
    """The SDK's prepare_job: the job's payload with its parameters completed
    (trend-analysis's inferred columns) and the notes saying what was chosen
    and the --param that changes it. A file that leaves no sensible choice is
    a usage error listing the candidates."""
    try:
        return await client.prepare_job(**job)
    except ValueError as exc:
        raise UserError(str(exc), exit_code=EXIT_USAGE) from None


def _summary(status: dict[str, Any], what: str | None = None) -> str:
    from node.cli.analytics_follow import short_peer

    head = f"job {status['id']}: {status['state']}"
    if what:
        head += f" · {what}"
    elif status.get("reason"):
        head += f" ({status['reason']})"
    lines = [head]
    for r in status.get("results", []):
        lines.append(f"  {short_peer(r['peer_id'])}  result {r['result']}  exit {r['exit']}  receipt {r['receipt']}")
    return "\n".join(lines)


# -- status, result, cancel, list ----------------------------------------------------------------

@analytics.command("status")
@NODE_OPTION
@KEY_OPTION
@JOB_ID_OPTION
@click.option("--follow", is_flag=True, help="Wait until the job is final, showing what it waits for.")
@QUIET_OPTION
@JSON_OPTION
def status(node_addr: str, key_path: str | None, job_id: str, follow: bool, quiet: bool, as_json: bool) -> None:
    """Show a job's state, assignments, results and verdict, and what it waits for."""
    from node.cli.analytics_follow import BlockClock, FollowDisplay, awaited, follow_job, status_or_none

    async def body(client: Any) -> Any:
        if follow:
            return await follow_job(client, job_id, display=FollowDisplay(not (quiet or as_json)), include_result=False)
        found = await status_or_none(client.rpc, job_id)
        if found is None:
            raise UserError(f"job {job_id} not found (not committed yet, or not yours)")
        clock = BlockClock()
        await clock.tick(client.rpc)
        found["awaited"] = awaited(found, height=clock.height, seconds_per_block=clock.seconds_per_block)
        return found

    out = _run(key_path, node_addr, body)
    if as_json:
        _echo_json(out)
    else:
        click.echo(_summary(out, out.get("awaited")))
    if follow and out["state"] != "verified":
        sys.exit(1)


@analytics.command("result")
@NODE_OPTION
@KEY_OPTION
@JOB_ID_OPTION
@value_option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@value_option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), help="Write to this file instead of stdout.")
def result(node_addr: str, key_path: str | None, job_id: str, fmt: str, out_path: str | None) -> None:
    """A verified job's result: the table several nodes computed identically.

    The gateway fetches it from a node that computed it and checks it against
    the result digest the chain recorded; `analytics trace --genesis` verifies
    the receipts that name that digest."""
    from pathlib import Path

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
@JOB_ID_OPTION
@click.option("--follow", is_flag=True, help="Wait until the cancellation is on chain.")
@QUIET_OPTION
@JSON_OPTION
def cancel(node_addr: str, key_path: str | None, job_id: str, follow: bool, quiet: bool, as_json: bool) -> None:
    """Cancel one of your jobs that is not final yet."""
    from node.cli.analytics_follow import FINAL_STATES, FollowDisplay, follow_job, status_or_none

    async def body(client: Any) -> Any:
        found = await status_or_none(client.rpc, job_id)
        if found is None:
            raise UserError(f"job {job_id} not found (not committed yet, or not yours)")
        if found["state"] in FINAL_STATES:
            raise UserError(f"job {job_id} is already {found['state']}")
        sent = await client.cancel_job(job_id)
        if not follow:
            return sent
        return await follow_job(client, job_id, display=FollowDisplay(not (quiet or as_json)), include_result=False)

    out = _run(key_path, node_addr, body)
    if as_json:
        _echo_json(out)
    else:
        click.echo(f"job {job_id}: {out['state']}" if follow else f"cancellation submitted (tx {out['tx']})")


@analytics.command("list")
@NODE_OPTION
@KEY_OPTION
@value_option("--state", type=click.Choice(["submitted", "scheduled", "running", "verified", "disputed", "failed", "cancelled"]),
              default=None, help="Only jobs in this state.")
@value_option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@JSON_OPTION
def list_jobs(node_addr: str, key_path: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """Your jobs, newest first."""
    from node.cli.present import Column, echo_table

    jobs = _run(key_path, node_addr, lambda client: client.jobs(state=state, limit=limit))
    if as_json:
        _echo_json(jobs)
        return
    if not jobs:
        click.echo("no jobs" + (f" in state {state}" if state else ""), err=True)
        return
    columns = [Column("JOB ID"), Column("TYPE"), Column("STATE"), Column("HEIGHT", right=True), Column("REASON")]
    echo_table(columns, [[j["id"], j["type"], j["state"], str(j.get("submitted_height") or ""), j.get("reason") or ""]
                         for j in jobs])


# -- datasets, health ------------------------------------------------------------------------------

@analytics.command("datasets")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def datasets(node_addr: str, key_path: str | None, as_json: bool) -> None:
    """Your datasets: name, version, rows, columns, bytes and digest.

    Registered versions come from the chain; rows and columns from this node's
    catalog. A dataset stored but not registered (an HTTP upload) shows as
    unregistered."""
    from node.cli.analytics_datasets import dataset_table, fetch_datasets
    from node.cli.present import echo_table

    found = _run(key_path, node_addr, lambda client: fetch_datasets(client.rpc))
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo("no datasets yet: upload one with `metanode analytics submit --data FILE ...`", err=True)
        return
    echo_table(*dataset_table(found))


@analytics.command("health")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def health(node_addr: str, key_path: str | None, as_json: bool) -> None:
    """Validators, height, processing nodes and queue depth."""
    from node.cli.present import Column, echo_table

    answer = _run(key_path, node_addr, lambda client: client.health())
    if as_json:
        _echo_json(answer)
        return
    queue = answer.get("queue") or {}
    rows = [["height", str(answer.get("height"))], ["validators", str(answer.get("validators"))],
            ["processing nodes", f"{answer.get('healthy_processing_nodes')} healthy of {answer.get('processing_nodes')}"]]
    if isinstance(queue, dict):
        rows += [[f"jobs {k.replace('_', ' ')}", str(v)] for k, v in queue.items()]
    echo_table([Column("WHAT"), Column("VALUE")], rows)


# -- trace -----------------------------------------------------------------------------------------

@analytics.command("trace")
@NODE_OPTION
@KEY_OPTION
@JOB_ID_OPTION
@value_option("--genesis", type=click.Path(exists=True, dir_okay=False), help="Verify every receipt offline against this genesis file.")
@click.option("--include-witness", is_flag=True, help="Show each execution's witness and check it against its job.exec receipt.")
@JSON_OPTION
def trace(node_addr: str, key_path: str | None, job_id: str, genesis: str | None, include_witness: bool, as_json: bool) -> None:
    """Every receipt of a job in order (submission, schedule, executions, verdict) and whether each verifies."""
    from node.cli.analytics_follow import status_or_none
    from node.cli.analytics_trace import attach_witnesses, verify_offline, with_service_placements, witness_lines

    async def body(client: Any) -> Any:
        status = await status_or_none(client.rpc, job_id)
        if status is None:
            raise UserError(f"job {job_id} not found (not committed yet, or not yours)")
        # A service run: the service.placement receipts that decided where it could run come first.
        receipts = await with_service_placements(client, status, await client.rpc.call("receipt_trace", {"job_id": job_id}))
        for r in receipts:
            r["verified"] = await verify_offline(client, r["id"], genesis) if genesis else None
        if include_witness:
            await attach_witnesses(client, job_id, receipts)
        return receipts

    receipts = _run(key_path, node_addr, body)
    if as_json:
        click.echo(json.dumps(receipts, indent=2))
    else:
        for r in receipts:
            mark = "" if r["verified"] is None else ("  verified offline" if r["verified"] else "  DOES NOT VERIFY")
            click.echo(f"#{r['index']:<6} height {r['height']:<6} {r['kind']:17} by {r['issuer']}  {r['id']}{mark}")
            if "witness" in r:
                click.echo(witness_lines(r["witness"]))
    bad_witness = include_witness and any(r.get("witness", {}).get("matches_receipt") is False for r in receipts)
    if (genesis and not all(r["verified"] for r in receipts)) or bad_witness:
        sys.exit(1)

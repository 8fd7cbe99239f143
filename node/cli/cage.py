"""``metanode cage``: check the host, run a job locally, replay a witness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from node.base.codec import to_hex
from node.base.errors import EXIT_REPLAY_MISMATCH, EXIT_RUNTIME, UserError
from node.cage.job import CageError, JobOutcome, JobSpec
from node.cage.layers import probe_host
from node.cage.policy import Policy, default_policy_path, load_policies, missing_layers
from node.cage.results import decode_result, display_cell

MAX_ROWS_SHOWN = 50


def _policy_option(function: Any) -> Any:
    return click.option("--policies", "policy_file", type=click.Path(dir_okay=False), default=None,
                        help="policy file (default: config/policies.toml)")(function)


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise UserError(f"--{what} {value!r}: expected NAME=VALUE", exit_code=2)
        if name in pairs:
            raise UserError(f"--{what} {name!r} given twice", exit_code=2)
        pairs[name] = rest
    return pairs


def _param_value(text: str) -> Any:
    """--param values: JSON (numbers must be integers), else a plain string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(value, float):
        raise UserError(f"--param value {text!r}: floats are not allowed (pass a string)", exit_code=2)
    return value


@click.group()
def cage() -> None:
    """DockLock: the deterministic execution cage."""


@cage.command()
@_policy_option
@click.option("--policy", "policy_name", default=None, metavar="NAME",
              help="also run a real probe job under this policy; with a syscalls allow-list, name the "
                   "syscalls a job needs that it lacks (exit 1 if the job cannot run)")
def check(policy_file: str | None, policy_name: str | None) -> None:
    """Print the layers this host enforces and the policies it can run."""
    policies = load_policies(policy_file or default_policy_path())
    if policy_name is not None and policy_name not in policies:
        raise UserError(f"--policy: no policy {policy_name!r} (known: {', '.join(sorted(policies))})", exit_code=2)
    caps = probe_host()
    click.echo("layers:")
    for layer, ok in caps.available.items():
        click.echo(f"  {'yes' if ok else 'NO '}  {layer:<20} {caps.detail.get(layer, '')}")
    click.echo("policies:")
    for name, policy in sorted(policies.items()):
        missing = missing_layers(policy, caps.layers)
        verdict = "can run" if not missing else f"REFUSED: missing {', '.join(missing)}"
        allow = "" if policy.syscalls is None else f" (allow-list of {len(policy.syscalls)} syscalls)"
        click.echo(f"  {name:<12} {policy.enforcement_level:<10} {verdict}{allow}")
    if policy_name is not None:
        _check_policy_runs_a_job(policies[policy_name], policy_file, missing_layers(policies[policy_name], caps.layers))


def _check_policy_runs_a_job(policy: Policy, policy_file: str | None, missing: list[str]) -> None:
    """``cage check --policy``: probe the allow-list, then run a real job under the policy."""
    import dataclasses
    import tempfile

    from node.cage.pool import CagePool
    from node.cage.syscall_probe import PROBE_SQL, probe_policy_syscalls, write_probe_input

    name = policy.name
    click.echo(f"probe job under {name!r}:")
    if missing:
        raise UserError(f"policy {name!r} cannot run on this host: missing {', '.join(missing)}",
                        exit_code=EXIT_RUNTIME)
    if policy.allows_network:
        # Jobs never get network; a service policy is probed as a job. A job's
        # syscalls are what a service needs at the least, not all of it.
        click.echo("  (a service policy: probed as a job, with the network denied)")
        policy = dataclasses.replace(policy, network="denied")
    with tempfile.TemporaryDirectory(prefix="metanode-cage-check-") as scratch:
        input_path = write_probe_input(scratch)
        if policy.syscalls is not None:
            report = probe_policy_syscalls(policy, input_path=input_path)
            click.echo(f"  syscalls outside the allow-list the job made: {', '.join(report.unlisted) or 'none'} "
                       f"(job {report.status}{': ' + report.detail if report.detail else ''})")
            if report.unlisted:
                raise UserError(
                    f"policy {name!r} cannot run a job: its syscalls allow-list lacks {len(report.unlisted)} "
                    f"syscall(s) a job needs: {', '.join(report.unlisted)}",
                    exit_code=EXIT_RUNTIME,
                )
        job = JobSpec(kind="sql", policy=name, inputs={"sales": str(input_path)}, sql=PROBE_SQL)
        with CagePool({name: policy}) as pool:
            outcome = pool.run(job)
    click.echo(f"  job status: {outcome.status}" + (f" ({outcome.detail})" if outcome.detail else ""))
    if not outcome.ok:
        raise UserError(f"policy {name!r} cannot run a job: {outcome.status}", exit_code=EXIT_RUNTIME)
    assert outcome.result_digest is not None
    click.echo(f"  result digest: {to_hex(outcome.result_digest)}")
    click.echo(f"policy {name!r} runs jobs")


def _print_outcome(outcome: JobOutcome) -> None:
    click.echo(f"status: {outcome.status}" + (f" ({outcome.detail})" if outcome.detail else ""))
    if outcome.result is not None:
        table = decode_result(outcome.result)
        kinds = [kind for _, kind in table["columns"]]
        click.echo("\t".join(name for name, _ in table["columns"]))
        for row in table["rows"][:MAX_ROWS_SHOWN]:
            click.echo("\t".join(display_cell(kind, cell) for kind, cell in zip(kinds, row)))
        if len(table["rows"]) > MAX_ROWS_SHOWN:
            click.echo(f"... {len(table['rows']) - MAX_ROWS_SHOWN} more rows")
        ordering = "as the query's ORDER BY" if table["order"] == "query" else "canonical (no ORDER BY)"
        click.echo(f"row order: {ordering}")
    for denial in outcome.denials:
        click.echo(f"denied: {denial['op']} {denial['target']} ({denial['layer']})")
    if outcome.result_digest is not None:
        click.echo(f"result digest:  {to_hex(outcome.result_digest)}")
    click.echo(f"witness digest: {to_hex(outcome.witness_digest)}")
    click.echo(f"layers: {', '.join(outcome.witness['layers']['applied']) or 'none'}")


@cage.command()
@click.option("--policy", "policy_name", default="processing", show_default=True)
@_policy_option
@click.option("--input", "inputs", multiple=True, metavar="NAME=PATH", help="an input file (CSV or Parquet)")
@click.option("--sql", default=None, help="one SELECT over the inputs (by name)")
@click.option("--function", default=None, help="a registered python-fn function")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="parameter (JSON or text)")
@click.option("--seed", default="", help="job seed, hex")
@click.option("--clock", default=0, type=int, help="logical clock (block time, seconds)")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None)
@click.option("--witness", "witness_path", type=click.Path(dir_okay=False), default=None,
              help="write the CBOR witness here")
def run(policy_name: str, policy_file: str | None, inputs: tuple[str, ...], sql: str | None,
        function: str | None, params: tuple[str, ...], seed: str, clock: int, output_dir: str | None,
        witness_path: str | None) -> None:
    """Run one job locally in the cage and print its result and digests."""
    from node.cage.pool import CagePool

    if (sql is None) == (function is None):
        raise UserError("give exactly one of --sql or --function", exit_code=2)
    try:
        seed_bytes = bytes.fromhex(seed)
    except ValueError:
        raise UserError(f"--seed {seed!r} is not hex", exit_code=2) from None
    job = JobSpec(
        kind="sql" if sql is not None else "python-fn", policy=policy_name,
        inputs=_pairs(inputs, "input"), sql=sql, function=function,
        params={k: _param_value(v) for k, v in _pairs(params, "param").items()},
        seed=seed_bytes, clock=clock, output_dir=output_dir,
    )
    with CagePool(policy_file) as pool:
        outcome = pool.run(job)
    if witness_path:
        outcome.save_witness(witness_path)
    _print_outcome(outcome)
    if witness_path:
        click.echo(f"witness written to {witness_path}")
    if not outcome.ok:
        raise UserError(f"job did not succeed: {outcome.status}", exit_code=EXIT_RUNTIME)


@cage.command()
@click.argument("witness_path", type=click.Path(dir_okay=False))
@click.option("--input", "inputs", multiple=True, metavar="NAME=PATH",
              help="read this input from PATH instead of the recorded path")
def replay(witness_path: str, inputs: tuple[str, ...]) -> None:
    """Re-run a job from its witness and check that every digest matches."""
    from node.cage.pool import CagePool
    from node.cage.replay import load_witness
    from node.cage.replay import replay as replay_witness
    from node.cage.witness import WitnessError

    data = load_witness(witness_path)
    try:
        with CagePool({}) as pool:
            report = replay_witness(pool, data, _pairs(inputs, "input"))
    except WitnessError as exc:
        raise CageError(f"{witness_path}: {exc}") from None
    for what, equal, recorded, replayed in report.checks:
        mark = "ok      " if equal else "MISMATCH"
        click.echo(f"{mark} {what:<20} {recorded}" + ("" if equal else f" != {replayed}"))
    if not report.matches:
        raise UserError("replay does not match the witness", exit_code=EXIT_REPLAY_MISMATCH)
    click.echo("replay matches the witness")


@cage.command()
@_policy_option
def policies(policy_file: str | None) -> None:
    """List the policies of a policy file with their digests."""
    path = Path(policy_file) if policy_file else default_policy_path()
    for name, policy in sorted(load_policies(path).items()):
        click.echo(f"{name:<12} {policy.enforcement_level:<10} network={policy.network:<8} "
                   f"deny={','.join(policy.deny) or '-'} kill={','.join(policy.kill) or '-'} "
                   f"allow={'-' if policy.syscalls is None else f'{len(policy.syscalls)} syscalls'} "
                   f"digest={to_hex(policy.digest)}")

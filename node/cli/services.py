"""``metanode service`` and ``metanode container``: long-running analytics workloads (ENC services).

A service is a job template over datasets named (not pinned by digest), a
replica count, a DockLock policy and a trigger (each new version of an input,
or every N blocks). The chain places its replicas on processing nodes and
starts a run (an ordinary job) at each trigger; the latest verified run is the
service's result (docs/services.md). These commands sign ``service.deploy`` /
``service.scale`` / ``service.stop`` with the tenant key and read the
gateway's ``service_list`` / ``service_status`` / ``service_result`` through
the SDK (node/sdk/services.py). ``container start`` is the planning
document's name for ``service deploy`` (``bpi container start --name
metaanalytics --policy strict-determinism``), with defaults for what it leaves
out. Option checks and the words printed live in node/cli/services_present.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from node.base.errors import EXIT_USAGE, UserError
from node.cli.analytics import _rpc_error_text, _run
from node.cli.analytics_options import (
    JSON_OPTION,
    KEY_OPTION,
    NODE_OPTION,
    QUIET_OPTION,
    JobTypeChoice,
    JobTypeOption,
    parse_params,
    value_option,
)
from node.cli.services_present import PolicyName, ServiceDatasetType, ServiceInput, ServiceName

__all__ = ["service", "container"]

DEFAULT_DEADLINE_BLOCKS = 20  # the SDK's deploy_service default


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _name_argument() -> Any:
    return click.argument("name", type=ServiceName())


@click.group()
def service() -> None:
    """Deploy, watch, scale and stop services: analytics that rerun on new data or every N blocks."""


@click.group()
def container() -> None:
    """The planning documents' words for services: `container start` deploys one (see `metanode service`)."""


# -- deploy ----------------------------------------------------------------------------------------------

def _deploy_options(*, container_defaults: bool) -> Callable[[Any], Any]:
    """The options of ``service deploy``; ``container start`` has the same with defaults
    for the replicas (2) and the trigger (each new version of an input)."""
    replicas_help = "How many processing nodes run each run and must agree on its result."
    decorators = [
        NODE_OPTION,
        KEY_OPTION,
        value_option("--name", "name", required=True, type=ServiceName(), help="The service's name (unique among yours)."),
        # --type and --dataset are required, checked in _deploy: the planning document's
        # `container start --name N --policy P` then hears what a service here needs.
        value_option("--type", "job_type", cls=JobTypeOption, default=None, type=JobTypeChoice()),
        value_option("--dataset", "datasets", multiple=True, type=ServiceDatasetType(),
                     help="(required) A registered dataset the service reads, by NAME: each run takes its latest version "
                          "(repeatable; INPUT=NAME names the input)."),
        click.option("--query", default=None, help="The SELECT for --type sql."),
        value_option("--param", "params", multiple=True, help="A job parameter NAME=VALUE (repeatable)."),
        value_option("--replicas", type=click.IntRange(1, 8), required=not container_defaults,
                     default=2 if container_defaults else None, show_default=container_defaults, help=replicas_help),
        value_option("--policy", required=True, type=PolicyName(),
                     help="The DockLock policy each run executes under; only processing nodes that hold it run it."),
        click.option("--on-new-version", is_flag=True, help="Run again whenever an input dataset gets a new version."),
        value_option("--every-blocks", type=click.IntRange(1, 1_000_000), default=None,
                     help="Run again every N blocks (the chain's min_service_interval is the least N)."),
        value_option("--deadline-blocks", type=click.IntRange(1), default=DEFAULT_DEADLINE_BLOCKS, show_default=True,
                     help="Blocks a placed node has to deliver a run's result before it is replaced."),
        QUIET_OPTION,
        JSON_OPTION,
    ]

    def apply(f: Any) -> Any:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def _trigger(on_new_version: bool, every_blocks: int | None, *, default_on_new_version: bool) -> tuple[bool, int | None]:
    if on_new_version and every_blocks is not None:
        raise UserError("give one of --on-new-version or --every-blocks N, not both", exit_code=EXIT_USAGE)
    if not on_new_version and every_blocks is None:
        if not default_on_new_version:
            raise UserError("give --on-new-version (rerun on each new version of an input) or --every-blocks N",
                            exit_code=EXIT_USAGE)
        on_new_version = True
    return on_new_version, every_blocks


def _inputs(datasets: tuple[ServiceInput, ...]) -> dict[str, str]:
    """{input name: dataset name} with each input named as ``analytics submit`` names it."""
    from node.sdk.datasets import input_name_for

    inputs: dict[str, str] = {}
    for spec in datasets:
        name = spec.input_name or input_name_for(spec.dataset)
        if name in inputs:
            raise UserError(f"--dataset: two inputs named {name!r}: name them with --dataset INPUT=NAME", exit_code=EXIT_USAGE)
        inputs[name] = spec.dataset
    return inputs


def _deploy(node_addr: str, key_path: str | None, name: str, job_type: str | None, datasets: tuple[ServiceInput, ...],
            query: str | None, params: tuple[str, ...], replicas: int, policy: str, on_new_version: bool,
            every_blocks: int | None, deadline_blocks: int, quiet: bool, as_json: bool, *, container_defaults: bool) -> None:
    from node.app.jobtypes import job_type as registered_job_type
    from node.cli.present import progress

    if job_type is None or not datasets:
        missing = " and ".join(o for o, given in (("--type TYPE", job_type), ("--dataset NAME", datasets)) if not given)
        raise UserError(f"missing {missing}: a service runs a job type over your registered datasets "
                        f"(e.g. --type sql --dataset sales --query \"SELECT ...\")", exit_code=EXIT_USAGE)
    on_new_version, every_blocks = _trigger(on_new_version, every_blocks, default_on_new_version=container_defaults)
    entry = registered_job_type(job_type)
    parameters = parse_params(params)
    if entry.sql_param is not None:
        if not query:
            raise UserError(f"--type {job_type} needs --query \"SELECT ...\"", exit_code=EXIT_USAGE)
        parameters[entry.sql_param] = query
    elif query is not None:
        raise UserError(f"--query is for --type sql; --type {job_type} takes --param NAME=VALUE", exit_code=EXIT_USAGE)
    inputs = _inputs(datasets)
    if entry.input_param is not None and len(inputs) == 1:  # the type reads one input: the one given
        parameters.setdefault(entry.input_param, next(iter(inputs)))
    say = progress(enabled=not (quiet or as_json))

    async def body(client: Any) -> Any:
        from node.p2p.rpc_client import RpcCallError

        # The parameters are checked and completed against each input's latest version
        # now (trend-analysis's columns), as `analytics submit` does; later runs keep them.
        try:
            prepared = await client.prepare_service(
                name, job_type=job_type, inputs=inputs, params=parameters, replicas=replicas, policy=policy,
                on_new_version=on_new_version, every_blocks=every_blocks, deadline_blocks=deadline_blocks)
        except RpcCallError as exc:
            raise UserError(f"--dataset: {_rpc_error_text(exc)}") from None
        except ValueError as exc:
            raise UserError(str(exc), exit_code=EXIT_USAGE) from None
        for note in prepared.notes:
            say(f"{job_type}: {note}")
        answer: dict[str, Any] = await client.deploy_prepared(prepared)
        view = await _committed(client, name, answer, lambda v: v["state"] == "active")
        return {**answer, "inputs": inputs, "params": prepared.payload["params"], "height": view["updated_height"],
                "placements": [p["peer_id"] for p in view["placements"]], "waiting": view.get("waiting")}

    out = _run(key_path, node_addr, body)
    if as_json:
        _echo_json(out)
        return
    click.echo(out["service_id"])
    say(f"service {name} deployed at height {out['height']}: {replicas} replica{'' if replicas == 1 else 's'} under policy "
        f"{policy}, " + ("a run on each new version of " + ", ".join(sorted(inputs.values())) if on_new_version
                         else f"a run every {every_blocks} blocks"))
    say("placed on " + (", ".join(out["placements"]) or "no node yet") + (f" (waiting: {out['waiting']})" if out["waiting"] else ""))
    say(f"watch it with: metanode service status {name}   (its latest verified result: metanode service result {name})")


@service.command("deploy")
@_deploy_options(container_defaults=False)
def deploy(node_addr: str, key_path: str | None, name: str, job_type: str | None, datasets: tuple[ServiceInput, ...],
           query: str | None, params: tuple[str, ...], replicas: int, policy: str, on_new_version: bool,
           every_blocks: int | None, deadline_blocks: int, quiet: bool, as_json: bool) -> None:
    """Deploy a service: the chain places its replicas and starts a run now and at each trigger."""
    _deploy(node_addr, key_path, name, job_type, datasets, query, params, replicas, policy, on_new_version, every_blocks,
            deadline_blocks, quiet, as_json, container_defaults=False)


@container.command("start")
@_deploy_options(container_defaults=True)
def container_start(node_addr: str, key_path: str | None, name: str, job_type: str | None, datasets: tuple[ServiceInput, ...],
                    query: str | None, params: tuple[str, ...], replicas: int, policy: str, on_new_version: bool,
                    every_blocks: int | None, deadline_blocks: int, quiet: bool, as_json: bool) -> None:
    """`service deploy` by the planning document's name (default: 2 replicas, a run on each new version)."""
    _deploy(node_addr, key_path, name, job_type, datasets, query, params, replicas, policy, on_new_version, every_blocks,
            deadline_blocks, quiet, as_json, container_defaults=True)


# -- list, status, result --------------------------------------------------------------------------------

def _list(node_addr: str, key_path: str | None, as_json: bool) -> None:
    from node.cli.present import Column, echo_table
    from node.cli.services_present import list_rows

    found = _run(key_path, node_addr, lambda client: client.services())
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo("no services yet: deploy one with `metanode service deploy --name NAME ...`", err=True)
        return
    columns = [Column("NAME"), Column("STATE"), Column("TYPE"), Column("PLACED", right=True), Column("TRIGGER"),
               Column("RUNS", right=True), Column("VERIFIED RUN", right=True)]
    echo_table(columns, list_rows(found))


@service.command("list")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def list_services(node_addr: str, key_path: str | None, as_json: bool) -> None:
    """Your services: state, type, placed replicas, trigger, runs and the latest verified run."""
    _list(node_addr, key_path, as_json)


@container.command("list")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def container_list(node_addr: str, key_path: str | None, as_json: bool) -> None:
    """Your services (the same as `metanode service list`)."""
    _list(node_addr, key_path, as_json)


COMMIT_WAIT_S = 60.0  # how long deploy/scale/stop wait for their transaction's block


async def _committed(client: Any, name: str, answer: dict[str, Any], done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The service's status once the block with the transaction ``answer`` names is
    in (``done`` says so), so the next command sees what this one did."""
    import trio

    with trio.move_on_after(COMMIT_WAIT_S):
        while True:
            view = await client.service_status(name)
            if view is not None and done(view):
                return dict(view)
            await trio.sleep(0.25)
    raise UserError(f"service {name}: transaction {answer.get('tx')} is not in a block after {COMMIT_WAIT_S:.0f} s; "
                    f"see `metanode service status {name}`")


def _no_such(name: str) -> UserError:
    return UserError(f"no service named {name!r} of yours (see `metanode service list`)")


async def _named(call: Any, name: str) -> Any:
    """An SDK call about service ``name``; NOT_FOUND (or the SDK's None for it) said in words."""
    from node.base.errors import ErrorCode
    from node.p2p.rpc_client import RpcCallError

    try:
        found = await call
    except RpcCallError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            raise _no_such(name) from None
        raise
    if found is None:
        raise _no_such(name)
    return found


@service.command("status")
@_name_argument()
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def status(name: str, node_addr: str, key_path: str | None, as_json: bool) -> None:
    """Where service NAME runs (peer ids), its runs, its last verified result, a late node and when it is replaced."""
    from node.cli.services_present import describe_status

    async def body(client: Any) -> Any:
        view = await _named(client.service_status(name), name)
        head = await client.rpc.call("chain_head")
        return view, head.get("height")

    view, height = _run(key_path, node_addr, body)
    if as_json:
        _echo_json(view)
        return
    for line in describe_status(view, height=height):
        click.echo(line)


def _echo_result(result: dict[str, Any], as_json: bool) -> None:
    from node.cli.present import format_table
    from node.cli.services_present import result_header

    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
        return
    click.echo(result_header(result))
    click.echo(format_table(result["columns"], result["rows"], max_rows=50))


async def _latest_result(client: Any, name: str) -> dict[str, Any]:
    """The service's latest verified result; none yet is said with the latest run's state."""
    from node.base.errors import ErrorCode
    from node.p2p.rpc_client import RpcCallError

    try:
        result: dict[str, Any] = await _named(client.service_result(name), name)
        return result
    except RpcCallError as exc:
        if exc.code != ErrorCode.RESULT_NOT_AVAILABLE:
            raise
        data = exc.data if isinstance(exc.data, dict) else {}
        if "digest" in data:  # verified, but no node holding it answers now
            raise UserError(_rpc_error_text(exc)) from None
        state, why = data.get("state"), data.get("waiting") or data.get("reason")
        latest = f" (run {data.get('run')} is {state}{': ' + str(why) if why else ''})" if state else ""
        raise UserError(f"service {name} has no verified result yet{latest}: see `metanode service status {name}`") from None


@service.command("result")
@_name_argument()
@NODE_OPTION
@KEY_OPTION
@click.option("--follow", is_flag=True, help="Keep printing each new verified result until Ctrl-C.")
@JSON_OPTION
def result(name: str, node_addr: str, key_path: str | None, follow: bool, as_json: bool) -> None:
    """The latest verified result of service NAME as a table (--json: job id, result digest, columns, rows)."""
    if not follow:
        _echo_result(_run(key_path, node_addr, lambda client: _latest_result(client, name)), as_json)
        return

    async def body(client: Any) -> None:
        await _named(client.service_status(name), name)  # an unknown name fails now, not silently forever
        first = True
        async for found in client.follow_service(name):
            if not first and not as_json:
                click.echo("")
            _echo_result(found, as_json)
            first = False

    _run(key_path, node_addr, body)


# -- scale, stop -------------------------------------------------------------------------------------------

@service.command("scale")
@_name_argument()
@NODE_OPTION
@KEY_OPTION
@value_option("--replicas", required=True, type=click.IntRange(1, 8), help="The new number of replicas.")
@JSON_OPTION
def scale(name: str, node_addr: str, key_path: str | None, replicas: int, as_json: bool) -> None:
    """Change how many nodes service NAME is placed on (runs already going keep theirs)."""
    async def body(client: Any) -> Any:
        answer = await _named(client.scale_service(name, replicas), name)
        view = await _committed(client, name, answer, lambda v: v["replicas"] == replicas)
        return {**answer, "height": view["updated_height"], "placements": [p["peer_id"] for p in view["placements"]],
                "waiting": view.get("waiting")}

    answer = _run(key_path, node_addr, body)
    if as_json:
        _echo_json(answer)
    else:
        placed = len(answer["placements"])
        click.echo(f"service {name}: {replicas} replica{'' if replicas == 1 else 's'} from height {answer['height']}, "
                   f"{placed} placed" + (f" (waiting: {answer['waiting']})" if answer["waiting"] else ""))


def _stop(name: str, node_addr: str, key_path: str | None, as_json: bool) -> None:
    async def body(client: Any) -> Any:
        answer = await _named(client.stop_service(name), name)
        view = await _committed(client, name, answer, lambda v: v["state"] == "stopped")
        return {**answer, "height": view["updated_height"]}

    answer = _run(key_path, node_addr, body)
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"service {name}: stopped at height {answer['height']}; its placements are released and its active "
                   "runs cancelled")


@service.command("stop")
@_name_argument()
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def stop(name: str, node_addr: str, key_path: str | None, as_json: bool) -> None:
    """Stop service NAME: no more runs; deploying the name again resumes its run numbers."""
    _stop(name, node_addr, key_path, as_json)


@container.command("stop")
@_name_argument()
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def container_stop(name: str, node_addr: str, key_path: str | None, as_json: bool) -> None:
    """Stop service NAME (the same as `metanode service stop`)."""
    _stop(name, node_addr, key_path, as_json)

"""``metanode service``'s option types and its words: the pure half of node/cli/services.py.

The option types check a service's name, policy and datasets the way the chain
does (docs/services.md), so a bad value is one usage line naming the option
before anything is sent. The ``describe_*`` functions turn the gateway's
answers (``service_list``, ``service_status``, ``service_result``) into the
lines and table rows the commands print; they take plain dicts, so they are
tested without a node.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from node.cli.analytics_follow import short_peer
from node.cli.analytics_options import HEX64, MAX_DATASET_NAME, refuse, split_input_name

# The chain's rules (node/app/payloads.py service.deploy), repeated so that
# checking an option does not import the chain application.
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_VERSIONED = re.compile(r".+@[0-9]+")


def _refuse(ctx: click.Context | None, param: click.Parameter | None, problem: str) -> click.UsageError:
    """:func:`refuse`, naming an argument as its usage line does (NAME, not name)."""
    if isinstance(param, click.Argument):
        return click.UsageError(f"{param.human_readable_name}: {problem}", ctx)
    return refuse(ctx, param, problem)


class ServiceName(click.ParamType):
    """A service's name: 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit."""

    name = "NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not SERVICE_NAME.fullmatch(text):
            raise _refuse(ctx, param, "a service name is 1-64 characters of a-z, 0-9, '.', '_' and '-', "
                                     f"starting with a letter or digit; got {text!r:.80}")
        return text


class PolicyName(click.ParamType):
    """A DockLock policy's name as the processing nodes' policy files spell it."""

    name = "POLICY"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not POLICY_NAME.fullmatch(text):
            raise refuse(ctx, param, "a policy name is 1-64 characters of letters, digits, '.', '_' and '-', "
                                     f"starting with a letter or digit (as in [policies.NAME]); got {text!r:.80}")
        return text


@dataclass(frozen=True)
class ServiceInput:
    """One ``--dataset [INPUT=]NAME``: the dataset name a service follows, and its input name (None: from the name)."""

    dataset: str
    input_name: str | None


class ServiceDatasetType(click.ParamType):
    """``--dataset NAME`` or ``--dataset INPUT=NAME``: a registered dataset's NAME, never a
    version or a digest, since each run reads that name's latest version."""

    name = "[INPUT=]NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> ServiceInput:
        if isinstance(value, ServiceInput):
            return value
        name, text = split_input_name(str(value))
        if HEX64.fullmatch(text) or _VERSIONED.fullmatch(text):
            raise refuse(ctx, param, f"a service follows a dataset by its name (each run reads the latest version), "
                                     f"not a digest or NAME@VERSION; got {str(value)!r:.80}")
        if not text or len(text) > MAX_DATASET_NAME or _CONTROL.search(text):
            raise refuse(ctx, param, f"a dataset name is 1-{MAX_DATASET_NAME} characters without control characters, "
                                     f"got {str(value)!r:.80}")
        return ServiceInput(text, name)


# -- the gateway's answers in words -----------------------------------------------------------------

def trigger_text(trigger: Mapping[str, Any] | None) -> str:
    """``on new version`` or ``every N blocks``: when a service starts a run."""
    if not trigger:
        return "-"
    if trigger.get("every_blocks") is not None:
        n = int(trigger["every_blocks"])
        return f"every {n} block{'' if n == 1 else 's'}"
    return "on new version"


def list_rows(services: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """``service list``'s rows: name, state, type, placed/replicas, trigger, runs, verified run."""
    return [[s["name"], s["state"], s["type"], f"{s.get('placements', 0)}/{s['replicas']}", trigger_text(s.get("trigger")),
             str(s.get("runs", 0)), "-" if s.get("verified_run") is None else str(s["verified_run"])]
            for s in services]


def _in_blocks(at: int, height: int | None) -> str:
    if height is None:
        return f"at height {at}"
    left = at - height
    return f"at height {at} ({'now' if left <= 0 else f'in {left} block' + ('' if left == 1 else 's')})"


def describe_status(view: Mapping[str, Any], *, height: int | None = None) -> list[str]:
    """``service status``'s lines from a ``service_status`` answer (and the chain's
    height, for how far away each late node's replacement is)."""
    inputs = view.get("inputs") or {}
    lines = [f"service {view['name']}: {view['state']}  (id {view['service_id']})",
             f"  job        {view['type']} over " + ", ".join(f"{i}={d}" if i != d else d for i, d in sorted(inputs.items())),
             f"  policy     {view['policy']}   deadline {view['deadline_blocks']} blocks per run",
             f"  trigger    {trigger_text(view.get('trigger'))}   deployed at height {view.get('deployed_height')}, "
             f"{view.get('runs', 0)} run{'' if view.get('runs') == 1 else 's'}"]
    placements = view.get("placements") or []
    lines.append(f"  placement  {len(placements)} of {view['replicas']} replica{'' if view['replicas'] == 1 else 's'} placed")
    for p in placements:
        lines.append(f"    slot {p['slot']}  {p['peer_id']}  since height {p['since_height']}")
    if view.get("waiting"):
        lines.append(f"  waiting    {view['waiting']}")
    verified = view.get("last_verified")
    if verified:
        lines.append(f"  verified   run {verified['run']} at height {verified['height']}: job {verified['job_id']}")
        lines.append(f"             result digest {verified['result_digest']}")
    else:
        lines.append("  verified   no run verified yet")
    for late in view.get("late") or []:
        lines.append(f"  late       {late['peer_id']} has not delivered run {late['run']}: replaced "
                     f"{_in_blocks(int(late['deadline']), height)} unless it delivers")
    runs = view.get("recent_runs") or []
    if runs:
        lines.append("  recent runs (newest first):")
        for r in runs:
            reason = f"  {r['reason']}" if r.get("reason") else ""
            lines.append(f"    run {r['run']:<4} {r['state']:<10} height {r['submitted_height']:<6} "
                         f"results {r.get('results', 0)}  job {r['job_id']}{reason}")
    return lines


def result_header(result: Mapping[str, Any]) -> str:
    """The line above a service's result table: which run, which job, which digest, who computed it."""
    computed = ", ".join(short_peer(str(p)) for p in result.get("computed_by") or [])
    served = result.get("served_by")
    by = f"; computed by {computed}" if computed else ""
    via = f", served by {short_peer(str(served))}" if served else ""
    return (f"service {result['name']}: run {result['run']} {result.get('state', 'verified')} "
            f"(job {result['job_id']}, result digest {result['result_digest']}{by}{via})")

"""Job types: the one registry of what a ``job.submit`` may ask the cluster to run.

A job type is one :class:`JobType` entry: its name (the payload's ``type``),
the schema its ``params`` must follow (checked on chain, with messages naming
the field), how many inputs it takes, how the cage runs it (the SQL text in a
parameter, or a function registered in the cage with ``@register_function``),
and the help line the CLI shows. Everything that deals in job types reads this
registry instead of keeping its own list: the ``job.submit`` schema
(:mod:`node.app.txtypes`, so the mempool, the state machine and the gateway's
state check), the processing role (which cage job to run), and
``metanode analytics submit`` (its ``--type`` choices and help).

Adding a job type is one entry plus its cage function:

1. write the function in the cage, ``@register_function("my_function")``, in a
   module the cage pool's fork servers import (``node/cage/functions.py``, or a
   module of its own listed in ``node.cage.pool.DEFAULT_FUNCTION_MODULES``, as
   ``node/cage/trend.py`` is);
2. ``register_job_type(JobType("my-type", ..., function="my_function"))`` at the
   end of this module, with its parameter schema.

The registry is consensus-critical: every node must hold the same entries, in
the same order (a refused ``type`` is recorded on chain with the list of
types, in registration order), so a new job type is a chain upgrade.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from node.app.fields import choice, record, text
from node.app.rules import ChainRules
from node.consensus.tx import PayloadError

ParamsSchema = Callable[[Any, Mapping[str, bytes], ChainRules], dict[str, Any]]
"""Checks a job's ``params`` (given its inputs and the chain rules) and returns
them; raises PayloadError naming the field (``params.<name>``). Pure."""

_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")


@dataclass(frozen=True)
class JobType:
    """One job type. Exactly one of ``function`` and ``sql_param`` says how the cage runs it."""

    name: str  # the job.submit payload's "type"
    summary: str  # one line for the CLI's help: what the job computes and what it needs
    params: ParamsSchema
    function: str | None = None  # the cage function (``@register_function`` name) that runs it
    sql_param: str | None = None  # or: the cage runs the SQL text of this parameter
    input_param: str | None = None  # the parameter naming the one input it reads (the CLI defaults it)
    max_inputs: int | None = None  # at most this many inputs; None: up to the chain rule max_inputs

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"job type name {self.name!r} must be 1-32 of a-z, 0-9 and '-', starting with a letter")
        if (self.function is None) == (self.sql_param is None):
            raise ValueError(f"job type {self.name!r}: give exactly one of function and sql_param")
        if self.max_inputs is not None and self.max_inputs < 1:
            raise ValueError(f"job type {self.name!r}: max_inputs must be at least 1")

    def inputs_limit(self, rules: ChainRules) -> int:
        """How many inputs a job of this type may name under ``rules``."""
        return rules.max_inputs if self.max_inputs is None else min(self.max_inputs, rules.max_inputs)

    def cage_job(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The :class:`node.cage.job.JobSpec` fields (``kind``, then ``sql`` or
        ``function`` and ``params``) that run a job of this type with ``params``
        (already checked on chain). The policy, inputs, seed and clock are the
        caller's."""
        if self.sql_param is not None:
            return {"kind": "sql", "sql": params[self.sql_param]}
        return {"kind": "python-fn", "function": self.function, "params": dict(params)}


JOB_TYPES: dict[str, JobType] = {}
"""Every job type of this build, by name, in registration order."""


def register_job_type(entry: JobType) -> JobType:
    """Add a job type; ValueError if its name is taken. Returns the entry."""
    if entry.name in JOB_TYPES:
        raise ValueError(f"job type {entry.name!r} is already registered")
    JOB_TYPES[entry.name] = entry
    return entry


def job_type(name: str) -> JobType:
    """The entry of job type ``name``; KeyError naming the known ones."""
    try:
        return JOB_TYPES[name]
    except KeyError:
        raise KeyError(f"no job type {name!r} in this build (known: {', '.join(JOB_TYPES) or 'none'})") from None


def job_type_names() -> tuple[str, ...]:
    """The registered names, in registration order (the order the chain's messages list them)."""
    return tuple(JOB_TYPES)


# -- parameter schemas ------------------------------------------------------------

_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_WINDOW = re.compile(r"[1-9][0-9]{0,3}[dwm]")
GRANULARITIES = ("day", "week", "month")
_TREND_OPTIONAL = ("group_by", "granularity")  # granularity defaults to day (in the cage function)


def input_named(p: dict[str, Any], inputs: Mapping[str, bytes], param: str = "input") -> None:
    """``p[param]`` names one of the job's inputs."""
    name = p[param]
    if not isinstance(name, str) or name not in inputs:
        raise PayloadError(f"params.{param}: must name one of the inputs, got {name!r:.80}")


def sql_params(value: Any, inputs: Mapping[str, bytes], rules: ChainRules) -> dict[str, Any]:
    """``{query}``: non-empty SQL text of at most ``max_query_bytes`` (UTF-8)."""
    p = record(value, "params", ("query",))
    query = p["query"]
    if not isinstance(query, str) or not query.strip():
        raise PayloadError("params.query: must be non-empty SQL text")
    if len(query.encode()) > rules.max_query_bytes:
        raise PayloadError(f"params.query: is longer than {rules.max_query_bytes} bytes")
    return p


def summary_params(value: Any, inputs: Mapping[str, bytes], rules: ChainRules) -> dict[str, Any]:
    """``{input}``: the name of one of the inputs."""
    p = record(value, "params", ("input",))
    input_named(p, inputs)
    return p


def trend_params(value: Any, inputs: Mapping[str, bytes], rules: ChainRules) -> dict[str, Any]:
    """``{input, time_column, value_column, window}`` and optional ``group_by``,
    ``granularity`` (see node/cage/trend.py for what they mean)."""
    required = ("input", "time_column", "value_column", "window")
    present_optional = tuple(name for name in _TREND_OPTIONAL if isinstance(value, dict) and name in value)
    p = record(value, "params", required + present_optional)
    input_named(p, inputs)
    text(p["time_column"], "params.time_column", _COLUMN, "a column name")
    text(p["value_column"], "params.value_column", _COLUMN, "a column name")
    text(p["window"], "params.window", _WINDOW, "<n>d, <n>w or <n>m with n in 1..9999")
    if "group_by" in p:
        text(p["group_by"], "params.group_by", _COLUMN, "a column name")
    if "granularity" in p:
        choice(p["granularity"], "params.granularity", GRANULARITIES)
    return p


# -- the job types of this build (the order is on chain: see the module docstring) ------

register_job_type(JobType(
    "sql",
    summary="a SELECT over the named inputs, given with --query (a top-level ORDER BY is kept)",
    params=sql_params, sql_param="query",
))
register_job_type(JobType(
    "trend-analysis",
    summary="value, moving average and change per period, slope and direction per group "
            "(--param time_column=, value_column=, window=<n>d|w|m, optional group_by, granularity=day|week|month)",
    params=trend_params, function="trend_analysis", input_param="input",
))
register_job_type(JobType(
    "summary",
    summary="per-column statistics of one input",
    params=summary_params, function="table_summary", input_param="input",
))

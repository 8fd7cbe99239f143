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

from node.app.fields import choice
from node.app.fields import type_name as type_name_of
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
    # Parameters naming a column of the input_param input: the gateway checks them
    # against the input's schema at submit when its catalog has it (not on chain).
    column_params: tuple[str, ...] = ()

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


def canonical_job_type(name: str) -> str:
    """The registered name a user meant: ``trend_analysis``, ``Trend-Analysis``
    and ``trend analysis`` all mean ``trend-analysis``. The chain takes only
    the registered name, so clients map the user's spelling before signing.
    ValueError listing the known types for a name that is none of them."""
    if isinstance(name, str):
        spelled = re.sub(r"[\s_-]+", "-", name.strip().lower())
        if spelled in JOB_TYPES:
            return spelled
    raise ValueError(f"no job type {str(name)[:80]!r}; the job types are {', '.join(JOB_TYPES) or 'none'} "
                     f"('_' for '-' and any case are accepted)")


# -- parameter schemas ------------------------------------------------------------
# The messages below are recorded on chain when a block carries a refused
# job.submit, so they are fixed text (see node/app/fields.py): each names the
# parameter, says in words what it must be, and what it got.

_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_WINDOW = re.compile(r"[1-9][0-9]{0,3}[dwm]")
GRANULARITIES = ("day", "week", "month")
_TREND_OPTIONAL = ("group_by", "granularity")  # granularity defaults to day (in the cage function)
WINDOW_WORDS = "<n>d, <n>w or <n>m with n in 1..9999"

SQL_PARAMS = {"query": "the SELECT to run over the inputs, which it names as tables"}
SUMMARY_PARAMS = {"input": "the name of the input to describe (one of the job's inputs)"}
TREND_PARAMS = {
    "input": "the name of the input to read (one of the job's inputs)",
    "time_column": "the DATE or TIMESTAMP column (or date text) that orders the rows",
    "value_column": "the numeric column summed per period",
    "window": f"the moving-average window, {WINDOW_WORDS} (days, weeks of 7 days, months of 30 days)",
    "group_by": "optional: the column whose values split the rows into one series each",
    "granularity": "optional: the period, day (the default), week or month",
}
"""What each parameter of a job type is, in words: the messages name it when
one is missing, and docs/jobs.md lists the same."""


def params_record(value: Any, type_name: str, described: Mapping[str, str],
                  required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """``value`` as a map with every ``required`` parameter and no parameter
    outside ``required + optional``. A missing one is named with what it is
    (from ``described``); an unknown one with the list of the type's parameters."""
    known = required + optional
    if not isinstance(value, dict):
        raise PayloadError(f"params: must be a map of the {type_name} parameters ({', '.join(known)}), "
                           f"got {type_name_of(value)}")
    for name in required:
        if name not in value:
            raise PayloadError(f"params.{name}: is missing; it is {described[name]}")
    for name in sorted(value, key=str):
        if name not in known:
            raise PayloadError(f"params.{str(name)[:64]}: is not a parameter of {type_name} "
                               f"(its parameters: {', '.join(known)})")
    return value


def param_text(value: Any, name: str, regex: re.Pattern[str], expected: str) -> str:
    """Text matching ``regex`` whole; the message says what was ``expected`` and what came."""
    if not isinstance(value, str):
        raise PayloadError(f"params.{name}: expected {expected}, got {type_name_of(value)}")
    if not regex.fullmatch(value):
        raise PayloadError(f"params.{name}: expected {expected}, got {value[:80]!r}")
    return value


def input_named(p: dict[str, Any], inputs: Mapping[str, bytes], param: str = "input") -> None:
    """``p[param]`` names one of the job's inputs."""
    name = p[param]
    if not isinstance(name, str) or name not in inputs:
        raise PayloadError(f"params.{param}: must name one of the inputs ({', '.join(sorted(inputs))}), "
                           f"got {name!r:.80}")


def sql_params(value: Any, inputs: Mapping[str, bytes], rules: ChainRules) -> dict[str, Any]:
    """``{query}``: non-empty SQL text of at most ``max_query_bytes`` (UTF-8)."""
    p = params_record(value, "sql", SQL_PARAMS, ("query",))
    query = p["query"]
    if not isinstance(query, str) or not query.strip():
        raise PayloadError("params.query: must be non-empty SQL text")
    if len(query.encode()) > rules.max_query_bytes:
        raise PayloadError(f"params.query: is longer than {rules.max_query_bytes} bytes")
    return p


def summary_params(value: Any, inputs: Mapping[str, bytes], rules: ChainRules) -> dict[str, Any]:
    """``{input}``: the name of one of the inputs."""
    p = params_record(value, "summary", SUMMARY_PARAMS, ("input",))
    input_named(p, inputs)
    return p


def trend_params(value: Any, inputs: Mapping[str, bytes], rules: ChainRules) -> dict[str, Any]:
    """``{input, time_column, value_column, window}`` and optional ``group_by``,
    ``granularity`` (see node/cage/trend.py for what they mean)."""
    required = ("input", "time_column", "value_column", "window")
    p = params_record(value, "trend-analysis", TREND_PARAMS, required, _TREND_OPTIONAL)
    input_named(p, inputs)
    param_text(p["time_column"], "time_column", _COLUMN, "a column name")
    param_text(p["value_column"], "value_column", _COLUMN, "a column name")
    param_text(p["window"], "window", _WINDOW, WINDOW_WORDS)
    if "group_by" in p:
        param_text(p["group_by"], "group_by", _COLUMN, "a column name")
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
            "(--param time_column=, value_column=, window=<n>d|w|m, optional group_by, granularity=day|week|month; "
            "with one input, those not given are inferred from its schema: docs/jobs.md)",
    params=trend_params, function="trend_analysis", input_param="input",
    column_params=("time_column", "value_column", "group_by"),
))
register_job_type(JobType(
    "summary",
    summary="per-column statistics of one input",
    params=summary_params, function="table_summary", input_param="input",
))


# -- trend-analysis defaults (off chain: clients fill params before signing) ---------------
# The column types the cage's trend_analysis accepts (node/cage/trend.py's
# _TIME_TYPES without date text, and _NUMERIC): tests check the two agree.
TREND_TIME_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS")
TREND_NUMERIC = re.compile(r"(U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|FLOAT|DOUBLE|DECIMAL\(\d+,\d+\))")
TREND_TEXT_TYPES = ("VARCHAR",)
DEFAULT_WINDOW = "30d"


def _candidates(schema: list[dict[str, Any]], accept: Callable[[str], bool], taken: set[str]) -> list[str]:
    """Columns (in file order) whose type ``accept`` s, not already used, usable as a parameter."""
    return [str(c["name"]) for c in schema
            if accept(str(c.get("type", "")).upper()) and c["name"] not in taken and _COLUMN.fullmatch(str(c["name"]))]


def infer_trend_params(schema: list[dict[str, Any]], given: Mapping[str, Any], *,
                       input_name: str) -> tuple[dict[str, Any], list[str]]:
    """The trend-analysis params for one input of ``schema`` (``[{name, type[, nulls]}]``
    in file order, types as DuckDB names them), keeping every parameter in
    ``given``; returns (params, notes), one note per parameter chosen here,
    saying what and why and the ``--param name=value`` that changes it.

    The rule (docs/jobs.md): ``time_column`` is the one DATE/TIMESTAMP
    column; ``value_column`` the one numeric column, or with several the
    first in file order; ``group_by`` the one text (VARCHAR) column left,
    none with zero or several (``group_by`` given empty or None: no
    grouping); ``window`` 30d. ValueError listing the candidates when the
    file leaves no sensible choice: two or more date columns, none, or no
    numeric column; also when a given column is not in the schema."""
    columns = [str(c["name"]) for c in schema]
    listing = ", ".join(f"{c['name']} ({c.get('type', '?')})" for c in schema) or "none"
    params: dict[str, Any] = {k: v for k, v in given.items() if not (k == "group_by" and v in (None, ""))}
    params["input"] = given.get("input", input_name)
    for key in ("time_column", "value_column", "group_by"):
        if key in params and params[key] not in columns:
            raise ValueError(f"params.{key}: no column {params[key]!r:.80} in input {input_name} (columns: {listing})")
    notes: list[str] = []
    taken = {params[k] for k in ("time_column", "value_column", "group_by") if k in params}

    if "time_column" not in params:
        dates = _candidates(schema, lambda t: t in TREND_TIME_TYPES, taken)
        if len(dates) != 1:
            which = f"{len(dates)} date columns ({', '.join(dates)})" if dates else "no DATE or TIMESTAMP column"
            raise ValueError(f"params.time_column: cannot choose: input {input_name} has {which}; "
                             f"give one with --param time_column=<column> (columns: {listing})")
        params["time_column"] = dates[0]
        taken.add(dates[0])
        notes.append(f"time_column={dates[0]}: the only date column (--param time_column=<column> to change)")

    if "value_column" not in params:
        numbers = _candidates(schema, lambda t: TREND_NUMERIC.fullmatch(t) is not None, taken)
        if not numbers:
            raise ValueError(f"params.value_column: cannot choose: input {input_name} has no numeric column; "
                             f"give one with --param value_column=<column> (columns: {listing})")
        params["value_column"] = numbers[0]
        taken.add(numbers[0])
        if len(numbers) == 1:
            notes.append(f"value_column={numbers[0]}: the only numeric column (--param value_column=<column> to change)")
        else:
            notes.append(f"value_column={numbers[0]}: the first of {len(numbers)} numeric columns in file order "
                         f"({', '.join(numbers)}); --param value_column={numbers[1]} to use another")

    if "group_by" not in params and not ("group_by" in given and given["group_by"] in (None, "")):
        texts = _candidates(schema, lambda t: t in TREND_TEXT_TYPES, taken)
        if len(texts) == 1:
            params["group_by"] = texts[0]
            notes.append(f"group_by={texts[0]}: the only text column, one series per value "
                         f"(--param group_by= for one series over all rows)")
        elif texts:
            notes.append(f"group_by: not set, {len(texts)} text columns ({', '.join(texts)}); "
                         f"--param group_by={texts[0]} for one series per value")

    if "window" not in params:
        params["window"] = DEFAULT_WINDOW
        notes.append(f"window={DEFAULT_WINDOW}: the default (--param window=<n>d|<n>w|<n>m to change)")
    return params, notes

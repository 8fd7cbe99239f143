"""The ``trend_analysis`` cage function (job type ``trend-analysis``).

Per (group, period): the summed value, a moving average over the window,
the period-over-period change, and per group the least-squares slope of
value over the period index with its direction. Everything hashed is exact:
values are DECIMAL(38,6); averages and slopes are computed as integer
(HUGEINT) ratios of values scaled by 10^6 and rounded to 6 decimals
**half away from zero**, so every node produces bit-identical results. An
arithmetic overflow fails the job with DuckDB's reason rather than losing
precision.

Params: ``input`` (an input name), ``time_column`` and ``value_column``
(column names), ``window`` (``<n>d`` | ``<n>w`` | ``<n>m``: n, 7n or 30n
days), optional ``group_by`` (a column name) and ``granularity``
(``day`` | ``week`` | ``month``, default ``day``).

Semantics:

* Rows with a NULL time or value are ignored. ``value`` is the sum of the
  value column over the group's rows in the period (``date_trunc``; weeks
  start on Monday). Each group's series runs from its first to its last
  period with no gaps: a period without rows has ``rows`` 0 and value 0.
* ``moving_average``: the mean of the current and previous periods covering
  the window (``window_periods``: days for ``day``, ceil(days/7) for
  ``week``, ceil(days/30) for ``month``); NULL until a full window exists.
* ``change``: value minus the previous period's value; NULL for the first.
* ``slope``: (n*Σxy - Σx*Σy) / (n*Σx² - (Σx)²) with x = period index
  0..n-1 in the group, y = value; NULL for a one-period group.
  ``direction`` is ``up``/``down``/``flat`` by the sign of the exact
  (unrounded) slope; NULL with the slope.
"""

from __future__ import annotations

import re
from typing import Any

from node.cage.functions import JobContext, Table, quote_identifier, register_function

GRANULARITIES = {"day": ("day", 1), "week": ("week", 7), "month": ("month", 30)}
WINDOW_DAYS = {"d": 1, "w": 7, "m": 30}
PARAM_NAMES = ("input", "time_column", "value_column", "window", "group_by", "granularity")
SCALE = 10**6  # values carry 6 decimals
_WINDOW = re.compile(r"([1-9][0-9]{0,3})([dwm])")
_TIME_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "VARCHAR")
_NUMERIC = re.compile(r"(U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|FLOAT|DOUBLE|DECIMAL\(\d+,\d+\))")


def window_periods(window: str, granularity: str) -> int:
    """How many periods of ``granularity`` the window ``<n>d|w|m`` covers
    (rounded up). ValueError naming the bad parameter."""
    match = _WINDOW.fullmatch(window) if isinstance(window, str) else None
    if match is None:
        raise ValueError(f"params.window: must be <n>d, <n>w or <n>m with n in 1..9999, got {window!r:.80}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"params.granularity: must be one of day, week, month, got {granularity!r:.80}")
    days = int(match.group(1)) * WINDOW_DAYS[match.group(2)]
    period_days = GRANULARITIES[granularity][1]
    return -(-days // period_days)


def rounded_division_sql(numerator: str, denominator: str) -> str:
    """SQL for numerator/denominator (HUGEINT, denominator > 0) rounded to an
    integer half away from zero; integer arithmetic only."""
    return (f"(CASE WHEN ({numerator}) >= 0 THEN (2 * ({numerator}) + ({denominator})) // (2 * ({denominator})) "
            f"ELSE -((2 * -({numerator}) + ({denominator})) // (2 * ({denominator}))) END)")


def _as_decimal(scaled: str) -> str:
    """SQL turning an integer count of millionths into DECIMAL(38,6), exactly."""
    return f"(CAST({scaled} AS DECIMAL(38,0)) * CAST(0.000001 AS DECIMAL(38,6)))"


def _column(params: dict[str, Any], key: str, columns: dict[str, str], input_name: str) -> str:
    name = params[key]
    if not isinstance(name, str) or name not in columns:
        known = ", ".join(sorted(columns))
        raise ValueError(f"params.{key}: no column {name!r:.80} in input {input_name} (columns: {known})")
    return name


def trend_sql(view: str, time_column: str, value_column: str, group_by: str | None,
              granularity: str, periods: int) -> str:
    """The whole analysis as one ordered SELECT over ``view``."""
    unit = GRANULARITIES[granularity][0]
    t, v = quote_identifier(time_column), quote_identifier(value_column)
    group = quote_identifier(group_by) if group_by is not None else "NULL"
    frame = f"(w ROWS BETWEEN {periods - 1} PRECEDING AND CURRENT ROW)"
    moving = _as_decimal(rounded_division_sql("win_sum", str(periods)))
    slope = _as_decimal(rounded_division_sql("num", "den"))
    group_out = 'i.grp AS "group", ' if group_by is not None else ""
    return f"""
WITH src AS (
    SELECT {group} AS grp, CAST(date_trunc('{unit}', CAST({t} AS DATE)) AS DATE) AS period,
           CAST({v} AS DECIMAL(38,6)) AS val
    FROM {quote_identifier(view)} WHERE {t} IS NOT NULL AND {v} IS NOT NULL
), agg AS (
    SELECT grp, period, count(*) AS n_rows, sum(val) AS value FROM src GROUP BY grp, period
), spans AS (
    SELECT grp, min(period) AS first_period, max(period) AS last_period FROM agg GROUP BY grp
), filled AS (
    SELECT s.grp, CAST(p.generate_series AS DATE) AS period
    FROM spans s, generate_series(CAST(s.first_period AS TIMESTAMP), CAST(s.last_period AS TIMESTAMP),
                                  INTERVAL '1 {unit}') AS p
), series AS (
    SELECT f.grp, f.period, coalesce(a.n_rows, 0) AS n_rows,
           coalesce(a.value, CAST(0 AS DECIMAL(38,6))) AS value,
           CAST(coalesce(a.value, CAST(0 AS DECIMAL(38,6))) * {SCALE} AS HUGEINT) AS y
    FROM filled f LEFT JOIN agg a ON a.grp IS NOT DISTINCT FROM f.grp AND a.period = f.period
), indexed AS (
    SELECT grp, period, n_rows, value, y,
           CAST(row_number() OVER w - 1 AS HUGEINT) AS x,
           sum(y) OVER {frame} AS win_sum,
           count(*) OVER {frame} AS win_n,
           value - lag(value) OVER w AS change
    FROM series WINDOW w AS (PARTITION BY grp ORDER BY period)
), fits AS (
    SELECT grp, CAST(count(*) AS HUGEINT) AS n, sum(x) AS sx, sum(y) AS sy,
           sum(x * y) AS sxy, sum(x * x) AS sxx
    FROM indexed GROUP BY grp
), slopes AS (
    SELECT grp, n * sxy - sx * sy AS num, n * sxx - sx * sx AS den FROM fits
)
SELECT {group_out}i.period, i.n_rows AS rows, i.value,
       CASE WHEN i.win_n = {periods} THEN {moving} END AS moving_average,
       i.change,
       CASE WHEN s.den > 0 THEN {slope} END AS slope,
       CASE WHEN s.den = 0 THEN NULL WHEN s.num > 0 THEN 'up' WHEN s.num < 0 THEN 'down' ELSE 'flat' END
           AS direction
FROM indexed i JOIN slopes s ON s.grp IS NOT DISTINCT FROM i.grp
ORDER BY i.grp NULLS FIRST, i.period
"""


@register_function("trend_analysis")
def trend_analysis(ctx: JobContext, params: dict[str, Any]) -> Table:
    """Trend of one input's value column over time, per group (see the module
    docstring for params and output). Ordered by (group, period)."""
    unknown = sorted(str(key) for key in params if key not in PARAM_NAMES)
    if unknown:
        raise ValueError(f"params: unknown field(s) {', '.join(unknown)} (known: {', '.join(PARAM_NAMES)})")
    for key in ("input", "time_column", "value_column", "window"):
        if key not in params:
            raise ValueError(f"params.{key}: is missing")
    input_name = params["input"]
    if input_name not in ctx.inputs:
        raise ValueError(f"params.input must name one of the inputs ({', '.join(sorted(ctx.inputs))})")
    granularity = params.get("granularity", "day")
    periods = window_periods(params["window"], granularity)
    view = ctx.inputs[input_name]
    columns = {name: str(kind) for name, kind, *_ in
               ctx.con.execute(f"DESCRIBE {quote_identifier(view)}").fetchall()}
    time_column = _column(params, "time_column", columns, input_name)
    value_column = _column(params, "value_column", columns, input_name)
    group_by = _column(params, "group_by", columns, input_name) if params.get("group_by") is not None else None
    if columns[time_column] not in _TIME_TYPES:
        raise ValueError(f"params.time_column: column {time_column!r} has type {columns[time_column]}; "
                         f"need DATE, TIMESTAMP or date text")
    if not _NUMERIC.fullmatch(columns[value_column]):
        raise ValueError(f"params.value_column: column {value_column!r} has type {columns[value_column]}, "
                         f"not a number")
    return ctx.query(trend_sql(view, time_column, value_column, group_by, granularity, periods))

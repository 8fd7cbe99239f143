"""The trend_analysis cage function through a real CagePool, checked row by
row against an independent exact computation in plain Python (Fraction)."""

from __future__ import annotations

import datetime
import random
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import duckdb
import pytest
from conftest import all_policies

from node.app import parse_payload
from node.base.keys import Identity
from node.cage.job import JobSpec
from node.cage.pool import CagePool
from node.cage.results import decode_result
from node.cage.trend import rounded_division_sql
from node.consensus.tx import PayloadError, sign_tx

START = datetime.date(2024, 1, 3)  # a Wednesday: the first week is partial
DAYS = 120
PRODUCTS = ("apple", "pear", "plum", "quince")


@pytest.fixture(scope="module")
def sales_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Integer units per (day, product), several rows some days, gaps some
    days, returns (negative units), a falling, a level and a rising product,
    and a product sold on one day only."""
    rng = random.Random(6)
    lines = ["day,product,units,note"]
    for offset in range(DAYS):
        day = START + datetime.timedelta(days=offset)
        for index, product in enumerate(PRODUCTS[:3]):
            if rng.random() < 0.15:
                continue  # no sale that day: a gap the series must fill with 0
            for _ in range(rng.randint(1, 3)):
                lines.append(f"{day},{product},{rng.randint(-5, 40) + offset * (index - 1) // 10},x")
    lines.append(f"{START + datetime.timedelta(days=50)},quince,17,x")
    path = tmp_path_factory.mktemp("trend") / "sales.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def trend_job(csv: Path, **params) -> JobSpec:
    base = {"input": "sales", "time_column": "day", "value_column": "units", "window": "7d"}
    return JobSpec(kind="python-fn", function="trend_analysis", policy="processing",
                   inputs={"sales": str(csv)}, params={**base, **params})


# -- the independent reference ---------------------------------------------------

def period_of(day: datetime.date, granularity: str) -> datetime.date:
    if granularity == "day":
        return day
    if granularity == "week":
        return day - datetime.timedelta(days=day.weekday())
    return day.replace(day=1)


def next_period(period: datetime.date, granularity: str) -> datetime.date:
    if granularity == "day":
        return period + datetime.timedelta(days=1)
    if granularity == "week":
        return period + datetime.timedelta(days=7)
    return (period + datetime.timedelta(days=32)).replace(day=1)


def text6(value: Fraction) -> str:
    """Round to 6 decimals half away from zero; DuckDB's DECIMAL(38,6) text."""
    millionths = abs(value) * 10**6
    whole = int(millionths + Fraction(1, 2))  # floor of a non-negative number
    sign = "-" if value < 0 and whole else ""
    return f"{sign}{whole // 10**6}.{whole % 10**6:06d}"


def reference(csv: Path, granularity: str, group_by: bool, window_days: int) -> list[list]:
    span = {"day": 1, "week": 7, "month": 30}[granularity]
    k = -(-window_days // span)
    sums: dict[str, dict[datetime.date, int]] = defaultdict(lambda: defaultdict(int))
    counts: dict[str, dict[datetime.date, int]] = defaultdict(lambda: defaultdict(int))
    for line in csv.read_text().splitlines()[1:]:
        day, product, units, _ = line.split(",")
        key = product if group_by else ""
        period = period_of(datetime.date.fromisoformat(day), granularity)
        sums[key][period] += int(units)
        counts[key][period] += 1
    rows = []
    for key in sorted(sums):
        periods = [min(sums[key])]
        while periods[-1] < max(sums[key]):
            periods.append(next_period(periods[-1], granularity))
        ys = [sums[key].get(p, 0) for p in periods]
        n = len(ys)
        sx, sy = sum(range(n)), sum(ys)
        sxy, sxx = sum(x * y for x, y in enumerate(ys)), sum(x * x for x in range(n))
        den = n * sxx - sx * sx
        slope = Fraction(n * sxy - sx * sy, den) if den else None
        direction = None if slope is None else "up" if slope > 0 else "down" if slope < 0 else "flat"
        for i, period in enumerate(periods):
            moving = text6(Fraction(sum(ys[i - k + 1:i + 1]), k)) if i >= k - 1 else None
            change = text6(Fraction(ys[i] - ys[i - 1])) if i else None
            row = [period.isoformat(), counts[key].get(period, 0), text6(Fraction(ys[i])), moving, change,
                   None if slope is None else text6(slope), direction]
            rows.append(([key] if group_by else []) + row)
    return rows


# -- through the cage --------------------------------------------------------------

COLUMNS = [["period", "DATE"], ["rows", "BIGINT"], ["value", "DECIMAL(38,6)"],
           ["moving_average", "DECIMAL(38,6)"], ["change", "DECIMAL(38,6)"],
           ["slope", "DECIMAL(38,6)"], ["direction", "VARCHAR"]]


@pytest.mark.parametrize("granularity, group_by, window, window_days", [
    ("day", True, "7d", 7),
    ("day", False, "2w", 14),
    ("week", True, "30d", 30),
    ("week", False, "3w", 21),
    ("month", True, "2m", 60),
])
def test_matches_the_exact_reference_row_by_row(pool, sales_csv: Path, granularity: str, group_by: bool,
                                                window: str, window_days: int):
    params = {"window": window, "granularity": granularity, **({"group_by": "product"} if group_by else {})}
    outcome = pool.run(trend_job(sales_csv, **params))
    assert outcome.ok, outcome.detail
    table = decode_result(outcome.result)
    assert table["columns"] == ([["group", "VARCHAR"]] if group_by else []) + COLUMNS
    assert table["order"] == "query"  # (group, period) order is kept, not re-sorted
    expected = reference(sales_csv, granularity, group_by, window_days)
    assert len(table["rows"]) == len(expected)
    for got, want in zip(table["rows"], expected):
        assert got == want


def test_rounding_is_half_away_from_zero_in_integer_sql():
    pairs = [(n, d) for d in (1, 2, 3, 7, 8, 14) for n in range(-30, 31)] + [(10**30 + 5, 10), (-(10**30) - 5, 10)]
    con = duckdb.connect()
    sql = f"SELECT {rounded_division_sql('CAST($n AS HUGEINT)', 'CAST($d AS HUGEINT)')}"
    for numerator, denominator in pairs:
        got = con.execute(sql, {"n": str(numerator), "d": str(denominator)}).fetchone()[0]
        exact = Fraction(numerator, denominator)
        assert got == (1 if exact >= 0 else -1) * int(abs(exact) + Fraction(1, 2)), (numerator, denominator)


def test_series_properties_the_reference_relies_on(pool, sales_csv: Path):
    rows = decode_result(pool.run(trend_job(sales_csv, group_by="product")).result)["rows"]
    quince = [row for row in rows if row[0] == "quince"]
    assert quince == [["quince", "2024-02-22", 1, "17.000000", None, None, None, None]]
    apple = [row for row in rows if row[0] == "apple"]
    assert len(apple) == DAYS and any(row[2] == 0 for row in apple)  # gaps filled as 0-row periods
    assert apple[0][5] is None and apple[0][4] is None and apple[6][4] is not None
    directions = {row[0]: row[7] for row in rows}
    assert directions == {"apple": "down", "pear": directions["pear"], "plum": "up", "quince": None}


def test_same_digest_from_a_separate_pool(pool, sales_csv: Path):
    job = trend_job(sales_csv, group_by="product", granularity="week", window="30d")
    first = pool.run(job)
    with CagePool(all_policies()) as other_pool:
        second = other_pool.run(job)
    assert first.ok and second.ok, (first.detail, second.detail)
    assert first.result_digest == second.result_digest
    assert first.result == second.result


@pytest.mark.parametrize("params, reason", [
    ({"value_column": "nope"}, "params.value_column: no column 'nope' in input sales"),
    ({"time_column": 'day" FROM sales; --'}, "params.time_column: no column"),
    ({"group_by": "region"}, "params.group_by: no column 'region'"),
    ({"window": "0d"}, "params.window: must be <n>d, <n>w or <n>m"),
    ({"window": "7y"}, "params.window: must be <n>d, <n>w or <n>m"),
    ({"granularity": "hour"}, "params.granularity: must be one of day, week, month"),
    ({"value_column": "note"}, "params.value_column: column 'note' has type VARCHAR, not a number"),
    ({"time_column": "units"}, "params.time_column: column 'units' has type BIGINT"),
    ({"input": "other"}, "params.input must name one of the inputs (sales)"),
    ({"colour": "red"}, "params: unknown field(s) colour"),
])
def test_bad_params_fail_the_job_with_a_reason(pool, sales_csv: Path, params: dict, reason: str):
    outcome = pool.run(trend_job(sales_csv, **params))
    assert outcome.status == "error", outcome.detail
    assert outcome.detail.startswith("ValueError: ") and reason in outcome.detail
    assert outcome.result is None


# -- the job.submit schema -------------------------------------------------------------

def submit(params: dict) -> object:
    payload = {"type": "trend-analysis", "inputs": {"sales": bytes(32)}, "replication": 1, "deadline_blocks": 10,
               "params": {"input": "sales", "time_column": "day", "value_column": "units", "window": "30d",
                          **params}}
    return parse_payload(sign_tx(Identity.from_label("trend"), chain_id="trend", nonce=0,
                                 tx_type="job.submit", payload=payload))


def test_submit_accepts_the_optional_group_by_and_granularity():
    assert submit({}).params["window"] == "30d"
    parsed = submit({"group_by": "product", "granularity": "week"})
    assert parsed.params["group_by"] == "product" and parsed.params["granularity"] == "week"


@pytest.mark.parametrize("params, field", [
    ({"group_by": "1product"}, "params.group_by"),
    ({"group_by": 3}, "params.group_by"),
    ({"granularity": "year"}, "params.granularity"),
    ({"colour": "red"}, "params.colour"),
])
def test_submit_refuses_bad_optional_params(params: dict, field: str):
    with pytest.raises(PayloadError, match=field):
        submit(params)

"""Job types as users spell them, trend-analysis parameters inferred from a
schema by the documented rule (docs/jobs.md), parameter messages in words,
and the parts of the gateway's submit checks that need no node: the gate
alone when no schema is known here, no binding of costly constant
expressions, a deeply nested query refused rather than crashing."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from node.app.jobtypes import (
    TREND_NUMERIC,
    TREND_TIME_TYPES,
    canonical_job_type,
    infer_trend_params,
    job_type_names,
    trend_params,
)
from node.app.payloads import JobSubmit
from node.app.rules import DEFAULT_RULES
from node.cage import trend as cage_trend
from node.cage.sqlgate import SqlRefused, gate_sql, parse_tree
from node.consensus.tx import PayloadError
from node.p2p.jsonrpc import RpcError
from node.roles.submit_check import SubmitChecks, binding_is_bounded

SAMPLE = Path(__file__).resolve().parents[2] / "node" / "data" / "sales.csv"
INPUTS = {"sales": b"\x01" * 32}


def schema_of(path: Path) -> list[dict[str, str]]:
    """The schema as DuckDB reads the file (what the storage catalog records)."""
    with duckdb.connect() as con:
        rows = con.execute("DESCRIBE SELECT * FROM read_csv($p)", {"p": str(path)}).fetchall()
    return [{"name": str(r[0]), "type": str(r[1])} for r in rows]


def columns(*pairs: str) -> list[dict[str, str]]:
    return [{"name": name, "type": kind} for name, kind in (p.split(":", 1) for p in pairs)]


# -- job type names ------------------------------------------------------------------

@pytest.mark.parametrize("spelled", ["trend-analysis", "trend_analysis", "Trend-Analysis", "TREND_ANALYSIS",
                                     " trend analysis "])
def test_job_type_names_accept_underscores_and_any_case(spelled):
    assert canonical_job_type(spelled) == "trend-analysis"


def test_an_unknown_job_type_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        canonical_job_type("trends")
    assert "'trends'" in str(info.value)
    for name in job_type_names():
        assert name in str(info.value)
    assert canonical_job_type("SQL") == "sql" and canonical_job_type("Summary") == "summary"


# -- trend-analysis defaults ---------------------------------------------------------

def test_the_bundled_sample_gets_day_units_product_and_30d():
    schema = schema_of(SAMPLE)
    assert [c["name"] for c in schema] == ["day", "product", "units", "price_cents"]
    params, notes = infer_trend_params(schema, {}, input_name="sales")
    assert params == {"input": "sales", "time_column": "day", "value_column": "units", "group_by": "product",
                      "window": "30d"}
    # Each choice is explained, with the --param that changes it.
    assert any(n.startswith("value_column=units: the first of 2 numeric columns in file order (units, price_cents)")
               and "--param value_column=price_cents" in n for n in notes), notes
    assert any(n.startswith("time_column=day") and "--param time_column=" in n for n in notes)
    assert any(n.startswith("group_by=product") and "--param group_by=" in n for n in notes)
    assert any(n.startswith("window=30d") and "--param window=" in n for n in notes)
    # The chain's parser takes them as they are.
    assert trend_params(params, INPUTS, DEFAULT_RULES) == params


def test_one_numeric_column_is_the_value():
    schema = columns("when:TIMESTAMP", "region:VARCHAR", "amount:DECIMAL(18,3)")
    params, notes = infer_trend_params(schema, {"window": "7d"}, input_name="orders")
    assert params == {"input": "orders", "time_column": "when", "value_column": "amount", "group_by": "region",
                      "window": "7d"}
    assert any(n.startswith("value_column=amount: the only numeric column") for n in notes)
    assert not any(n.startswith("window=") for n in notes)  # given, not chosen


def test_given_params_win_and_group_by_empty_means_one_series():
    schema = schema_of(SAMPLE)
    params, notes = infer_trend_params(schema, {"value_column": "price_cents", "group_by": "", "granularity": "week"},
                                       input_name="sales")
    assert params == {"input": "sales", "time_column": "day", "value_column": "price_cents", "granularity": "week",
                      "window": "30d"}
    assert not any(n.startswith(("value_column", "group_by")) for n in notes)
    with pytest.raises(ValueError, match=r"params.value_column: no column 'price' in input sales \(columns: day \(DATE\)"):
        infer_trend_params(schema, {"value_column": "price"}, input_name="sales")


def test_several_text_columns_leave_group_by_unset_with_a_note():
    schema = columns("day:DATE", "region:VARCHAR", "product:VARCHAR", "units:INTEGER")
    params, notes = infer_trend_params(schema, {}, input_name="sales")
    assert "group_by" not in params and params["value_column"] == "units"
    assert any("2 text columns (region, product)" in n and "--param group_by=region" in n for n in notes)


@pytest.mark.parametrize(("schema", "words"), [
    (columns("ordered:DATE", "shipped:DATE", "units:BIGINT"), "2 date columns (ordered, shipped)"),
    (columns("day:DATE", "product:VARCHAR", "note:VARCHAR"), "no numeric column"),
    (columns("label:VARCHAR", "units:BIGINT"), "no DATE or TIMESTAMP column"),
    # The cage's trend function does not take TIMESTAMP WITH TIME ZONE: not a candidate.
    (columns("at:TIMESTAMP WITH TIME ZONE", "units:BIGINT"), "no DATE or TIMESTAMP column"),
])
def test_an_ambiguous_file_is_an_error_listing_the_candidates(schema, words):
    with pytest.raises(ValueError) as info:
        infer_trend_params(schema, {}, input_name="sales")
    message = str(info.value)
    assert words in message and "--param" in message
    for column in schema:
        assert column["name"] in message  # the columns are listed


def test_an_ambiguous_file_is_fine_once_the_choice_is_given():
    schema = columns("ordered:DATE", "shipped:DATE", "units:BIGINT")
    params, _ = infer_trend_params(schema, {"time_column": "shipped"}, input_name="sales")
    assert params["time_column"] == "shipped" and params["value_column"] == "units"


def test_the_inferred_types_are_the_ones_the_cage_function_takes():
    assert set(TREND_TIME_TYPES) == set(cage_trend._TIME_TYPES) - {"VARCHAR"}
    assert TREND_NUMERIC.pattern == cage_trend._NUMERIC.pattern


# -- parameter messages in words -----------------------------------------------------

@pytest.mark.parametrize(("params", "message"), [
    ({"input": "sales", "value_column": "units", "window": "30d"},
     "params.time_column: is missing; it is the DATE or TIMESTAMP column (or date text) that orders the rows"),
    ({"input": "sales", "time_column": "day", "value_column": "units", "window": "30 days"},
     "params.window: expected <n>d, <n>w or <n>m with n in 1..9999, got '30 days'"),
    ({"input": "sales", "time_column": "day", "value_column": "units", "window": "30d", "colour": "red"},
     "params.colour: is not a parameter of trend-analysis (its parameters: input, time_column, value_column, "
     "window, group_by, granularity)"),
    ({"input": "orders", "time_column": "day", "value_column": "units", "window": "30d"},
     "params.input: must name one of the inputs (sales), got 'orders'"),
    (["day"], "params: must be a map of the trend-analysis parameters"),
])
def test_parameter_messages_say_what_is_wrong_in_words(params, message):
    with pytest.raises(PayloadError) as info:
        trend_params(params, INPUTS, DEFAULT_RULES)
    assert str(info.value).startswith(message), str(info.value)


# -- the submit checks without a node ------------------------------------------------------

def sql_job(query: str) -> JobSubmit:
    return JobSubmit("sql", dict(INPUTS), {"query": query}, 1, 50)


def test_without_a_schema_the_gate_still_refuses_and_binding_is_skipped():
    checks = SubmitChecks(schemas=None)
    checks.check(sql_job("SELECT nosuch FROM sales"), {})  # no schema here: the processing nodes will tell
    with pytest.raises(RpcError) as info:
        checks.check(sql_job("SELEC nosuch FROM sales"), {})
    assert info.value.data["reason"].startswith("cannot parse SQL")
    with pytest.raises(RpcError) as info:  # with the schema: bound, and refused
        checks.check(sql_job("SELECT nosuch FROM sales"), {"sales": schema_of(SAMPLE)})
    assert 'Referenced column "nosuch" not found' in info.value.data["reason"]


def test_type_mismatches_are_left_to_the_processing_nodes():
    # The catalog's types come from a sample of the file; the cage sniffs its own.
    SubmitChecks().check(sql_job("SELECT sum(product) FROM sales"), {"sales": schema_of(SAMPLE)})


@pytest.mark.parametrize(("query", "bounded"), [
    ("SELECT product, sum(units) FROM sales GROUP BY product", True),
    ("SELECT count(*), sum(1) FROM sales WHERE day >= DATE '2025-01-01' - INTERVAL 7 DAY", True),
    ("SELECT * FROM range(1000000000000)", True),  # binding a table function does not run it
    ("SELECT length(repeat('x', 2000000000)) FROM sales", False),  # folded while binding: not bound
    ("SELECT * FROM unnest(range(1000000000))", False),
    ("SELECT list_transform([1, 2], x -> repeat('a', x * 1000000000))", False),
])
def test_costly_constant_expressions_are_not_bound(query, bounded):
    with duckdb.connect() as con:
        assert binding_is_bounded(parse_tree(con, query)) is bounded


def test_a_deeply_nested_query_is_refused_not_a_crash():
    query = "SELECT " + "+".join(["abs(units)"] * 900) + " FROM sales"
    with duckdb.connect() as con, pytest.raises(SqlRefused, match="nested too deeply"):
        gate_sql(con, query, inputs={"sales"}, seeded=True)

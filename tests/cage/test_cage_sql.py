"""SQL jobs through the cage: the gate's refusals and real results."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cage.job import JobSpec
from node.cage.results import decode_result, encode_float


def sql_job(sql: str, inputs: dict[str, str], policy: str = "processing", **kwargs) -> JobSpec:
    return JobSpec(kind="sql", sql=sql, inputs=inputs, policy=policy, **kwargs)


HOSTILE = [
    ("COPY (SELECT 1) TO '/tmp/metanode-escape.csv'", "only SELECT statements are allowed, got COPY"),
    ("ATTACH '/tmp/metanode-other.duckdb' AS other", "only SELECT statements are allowed, got ATTACH"),
    ("INSTALL httpfs", "only SELECT statements are allowed, got INSTALL/LOAD"),
    ("LOAD httpfs", "only SELECT statements are allowed, got INSTALL/LOAD"),
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv() reads files by path; refer to the inputs by name (sales)"),
    ("SELECT * FROM '/etc/passwd'", "'/etc/passwd' is a file path"),
    ("SELECT * FROM 'https://example.com/data.csv'", "URLs are not allowed"),
    ("SELECT * FROM read_parquet('http://example.com/x.parquet')", "read_parquet() reads files by path"),
    ("SELECT now()", "now() reads the wall clock"),
    ("SELECT current_date", "current_date reads the wall clock"),
    ("SELECT setseed(0.1)", "setseed() is reserved to the cage"),
    ("SELECT 1; SELECT 2", "exactly one statement is allowed, got 2"),
    ("SELECT * FROM sales; COPY sales TO '/tmp/x.csv'", "exactly one statement is allowed, got 2"),
    ("SELECT * FROM secrets", "table 'secrets' is not one of the inputs (sales)"),
    ("SELECT * FROM other.main.sales", "qualified table 'other.main.sales'"),
    ("SELECT * FROM query('SELECT 1')", "table function query() is not allowed"),
    ("SELECT * FROM sales USING SAMPLE 50%", "USING SAMPLE needs REPEATABLE(seed)"),
    ("SELECT (SELECT max(x) FROM read_text('/etc/shadow') t(x))", "read_text() reads files by path"),
    ("SELECT 1 -- ) \n", None),  # a trailing comment cannot break the wrapping
]


@pytest.mark.parametrize("sql, reason", HOSTILE)
def test_hostile_sql_is_refused_with_a_reason(pool, csv_input: Path, sql: str, reason: str | None):
    outcome = pool.run(sql_job(sql, {"sales": str(csv_input)}))
    if reason is None:
        assert outcome.ok, outcome.detail
        return
    assert outcome.status == "refused", outcome.detail
    assert reason in outcome.detail
    assert outcome.result is None and outcome.witness["exit"]["status"] == "refused"


@pytest.mark.parametrize("sql", ["SELECT random()", "SELECT uuid()", "SELECT gen_random_uuid()"])
def test_random_functions_are_refused_when_unseeded(pool, sql: str):
    outcome = pool.run(sql_job(sql, {}, policy="unseeded"))
    assert outcome.status == "refused"
    assert "is unseeded" in outcome.detail


def test_seeded_random_is_reproducible_and_follows_the_seed(pool):
    def draw(seed: bytes) -> bytes:
        outcome = pool.run(sql_job("SELECT random() AS r, uuid()::VARCHAR AS u", {}, seed=seed))
        assert outcome.ok, outcome.detail
        return outcome.result

    assert draw(b"one") == draw(b"one")
    assert draw(b"one") != draw(b"two")


def test_aggregate_result_is_encoded_exactly(pool, csv_input: Path):
    outcome = pool.run(sql_job(
        "SELECT region, sum(amount) AS total, count(*) AS n FROM sales GROUP BY region",
        {"sales": str(csv_input)}))
    assert outcome.ok, outcome.detail
    table = decode_result(outcome.result)
    assert table["columns"] == [["region", "VARCHAR"], ["total", "DOUBLE"], ["n", "BIGINT"]]
    # No ORDER BY: the rows are a bag, in the canonical (encoded-bytes) order.
    assert table["order"] == "canonical"
    assert table["rows"] == [["north", encode_float(4.5), 2], ["south", encode_float(2.25), 1]]


def test_parquet_input_and_named_parameters(pool, tmp_path: Path):
    import duckdb

    path = tmp_path / "t.parquet"
    duckdb.connect().execute(f"COPY (SELECT range AS i FROM range(10)) TO '{path}' (FORMAT parquet)")
    outcome = pool.run(sql_job("SELECT count(*) AS n FROM t WHERE i >= $low", {"t": str(path)},
                               params={"low": 7}))
    assert outcome.ok, outcome.detail
    assert decode_result(outcome.result)["rows"] == [[3]]
    assert outcome.witness["inputs"][0]["format"] == "parquet"


def test_nested_and_zoned_types_are_encoded_as_text(pool):
    outcome = pool.run(sql_job(
        "SELECT [1, 2] AS l, {'a': 1} AS s, TIMESTAMPTZ '2020-01-01 00:00:00+00' AS t", {}))
    assert outcome.ok, outcome.detail
    table = decode_result(outcome.result)
    assert table["columns"][2] == ["t", "TIMESTAMP WITH TIME ZONE"]
    assert table["rows"] == [["[1, 2]", "{'a': 1}", "2020-01-01 00:00:00+00"]]


def test_table_summary_function(pool, csv_input: Path):
    outcome = pool.run(JobSpec(kind="python-fn", function="table_summary", policy="processing",
                               inputs={"sales": str(csv_input)}, params={"input": "sales"}))
    assert outcome.ok, outcome.detail
    rows = decode_result(outcome.result)["rows"]
    assert ["amount", "DOUBLE", 3, 3, 3, "1.5", "3.0"] in rows
    assert ["region", "VARCHAR", 3, 3, 2, "north", "south"] in rows
    assert outcome.witness["job"]["function_code"] == pool.functions["table_summary"]

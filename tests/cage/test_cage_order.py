"""Result row order: a top-level ORDER BY is kept (``"order": "query"``),
anything else is sorted canonically (``"order": "canonical"``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from node.base.codec import encode
from node.cage.job import JobSpec
from node.cage.results import ResultError, decode_result, encode_result
from node.cage.sqlgate import has_top_level_order, parse_tree

ROOT = Path(__file__).resolve().parents[2]


def write_sales(path: Path, rows: list[tuple[int, str, int]]) -> None:
    path.write_text("id,region,revenue\n" + "".join(f"{i},{r},{v}\n" for i, r, v in rows), encoding="utf-8")


def sales_rows(count: int = 300) -> list[tuple[int, str, int]]:
    # Few distinct revenues: ORDER BY revenue has many ties.
    return [(i, f"r{i % 5}", (i * 37) % 11 * 100) for i in range(count)]


def run_sql(pool, sql: str, inputs: dict[str, str]) -> dict:
    outcome = pool.run(JobSpec(kind="sql", policy="processing", sql=sql, inputs=inputs))
    assert outcome.ok, outcome.detail
    return decode_result(outcome.result)


@pytest.mark.parametrize("sql, ordered", [
    ("SELECT a FROM t ORDER BY a DESC LIMIT 10", True),
    ("FROM t ORDER BY a", True),
    ("SELECT a FROM t ORDER BY ALL", True),
    ("WITH c AS (SELECT a FROM t) SELECT a FROM c ORDER BY a", True),
    ("SELECT a FROM t UNION ALL SELECT a FROM t ORDER BY 1", True),
    ("SELECT a FROM t", False),
    ("SELECT a FROM t LIMIT 3", False),
    ("SELECT * FROM (SELECT a FROM t ORDER BY a) s", False),
    ("WITH c AS (SELECT a FROM t ORDER BY a) SELECT a FROM c", False),
    ("SELECT a, row_number() OVER (ORDER BY a) FROM t", False),
    ("SELECT 'ORDER BY a' AS text FROM t -- ORDER BY a", False),
])
def test_top_level_order_by_is_read_from_duckdbs_parse(sql: str, ordered: bool):
    assert has_top_level_order(parse_tree(duckdb.connect(), sql)) is ordered


def test_order_by_desc_keeps_the_query_order(pool, tmp_path: Path):
    data = tmp_path / "sales.csv"
    write_sales(data, [(i, f"r{i % 7}", (i * 7919) % 1009) for i in range(200)])
    sql = "SELECT region, sum(revenue) AS revenue FROM sales GROUP BY region ORDER BY revenue DESC LIMIT 5"
    table = run_sql(pool, sql, {"sales": str(data)})
    assert table["order"] == "query"
    revenues = [row[1] for row in table["rows"]]
    assert len(revenues) == 5 and revenues == sorted(revenues, reverse=True) and revenues != sorted(revenues)
    # The same rows, in the same order, as DuckDB gives in-process.
    expected = duckdb.connect().execute(sql.replace("FROM sales", f"FROM read_csv('{data}')")).fetchall()
    assert [tuple(row) for row in table["rows"]] == expected


def test_order_by_is_kept_through_the_text_cast_of_non_native_types(pool):
    table = run_sql(pool, "SELECT i, [i] AS l FROM range(5) t(i) ORDER BY i DESC", {})
    assert table["order"] == "query"
    assert table["rows"] == [[4, "[4]"], [3, "[3]"], [2, "[2]"], [1, "[1]"], [0, "[0]"]]


def test_query_without_order_by_gets_canonical_order_whatever_the_input_order(pool, tmp_path: Path):
    rows = sales_rows()
    forward, backward = tmp_path / "forward.csv", tmp_path / "backward.csv"
    write_sales(forward, rows)
    write_sales(backward, rows[::-1])
    sql = "SELECT id, region, revenue FROM sales WHERE revenue > 200"
    digests = set()
    for path in (forward, backward):
        outcome = pool.run(JobSpec(kind="sql", policy="processing", sql=sql, inputs={"sales": str(path)}))
        assert outcome.ok, outcome.detail
        table = decode_result(outcome.result)
        assert table["order"] == "canonical"
        encoded = [encode(row) for row in table["rows"]]
        assert encoded == sorted(encoded)
        digests.add(outcome.result_digest)
    assert len(digests) == 1


def test_ordered_python_fn_query_keeps_its_order(pool):
    outcome = pool.run(JobSpec(kind="python-fn", function="hostile.query", policy="processing",
                               params={"sql": "SELECT i FROM range(4) t(i) ORDER BY i DESC"}))
    assert outcome.ok, outcome.detail
    table = decode_result(outcome.result)
    assert table["order"] == "query" and table["rows"] == [[3], [2], [1], [0]]


def cli_run(*args: str) -> tuple[str, str, str]:
    """(result digest, witness digest, printed rows) of `metanode cage run` in a new process."""
    done = subprocess.run([sys.executable, "-m", "node", "cage", "run", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    result = re.search(r"result digest:\s+([0-9a-f]{64})", done.stdout).group(1)
    witness = re.search(r"witness digest:\s+([0-9a-f]{64})", done.stdout).group(1)
    assert "row order: as the query's ORDER BY" in done.stdout
    return result, witness, done.stdout.split("result digest:")[0]


def test_order_by_a_non_unique_key_is_byte_identical_across_three_processes(tmp_path: Path):
    data = tmp_path / "sales.csv"
    write_sales(data, sales_rows(2000))
    # 11 distinct revenues over 2000 rows: the order among ties is the engine's.
    sql = "SELECT id, region, revenue FROM sales ORDER BY revenue DESC LIMIT 40"
    runs = {cli_run("--input", f"sales={data}", "--seed", "01", "--clock", "1700000000", "--sql", sql)
            for _ in range(3)}
    assert len(runs) == 1


def test_result_encoding_is_the_codec_encoding_of_the_table():
    columns = [("k", "BIGINT"), ("v", "VARCHAR")]
    for count in (0, 1, 23, 24, 255, 256, 70_000):
        rows = [[i % 13, "x" * (i % 5)] for i in range(count)]
        for ordered in (False, True):
            data = encode_result(columns, rows, ordered=ordered)
            cells = rows if ordered else sorted(rows, key=encode)
            assert data == encode({"columns": [list(c) for c in columns],
                                   "order": "query" if ordered else "canonical", "rows": cells})


def test_decoding_rejects_a_false_order_claim():
    ordered = encode_result([("k", "BIGINT")], [[2], [1]], ordered=True)
    assert decode_result(ordered)["rows"] == [[2], [1]]
    # The same rows claimed to be in canonical order: they are not.
    unsorted = encode({"columns": [["k", "BIGINT"]], "order": "canonical", "rows": [[2], [1]]})
    with pytest.raises(ResultError, match="not in canonical order"):
        decode_result(unsorted)
    with pytest.raises(ResultError, match="order 'random' is not one of"):
        decode_result(encode({"columns": [], "order": "random", "rows": []}))

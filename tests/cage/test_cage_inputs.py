"""Input views: a CSV is sniffed once and read with its dialect spelled out;
that must read exactly what an auto-detecting read_csv reads."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from node.cage.inputs import csv_reader_sql, sql_literal
from node.cage.job import JobSpec
from node.cage.results import decode_result

DIALECTS = {
    "plain": b"id,name,amount\n1,a,1.5\n2,b,2.5\n",
    "semicolon_quoted": b'a;b;c\n1;"x;y";2020-01-02\n2;"z";2021-03-04\n',
    "crlf_timestamps": b"id,ts,amt\r\n1,2020-01-01 10:00:00,1.5\r\n2,2020-02-01 11:00:00,2.5\r\n",
    "cr_only": b"a,b\r1,2\r3,4\r",
    "no_header": b"1,foo,3.5\n2,bar,4.5\n",
    "day_month_year": b"d,v\n01/02/2020,1\n13/02/2020,2\n",
    "quoted_header": b"we'ird,\"na\"\"me\",x\n1,2,3\n",
    "ragged": b"a,b\n1,2\n3\n4,5,6\n",
    "tab_separated": b"a\tb\n1\t\\N\n",
    "quoted_newline": b'a,b\n1,"x\ny"\n2,"z"\n',
    "comment_line": b"# c\na,b\n1,2\n",
    "byte_order_mark": b"\xef\xbb\xbfa,b\n1,2\n",
    "single_quotes": b"a|b\n'x|y'|2\n",
    "header_only": b"a,b\n",
    "empty": b"",
    "no_final_newline": b"a,b",
    "late_type_error": b"a,b\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(30000)) + b"oops,1\n",
    "not_utf8": "a,b\n1,2\n".encode("utf-16"),
}


def read(con: duckdb.DuckDBPyConnection, source: str):
    """(columns, rows) of SELECT * FROM source, or the error it raises."""
    try:
        con.execute(f"SELECT * FROM {source}")
        return [(d[0], str(d[1])) for d in con.description], con.fetchall()
    except duckdb.Error as exc:
        return type(exc).__name__, str(exc).splitlines()[0]


# Files storage ingest refuses, where the reader deliberately differs from
# read_csv: a ragged file keeps its header (its bad rows are errors), and
# non-UTF-8 bytes are refused before DuckDB guesses at them.
REFUSED_AT_INGEST = {"ragged", "not_utf8"}


@pytest.mark.parametrize("name", sorted(set(DIALECTS) - REFUSED_AT_INGEST))
def test_sniffed_once_reader_reads_what_read_csv_reads(tmp_path: Path, name: str):
    path = tmp_path / f"{name}.csv"
    path.write_bytes(DIALECTS[name])
    con = duckdb.connect(config={"threads": 1})
    auto = read(con, f"read_csv({sql_literal(str(path))})")
    try:
        explicit = read(con, csv_reader_sql(con, str(path)))
    except duckdb.Error as exc:  # the sniffer itself refuses: so does read_csv, the same way
        explicit = type(exc).__name__, str(exc).splitlines()[0]
    assert explicit == auto
    if name in ("plain", "semicolon_quoted", "no_header"):
        assert isinstance(auto[0], list) and auto[1], "the file must actually parse"


def test_files_ingest_refuses_keep_their_header_or_are_refused(tmp_path: Path):
    ragged, utf16 = tmp_path / "ragged.csv", tmp_path / "u16.csv"
    ragged.write_bytes(DIALECTS["ragged"])
    utf16.write_bytes(DIALECTS["not_utf8"])
    con = duckdb.connect(config={"threads": 1})
    reader = csv_reader_sql(con, str(ragged))
    assert "header = true" in reader and "CSV Error on Line: 3" in str(read(con, reader))
    with pytest.raises(duckdb.InvalidInputException, match="not a text file"):
        csv_reader_sql(con, str(utf16))


def test_header_names_cannot_inject_sql(tmp_path: Path):
    path = tmp_path / "evil.csv"
    path.write_text("x'}); SELECT 1; --,\"y\"\"\"\n1,2\n", encoding="utf-8")
    con = duckdb.connect()
    reader = csv_reader_sql(con, str(path))
    assert duckdb.extract_statements(f"SELECT * FROM {reader}")[0].type.name == "SELECT"
    assert len(duckdb.extract_statements(f"SELECT * FROM {reader}")) == 1
    assert read(con, reader) == read(con, f"read_csv({sql_literal(str(path))})")


def test_a_caged_job_reads_a_csv_with_a_hostile_header(pool, tmp_path: Path):
    path = tmp_path / "evil.csv"
    path.write_text("x'}); SELECT 1; --,b\n1,2\n3,4\n", encoding="utf-8")
    outcome = pool.run(JobSpec(kind="sql", policy="processing", inputs={"t": str(path)},
                               sql="SELECT * FROM t"))
    assert outcome.ok, outcome.detail
    table = decode_result(outcome.result)
    assert table["columns"] == [["x'}); SELECT 1; --", "BIGINT"], ["b", "BIGINT"]]
    assert table["rows"] == [[1, 2], [3, 4]]


def test_an_unreadable_csv_fails_the_job_with_the_sniffers_reason(pool, tmp_path: Path):
    path = tmp_path / "u16.csv"
    path.write_bytes(DIALECTS["not_utf8"])
    outcome = pool.run(JobSpec(kind="sql", policy="processing", inputs={"t": str(path)},
                               sql="SELECT * FROM t"))
    assert outcome.status == "error"
    assert "InvalidInputException" in outcome.detail

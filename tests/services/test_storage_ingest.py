"""Validation at the door (node/roles/storage/ingest.py) with real files and real DuckDB:
bad rows found by line, skipped rows re-encoded, empty and binary files refused,
JSON Lines, and a caged job seeing exactly the schema the tenant was shown."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pytest

from node.cage.inputs import create_input_views
from node.cage.job import JobSpec
from node.cage.pool import CagePool
from node.cage.results import decode_result
from node.cage.witness import input_format
from node.roles.storage.catalog import Catalog, DatasetInfo
from node.roles.storage.errors import DatasetBadRows, DatasetUnreadable
from node.roles.storage.ingest import REPORTED_BAD_ROWS, Inspection, inspect_upload

BAD_CSV = (b"day,region,units,price\n2024-01-01,north,3,1.5\n2024-01-02,south,x,2.5\n"
           b"2024-01-03,east,5\n2024-01-04,west,6,3.5,extra\n2024-01-05,north,7,4.5\n")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def inspect(tmp_path: Path, name: str, data: bytes, fmt: str = "csv", on_bad_rows: str = "fail") -> Inspection:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return inspect_upload(write(tmp_path, name, data), fmt, on_bad_rows=on_bad_rows, work_dir=work)


def cage_view(path: Path) -> tuple[list[dict[str, str]], list[tuple]]:
    """Columns and rows as a job's input view reads the file (format told by content, as the fork server does)."""
    con = duckdb.connect(config={"threads": 1})
    create_input_views(con, [{"name": "t", "path": str(path), "format": input_format(str(path))}])
    columns = [{"name": r[0], "type": r[1]} for r in con.execute("DESCRIBE t").fetchall()]
    return columns, con.execute("SELECT * FROM t").fetchall()


def types_of(schema: list[dict]) -> list[dict[str, str]]:
    return [{"name": c["name"], "type": c["type"]} for c in schema]


def test_bad_rows_are_found_with_file_lines_and_reasons(tmp_path: Path):
    with pytest.raises(DatasetBadRows) as info:
        inspect(tmp_path, "bad.csv", BAD_CSV)
    assert info.value.data == {"count": 3, "bad_rows": [
        {"line": 3, "reason": "bad value in column 'units': \"x\" is not a BIGINT"},
        {"line": 4, "reason": "short row: 3 fields, expected 4"},
        {"line": 5, "reason": "long row: 5 fields, expected 4"},
    ]}
    # Line numbers are the file's: a quoted value spanning lines counts every line.
    data = b'id,note\n1,"two\nlines"\n2,ok\nthree,bad\n4,fine\n'
    with pytest.raises(DatasetBadRows) as info:
        inspect(tmp_path, "quoted.csv", data)
    assert info.value.data["bad_rows"] == [{"line": 5, "reason": "bad value in column 'id': \"three\" is not a BIGINT"}]
    # Many bad rows: the first few listed, all counted; a bad value beyond the sniffer's sample too.
    rows = "".join(f"{i},{i * 2}\n" if i % 50 else f"{i},oops\n" for i in range(1, 30_001))
    with pytest.raises(DatasetBadRows) as info:
        inspect(tmp_path, "many.csv", ("a,b\n" + rows).encode())
    assert info.value.data["count"] == 600 and len(info.value.data["bad_rows"]) == REPORTED_BAD_ROWS
    assert [b["line"] for b in info.value.data["bad_rows"][:2]] == [51, 101]
    # A column where text is common (here 1 value in 10) is text, not numbers with bad rows.
    rows = "".join(f"{i},{i * 2}\n" if i % 10 else f"{i},n/a\n" for i in range(1, 101))
    found = inspect(tmp_path, "text.csv", ("a,b\n" + rows).encode())
    assert types_of(found.schema) == [{"name": "a", "type": "BIGINT"}, {"name": "b", "type": "VARCHAR"}]
    late = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(30_000)) + b"oops,1\n"
    with pytest.raises(DatasetBadRows) as info:
        inspect(tmp_path, "late.csv", late)
    assert info.value.data["bad_rows"] == [{"line": 30_002, "reason": "bad value in column 'a': \"oops\" is not a BIGINT"}]


def test_skip_stores_the_good_rows_and_the_cage_reads_the_same_schema(tmp_path: Path):
    found = inspect(tmp_path, "bad.csv", BAD_CSV, on_bad_rows="skip")
    skipped = found.stored
    assert found.format == "parquet" and found.row_count == 2 and found.skipped_rows == 3
    assert found.schema == [{"name": "day", "type": "DATE", "nulls": 0}, {"name": "region", "type": "VARCHAR", "nulls": 0},
                            {"name": "units", "type": "BIGINT", "nulls": 0}, {"name": "price", "type": "DOUBLE", "nulls": 0}]
    assert found.stored is not None and found.stored.read_bytes()[:4] == b"PAR1"
    columns, rows = cage_view(found.stored)
    assert columns == types_of(found.schema)
    assert [(str(r[0]), r[1], r[2], r[3]) for r in rows] == [("2024-01-01", "north", 3, 1.5), ("2024-01-05", "north", 7, 4.5)]
    # A clean file is stored as uploaded, and the cage types it as ingest did.
    clean = b"day,city,amount,score\n2024-03-01,Oslo,10,0.5\n2024-03-02,,11,\n2024-03-03,Lima,12,1.25\n"
    found = inspect(tmp_path, "clean.csv", clean, on_bad_rows="skip")
    assert found.stored is None and found.format == "csv" and found.skipped_rows == 0
    assert [c["nulls"] for c in found.schema] == [0, 1, 0, 1]
    assert cage_view(tmp_path / "clean.csv")[0] == types_of(found.schema)
    # Every row bad: nothing to store, even with skip.
    with pytest.raises(DatasetBadRows) as info:
        inspect(tmp_path, "allbad.csv", b"a,b\n1,2,3\n4\n5,6,7,8\n", on_bad_rows="skip")
    assert "no good rows" in info.value.message
    assert sorted((tmp_path / "work").iterdir()) == [skipped]  # nothing left behind by refusals


def test_empty_binary_and_mislabelled_files_are_refused_in_words(tmp_path: Path):
    cases = [
        ("empty.csv", b"", "csv", "the file is empty"),
        ("blank.jsonl", b"\n  \n\n", "jsonl", "the file is empty (only white space)"),
        ("random.csv", bytes(range(256)) * 40, "csv", "not a text file: byte 0 is NUL"),
        ("u16.csv", "a,b\n1,2\n".encode("utf-16"), "csv", "not a text file: byte 3 is NUL (UTF-16 text? save it as UTF-8)"),
        ("latin1.csv", "a,b\ncaf\xe9,1\n".encode("latin-1"), "csv", "not a text file: bytes at 7 are not UTF-8 (save it as UTF-8)"),
        ("lines.csv", b'{"a": 1}\n', "csv", "this file starts with '{' like JSON Lines: upload it with format jsonl"),
        ("table.parquet", b"a,b\n1,2\n", "parquet", "not a Parquet file: it does not start with PAR1"),
        ("bin.jsonl", b"\x00\x01\x02", "jsonl", "not a text file: byte 0 is NUL"),
    ]
    for name, data, fmt, message in cases:
        with pytest.raises(DatasetUnreadable) as info:
            inspect(tmp_path, name, data, fmt)
        assert info.value.message == message, name
        assert str(tmp_path) not in info.value.message


def test_json_lines_are_read_as_the_cage_reads_them(tmp_path: Path):
    lines = [{"ts": "2024-01-01 10:00:00", "user": "ann", "n": 1, "tags": ["a"]},
             {"ts": "2024-01-02 11:30:00", "user": None, "n": 2, "tags": []},
             {"ts": "2024-01-03 12:00:00", "user": "bo", "n": 3, "extra": True}]
    data = ("\n".join(json.dumps(line) for line in lines) + "\n\n").encode()
    found = inspect(tmp_path, "events.jsonl", data, "jsonl")
    assert found.format == "jsonl" and found.row_count == 3 and found.stored is None
    assert types_of(found.schema) == [{"name": "ts", "type": "TIMESTAMP"}, {"name": "user", "type": "VARCHAR"},
                                      {"name": "n", "type": "BIGINT"}, {"name": "tags", "type": "VARCHAR[]"},
                                      {"name": "extra", "type": "BOOLEAN"}]
    assert [c["nulls"] for c in found.schema] == [0, 1, 0, 1, 2]
    assert input_format(str(tmp_path / "events.jsonl")) == "jsonl"
    assert cage_view(tmp_path / "events.jsonl")[0] == types_of(found.schema)

    bad = data + b'[1, 2]\n"text"\n{"n": 4, broken\n{"ts": "2024-01-04 00:00:00", "user": "cy", "n": 4}\n'
    with pytest.raises(DatasetBadRows) as info:
        inspect(tmp_path, "bad.jsonl", bad, "jsonl")
    assert info.value.data["count"] == 3
    assert [(b["line"], b["reason"].split(":")[0]) for b in info.value.data["bad_rows"]] == [
        (5, "not a JSON object but an array"), (6, "not a JSON object but a string"), (7, "not JSON")]
    found = inspect(tmp_path, "bad.jsonl", bad, "jsonl", on_bad_rows="skip")
    assert found.format == "jsonl" and found.row_count == 4 and found.skipped_rows == 3
    assert found.stored is not None and cage_view(found.stored)[0] == types_of(found.schema)


@pytest.mark.timeout(120)
def test_a_caged_job_reads_each_stored_format_as_ingest_typed_it(tmp_path: Path):
    skipped = inspect(tmp_path, "bad.csv", BAD_CSV, on_bad_rows="skip")
    events = inspect(tmp_path, "events.jsonl", b'{"k": "a", "v": 1.5}\n{"k": "b", "v": null}\n', "jsonl")
    clean = inspect(tmp_path, "clean.csv", b"k,v\na,1\nb,\n")
    assert skipped.stored is not None
    files = {"skipped": (skipped.stored, skipped), "events": (tmp_path / "events.jsonl", events),
             "clean": (tmp_path / "clean.csv", clean)}
    with CagePool() as pool:
        for name, (path, found) in files.items():
            outcome = pool.run(JobSpec(kind="sql", policy="processing", inputs={"t": str(path)}, sql="SELECT * FROM t"))
            assert outcome.ok, (name, outcome.detail)
            table = decode_result(outcome.result)
            assert table["columns"] == [[c["name"], c["type"]] for c in found.schema], name
            assert len(table["rows"]) == found.row_count


def test_a_catalog_from_the_previous_version_opens_and_migrates(tmp_path: Path):
    path = tmp_path / "node.duckdb"
    old = duckdb.connect(str(path))
    old.execute("""CREATE TABLE storage_catalog (
        tenant BLOB NOT NULL, digest BLOB NOT NULL, name VARCHAR NOT NULL, format VARCHAR NOT NULL,
        size BIGINT NOT NULL, schema_json VARCHAR NOT NULL, row_count BIGINT NOT NULL,
        nodes_json VARCHAR NOT NULL, created BIGINT NOT NULL, PRIMARY KEY (tenant, digest))""")
    tenant, digest = b"t" * 32, hashlib.sha256(b"old").digest()
    old.execute("INSERT INTO storage_catalog VALUES (?, ?, 'sales', 'csv', 3, ?, 1, ?, 5)",
                [tenant, digest, json.dumps([{"name": "a", "type": "BIGINT"}]), json.dumps(["n1"])])
    old.close()
    conn = duckdb.connect(str(path))
    catalog = Catalog(conn)
    row = catalog.require(tenant, digest)
    assert (row.name, row.source, row.skipped_rows, row.receipt_id, row.created) == ("sales", digest, 0, None, 5)
    assert row.to_json()["source_digest"] == digest.hex() and row.to_json()["receipt_id"] is None
    assert [r.digest for r in catalog.find_source(tenant, digest)] == [digest]
    catalog.set_receipt(tenant, digest, b"r" * 32)
    new = hashlib.sha256(b"good rows").digest()
    catalog.add(DatasetInfo(tenant, new, "sales", "parquet", 9, [], 2, ["n1"], 6,
                            source_digest=hashlib.sha256(b"upload").digest(), skipped_rows=3))
    conn.close()
    reopened = Catalog(duckdb.connect(str(path)))  # opening twice migrates nothing more
    assert reopened.require(tenant, digest).receipt_id == b"r" * 32
    assert [r.skipped_rows for r in reopened.find_source(tenant, hashlib.sha256(b"upload").digest())] == [3]


def test_data_store_receipts_carry_skipped_rows_only_when_rows_were_skipped():
    from node.base.keys import Identity
    from node.base.verification import ReceiptError
    from node.receipts.envelope import build_receipt, decode_receipt

    issuer = Identity.from_label("storage-node")
    fields = {"content": "dataset", "tenant": b"t" * 32, "size": 10, "replicas": 2}
    plain = build_receipt(issuer, "data.store", height=3, subject=b"d" * 32, prev=None, fields=fields)
    assert "skipped_rows" not in decode_receipt(plain.envelope).fields  # receipts of complete uploads are unchanged
    skipped = build_receipt(issuer, "data.store", height=3, subject=b"d" * 32, prev=None,
                            fields={**fields, "skipped_rows": 7})
    assert decode_receipt(skipped.envelope).fields["skipped_rows"] == 7 and skipped.id != plain.id
    for bad in (0, -1, "7", None):
        with pytest.raises(ReceiptError, match="skipped_rows"):
            build_receipt(issuer, "data.store", height=3, subject=b"d" * 32, prev=None, fields={**fields, "skipped_rows": bad})

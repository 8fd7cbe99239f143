"""Job artifacts on disk and as tables: stored by the digest a receipt names,
never served when the bytes no longer hash to it, rendered exactly."""

from __future__ import annotations

import decimal

import pytest

from node.cage.results import encode_result, result_digest
from node.cli.present import format_csv, format_table
from node.roles.artifacts import ArtifactError, ArtifactStore, digest_of, result_json

COLUMNS = [("product", "VARCHAR"), ("units", "BIGINT"), ("share", "DOUBLE"), ("price", "DECIMAL(10,2)")]
ROWS = [("apples", 7, 0.5, decimal.Decimal("1.25")), ("pears", 5, float("nan"), None)]


def test_a_result_is_stored_and_served_by_its_tagged_digest(tmp_path):
    store = ArtifactStore(tmp_path)
    data = encode_result(COLUMNS, ROWS, ordered=True)
    digest = store.put("result", data)
    assert digest == result_digest(data) == digest_of("result", data)
    assert store.get("result", digest) == data
    assert store.get("witness", digest) is None  # kinds are separate namespaces


def test_bytes_with_another_digest_are_refused(tmp_path):
    store = ArtifactStore(tmp_path)
    data = encode_result(COLUMNS, ROWS)
    with pytest.raises(ArtifactError, match="hash to"):
        store.put("result", data, expected=bytes(32))
    with pytest.raises(ArtifactError, match="not a canonical result"):
        store.put("result", b"\x00garbage")
    with pytest.raises(ArtifactError, match="not a witness file"):
        store.put("witness", data)
    assert not any(tmp_path.rglob("*[0-9a-f]" * 8))


def test_a_damaged_file_is_removed_not_served(tmp_path):
    store = ArtifactStore(tmp_path)
    data = encode_result(COLUMNS, ROWS)
    digest = store.put("result", data)
    path = store.path("result", digest)
    damaged = bytearray(data)
    damaged[-3] ^= 0x01
    path.write_bytes(bytes(damaged))
    assert store.get("result", digest) is None
    assert not path.exists()
    assert store.put("result", data) == digest and store.get("result", digest) == data  # fetched again, served again


def test_result_json_and_renderings():
    table = result_json(encode_result(COLUMNS, ROWS, ordered=True))
    assert table["columns"] == [["product", "VARCHAR"], ["units", "BIGINT"], ["share", "DOUBLE"], ["price", "DECIMAL(10,2)"]]
    assert table["rows"] == [["apples", 7, 0.5, "1.25"], ["pears", 5, "nan", None]]
    assert table["row_count"] == 2 and table["order"] == "query"
    text = format_table(table["columns"], table["rows"]).splitlines()
    assert text[0].split() == ["product", "units", "share", "price"]
    assert text[2].split() == ["apples", "7", "0.5", "1.25"] and text[3].split() == ["pears", "5", "nan", "NULL"]
    assert text[-1] == "(2 rows)"
    assert format_csv(table["columns"], table["rows"]).splitlines() == ["product,units,share,price", "apples,7,0.5,1.25", "pears,5,nan,"]
    cut = format_table(table["columns"], table["rows"], max_rows=1)
    assert "1 more rows" in cut and "pears" not in cut

"""Blob store and catalog: atomic writes, verified reads, schemas from DuckDB, quotas."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import duckdb
import pytest

from node.roles.storage.blobstore import BlobStore
from node.roles.storage.catalog import Catalog, DatasetInfo, QuotaPolicy, inspect_dataset
from node.roles.storage.errors import (
    BlobCorrupt,
    BlobNotFound,
    BlobTooLarge,
    DatasetUnreadable,
    DigestMismatch,
    InvalidDataset,
    QuotaExceeded,
)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_put_names_blob_by_sha256_and_reads_back(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    data = os.urandom(700_000)
    digest = store.put_stream([data[:100], data[100:500_000], data[500_000:]])
    assert digest == sha(data)
    hex_ = digest.hex()
    assert (tmp_path / "blobs" / hex_[:2] / hex_[2:]).read_bytes() == data
    assert store.has(digest) and store.size(digest) == len(data) and store.total_bytes() == len(data)
    assert store.open(digest) == data
    assert b"".join(store.read_chunks(digest, 65536, offset=123_456)) == data[123_456:]
    assert list(store.digests()) == [digest]
    assert store.delete(digest) and not store.has(digest) and not store.delete(digest)
    with pytest.raises(BlobNotFound):
        store.open(digest)


def test_digest_mismatch_on_put_is_refused_and_leaves_nothing(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(DigestMismatch):
        store.put(b"actual content", expected=sha(b"announced content"))
    assert not store.has(sha(b"actual content")) and not store.has(sha(b"announced content"))
    assert list((tmp_path / "blobs" / "incoming").iterdir()) == []
    assert store.total_bytes() == 0


def test_size_limit_refuses_and_discards_partial_blob(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs", max_blob_size=1000)
    with pytest.raises(BlobTooLarge) as info:
        store.put_stream([b"x" * 600, b"y" * 600])
    assert info.value.data["limit"] == 1000
    assert list((tmp_path / "blobs" / "incoming").iterdir()) == []
    with pytest.raises(BlobTooLarge):
        store.writer(expected_size=1001)
    assert store.put(b"z" * 1000) == sha(b"z" * 1000)


def test_crash_mid_write_leaves_no_blob_under_its_digest(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    data = b"half written" * 1000
    writer = store.writer(expected=sha(data))
    writer.write(data[:5000])
    # The process dies here: the partial file is not under the digest...
    assert not store.has(sha(data))
    # ...and a restarted store drops the leftover instead of ever publishing it.
    assert len(list((tmp_path / "blobs" / "incoming").iterdir())) == 1
    restarted = BlobStore(tmp_path / "blobs")
    assert list((tmp_path / "blobs" / "incoming").iterdir()) == []
    assert not restarted.has(sha(data))


def test_flipped_byte_on_disk_is_detected_and_quarantined(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    data = os.urandom(600_000)
    digest = store.put(data)
    path = store.path(digest)
    raw = bytearray(path.read_bytes())
    raw[300_000] ^= 0x01
    path.write_bytes(bytes(raw))
    served = []
    with pytest.raises(BlobCorrupt):
        for chunk in store.read_chunks(digest, 256 * 1024):
            served.append(chunk)
    assert sum(map(len, served)) < len(data)  # the end of a bad copy is never handed out
    assert not store.has(digest)
    quarantined = list((tmp_path / "blobs" / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith(digest.hex())
    with pytest.raises(BlobNotFound):
        store.open(digest)


# -- catalog ---------------------------------------------------------------------
def make_files(tmp_path: Path) -> tuple[Path, Path]:
    con = duckdb.connect()
    csv, parquet = tmp_path / "sales.csv", tmp_path / "sales.parquet"
    con.execute(f"COPY (SELECT range AS id, 'r' || range AS region, range * 2 AS amount FROM range(1234)) "
                f"TO '{csv}' (FORMAT csv, HEADER)")
    con.execute(f"COPY (SELECT range::INTEGER AS id, range % 7 = 0 AS flag, 'x' AS s FROM range(777)) "
                f"TO '{parquet}' (FORMAT parquet)")
    return csv, parquet


def test_schema_and_row_count_of_real_csv_and_parquet(tmp_path: Path):
    csv, parquet = make_files(tmp_path)
    store = BlobStore(tmp_path / "blobs")
    csv_digest = store.put(csv.read_bytes())
    pq_digest = store.put(parquet.read_bytes())
    schema, rows = inspect_dataset(store.path(csv_digest), "csv")
    assert schema == [{"name": "id", "type": "BIGINT", "nulls": 0}, {"name": "region", "type": "VARCHAR", "nulls": 0},
                      {"name": "amount", "type": "BIGINT", "nulls": 0}]
    assert rows == 1234
    schema, rows = inspect_dataset(store.path(pq_digest), "parquet")
    assert schema == [{"name": "id", "type": "INTEGER", "nulls": 0}, {"name": "flag", "type": "BOOLEAN", "nulls": 0},
                      {"name": "s", "type": "VARCHAR", "nulls": 0}]
    assert rows == 777


def test_hostile_content_gives_clean_errors(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    binary = store.put(bytes(range(256)) * 40)
    with pytest.raises(DatasetUnreadable) as info:
        inspect_dataset(store.path(binary), "csv")
    assert str(tmp_path) not in str(info.value)  # the node's paths are not echoed back
    huge_line = store.put(b"a,b\n" + b"x" * 5_000_000 + b",1\n")
    with pytest.raises(DatasetUnreadable):
        inspect_dataset(store.path(huge_line), "csv")
    csv, _ = make_files(tmp_path)
    with pytest.raises(DatasetUnreadable):
        inspect_dataset(store.path(store.put(csv.read_bytes())), "parquet")
    with pytest.raises(InvalidDataset):
        inspect_dataset(store.path(binary), "json")


def test_dataset_names_are_metadata_never_paths(tmp_path: Path):
    from node.roles.storage.catalog import check_name_and_format

    assert check_name_and_format("../../etc/passwd", "csv") == ("../../etc/passwd", "csv")
    for bad in ("", "x" * 129, "a\nb"):
        with pytest.raises(InvalidDataset) as info:
            check_name_and_format(bad, "csv")
        assert info.value.data["field"] == "name"


def info(tenant: bytes, content: bytes, size: int, created: int = 1, nodes=("n1",)) -> DatasetInfo:
    return DatasetInfo(tenant, sha(content), "d", "csv", size, [{"name": "a", "type": "BIGINT"}], 3, list(nodes), created)


def test_catalog_rows_usage_and_quota(tmp_path: Path):
    alice, bob = b"a" * 32, b"b" * 32
    catalog = Catalog(duckdb.connect(str(tmp_path / "node.duckdb")), QuotaPolicy(default_bytes=1000, per_tenant={bob: 5000}))
    catalog.add(info(alice, b"one", 600, created=2))
    catalog.add(info(alice, b"zero", 100, created=1))
    assert [r.size for r in catalog.list(alice)] == [100, 600]  # oldest first
    assert catalog.usage(alice) == 700 and catalog.usage(bob) == 0
    with pytest.raises(QuotaExceeded) as exc:
        catalog.add(info(alice, b"two", 301))
    assert exc.value.data == {"used": 700, "limit": 1000, "requested": 301}
    catalog.check_quota(alice, 300)
    with pytest.raises(QuotaExceeded):
        catalog.check_quota(alice, 200, pending=101)
    catalog.add(info(bob, b"one", 600, nodes=("n2",)))  # same content, another tenant: its own row and charge
    assert catalog.usage(bob) == 600 and catalog.holders(sha(b"one")) == ["n1", "n2"]
    again = catalog.add(info(alice, b"one", 600, nodes=("n3",)))
    assert again.nodes == ["n1", "n3"] and catalog.usage(alice) == 700
    got = catalog.require(alice, sha(b"one"))
    assert got.schema == [{"name": "a", "type": "BIGINT"}] and got.row_count == 3 and got.created == 2
    assert catalog.get(bob, sha(b"zero")) is None

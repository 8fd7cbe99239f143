"""`metanode audit export` and `audit query` over a stopped node's store."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import pytest
from receipt_samples import NODE_C, VALID_FIELDS

from node.base.db import NodeDatabaseError, open_node_db
from node.base.merkle import leaf_hash, verify_inclusion
from node.cli.main import main
from node.receipts.audit import AuditError, ExportFilter, export_receipts, run_query
from node.receipts.chain import ReceiptIssuer
from node.receipts.devchain import DevChain, dev_genesis, dev_identities

VALIDATORS = dev_identities(4)
GENESIS = dev_genesis(VALIDATORS)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DevChain]:
    """Blocks 1-4 with 5, 0, 5, 5 receipts, then one logged receipt no block covers."""
    data_dir = tmp_path_factory.mktemp("audit") / "data"
    conn = open_node_db(data_dir)
    chain = DevChain(GENESIS, VALIDATORS, conn)
    issuer = ReceiptIssuer(dev_identities(1, "audit-test-gateway")[0])
    for height in (1, 2, 3, 4):
        receipts = [] if height == 2 else [
            issuer.issue(kind, height=height, subject=s, fields=f) for kind, (s, f) in sorted(VALID_FIELDS.items())
        ]
        chain.add_block(receipts)
    subject, fields = VALID_FIELDS["data.store"]
    chain.log.append_receipts([issuer.issue("data.store", height=5, subject=subject, fields=fields)])
    conn.close()
    return data_dir, chain


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_lists_every_leaf_with_an_anchor_that_proves_it(store, tmp_path: Path) -> None:
    data_dir, chain = store
    out = tmp_path / "all.json"
    assert export_receipts(data_dir, out, "json") == 16
    rows = _rows(out)
    assert [r["log_index"] for r in rows] == list(range(16))
    conn = duckdb.connect()
    from node.receipts.log import ReceiptLog  # the proofs come from a copy of the same log

    conn.execute(f"ATTACH '{data_dir / 'node.duckdb'}' AS node (READ_ONLY)")
    conn.execute("CREATE TABLE receipt_log_nodes AS SELECT * FROM node.receipt_log_nodes")
    conn.execute("CREATE TABLE receipt_envelopes AS SELECT * FROM node.receipt_envelopes")
    log = ReceiptLog(conn)
    heights = {block.height: block for block in chain.blocks}
    for row in rows[:15]:
        block = heights[row["block_height"]]
        assert row["block_hash"] == block.hash.hex() and row["log_size"] == block.header.receipts_size
        assert row["log_root"] == block.header.receipts_root.hex()
        # The anchor is the first block covering the leaf (block 2 added nothing).
        assert row["block_height"] == (1 if row["log_index"] < 5 else 3 if row["log_index"] < 10 else 4)
        proof = log.inclusion_proof(row["log_index"], row["log_size"])
        verify_inclusion(leaf_hash(bytes.fromhex(row["id"])), row["log_index"], row["log_size"], proof,
                         bytes.fromhex(row["log_root"]))
    assert rows[15]["block_height"] is None and rows[15]["log_root"] is None  # not sealed yet
    api_call = rows[0]
    assert api_call["kind"] == "api.call" and api_call["tenant"] == NODE_C.public_key.hex()
    assert json.loads(api_call["fields"])["method"] == "analytics_submit"


def test_export_filters_and_formats(store, tmp_path: Path) -> None:
    data_dir, _ = store
    out = tmp_path / "some.csv"
    assert export_receipts(data_dir, out, "csv", ExportFilter(since=3, until=3, kind="job.exec")) == 1
    [row] = list(csv.DictReader(out.open()))
    assert row["kind"] == "job.exec" and row["block_height"] == "3" and row["log_index"] == "7"
    tenant = NODE_C.public_key.hex()
    assert export_receipts(data_dir, tmp_path / "t.json", "json", ExportFilter(tenant=tenant)) == 3
    assert {r["kind"] for r in _rows(tmp_path / "t.json")} == {"api.call"}
    assert export_receipts(data_dir, tmp_path / "none.json", "json", ExportFilter(tenant="00" * 32)) == 0
    parquet = tmp_path / "all.parquet"
    assert export_receipts(data_dir, parquet, "parquet", ExportFilter(since=4)) == 5
    got = duckdb.connect().execute(f"SELECT count(*), min(block_height) FROM read_parquet('{parquet}')").fetchone()
    assert got == (5, 4)
    with pytest.raises(AuditError, match="--tenant"):
        export_receipts(data_dir, tmp_path / "x.json", "json", ExportFilter(tenant="not hex"))
    with pytest.raises(NodeDatabaseError, match="does not exist"):
        export_receipts(tmp_path / "no-node", tmp_path / "x.json", "json")


def test_query_is_read_only(store) -> None:
    data_dir, _ = store
    result = run_query(data_dir, "SELECT kind, count(*) AS n FROM receipts GROUP BY kind ORDER BY kind")
    assert result.columns == ["kind", "n"] and dict(result.rows)["data.store"] == 4
    raw = run_query(data_dir, "SELECT count(*) FROM receipt_envelopes")
    assert raw.rows == [(16,)]
    refused = {
        "DELETE FROM receipt_envelopes": "only SELECT",
        "SELECT 1; DROP TABLE receipt_envelopes": "exactly one SELECT",
        "CREATE TABLE x AS SELECT 1": "only SELECT",
        "COPY receipt_envelopes TO '/tmp/leak.csv'": "only SELECT",
        "SELECT * FROM read_text('/etc/hostname')": "file system operations are disabled",
        "SELEC 1": "cannot parse",
    }
    for sql, reason in refused.items():
        with pytest.raises(AuditError, match=reason):
            run_query(data_dir, sql)
    assert run_query(data_dir, "SELECT count(*) FROM receipt_envelopes").rows == [(16,)]


def test_cli(store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, _ = store
    out = tmp_path / "cli.parquet"
    main(["audit", "export", "--data-dir", str(data_dir), "--format", "parquet", "--kind", "api.call",
          "--out", str(out)])
    assert capsys.readouterr().out.strip() == f"exported 3 receipts to {out}"
    main(["audit", "query", "--data-dir", str(data_dir), "--format", "csv",
          "SELECT log_index, block_height FROM receipts WHERE log_index IN (0, 15) ORDER BY 1"])
    assert capsys.readouterr().out.splitlines() == ["log_index,block_height", "0,1", "15,"]
    with pytest.raises(SystemExit) as refused:
        main(["audit", "query", "--data-dir", str(data_dir), "DROP TABLE receipt_envelopes"])
    assert refused.value.code == 2 and "only SELECT" in capsys.readouterr().err


def test_a_fetched_log_exports_exactly_what_the_store_does(store: tuple[Path, DevChain], tmp_path: Path) -> None:
    """What `--node` fetches page by page (audit_leaves / audit_anchors pages
    are these same functions) exports byte-identically to `--data-dir`."""
    from node.receipts.audit import FetchedLog, open_audit_db, stored_anchors, stored_leaves

    data_dir, _ = store
    conn = open_audit_db(data_dir)
    try:
        pages = [[row for batch in stored_leaves(conn, start, 4) for row in batch] for start in range(0, 16, 4)]
        fetched = FetchedLog([p for p in pages if p], list(stored_anchors(conn, 1, 2)) + list(stored_anchors(conn, 3)))
    finally:
        conn.close()
    for fmt in ("csv", "json"):
        export_receipts(data_dir, tmp_path / f"local.{fmt}", fmt)
        export_receipts(fetched, tmp_path / f"fetched.{fmt}", fmt)
        assert (tmp_path / f"local.{fmt}").read_bytes() == (tmp_path / f"fetched.{fmt}").read_bytes()
    assert run_query(fetched, "SELECT kind, count(*) AS n FROM receipts GROUP BY kind ORDER BY kind").rows == \
        run_query(data_dir, "SELECT kind, count(*) AS n FROM receipts GROUP BY kind ORDER BY kind").rows


def test_audit_needs_exactly_one_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["audit", "query", "SELECT 1"])
    assert exited.value.code == 2 and "exactly one of --data-dir" in capsys.readouterr().err

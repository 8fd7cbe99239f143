"""`metanode audit query` prints its rows as the CLI's aligned table: a header
and a rule, numbers right-aligned, wide characters and newlines in cells kept
on their row (issue 14: "audit query columns do not line up")."""

from __future__ import annotations

from pathlib import Path

import pytest
from receipt_samples import VALID_FIELDS
from rich.cells import cell_len

from node.base.db import open_node_db
from node.cli.main import main
from node.receipts.chain import ReceiptIssuer
from node.receipts.devchain import DevChain, dev_genesis, dev_identities

VALIDATORS = dev_identities(4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audit-table") / "data"
    conn = open_node_db(path)
    chain = DevChain(dev_genesis(VALIDATORS), VALIDATORS, conn)
    issuer = ReceiptIssuer(dev_identities(1, "audit-table-gateway")[0])
    chain.add_block([issuer.issue(kind, height=1, subject=s, fields=f) for kind, (s, f) in sorted(VALID_FIELDS.items())])
    conn.close()
    return path


def test_query_table_has_a_header_and_aligned_columns(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = ("SELECT kind, count(*) * 1000 AS n, CASE WHEN kind = 'api.call' THEN '🚀 日本' || chr(10) || 'two' ELSE 'x' END AS note "
           "FROM receipts GROUP BY kind ORDER BY kind")
    main(["audit", "query", "--data-dir", str(data_dir), sql])
    lines = capsys.readouterr().out.splitlines()
    kinds = sorted(VALID_FIELDS)
    assert lines[0].split() == ["kind", "n", "note"] and set(lines[1]) == {"-", " "}
    assert [line.split()[0] for line in lines[2:-1]] == kinds and lines[-1] == f"({len(kinds)} rows)"
    assert "🚀 日本\\ntwo" in lines[2]  # the newline escaped: one row, one line
    # n is right-aligned: every number ends where the header's "n" ends; notes start in one column.
    ends = {cell_len(line[:line.index(" 1000") + 5]) for line in lines[2:-1]}
    assert ends == {cell_len(lines[0][:lines[0].index(" n") + 2])}
    starts = {cell_len(line[:line.rindex("  ") + 2]) for line in lines[:-1]}
    assert len(starts) == 1
    main(["audit", "query", "--data-dir", str(data_dir), "--json", "SELECT count(*) AS n FROM receipts"])
    assert capsys.readouterr().out.strip() == '{"n": 5}'

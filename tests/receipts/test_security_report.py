"""node/receipts/security.py's classification of failed executions, the
height range of a time range, and the CLI's time parsing (the report itself
is exercised against a real node in tests/services/test_verify_audit_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.base.db import open_node_db
from node.base.errors import UserError
from node.cli.security import parse_time
from node.receipts.devchain import DevChain, dev_genesis, dev_identities
from node.receipts.security import SIGSYS, HeightRange, chain_findings, exec_finding_kind, resolve_range


def test_failed_executions_are_classified_by_exit_and_reported_error() -> None:
    assert exec_finding_kind(0, None) is None
    assert exec_finding_kind(1, "refused: read_csv reads files outside the job's inputs") == "cage_denials"
    assert exec_finding_kind(-SIGSYS, "killed: killed by seccomp (SIGSYS)") == "cage_denials"
    assert exec_finding_kind(1, "output_limit: output exceeds 64 MB") == "limit_kills"
    assert exec_finding_kind(-9, None) == "limit_kills"
    assert exec_finding_kind(1, "error: BinderException: column x not found") is None  # the job's own error


def test_a_time_range_becomes_the_heights_of_its_blocks(tmp_path: Path) -> None:
    validators = dev_identities(4)
    conn = open_node_db(tmp_path / "data")
    chain = DevChain(dev_genesis(validators), validators, conn)
    for _ in range(3):
        chain.add_block([])
    stamps = [int(ts) for (ts,) in conn.execute("SELECT timestamp_ms FROM chain_blocks ORDER BY height").fetchall()]
    assert resolve_range(conn, since_ms=stamps[1], until_ms=stamps[1]) == HeightRange(2, 2)
    assert resolve_range(conn, since_height=3, since_ms=stamps[0]) == HeightRange(3, None)
    assert resolve_range(conn, until_ms=stamps[0] - 1) == HeightRange(None, -1)  # before the first block: nothing
    empty = chain_findings(conn, HeightRange())  # a chain store without the state tables: no facts, no error
    assert empty["findings"]["cage_denials"] == [] and empty["receipts"] == {}
    conn.close()


def test_times_are_iso_8601_or_epoch_seconds() -> None:
    assert parse_time("2026-01-01T00:00:00Z", "--since") == 1767225600000
    assert parse_time("2026-01-01T01:00:00+01:00", "--since") == 1767225600000
    assert parse_time("2026-01-01", "--since") == 1767225600000  # no zone: UTC
    assert parse_time("1767225600.5", "--until") == 1767225600500
    with pytest.raises(UserError, match="--until 'soon': expected an ISO 8601 time"):
        parse_time("soon", "--until")

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


def test_limit_declines_are_read_from_their_blocks_and_from_a_store_not_yet_migrated() -> None:
    """A job.decline's bytes are read where the chain store keeps them (its
    block); an audit of a data directory a schema 5 node wrote (opened
    read-only, so never migrated) reads them from chain_txs.tx."""
    import duckdb

    from node.base.keys import Identity
    from node.consensus.store import ChainStore
    from node.consensus.tx import sign_tx, tx_hash
    from node.receipts.log import ReceiptLog
    from node.receipts.security import _declined_at_limits
    from tests.consensus.test_store_block_write import append, make_version_5

    node = Identity.from_label("security-decliner")
    job = bytes(range(32))
    decline = sign_tx(node, chain_id="c", nonce=1, tx_type="job.decline",
                      payload={"job": job, "reason": "limit", "detail": "memory_limit: 512 MB"}).encoded
    own_error = sign_tx(node, chain_id="c", nonce=2, tx_type="job.decline",
                        payload={"job": job, "reason": "error", "detail": "error: the job's own"}).encoded
    conn = duckdb.connect()
    store = ChainStore(conn)
    append(store, [sign_tx(node, chain_id="c", nonce=0, tx_type="noop", payload={}).encoded, decline, own_error])
    conn.execute("CREATE TABLE state_rejections (tx_hash BLOB)")
    conn.execute("CREATE TABLE state_receipts (receipt_id BLOB, height BIGINT)")
    ReceiptLog(conn)  # its tables: the finding cites the job's schedule receipts (none here)
    cited: list[bytes] = []

    def findings() -> list[tuple[str | None, int | None, str]]:
        return [(f["tx"], f["height"], f["detail"]) for f in _declined_at_limits(conn, HeightRange(), lambda *a: cited.append(a))]

    expected = [(tx_hash(decline).hex(), 1, "declined (limit): memory_limit: 512 MB")]
    assert findings() == expected
    make_version_5(conn)
    assert findings() == expected

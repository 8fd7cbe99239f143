"""The checkpoint that follows receipt appends on a long receipt log, beside
the same rows in the version 1 tables (receipt ids keyed in one index).

    .venv/bin/python bench/receipt_log_checkpoint.py                   # logs of 100k and 1M receipts
    .venv/bin/python bench/receipt_log_checkpoint.py --stored 4000000
    .venv/bin/python bench/receipt_log_checkpoint.py --smoke           # tiny sizes, for CI

Each log is filled in bulk with SQL (synthetic rows: random ids and hashes,
~300-byte envelopes; the checkpoint's cost depends on how many keys its
indexes hold, not on what the rows mean), checkpointed, then real receipts
are appended through ``ReceiptLog.append_receipts`` in blocks of
``--block-receipts`` and the log checkpointed again: that checkpoint's CPU is
the figure. The baseline writes the same rows to a second database in the
version 1 layout (``receipt_id`` UNIQUE, envelopes keyed by id), where
DuckDB rewrites the whole id index at each checkpoint (DuckDB issue 24848);
the log now keeps ids in segments of 2^20 keys and writes only the newest.
Both run in this process with threads=1, one after the other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402

from node.base.db import checkpoint_node_db, open_node_db, transaction  # noqa: E402
from node.base.keys import Identity  # noqa: E402
from node.receipts.chain import ReceiptIssuer  # noqa: E402
from node.receipts.log import ReceiptLog  # noqa: E402
from node.receipts.log_tables import (  # noqa: E402
    LEVEL_SHIFT,
    SEGMENT_LEAVES,
    create_key_segment,
    key_table,
    segments_spanned,
)

_V1_SCHEMA = (
    f"""CREATE TABLE receipt_log_nodes (node BIGINT PRIMARY KEY, hash BLOB NOT NULL, receipt_id BLOB UNIQUE,
        level UTINYINT AS (node >> {LEVEL_SHIFT}), idx BIGINT AS (node & ((1::BIGINT << {LEVEL_SHIFT}) - 1)))""",
    """CREATE TABLE receipt_envelopes (id BLOB PRIMARY KEY, kind VARCHAR NOT NULL, issuer VARCHAR NOT NULL,
        height BIGINT NOT NULL, subject BLOB NOT NULL, prev BLOB, envelope BLOB NOT NULL)""",
)
_RANDOM_32 = "unhex(md5(random()::VARCHAR) || md5(random()::VARCHAR))"


def _fill(conn: duckdb.DuckDBPyConnection, stored: int, layout: str) -> None:
    """``stored`` synthetic leaves with every complete subtree's row, and their envelopes."""
    with transaction(conn):
        conn.execute("CREATE TEMP TABLE ids AS SELECT i AS leaf, "
                     f"{_RANDOM_32} AS id FROM range(?) t(i)", [stored])
        conn.execute("INSERT INTO receipt_log_nodes (node, hash, receipt_id) "
                     f"SELECT leaf, {_RANDOM_32}, id FROM ids ORDER BY leaf")
        level = 1
        while stored >> level:
            conn.execute("INSERT INTO receipt_log_nodes (node, hash) "
                         f"SELECT (?::BIGINT << {LEVEL_SHIFT}) | i, {_RANDOM_32} FROM range(?) t(i)",
                         [level, stored >> level])
            level += 1
        envelope = f"{_RANDOM_32} || {_RANDOM_32} || repeat('e', 236)::BLOB"
        if layout == "v1":
            conn.execute("INSERT INTO receipt_envelopes SELECT id, 'job.exec', 'issuer', leaf, id, NULL, "
                         f"{envelope} FROM ids ORDER BY leaf")
        else:
            conn.execute("INSERT INTO receipt_envelopes SELECT leaf, id, 'job.exec', 'issuer', leaf, id, NULL, "
                         f"{envelope} FROM ids ORDER BY leaf")
            for segment in range(segments_spanned(stored, SEGMENT_LEAVES)):
                create_key_segment(conn, segment)
                conn.execute(f"INSERT INTO {key_table(segment)} SELECT id, leaf FROM ids WHERE leaf >= ? AND leaf < ? "
                             "ORDER BY leaf", [segment * SEGMENT_LEAVES, (segment + 1) * SEGMENT_LEAVES])
        conn.execute("DROP TABLE ids")


def _checkpoint_cpu(conn: duckdb.DuckDBPyConnection) -> float:
    started = time.process_time()
    checkpoint_node_db(conn)
    return time.process_time() - started


def measure(stored: int, appended: int, block: int, rounds: int) -> dict[str, float | int]:
    issuer = ReceiptIssuer(Identity.from_label("bench-receipt-log"))
    batches = [[issuer.issue("job.exec", height=b + 1, subject=bytes(32),
                             fields={**{name: bytes(32) for name in ("input_root", "code", "policy", "seed",
                                                                          "result", "witness")}, "exit": 0}) for _ in range(block)]
               for b in range(appended // block)]
    figures: dict[str, list[float]] = {"v2": [], "v1": []}
    with tempfile.TemporaryDirectory(prefix="metanode-bench-receipt-log-") as root:
        for layout in ("v2", "v1"):
            directory = Path(root) / layout
            directory.mkdir()
            conn = open_node_db(directory)
            if layout == "v1":
                for statement in _V1_SCHEMA:
                    conn.execute(statement)
            else:
                ReceiptLog(conn)
            _fill(conn, stored, layout)
            checkpoint_node_db(conn)
            log = ReceiptLog(conn) if layout == "v2" else None
            size = stored
            for _ in range(rounds):
                for batch in batches:
                    if log is not None:
                        with transaction(conn):
                            log.append_receipts(batch)
                        log.committed()
                    else:
                        _append_v1(conn, size, batch)
                    size += len(batch)
                figures[layout].append(_checkpoint_cpu(conn))
                batches = [[_fresh(issuer, r) for r in batch] for batch in batches]
            conn.close()
    return {"stored_receipts": stored, "appended_per_checkpoint": appended, "block_receipts": block,
            "checkpoint_cpu_ms": statistics.median(figures["v2"]) * 1e3,
            "v1_checkpoint_cpu_ms": statistics.median(figures["v1"]) * 1e3}


def _fresh(issuer: ReceiptIssuer, receipt):  # type: ignore[no-untyped-def]
    return issuer.issue(receipt.kind, height=receipt.height, subject=receipt.subject, fields=receipt.fields)


def _append_v1(conn: duckdb.DuckDBPyConnection, size: int, batch: list) -> None:  # type: ignore[type-arg]
    """The version 1 writes of a block's receipts: leaves (subtree rows are a
    few percent more and keyed by position either way) and envelopes by id."""
    with transaction(conn):
        conn.execute("INSERT INTO receipt_envelopes SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), "
                     "unnest(?), unnest(?)", [[r.id for r in batch], [r.kind for r in batch],
                                             [r.issuer_node for r in batch], [r.height for r in batch],
                                             [r.subject for r in batch], [r.prev for r in batch],
                                             [r.envelope for r in batch]])
        conn.execute("INSERT INTO receipt_log_nodes (node, hash, receipt_id) SELECT unnest(?), unnest(?), unnest(?)",
                     [list(range(size, size + len(batch))), [r.id for r in batch], [r.id for r in batch]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stored", type=int, action="append", help="receipts in the log before (repeatable)")
    parser.add_argument("--appended", type=int, default=1000, help="receipts appended before each checkpoint")
    parser.add_argument("--block-receipts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="checkpoints measured per size (median)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", action="store_true", help="print only JSON lines")
    args = parser.parse_args()
    sizes = [2_000] if args.smoke else (args.stored or [100_000, 1_000_000])
    appended, rounds = (100, 1) if args.smoke else (args.appended, args.rounds)
    if appended < args.block_receipts or min(sizes) <= 0:
        parser.error("need --appended >= --block-receipts and --stored > 0")
    for stored in sizes:
        result = measure(stored, appended, args.block_receipts, rounds)
        if not args.json:
            print(f"checkpoint after {appended:,} receipts appended to a log of {stored:>9,}: CPU "
                  f"{result['checkpoint_cpu_ms']:8.1f} ms; baseline, ids keyed in one index (version 1) "
                  f"{result['v1_checkpoint_cpu_ms']:8.1f} ms")
        print(json.dumps({"metric": "receipt_log_checkpoint", **result}))


if __name__ == "__main__":
    main()

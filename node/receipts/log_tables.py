"""The receipt log's tables in the node database, and the migration to them.

Three kinds of table (docs/data-dir.md gives them column by column):

* ``receipt_log_nodes``: every complete subtree's hash, keyed by ``node``
  (level and index packed in one BIGINT); level-0 rows are the leaves and
  carry the receipt id.
* ``receipt_envelopes``: the signed envelope of each leaf appended with one,
  keyed by its ``leaf`` position, with the id and the fields audits filter on.
* ``receipt_keys_NNNNNN``: receipt id (primary key) -> leaf, the ids of
  leaves ``[N * 2**20, (N + 1) * 2**20)``.

No table has a key on a receipt id except the key segments. Ids are random
(SHA-256 digests): DuckDB keeps an index whole in memory and, at every
checkpoint, rewrites every part a write changed, and random inserts change
nearly all of it; an index of every id made each checkpoint cost in
proportion to the whole log (298 ms of CPU at 1M receipts; DuckDB issue
24848). Positions grow in order, so their keys change only at the end, and a
segment of ids is written only while its leaves are appended: a checkpoint
rewrites at most one segment's index. Which segment holds a leaf follows from
the leaf alone, so the log's size is all the state the segments have.

Version 1 (before) keyed ``receipt_envelopes`` by id and kept ``receipt_id``
UNIQUE in ``receipt_log_nodes``; :func:`open_tables` migrates it in one
transaction. Envelopes of ids that are not in the log (a crash between the
two writes of an autocommit caller, in version 1) are not carried over: no
proof can be built for them.
"""

from __future__ import annotations

import duckdb
import structlog

from node.base.db import atomic, one_row

# A subtree's row key packs (level, idx) into one BIGINT so that a proof's
# rows come back through the primary-key index in one IN-list query
# (measured: a composite key made DuckDB scan the table). Leaves (level 0)
# have key == index. Logs are limited to 2**56 leaves.
LEVEL_SHIFT = 56
MAX_LEAVES = 1 << LEVEL_SHIFT
SEGMENT_LEAVES = 1 << 20  # a full segment's index is rewritten once (~0.15 s); a lookup costs ~0.08 ms per segment
_KEYS_PREFIX = "receipt_keys_"

log = structlog.get_logger("receipts.log")

_NODES_SHAPE = f"""node BIGINT PRIMARY KEY, hash BLOB NOT NULL, receipt_id BLOB,
    level UTINYINT AS (node >> {LEVEL_SHIFT}), idx BIGINT AS (node & ((1::BIGINT << {LEVEL_SHIFT}) - 1))"""
_ENVELOPES_SHAPE = """leaf BIGINT PRIMARY KEY, id BLOB NOT NULL, kind VARCHAR NOT NULL, issuer VARCHAR NOT NULL,
    height BIGINT NOT NULL, subject BLOB NOT NULL, prev BLOB, envelope BLOB NOT NULL"""
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS receipt_log_nodes ({_NODES_SHAPE})",
    f"CREATE TABLE IF NOT EXISTS receipt_envelopes ({_ENVELOPES_SHAPE})",
)


def key_table(segment: int) -> str:
    return f"{_KEYS_PREFIX}{segment:06d}"


def segment_of(leaf: int, segment_leaves: int) -> int:
    return leaf // segment_leaves


def segments_spanned(leaves: int, segment_leaves: int) -> int:
    """How many key segments a log of ``leaves`` leaves has."""
    return -(-leaves // segment_leaves)


def create_key_segment(conn: duckdb.DuckDBPyConnection, segment: int) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {key_table(segment)} (id BLOB PRIMARY KEY, leaf BIGINT NOT NULL)")


def open_tables(conn: duckdb.DuckDBPyConnection, segment_leaves: int) -> None:
    """Create the tables if missing; migrate version 1 tables. Atomic: in a
    transaction of its own, or in the caller's if one is open."""
    with atomic(conn):
        for statement in _SCHEMA:
            conn.execute(statement)
        if "leaf" not in _columns(conn, "receipt_envelopes"):
            _migrate_from_v1(conn, segment_leaves)


def _columns(conn: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {str(row[0]) for row in conn.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND database_name = current_database()",
        [table]).fetchall()}


def _migrate_from_v1(conn: duckdb.DuckDBPyConnection, segment_leaves: int) -> None:
    leaves = int(one_row(conn.execute("SELECT count(*) FROM receipt_log_nodes WHERE node < ?", [MAX_LEAVES]))[0])
    conn.execute(f"CREATE TABLE receipt_log_nodes_v2 ({_NODES_SHAPE})")
    conn.execute("INSERT INTO receipt_log_nodes_v2 (node, hash, receipt_id) "
                 "SELECT node, hash, receipt_id FROM receipt_log_nodes ORDER BY node")
    conn.execute(f"CREATE TABLE receipt_envelopes_v2 ({_ENVELOPES_SHAPE})")
    conn.execute("INSERT INTO receipt_envelopes_v2 SELECT n.node, e.id, e.kind, e.issuer, e.height, e.subject, e.prev, "
                 "e.envelope FROM receipt_envelopes e JOIN receipt_log_nodes n ON n.receipt_id = e.id "
                 "WHERE n.node < ? ORDER BY n.node", [MAX_LEAVES])
    dropped = int(one_row(conn.execute("SELECT (SELECT count(*) FROM receipt_envelopes) - "
                                       "(SELECT count(*) FROM receipt_envelopes_v2)"))[0])
    for table in ("receipt_log_nodes", "receipt_envelopes"):
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE {table}_v2 RENAME TO {table}")
    segments = segments_spanned(leaves, segment_leaves)
    for segment in range(segments):
        create_key_segment(conn, segment)
        conn.execute(f"INSERT INTO {key_table(segment)} SELECT receipt_id, node FROM receipt_log_nodes "
                     "WHERE node >= ? AND node < ? ORDER BY node",
                     [segment * segment_leaves, min((segment + 1) * segment_leaves, leaves)])
    log.info("receipt log migrated to version 2", leaves=leaves, key_segments=segments,
             unlogged_envelopes_dropped=dropped)


def index_lookup_sql(segments: int) -> str:
    """The leaf of the id ``$1``, newest segment first."""
    parts = [f"(SELECT leaf FROM {key_table(n)} WHERE id = $1)" for n in reversed(range(segments))]
    return f"SELECT leaf FROM ({' UNION ALL '.join(parts)}) LIMIT 1"


def present_sql(segments: int, count: int) -> str:
    """The ids among ``$1..$count`` held by any segment (an IN list is
    answered through each segment's key, up to DuckDB's 2048 values)."""
    marks = ", ".join(f"${i}" for i in range(1, count + 1))
    return " UNION ALL ".join(f"SELECT id FROM {key_table(n)} WHERE id IN ({marks})" for n in range(segments))

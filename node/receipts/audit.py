"""The audit trail: export the receipt log with its anchors, and read-only SQL.

Both work either on a data directory's ``node.duckdb`` opened read-only (a
running daemon holds DuckDB's lock on that file, so stop it first), or on a
running node over JSON-RPC (``audit_leaves``, ``audit_anchors``): the leaves
and anchors are copied page by page into a local in-memory DuckDB and the
same export and SQL run there, on the auditor's machine, never on the node.

Every exported row (and every row of the ``receipts`` table that
:func:`run_query` offers) is one leaf of the receipt log, in log order:

================  =============================================================
column            meaning
================  =============================================================
``log_index``     position in the global receipt log
``id``            receipt id (hex)
``kind``          receipt kind (``api.call``, ``job.exec``...)
``issuer``        issuer's peer id; ``issuer_key`` its public key (hex)
``height``        the height the issuer signed into the receipt
``subject``       what the receipt is about (hex; see node.receipts.schema)
``prev``          the issuer's previous receipt id (hex) or null
``tenant``        the tenant key (hex) of ``api.call`` receipts, else null
``fields``        the kind-specific fields as JSON (bytes as hex)
``block_height``  the anchor: the first block whose header covers this leaf
``block_hash``    that block's hash (hex)
``log_size``      the log size sealed in that header (the proof's tree size)
``log_root``      the log root sealed in that header (the proof's root)
``envelope``      the signed envelope (hex), to re-verify the signature
================  =============================================================

The anchor columns are null for a leaf no committed block covers yet.
``--since``/``--until`` filter on ``block_height`` (inclusive), so they
leave out such leaves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from node.base.db import open_node_db
from node.base.errors import EXIT_USAGE, UserError
from node.base.verification import ReceiptError
from node.consensus.block import Block, BlockError
from node.receipts.api import jsonable
from node.receipts.envelope import decode_receipt
from node.receipts.log_tables import LEVEL_SHIFT

FORMATS = ("json", "csv", "parquet")
RECEIPTS_TABLE = "receipts"
MAX_SQL_BYTES = 64 * 1024
_CHUNK = 2_000
_COPY_OPTIONS = {"json": "FORMAT json", "csv": "FORMAT csv, HEADER true", "parquet": "FORMAT parquet"}
_LOG_TABLES = ("receipt_envelopes", "receipt_log_nodes")

_COLUMNS = (
    "log_index BIGINT, id VARCHAR, kind VARCHAR, issuer VARCHAR, issuer_key VARCHAR, height BIGINT, "
    "subject VARCHAR, prev VARCHAR, tenant VARCHAR, fields VARCHAR, envelope VARCHAR"
)


class AuditError(UserError):
    """An audit command could not run: no such database, bad filter, bad SQL."""


@dataclass(frozen=True)
class ExportFilter:
    """Which leaves to export; None means no bound."""

    since: int | None = None  # lowest sealing block height
    until: int | None = None  # highest sealing block height
    kind: str | None = None
    tenant: str | None = None  # hex public key of an api.call tenant

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            clauses.append("block_height >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("block_height <= ?")
            params.append(self.until)
        if self.kind is not None:
            clauses.append("kind = ?")
            params.append(self.kind)
        if self.tenant is not None:
            clauses.append("tenant = ?")
            params.append(self.tenant.lower())
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def open_audit_db(data_dir: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """The node database of ``data_dir``, read-only, with the receipt tables
    present (NodeDatabaseError/AuditError otherwise)."""
    conn = open_node_db(data_dir, read_only=True)
    present = {row[0] for row in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    missing = [table for table in _LOG_TABLES if table not in present]
    if missing:
        conn.close()
        raise AuditError(f"{data_dir}: the node database has no receipt log yet (no table {missing[0]})")
    conn.execute("SET threads = 1")
    return conn


def _has_table(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()
    return bool(row and row[0])


Anchor = tuple[int, str, int, str]  # (height, block hash, receipts_size, receipts_root)


def stored_anchors(conn: duckdb.DuckDBPyConnection, start_height: int = 0, limit: int | None = None) -> Iterator[Anchor]:
    """(height, hash, receipts_size, receipts_root) of the stored blocks from ``start_height``."""
    if not _has_table(conn, "chain_blocks"):
        return
    cursor = conn.cursor()
    cursor.execute("SELECT height, block FROM chain_blocks WHERE height >= ? ORDER BY height"
                   + ("" if limit is None else f" LIMIT {int(limit)}"), [start_height])
    while rows := cursor.fetchmany(256):
        for height, raw in rows:
            try:
                header = Block.decode(bytes(raw)).header
            except BlockError as exc:
                raise AuditError(f"stored block {height} does not decode: {exc}") from None
            yield header.height, header.hash.hex(), header.receipts_size, header.receipts_root.hex()


def stored_leaves(conn: duckdb.DuckDBPyConnection, start: int = 0, limit: int | None = None) -> Iterator[list[tuple[int, bytes]]]:
    """Batches of (log index, envelope) of the log's leaves from ``start``, in log order."""
    cursor = conn.cursor()
    cursor.execute(
        "SELECT n.node, e.envelope FROM receipt_log_nodes n JOIN receipt_envelopes e ON e.id = n.receipt_id "
        f"WHERE n.node >= ? AND n.node < (1::BIGINT << {LEVEL_SHIFT}) ORDER BY n.node"
        + ("" if limit is None else f" LIMIT {int(limit)}"), [start]
    )
    while rows := cursor.fetchmany(_CHUNK):
        yield [(int(index), bytes(raw)) for index, raw in rows]


def _decoded_rows(leaves: Iterator[list[tuple[int, bytes]]]) -> Iterator[list[tuple[Any, ...]]]:
    for rows in leaves:
        batch = []
        for index, raw in rows:
            try:
                receipt = decode_receipt(bytes(raw))
            except ReceiptError as exc:
                raise AuditError(f"stored receipt at log index {index} does not decode: {exc}") from None
            fields = receipt.fields
            tenant = fields["tenant"].hex() if receipt.kind == "api.call" else None
            batch.append((
                int(index), receipt.id.hex(), receipt.kind, receipt.issuer_node, receipt.issuer_key.hex(),
                receipt.height, receipt.subject.hex(), None if receipt.prev is None else receipt.prev.hex(),
                tenant, json.dumps(jsonable(fields), sort_keys=True, separators=(",", ":")), receipt.envelope.hex(),
            ))
        yield batch


def build_receipts_table(conn: duckdb.DuckDBPyConnection, name: str = RECEIPTS_TABLE, *,
                         leaves: Iterator[list[tuple[int, bytes]]] | None = None,
                         anchors: Iterator[Anchor] | None = None) -> int:
    """Create the temporary table ``name`` of decoded, anchored log leaves
    (columns in the module docstring); returns its row count. The leaves and
    anchors come from ``conn``'s own node tables unless given (a remote node's)."""
    conn.execute("CREATE OR REPLACE TEMP TABLE audit_leaves (" + _COLUMNS + ")")
    for rows in _decoded_rows(stored_leaves(conn) if leaves is None else leaves):
        columns = list(zip(*rows))
        conn.execute(
            "INSERT INTO audit_leaves SELECT " + ", ".join("unnest(?)" for _ in columns),
            [list(c) for c in columns],
        )
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE audit_blocks "
        "(height BIGINT, hash VARCHAR, size BIGINT, root VARCHAR)"
    )
    batch: list[tuple[int, str, int, str]] = []
    for anchor in (stored_anchors(conn) if anchors is None else anchors):
        batch.append(anchor)
        if len(batch) >= _CHUNK:
            _insert_anchors(conn, batch)
            batch = []
    _insert_anchors(conn, batch)
    # The first block to reach each log size is the one that sealed the
    # leaves below it; later blocks with the same size sealed nothing new.
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE "{name}" AS
        WITH anchors AS (
            SELECT size, min(height) AS height, arg_min(hash, height) AS hash, arg_min(root, height) AS root
            FROM audit_blocks WHERE size > 0 GROUP BY size
        )
        SELECT l.log_index, l.id, l.kind, l.issuer, l.issuer_key, l.height, l.subject, l.prev, l.tenant,
               l.fields, a.height AS block_height, a.hash AS block_hash, a.size AS log_size,
               a.root AS log_root, l.envelope
        FROM audit_leaves l ASOF LEFT JOIN anchors a ON l.log_index < a.size
        ORDER BY l.log_index
    """)
    conn.execute("DROP TABLE audit_leaves")
    conn.execute("DROP TABLE audit_blocks")
    row = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()
    return int(row[0]) if row else 0


def _insert_anchors(conn: duckdb.DuckDBPyConnection, batch: list[tuple[int, str, int, str]]) -> None:
    if batch:
        columns = list(zip(*batch))
        conn.execute("INSERT INTO audit_blocks SELECT unnest(?), unnest(?), unnest(?), unnest(?)",
                     [list(c) for c in columns])


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class FetchedLog:
    """A running node's log leaves and block anchors, fetched over JSON-RPC
    (node/receipts/audit_remote.py); audited in a local in-memory DuckDB."""

    leaves: list[list[tuple[int, bytes]]]
    anchors: list[Anchor]


AuditSource = str | os.PathLike[str] | FetchedLog


def _open_source(source: AuditSource, name: str = RECEIPTS_TABLE, *, build: bool = True) -> duckdb.DuckDBPyConnection:
    """A connection with the ``receipts`` table built (when ``build``)."""
    if isinstance(source, FetchedLog):
        conn = duckdb.connect(":memory:")
        conn.execute("SET threads = 1")
        build_receipts_table(conn, name, leaves=iter(source.leaves), anchors=iter(source.anchors))
        return conn
    conn = open_audit_db(source)
    if build:
        try:
            build_receipts_table(conn, name)
        except BaseException:
            conn.close()
            raise
    return conn


def export_receipts(
    data_dir: AuditSource, out: str | os.PathLike[str], fmt: str, selection: ExportFilter = ExportFilter()
) -> int:
    """Write the selected log leaves (in log order) to ``out`` as ``fmt``
    (json: one object per line; csv with a header; parquet). Returns the
    number of rows written."""
    if fmt not in FORMATS:
        raise AuditError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}", exit_code=EXIT_USAGE)
    for bound in ("since", "until"):
        value = getattr(selection, bound)
        if value is not None and value < 0:
            raise AuditError(f"--{bound} must be a height >= 0", exit_code=EXIT_USAGE)
    if selection.tenant is not None:
        try:
            bytes.fromhex(selection.tenant)
        except ValueError:
            raise AuditError(f"--tenant {selection.tenant!r}: expected a hex public key", exit_code=EXIT_USAGE) from None
    target = Path(out)
    if not target.parent.is_dir():
        raise AuditError(f"--out {out}: directory {target.parent} does not exist", exit_code=EXIT_USAGE)
    conn = _open_source(data_dir)
    try:
        where, params = selection.where()
        conn.execute(f"CREATE TEMP TABLE audit_export AS SELECT * FROM {RECEIPTS_TABLE}{where} ORDER BY log_index",
                     params)
        row = conn.execute("SELECT count(*) FROM audit_export").fetchone()
        conn.execute(f"COPY audit_export TO {_sql_string(str(target))} ({_COPY_OPTIONS[fmt]})")
    except duckdb.Error as exc:
        raise AuditError(f"export failed: {str(exc).splitlines()[0]}") from None
    finally:
        conn.close()
    return int(row[0]) if row else 0


# -- read-only SQL ---------------------------------------------------------------
def check_select(sql: str) -> None:
    """Refuse anything but exactly one SELECT (DuckDB's own parse decides)."""
    if not isinstance(sql, str) or not sql.strip():
        raise AuditError("the SQL text is empty", exit_code=EXIT_USAGE)
    if len(sql.encode()) > MAX_SQL_BYTES:
        raise AuditError(f"the SQL text exceeds {MAX_SQL_BYTES} bytes", exit_code=EXIT_USAGE)
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise AuditError(f"cannot parse SQL: {str(exc).strip().splitlines()[0]}", exit_code=EXIT_USAGE) from None
    if len(statements) != 1:
        raise AuditError(f"exactly one SELECT statement is allowed, got {len(statements)} statements", exit_code=EXIT_USAGE)
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind != "SELECT":
        raise AuditError(f"only SELECT statements are allowed, got {kind}", exit_code=EXIT_USAGE)


def _mentions_table(sql: str, name: str) -> bool:
    """Whether the parsed query reads a table called ``name``."""
    try:
        row = duckdb.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
        if row is None:
            return True  # as below: cannot tell
        tree = json.loads(row[0])
    except (duckdb.Error, TypeError, ValueError):
        return True  # cannot tell: build it, the query itself will say what is wrong
    stack: list[Any] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "BASE_TABLE" and item.get("table_name") == name:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def run_query(data_dir: AuditSource, sql: str, *, max_rows: int | None = None) -> QueryResult:
    """Run one SELECT over a node database opened read-only, with external
    file access disabled. Besides the node's own tables it may read
    ``receipts``: the decoded, anchored log (columns as the export). Over a
    :class:`FetchedLog` only ``receipts`` exists."""
    check_select(sql)
    conn = _open_source(data_dir, build=isinstance(data_dir, FetchedLog) or _mentions_table(sql, RECEIPTS_TABLE))
    try:
        conn.execute("SET enable_external_access = false")
        conn.execute("SET lock_configuration = true")
        cursor = conn.execute(sql)
        columns = [d[0] for d in cursor.description or []]
        rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows)
    except duckdb.Error as exc:
        raise AuditError(f"query failed: {str(exc).strip().splitlines()[0]}") from None
    finally:
        conn.close()
    return QueryResult(columns, [tuple(bytes(v).hex() if isinstance(v, (bytes, bytearray)) else v for v in row)
                                 for row in rows])

"""The dataset catalog (DuckDB table ``storage_catalog``) and per-tenant quotas.

Each row is one tenant's dataset: (tenant, digest) with its name, format,
size, column schema and row count as DuckDB reads them, the storage nodes
that hold it, and a creation mark (height or time) given by the caller.
The same content stored by two tenants is one blob and two rows; each
tenant's quota is charged for it.

:func:`inspect_dataset` reads the schema of untrusted content in a
short-lived DuckDB connection that can open that one file and nothing else
(single thread, bounded memory, no extensions, configuration locked).
"""

from __future__ import annotations

import builtins
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from node.roles.storage.errors import DatasetNotFound, DatasetUnreadable, InvalidDataset, QuotaExceeded

FORMATS = ("csv", "parquet")
MAX_NAME = 128  # as dataset.register on chain
SCHEMA_SAMPLE_ROWS = 2048  # rows DuckDB sniffs to infer CSV column types
INSPECT_MEMORY_MB = 256
MAX_COLUMNS = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_TABLE = """CREATE TABLE IF NOT EXISTS storage_catalog (
    tenant BLOB NOT NULL,
    digest BLOB NOT NULL,
    name VARCHAR NOT NULL,
    format VARCHAR NOT NULL,
    size BIGINT NOT NULL,
    schema_json VARCHAR NOT NULL,
    row_count BIGINT NOT NULL,
    nodes_json VARCHAR NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (tenant, digest)
)"""


def check_name_and_format(name: Any, fmt: Any) -> tuple[str, str]:
    """The rules ``dataset.register`` applies on chain, checked before upload."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or _CONTROL.search(name):
        raise InvalidDataset(f"name must be 1-{MAX_NAME} characters without control characters", field="name")
    if fmt not in FORMATS:
        raise InvalidDataset(f"format must be one of {', '.join(FORMATS)}", field="format", value=str(fmt)[:32])
    return name, fmt


@dataclass(frozen=True)
class DatasetInfo:
    """One catalog row."""

    tenant: bytes
    digest: bytes
    name: str
    format: str
    size: int
    schema: list[dict[str, str]]  # [{"name", "type"}] in column order
    row_count: int
    nodes: list[str] = field(default_factory=list)  # peer ids holding the blob
    created: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant.hex(), "digest": self.digest.hex(), "name": self.name, "format": self.format,
            "size": self.size, "schema": self.schema, "row_count": self.row_count, "nodes": self.nodes,
            "created": self.created,
        }


def _short(exc: BaseException, path: Path) -> str:
    """DuckDB's first line, without the node's file path."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace(str(path), "<dataset>")[:300]


def inspect_dataset(path: Path, fmt: str, *, sample_rows: int = SCHEMA_SAMPLE_ROWS,
                    memory_mb: int = INSPECT_MEMORY_MB) -> tuple[list[dict[str, str]], int]:
    """Column schema and row count of the file at ``path`` read as ``fmt``.

    Raises DatasetUnreadable with DuckDB's reason (file path removed) when
    the content is not valid ``fmt``. Blocking: run it in a worker thread."""
    if fmt not in FORMATS:
        raise InvalidDataset(f"format must be one of {', '.join(FORMATS)}", field="format")
    con = duckdb.connect(":memory:", config={"threads": 1})
    try:
        for statement, value in (
            ("SET allowed_paths = $v", [str(path)]),
            ("SET autoinstall_known_extensions = false", None),
            ("SET autoload_known_extensions = false", None),
            (f"SET memory_limit = '{int(memory_mb)}MB'", None),
            ("SET temp_directory = ''", None),
            ("SET enable_external_access = false", None),
            ("SET lock_configuration = true", None),
        ):
            con.execute(statement, {"v": value} if value is not None else None)
        source = (f"read_csv($p, sample_size = {int(sample_rows)})" if fmt == "csv" else "read_parquet($p)")
        try:
            described = con.execute(f"DESCRIBE SELECT * FROM {source}", {"p": str(path)}).fetchall()
            if len(described) > MAX_COLUMNS:
                raise DatasetUnreadable(f"more than {MAX_COLUMNS} columns", format=fmt)
            row = con.execute(f"SELECT count(*) FROM {source}", {"p": str(path)}).fetchone()
        except duckdb.Error as exc:
            raise DatasetUnreadable(f"not a readable {fmt} file: {_short(exc, path)}", format=fmt) from None
        schema = [{"name": str(r[0]), "type": str(r[1])} for r in described]
        return schema, int(row[0]) if row else 0
    finally:
        con.close()


@dataclass(frozen=True)
class QuotaPolicy:
    """Bytes each tenant may store; ``per_tenant`` overrides by public key."""

    default_bytes: int = 1024 * 1024 * 1024
    per_tenant: dict[bytes, int] = field(default_factory=dict)

    def limit_for(self, tenant: bytes) -> int:
        return self.per_tenant.get(tenant, self.default_bytes)


class Catalog:
    """The ``storage_catalog`` table in the node database."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, quotas: QuotaPolicy = QuotaPolicy()) -> None:
        self.conn = conn
        self.quotas = quotas
        conn.execute(_TABLE)

    def usage(self, tenant: bytes) -> int:
        row = self.conn.execute("SELECT coalesce(sum(size), 0) FROM storage_catalog WHERE tenant = ?", [tenant]).fetchone()
        return int(row[0]) if row else 0

    def check_quota(self, tenant: bytes, extra: int, *, pending: int = 0) -> None:
        """Raise QuotaExceeded if ``tenant`` cannot store ``extra`` more bytes
        (``pending``: bytes of its uploads still in progress)."""
        used = self.usage(tenant) + pending
        limit = self.quotas.limit_for(tenant)
        if used + extra > limit:
            raise QuotaExceeded(
                f"tenant quota exceeded: {used} of {limit} bytes used, {extra} more requested",
                used=used, limit=limit, requested=extra,
            )

    def get(self, tenant: bytes, digest: bytes) -> DatasetInfo | None:
        row = self.conn.execute(
            "SELECT tenant, digest, name, format, size, schema_json, row_count, nodes_json, created "
            "FROM storage_catalog WHERE tenant = ? AND digest = ?", [tenant, digest]).fetchone()
        return None if row is None else self._info(row)

    def require(self, tenant: bytes, digest: bytes) -> DatasetInfo:
        info = self.get(tenant, digest)
        if info is None:
            raise DatasetNotFound(f"dataset {digest.hex()} is not in this tenant's catalog", digest=digest.hex())
        return info

    def list(self, tenant: bytes, *, limit: int = 100, offset: int = 0) -> list[DatasetInfo]:
        """A tenant's datasets, oldest first (ties by digest)."""
        rows = self.conn.execute(
            "SELECT tenant, digest, name, format, size, schema_json, row_count, nodes_json, created "
            "FROM storage_catalog WHERE tenant = ? ORDER BY created, digest LIMIT ? OFFSET ?",
            [tenant, limit, offset]).fetchall()
        return [self._info(r) for r in rows]

    def holders(self, digest: bytes) -> builtins.list[str]:
        """Every storage node any tenant's row says holds ``digest``."""
        rows = self.conn.execute("SELECT nodes_json FROM storage_catalog WHERE digest = ?", [digest]).fetchall()
        return sorted({node for (nodes,) in rows for node in json.loads(nodes)})

    def add(self, info: DatasetInfo) -> DatasetInfo:
        """Record ``info``; the same (tenant, digest) again keeps the first row
        (its name and creation mark) and merges the node lists."""
        existing = self.get(info.tenant, info.digest)
        if existing is not None:
            nodes = sorted(set(existing.nodes) | set(info.nodes))
            self.conn.execute("UPDATE storage_catalog SET nodes_json = ? WHERE tenant = ? AND digest = ?",
                              [json.dumps(nodes), info.tenant, info.digest])
            return self.require(info.tenant, info.digest)
        self.check_quota(info.tenant, info.size)
        self.conn.execute(
            "INSERT INTO storage_catalog VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [info.tenant, info.digest, info.name, info.format, info.size, json.dumps(info.schema),
             info.row_count, json.dumps(sorted(info.nodes)), info.created])
        return self.require(info.tenant, info.digest)

    @staticmethod
    def _info(row: Any) -> DatasetInfo:
        return DatasetInfo(bytes(row[0]), bytes(row[1]), row[2], row[3], int(row[4]), json.loads(row[5]),
                           int(row[6]), json.loads(row[7]), int(row[8]))


_HOLDINGS_TABLE = """CREATE TABLE IF NOT EXISTS storage_holdings (
    digest BLOB PRIMARY KEY,
    size BIGINT NOT NULL,
    since BIGINT NOT NULL
)"""


class Holdings:
    """The blobs this node holds as a storage replica (``storage_holdings``).

    A blob becomes a holding when this node takes it as a replica: a dataset
    uploaded here, or a blob a peer pushed here (which then counts this node
    among the holders). Copies fetched only as a processing node's inputs are a
    cache, not holdings. The repair loop keeps every holding present and
    verified, fetching it again when it is missing or quarantined.
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        conn.execute(_HOLDINGS_TABLE)

    def hold(self, digest: bytes, size: int, since: int) -> None:
        """Record a holding (the first record of a digest is kept)."""
        self.conn.execute("INSERT INTO storage_holdings VALUES (?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                          [digest, size, since])

    def release(self, digest: bytes) -> None:
        self.conn.execute("DELETE FROM storage_holdings WHERE digest = ?", [digest])

    def all(self) -> builtins.list[tuple[bytes, int]]:
        """(digest, size) of every holding, in digest order."""
        rows = self.conn.execute("SELECT digest, size FROM storage_holdings ORDER BY digest").fetchall()
        return [(bytes(d), int(size)) for d, size in rows]

    def adopt_catalog(self, node_id: str, since: int) -> int:
        """Hold every catalogued blob whose row names this node as a holder (a data
        directory from before holdings were recorded); returns how many were added."""
        before = self.count()
        for digest, size, nodes in self.conn.execute(
                "SELECT digest, max(size), list(nodes_json) FROM storage_catalog GROUP BY digest ORDER BY digest").fetchall():
            if any(node_id in json.loads(text) for text in nodes):
                self.hold(bytes(digest), int(size), since)
        return self.count() - before

    def count(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM storage_holdings").fetchone()
        return int(row[0]) if row else 0

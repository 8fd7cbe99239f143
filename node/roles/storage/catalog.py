"""The dataset catalog (DuckDB table ``storage_catalog``) and per-tenant quotas.

Each row is one tenant's dataset: (tenant, digest) with its name, format,
size, column schema (name, type, nulls) and row count as the cage reads
them, the storage nodes that hold it, a creation mark (height or time)
given by the caller, the SHA-256 of the file the tenant uploaded
(``source_digest``: the digest itself unless bad rows were skipped and the
good ones re-encoded), how many rows were skipped, and the id of the latest
``data.store`` receipt for it. The same content stored by two tenants is one
blob and two rows; each tenant's quota is charged for it. The columns are
documented in docs/storage.md.

A data directory from before ``source_digest``, ``skipped_rows`` and
``receipt_id`` existed is migrated when the catalog opens (the columns are
added; old rows read as source = digest, 0 skipped, no receipt id).

What an upload holds is checked by node/roles/storage/ingest.py.
"""

from __future__ import annotations

import builtins
import json
import re
from dataclasses import dataclass, field
from typing import Any

import duckdb

from node.cage.inputs import FORMATS
from node.roles.storage.errors import DatasetNotFound, InvalidDataset, QuotaExceeded
from node.roles.storage.ingest import INSPECT_MEMORY_MB, MAX_COLUMNS, inspect_dataset

__all__ = ["FORMATS", "INSPECT_MEMORY_MB", "MAX_COLUMNS", "Catalog", "DatasetInfo", "Holdings", "QuotaPolicy",
           "check_name_and_format", "inspect_dataset"]

MAX_NAME = 128  # as dataset.register on chain
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
# Columns added after the first release: added to an older table when it opens.
_ADDED_COLUMNS = (
    "ALTER TABLE storage_catalog ADD COLUMN IF NOT EXISTS source_digest BLOB",
    "ALTER TABLE storage_catalog ADD COLUMN IF NOT EXISTS skipped_rows BIGINT DEFAULT 0",
    "ALTER TABLE storage_catalog ADD COLUMN IF NOT EXISTS receipt_id BLOB",
)
_COLUMNS = ("tenant, digest, name, format, size, schema_json, row_count, nodes_json, created, "
            "coalesce(source_digest, digest), coalesce(skipped_rows, 0), receipt_id")


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
    schema: list[dict[str, Any]]  # [{"name", "type", "nulls"}] in column order ("nulls" absent in old rows)
    row_count: int
    nodes: list[str] = field(default_factory=list)  # peer ids holding the blob
    created: int = 0
    source_digest: bytes | None = None  # SHA-256 of the uploaded file; None: the digest itself
    skipped_rows: int = 0  # bad rows left out (on_bad_rows=skip)
    receipt_id: bytes | None = None  # the latest data.store receipt for (tenant, digest)

    @property
    def source(self) -> bytes:
        return self.digest if self.source_digest is None else self.source_digest

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant.hex(), "digest": self.digest.hex(), "name": self.name, "format": self.format,
            "size": self.size, "schema": self.schema, "row_count": self.row_count, "skipped_rows": self.skipped_rows,
            "source_digest": self.source.hex(), "nodes": self.nodes, "created": self.created,
            "receipt_id": None if self.receipt_id is None else self.receipt_id.hex(),
        }


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
        for statement in _ADDED_COLUMNS:
            conn.execute(statement)

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
            f"SELECT {_COLUMNS} FROM storage_catalog WHERE tenant = ? AND digest = ?", [tenant, digest]).fetchone()
        return None if row is None else self._info(row)

    def find_source(self, tenant: bytes, source: bytes) -> builtins.list[DatasetInfo]:
        """``tenant``'s rows stored from an upload whose bytes hash to
        ``source``: the row of those very bytes first, then rows of their good
        rows (skipped bad ones), oldest first."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM storage_catalog WHERE tenant = ? AND coalesce(source_digest, digest) = ? "
            "ORDER BY digest <> ?, created, digest", [tenant, source, source]).fetchall()
        return [self._info(r) for r in rows]

    def set_receipt(self, tenant: bytes, digest: bytes, receipt_id: bytes) -> None:
        """Record ``receipt_id`` as the latest data.store receipt of the row."""
        self.conn.execute("UPDATE storage_catalog SET receipt_id = ? WHERE tenant = ? AND digest = ?",
                          [receipt_id, tenant, digest])

    def set_nodes(self, tenant: bytes, digest: bytes, nodes: builtins.list[str]) -> None:
        self.conn.execute("UPDATE storage_catalog SET nodes_json = ? WHERE tenant = ? AND digest = ?",
                          [json.dumps(sorted(set(nodes))), tenant, digest])

    def require(self, tenant: bytes, digest: bytes) -> DatasetInfo:
        info = self.get(tenant, digest)
        if info is None:
            raise DatasetNotFound(f"dataset {digest.hex()} is not in this tenant's catalog", digest=digest.hex())
        return info

    def list(self, tenant: bytes, *, limit: int = 100, offset: int = 0) -> list[DatasetInfo]:
        """A tenant's datasets, oldest first (ties by digest)."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM storage_catalog WHERE tenant = ? ORDER BY created, digest LIMIT ? OFFSET ?",
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
            "INSERT INTO storage_catalog (tenant, digest, name, format, size, schema_json, row_count, nodes_json, "
            "created, source_digest, skipped_rows, receipt_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [info.tenant, info.digest, info.name, info.format, info.size, json.dumps(info.schema),
             info.row_count, json.dumps(sorted(info.nodes)), info.created, info.source, info.skipped_rows,
             info.receipt_id])
        return self.require(info.tenant, info.digest)

    @staticmethod
    def _info(row: Any) -> DatasetInfo:
        return DatasetInfo(bytes(row[0]), bytes(row[1]), row[2], row[3], int(row[4]), json.loads(row[5]),
                           int(row[6]), json.loads(row[7]), int(row[8]), bytes(row[9]), int(row[10]),
                           None if row[11] is None else bytes(row[11]))


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

"""The storage service: blobs, catalog and replication, composed for the daemon.

``store_dataset`` writes a tenant's content locally (quota checked as the
bytes arrive), reads its schema with DuckDB, pushes it to other storage
nodes until ``replicas`` nodes hold it, records it in the catalog and
returns the catalog row; :meth:`receipt_fields` gives the ``data.store``
receipt body for the caller to sign. ``ensure_verified`` gives the
processing service a verified copy of an input (the local one re-hashed,
else fetched). Blobs taken as a replica (uploads, pushes from peers) are
recorded as holdings, which :class:`RepairLoop` (repair.py) keeps present
and verified.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import Any

import structlog
import trio

from node.roles.storage.blobstore import BlobStore, BlobWriter
from node.roles.storage.catalog import Catalog, DatasetInfo, Holdings, check_name_and_format, inspect_dataset
from node.roles.storage.errors import BlobCorrupt, BlobNotFound, BlobTransferError, ReplicationFailed
from node.roles.storage.protocol import BlobClient, BlobServer, PushPolicy, PutRequest
from node.roles.storage.repair import DEFAULT_REPAIR, RepairLoop, RepairSettings

log = structlog.get_logger("metanode.storage")

DEFAULT_REPLICAS = 2


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class StorageService:
    """Holds a :class:`BlobStore`, a :class:`Catalog` and a :class:`BlobClient`.

    ``node_id``: this node's peer id. ``storage_peers``: returns the other
    storage nodes to replicate to (the lead passes those registered on
    chain). ``clock``: the creation mark of new catalog rows (block height
    or milliseconds; wall-clock milliseconds by default). ``accept_push``:
    which peers may push blobs here (the lead should admit registered
    storage and gateway nodes only); None admits any peer. ``repair``: the
    replica repair loop's budgets (its ``run`` is started by the storage role).
    """

    def __init__(self, store: BlobStore, catalog: Catalog, client: BlobClient | None, *, node_id: str,
                 replicas: int = DEFAULT_REPLICAS, storage_peers: Callable[[], Sequence[str]] = lambda: (),
                 clock: Callable[[], int] = _now_ms, accept_push: PushPolicy | None = None,
                 repair: RepairSettings = DEFAULT_REPAIR) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.store = store
        self.catalog = catalog
        self.client = client
        self.node_id = node_id
        self.replicas = replicas
        self.storage_peers = storage_peers
        self.clock = clock
        self.holdings = Holdings(catalog.conn)
        self.server = BlobServer(store, accept_push=accept_push, on_stored=self._pushed_here)
        self.repair = RepairLoop(self, repair)

    def _pushed_here(self, peer: str, request: PutRequest) -> None:
        """A peer pushed a replica here (or found it already here): this node holds it now."""
        self.holdings.hold(request.digest, request.size, self.clock())

    def under_replicated(self) -> dict[str, Any]:
        """Replicas this node should hold and does not have now (RepairLoop.under_replicated)."""
        return self.repair.under_replicated()

    def install(self, host: Any) -> None:
        """Serve ``/metanode/blob/1.0.0`` on ``host``."""
        self.server.install(host)

    # -- datasets ---------------------------------------------------------------
    async def store_dataset(self, tenant: bytes, name: str, fmt: str,
                            chunks: Iterable[bytes] | AsyncIterable[bytes], *,
                            peers: Sequence[str] | None = None, created: int | None = None) -> DatasetInfo:
        """Store, inspect, replicate and catalog one dataset; return its row."""
        check_name_and_format(name, fmt)
        writer = self.store.writer()
        try:
            if isinstance(chunks, AsyncIterable):
                async for chunk in chunks:
                    self._write_within_quota(writer, tenant, chunk)
            else:
                for chunk in chunks:
                    self._write_within_quota(writer, tenant, chunk)
        except BaseException:
            writer.abort()
            raise
        return await self.finish_dataset(tenant, name, fmt, writer, peers=peers, created=created)

    def _write_within_quota(self, writer: BlobWriter, tenant: bytes, chunk: bytes, pending: int = 0) -> None:
        self.catalog.check_quota(tenant, writer.size + len(chunk), pending=pending)
        writer.write(chunk)

    async def finish_dataset(self, tenant: bytes, name: str, fmt: str, writer: BlobWriter, *,
                             peers: Sequence[str] | None = None, created: int | None = None) -> DatasetInfo:
        """Commit an upload's writer, then inspect, replicate and catalog it."""
        digest = writer.digest
        existed = self.store.has(digest)
        writer.commit()
        try:
            existing = self.catalog.get(tenant, digest)
            if existing is not None and len(existing.nodes) >= self.replicas:
                return existing
            schema, rows = await trio.to_thread.run_sync(inspect_dataset, self.store.path(digest), fmt)
            size = self.store.size(digest)
            nodes = await self.replicate(digest, tenant=tenant, peers=peers)
            info = DatasetInfo(tenant, digest, name, fmt, size, schema, rows, nodes,
                               self.clock() if created is None else created)
            row = self.catalog.add(info)
            self.holdings.hold(digest, size, info.created)
            return row
        except BaseException:
            # Content nobody catalogued (unreadable, under-replicated, over
            # quota) is not kept: it would hold disk space no one is charged for.
            if not existed and not self.catalog.holders(digest):
                self.store.delete(digest)
            raise

    async def replicate(self, digest: bytes, *, tenant: bytes | None = None,
                        peers: Sequence[str] | None = None) -> list[str]:
        """Push ``digest`` to other storage peers (in parallel, in order of
        ``peers``) until ``replicas`` nodes hold it; return those nodes, sorted.
        Raises ReplicationFailed when too few peers took it."""
        candidates = [p for p in (self.storage_peers() if peers is None else peers) if p != self.node_id]
        held = [self.node_id]
        failures: dict[str, str] = {}

        async def push_one(peer: str) -> None:
            assert self.client is not None
            try:
                await self.client.push(peer, digest, self.store, tenant=tenant)
                held.append(peer)
            except BlobTransferError as exc:
                failures[peer] = str(exc)
                log.info("replication to a peer failed", peer=peer, digest=digest.hex(), reason=str(exc))

        remaining = list(candidates) if self.client is not None else []
        while remaining and len(held) < self.replicas:
            batch, remaining = remaining[: self.replicas - len(held)], remaining[self.replicas - len(held):]
            async with trio.open_nursery() as nursery:
                for peer in batch:
                    nursery.start_soon(push_one, peer)
        if len(held) < self.replicas:
            raise ReplicationFailed(
                f"only {len(held)} of {self.replicas} required storage nodes hold {digest.hex()}",
                held_by=held, required=self.replicas, failures=failures)
        return sorted(held)

    def receipt_fields(self, info: DatasetInfo, content: str = "dataset") -> dict[str, Any]:
        """The ``data.store`` receipt body fields; the subject is ``info.digest``."""
        return {"content": content, "tenant": info.tenant, "size": info.size, "replicas": min(255, max(1, len(info.nodes)))}

    # -- blobs for other services -----------------------------------------------
    async def ensure_verified(self, digest: bytes, peers: Sequence[str]) -> None:
        """Make sure this node holds a copy of ``digest`` that matches it now: the
        local one is re-hashed (a corrupt one is quarantined, which also starts its
        repair), else a copy is fetched from the first of ``peers`` that has a good
        one. BlobTransferError when no peer gave one; an OSError of this node's own
        disk propagates."""
        if self.store.has(digest):
            try:
                await trio.to_thread.run_sync(self.store.verify, digest)
                return
            except (BlobCorrupt, BlobNotFound) as exc:
                log.warning("local copy unusable; fetching another", digest=digest.hex(), reason=str(exc)[:200])
        await self.ensure_local(digest, peers)

    async def ensure_local(self, digest: bytes, peers: Sequence[str]) -> None:
        """Make sure this node holds a verified copy of ``digest``, fetching it
        from the first of ``peers`` that has a good one."""
        if self.store.has(digest):
            return
        if self.client is None:
            raise BlobTransferError(f"blob {digest.hex()} is not held here and there is no network client")
        await self.client.fetch_any([p for p in peers if p != self.node_id], digest, self.store)

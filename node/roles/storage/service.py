"""The storage service: blobs, catalog and replication, composed for the daemon.

``store_dataset`` writes a tenant's content locally (quota checked as the
bytes arrive), checks it and reads its schema (ingest.py: bad rows refused,
or skipped and the good rows re-encoded), pushes it to other storage nodes
until ``replicas`` nodes hold it, records it in the catalog and returns the
catalog row; bytes the tenant already stored answer the existing row
(:meth:`finish_upload` says so). :meth:`receipt_fields` gives the
``data.store`` receipt body for the caller to sign. ``ensure_verified`` gives the
processing service a verified copy of an input (the local one re-hashed,
else fetched). Blobs taken as a replica (uploads, pushes from peers) are
recorded as holdings, which :class:`RepairLoop` (repair.py) keeps present
and verified.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from node.roles.storage.blobstore import BlobStore, BlobWriter
from node.roles.storage.catalog import Catalog, DatasetInfo, Holdings, check_name_and_format
from node.roles.storage.errors import BlobCorrupt, BlobNotFound, BlobTransferError, ReplicationFailed
from node.roles.storage.ingest import Inspection, inspect_upload
from node.roles.storage.protocol import BlobClient, BlobServer, PushPolicy, PutRequest
from node.roles.storage.repair import DEFAULT_REPAIR, RepairLoop, RepairSettings

log = structlog.get_logger("metanode.storage")

DEFAULT_REPLICAS = 2


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


INLINE_VERIFY_BYTES = 256 * 1024  # re-hashed on the event loop (~0.2 ms); larger copies in a thread


def _small(path: Path) -> bool:
    try:
        return path.stat().st_size <= INLINE_VERIFY_BYTES
    except OSError:
        return False  # verify() in the thread reports what is wrong with it

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
                            chunks: Iterable[bytes] | AsyncIterable[bytes], *, on_bad_rows: str = "fail",
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
        return await self.finish_dataset(tenant, name, fmt, writer, on_bad_rows=on_bad_rows, peers=peers, created=created)

    def _write_within_quota(self, writer: BlobWriter, tenant: bytes, chunk: bytes, pending: int = 0) -> None:
        self.catalog.check_quota(tenant, writer.size + len(chunk), pending=pending)
        writer.write(chunk)

    async def finish_dataset(self, tenant: bytes, name: str, fmt: str, writer: BlobWriter, *, on_bad_rows: str = "fail",
                             peers: Sequence[str] | None = None, created: int | None = None) -> DatasetInfo:
        """Commit an upload's writer, then inspect, replicate and catalog it."""
        info, _ = await self.finish_upload(tenant, name, fmt, writer, on_bad_rows=on_bad_rows, peers=peers,
                                           created=created)
        return info

    async def finish_upload(self, tenant: bytes, name: str, fmt: str, writer: BlobWriter, *,
                            on_bad_rows: str = "fail", peers: Sequence[str] | None = None,
                            created: int | None = None) -> tuple[DatasetInfo, bool]:
        """The catalog row of an upload and whether it was already there
        (deduplicated: the tenant stored these very bytes before, under any
        name; the writer is then discarded and the first row answered).

        A row stored from these bytes with bad rows skipped answers a ``skip``
        upload only: a ``fail`` upload of them is inspected (and refused)."""
        source = writer.digest
        for existing in self.catalog.find_source(tenant, source):
            if (existing.skipped_rows and on_bad_rows != "skip") or not self.store.has(existing.digest):
                continue
            writer.abort()
            if len(existing.nodes) < self.replicas:
                nodes = await self.replicate(existing.digest, tenant=tenant, peers=peers)
                self.catalog.set_nodes(tenant, existing.digest, sorted(set(existing.nodes) | set(nodes)))
                existing = self.catalog.require(tenant, existing.digest)
            self.holdings.hold(existing.digest, existing.size, existing.created)
            return existing, True
        existed = self.store.has(source)
        writer.commit()
        keep: list[bytes] = []  # blobs to keep even if nothing catalogues them (they were here before)
        if existed:
            keep.append(source)
        digest = source
        try:
            found: Inspection = await trio.to_thread.run_sync(
                lambda: inspect_upload(self.store.path(source), fmt, on_bad_rows=on_bad_rows,
                                       work_dir=self.store.root / "incoming"))
            stored_format = found.format
            if found.stored is not None:
                digest, was_there = await trio.to_thread.run_sync(self.store.adopt, found.stored)
                if was_there:
                    keep.append(digest)
                self._discard(source, keep)  # only the good rows are kept
            size = self.store.size(digest)
            nodes = await self.replicate(digest, tenant=tenant, peers=peers)
            info = DatasetInfo(tenant, digest, name, stored_format, size, found.schema, found.row_count, nodes,
                               self.clock() if created is None else created, source_digest=source,
                               skipped_rows=found.skipped_rows)
            row = self.catalog.add(info)
            self.holdings.hold(digest, size, info.created)
            return row, False
        except BaseException:
            # Content nobody catalogued (unreadable, under-replicated, over
            # quota) is not kept: it would hold disk space no one is charged for.
            self._discard(source, keep)
            if digest != source:
                self._discard(digest, keep)
            raise

    def _discard(self, digest: bytes, keep: list[bytes]) -> None:
        if digest not in keep and not self.catalog.holders(digest):
            self.store.delete(digest)

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
        """The ``data.store`` receipt body fields; the subject is ``info.digest``.
        ``skipped_rows`` only when bad rows were left out (receipts of complete
        uploads keep the fields they always had)."""
        fields = {"content": content, "tenant": info.tenant, "size": info.size,
                  "replicas": min(255, max(1, len(info.nodes)))}
        if info.skipped_rows:
            fields["skipped_rows"] = info.skipped_rows
        return fields

    # -- blobs for other services -----------------------------------------------
    async def ensure_verified(self, digest: bytes, peers: Sequence[str]) -> None:
        """Make sure this node holds a copy of ``digest`` that matches it now: the
        local one is re-hashed (a corrupt one is quarantined, which also starts its
        repair), else a copy is fetched from the first of ``peers`` that has a good
        one. BlobTransferError when no peer gave one; an OSError of this node's own
        disk propagates."""
        if self.store.has(digest):
            try:
                if _small(self.store.path(digest)):  # hashing it costs less than a worker thread's round trip
                    self.store.verify(digest)
                else:
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

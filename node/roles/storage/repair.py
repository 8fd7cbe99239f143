"""Replica repair: the blobs this node holds as a storage replica stay present and verified.

A storage node's copy can go bad (a flipped bit, a truncated file) or go
missing (deleted, a disk replaced). Reads re-hash every blob and quarantine a
bad copy, but quarantining alone leaves the dataset with one replica fewer.
:class:`RepairLoop` closes that gap:

* **triggered**: the blob store tells it of every quarantine
  (``BlobStore.on_quarantine``, from any thread), and it checks at once;
* **periodic**: every ``interval_s`` it checks that every holding
  (``storage_holdings``, see :class:`~node.roles.storage.catalog.Holdings`)
  is present, and re-hashes a slice of them (``scrub_bytes_per_s`` of reads
  per second, round robin) so silent corruption is found without waiting for
  a reader;
* **repair**: a missing holding is fetched again from a peer (those the
  catalog names as holders first, then every registered storage node), checked
  against its digest on arrival; at most ``concurrency`` fetches at a time,
  within ``bytes_per_s`` of bandwidth in total. A holding that no peer can give
  is retried with exponential backoff (capped at :data:`MAX_BACKOFF_S`).

:meth:`RepairLoop.under_replicated` lists the holdings not present here right
now (what ``node_metrics`` reports and ``metanode mesh status`` shows).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import trio

from node.roles.storage.blobstore import BlobStore
from node.roles.storage.catalog import Catalog, Holdings
from node.roles.storage.errors import BlobCorrupt, BlobNotFound, StorageError
from node.roles.storage.protocol import BlobClient

log = structlog.get_logger("metanode.storage.repair")

MAX_BACKOFF_S = 300.0
MAX_REPORTED = 100  # holdings listed by under_replicated (the count is always whole)


@dataclass(frozen=True)
class RepairSettings:
    """The repair loop's budgets (``[services] storage_repair_*`` / ``storage_scrub_bytes_per_s``)."""

    interval_s: float = 30.0
    concurrency: int = 2
    bytes_per_s: int = 32 * 1024 * 1024
    scrub_bytes_per_s: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.concurrency < 1 or self.bytes_per_s < 1 or self.scrub_bytes_per_s < 1:
            raise ValueError("repair settings must be positive")


DEFAULT_REPAIR = RepairSettings()


class TokenBucket:
    """Bytes per second with a one-second burst; :meth:`spend` waits for its share."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.updated = time.monotonic()

    async def spend(self, amount: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= amount
        if self.tokens < 0:
            await trio.sleep(-self.tokens / self.rate)


class ReplicaHolder(Protocol):
    """What the repair loop reads of the storage service (node/roles/storage/service.py)."""

    store: BlobStore
    catalog: Catalog
    holdings: Holdings
    client: BlobClient | None
    node_id: str
    clock: Callable[[], int]
    storage_peers: Callable[[], Sequence[str]]


@dataclass
class Missing:
    """A holding not present here, and how its repair goes."""

    size: int
    since: float  # monotonic time it was found missing
    attempts: int = 0
    last_error: str = ""
    next_try: float = 0.0  # monotonic
    repairing: bool = False


class RepairLoop:
    """Keeps ``service``'s holdings present and verified (see the module docstring)."""

    def __init__(self, service: ReplicaHolder, settings: RepairSettings = DEFAULT_REPAIR, *,
                 peers: Callable[[], Sequence[str]] | None = None) -> None:
        self.service = service
        self.settings = settings
        self.peers = peers if peers is not None else service.storage_peers
        self.bandwidth = TokenBucket(settings.bytes_per_s)
        self.missing: dict[bytes, Missing] = {}
        self.repaired = 0
        self._scrub_cursor = b""
        self._token: trio.lowlevel.TrioToken | None = None
        self._wake = trio.Event()
        self._slots = trio.Semaphore(settings.concurrency)

    # -- triggers ------------------------------------------------------------------
    def notify(self, digest: bytes) -> None:
        """A blob was quarantined (from any thread): check now rather than at the next tick."""
        token = self._token
        if token is None:
            return  # not running yet: the first check finds it
        try:
            token.run_sync_soon(lambda: self._wake.set())  # the event current when it runs
        except trio.RunFinishedError:
            pass

    # -- the loop ---------------------------------------------------------------------
    async def run(self) -> None:
        """Check, repair, wait for a quarantine or the next tick; forever."""
        self._token = trio.lowlevel.current_trio_token()
        self.service.store.on_quarantine = self.notify
        adopted = self.service.holdings.adopt_catalog(self.service.node_id, self.service.clock())
        if adopted:
            log.info("replicas adopted from the catalog", count=adopted)
        async with trio.open_nursery() as nursery:
            while True:
                self._wake = trio.Event()
                await self.check(nursery)
                with trio.move_on_after(self.settings.interval_s):
                    await self._wake.wait()

    async def check(self, nursery: trio.Nursery) -> None:
        """One pass: find missing holdings (scrubbing a slice), start their repairs."""
        holdings = self.service.holdings.all()
        await self._scrub(holdings)
        store, now = self.service.store, time.monotonic()
        held = dict(holdings)
        for digest in [d for d in self.missing if d not in held or store.has(d)]:
            if not self.missing[digest].repairing:
                del self.missing[digest]
        for digest, size in holdings:
            if store.has(digest):
                continue
            entry = self.missing.get(digest)
            if entry is None:
                entry = self.missing[digest] = Missing(size, now)
                log.warning("replica missing; repairing it", digest=digest.hex())
            if not entry.repairing and entry.next_try <= now:
                entry.repairing = True
                nursery.start_soon(self._repair, digest, entry)

    async def _scrub(self, holdings: list[tuple[bytes, int]]) -> None:
        """Re-hash present holdings, round robin from where the last pass stopped,
        up to ``scrub_bytes_per_s * interval_s`` bytes (at least one blob). A corrupt
        copy is quarantined by the read itself."""
        if not holdings:
            return
        budget = self.settings.scrub_bytes_per_s * self.settings.interval_s
        start = next((i for i, (d, _) in enumerate(holdings) if d > self._scrub_cursor), 0)
        order = holdings[start:] + holdings[:start]
        spent = 0
        for digest, size in order:
            if spent and spent + size > budget:
                break
            spent += size
            self._scrub_cursor = digest
            if not self.service.store.has(digest):
                continue
            try:
                await trio.to_thread.run_sync(self.service.store.verify, digest)
            except BlobCorrupt:
                log.warning("replica corrupt; quarantined", digest=digest.hex())
            except (BlobNotFound, OSError) as exc:
                log.info("replica not scrubbed", digest=digest.hex(), reason=str(exc)[:200])

    async def _repair(self, digest: bytes, entry: Missing) -> None:
        try:
            async with self._slots:
                peers = self._sources(digest)
                try:
                    if self.service.client is None:
                        raise StorageError("no network client")
                    peer = await self.service.client.fetch_any(peers, digest, self.service.store,
                                                               throttle=self.bandwidth.spend)
                except (StorageError, OSError) as exc:
                    entry.attempts += 1
                    entry.last_error = " ".join(str(exc).split())[:200] or type(exc).__name__
                    delay = min(MAX_BACKOFF_S, self.settings.interval_s * math.pow(2, entry.attempts - 1))
                    entry.next_try = time.monotonic() + delay
                    log.warning("replica not repaired", digest=digest.hex(), attempts=entry.attempts,
                                retry_in_s=round(delay, 1), reason=entry.last_error)
                    return
                self.repaired += 1
                self.missing.pop(digest, None)
                log.info("replica repaired", digest=digest.hex(), peer=peer)
        finally:
            entry.repairing = False

    def _sources(self, digest: bytes) -> list[str]:
        """Peers to fetch from: catalogued holders first, then every storage peer (never this node)."""
        me = self.service.node_id
        ordered = [*self.service.catalog.holders(digest), *self.peers()]
        return [peer for peer in dict.fromkeys(ordered) if peer != me]

    # -- reporting -----------------------------------------------------------------------
    def under_replicated(self) -> dict[str, Any]:
        """Holdings not present here now: ``{"count", "datasets": [{digest, size, missing_s,
        attempts, last_error}]}`` (at most MAX_REPORTED listed, in digest order)."""
        now = time.monotonic()
        entries = sorted(self.missing.items())
        return {"count": len(entries), "datasets": [
            {"digest": digest.hex(), "size": entry.size, "missing_s": round(now - entry.since, 1),
             "attempts": entry.attempts, "last_error": entry.last_error or None}
            for digest, entry in entries[:MAX_REPORTED]
        ]}

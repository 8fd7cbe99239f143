"""In-process storage nodes over real loopback libp2p, for the storage tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import multiaddr
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.keys import Identity
from node.p2p.host import build_host, running_host
from node.roles.storage import BlobClient, BlobStore, Catalog, QuotaPolicy, StorageService

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


@dataclass
class StorageNode:
    identity: Identity
    host: Any
    service: StorageService

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def store(self) -> BlobStore:
        return self.service.store


@asynccontextmanager
async def storage_nodes(tmp_path: Path, count: int, *, replicas: int = 2,
                        quotas: QuotaPolicy | None = None) -> AsyncIterator[list[StorageNode]]:
    """``count`` storage nodes, each connected to every other."""
    nodes = []
    async with AsyncExitStack() as stack:
        for i in range(count):
            identity = Identity.from_label(f"storage-{i}")
            host = build_host(identity)
            store = BlobStore(tmp_path / f"node{i}" / "blobs")
            service = StorageService(store, Catalog(duckdb.connect(), quotas or QuotaPolicy()), BlobClient(host),
                                     node_id=identity.peer_id, replicas=replicas)
            service.install(host)
            await stack.enter_async_context(running_host(host, [LOOPBACK]))
            nodes.append(StorageNode(identity, host, service))
        for i, a in enumerate(nodes):
            for b in nodes[i + 1:]:
                await a.host.connect(info_from_p2p_addr(b.host.get_addrs()[0]))
        yield nodes

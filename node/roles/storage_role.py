"""The storage role: content-addressed blobs, the dataset catalog and the blob protocol
(node/roles/storage/); ``dataset_*`` RPC methods where the node takes uploads.

Gateway and processing nodes keep a store too (uploads arrive at gateways,
processing fetches its inputs into its own), so the role is built for them
as well; only storage and gateway nodes take uploads.
"""

from __future__ import annotations

from typing import Any

import trio

from node.base.config import NodeConfig
from node.roles.role import RoleContext, Service, started_then
from node.roles.storage import (
    BlobClient,
    BlobStore,
    Catalog,
    QuotaPolicy,
    RepairSettings,
    StorageService,
    register_storage_methods,
)

KEEPS_A_STORE = frozenset({"storage", "gateway", "processing"})
TAKES_UPLOADS = frozenset({"storage", "gateway"})  # also: the nodes that may push blobs to this one


class StorageRole:
    name = "storage"

    def enabled(self, config: NodeConfig) -> bool:
        return bool(KEEPS_A_STORE & set(config.roles))

    def build(self, context: RoleContext) -> list[Service]:
        config, services = context.config, context.config.services
        chain = context.chain
        # Peers are looked up per blob (context.storage_peers): the node table is kept until the next block.
        context.app.state.follow_blocks()

        def accept_push(peer_id: str, *rest: Any) -> bool:
            # Only nodes the chain knows as storage or gateway may push blobs here.
            return any(n["peer_id"] == peer_id and TAKES_UPLOADS & set(n["roles"]) for n in context.registered_nodes())

        storage = StorageService(
            BlobStore(context.data_dir / "blobs", max_blob_size=services["max_blob_bytes"]),
            Catalog(context.db, QuotaPolicy(default_bytes=services["storage_quota_bytes"])),
            BlobClient(context.host), node_id=context.identity.peer_id,
            replicas=services["storage_replicas"] if "storage" in config.roles else 1,
            storage_peers=context.storage_peers, clock=lambda: chain.finalized_height, accept_push=accept_push,
            repair=RepairSettings(services["storage_repair_interval_s"], services["storage_repair_concurrency"],
                                  services["storage_repair_bytes_per_s"], services["storage_scrub_bytes_per_s"]),
        )
        storage.install(context.host)
        context.storage = storage
        if not TAKES_UPLOADS & set(config.roles):
            return []

        def data_store_receipt(info: Any, fields: dict[str, Any]) -> str:
            return context.publisher.issue("data.store", subject=info.digest, fields=fields).id.hex()

        def not_ready() -> str | None:
            # Its data.store receipts prove uploads on chain only once the chain knows this node.
            registered = context.is_registered_as(context.identity.public_key, set(TAKES_UPLOADS))
            return None if registered else "not yet registered on chain as a storage or gateway node"

        uploads = register_storage_methods(context.registry, storage, on_stored=data_store_receipt, not_ready=not_ready)

        async def sweep_and_repair() -> None:
            # Only storage and gateway nodes hold replicas (processing's fetched inputs are a cache).
            async with trio.open_nursery() as nursery:
                nursery.start_soon(uploads.run_sweeper)
                nursery.start_soon(storage.repair.run)

        return [Service("storage", started_then(sweep_and_repair), lambda: {
            "bytes": storage.store.total_bytes(), "under_replicated": storage.under_replicated()["count"]})]

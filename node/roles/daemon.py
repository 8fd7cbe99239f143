"""The metanode daemon: composes the roles a config selects under one trio nursery.

Start-up order: lock the data directory, load the identity, build the
hardened host, register RPC methods, listen, start peer management, then
each role's service. Everything runs in one nursery; SIGINT or SIGTERM
cancels it, and the host closes every socket on the way out.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiaddr
import structlog
import trio

from node import __version__
from node.base.config import NodeConfig
from node.consensus.genesis import load_genesis
from node.roles.confinement import confine_daemon
from node.base.errors import UserError
from node.base.keys import Identity
from node.roles.metrics import NodeMetrics
from node.p2p.host import build_host, running_host
from node.p2p.jsonrpc import CallContext, Dispatcher, Registry, RpcError
from node.p2p.peers import PeerManager
from node.p2p.rpc import RPC_PROTOCOL, RpcServer

log = structlog.get_logger("metanode.daemon")

SHUTDOWN_GRACE_S = 4.0
METRICS_INTERVAL_S = 2.0
DEBUG_OS_ERROR = 1900
LOCK_NAME = "daemon.lock"


class DataDirLocked(UserError):
    exit_code = 2


class DataDirLock:
    """An exclusive lock on a data directory, held for the daemon's life."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataDirLocked(
                f"data directory {self.path.parent} is in use by a running daemon (pid {holder}); "
                "stop it first or use another data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


@dataclass
class Service:
    """A role's long-running part: started in the daemon's nursery after the host is up."""

    name: str
    run: Callable[..., Awaitable[None]]  # async def run(*, task_status)
    status: Callable[[], dict[str, Any]] = field(default=lambda: {})


class Daemon:
    """One node: host, RPC, peers and role services."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.identity = Identity.load(config.identity_key)
        # Read before confinement: the genesis file lives outside the data dir.
        self.genesis = load_genesis(config.consensus["genesis"]) if config.consensus["genesis"] else None
        self.chain: Any = None
        self.db: Any = None
        self.cage_pool: Any = None
        self.storage: Any = None
        self.metrics_port: int | None = None
        self.registry = Registry()
        self.services: list[Service] = []
        self.started_at = time.monotonic()
        self.host: Any = None
        self.peers: PeerManager | None = None
        self.rpc_server: RpcServer | None = None
        self.confinement: dict[str, Any] | None = None
        self._cancel: trio.CancelScope | None = None
        self._register_core_methods()
        if config.debug["enable_debug_rpc"]:
            register_debug_methods(self.registry)

    # -- RPC methods of every node ------------------------------------------
    def _register_core_methods(self) -> None:
        self.registry.register("node_status", self._node_status, {}, "Identity, version, roles, uptime and listen addresses of this node.")
        self.registry.register("net_peers", self._net_peers, {}, "Connected peers: id, direction, address, keepalive latency.")
        # node_metrics / mesh_nodes: what `metanode mesh status` and `testnet status` read.
        from node.roles.mesh import register_mesh_methods

        register_mesh_methods(self.registry, self)

    async def _node_status(self, ctx: CallContext) -> dict[str, Any]:
        return {
            "peer_id": self.identity.peer_id,
            "public_key": self.identity.public_key.hex(),
            "version": __version__,
            "moniker": self.config.moniker,
            "roles": self.config.roles,
            "services": {s.name: s.status() for s in self.services},
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "listen_addrs": self.listen_addrs(),
            "peers": len(self.peers.peers) if self.peers else 0,
            "cage": self.confinement,
            "metrics": f"{self.config.metrics['listen'].rsplit(':', 1)[0]}:{self.metrics_port}" if self.metrics_port else None,
        }

    async def _net_peers(self, ctx: CallContext) -> list[dict[str, Any]]:
        return self.peers.snapshot() if self.peers else []

    def listen_addrs(self) -> list[str]:
        """Dialable addresses with this node's /p2p/ id."""
        if self.host is None:
            return []
        return [str(a) for a in self.host.get_addrs()]

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    # -- lifecycle -----------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled (or :meth:`stop`). ``task_status.started(self)`` once serving."""
        cfg = self.config
        lock = DataDirLock(cfg.data_dir)
        lock.acquire()
        try:
            if "processing" in cfg.roles and self.genesis is not None:
                # Fork servers exec Python: they must start before confinement denies exec.
                from node.cage.pool import CagePool

                self.cage_pool = CagePool(cfg.cage["policies_file"])
            # Before any thread starts or any peer byte is parsed.
            self.confinement = confine_daemon(cfg)
            net, limits = cfg.network, cfg.limits
            self.host = build_host(self.identity, max_connections=limits["max_peers"])
            if self.genesis is not None:
                self._add_chain()
            self.metrics = NodeMetrics()
            dispatcher = Dispatcher(self.registry, default_timeout=limits["request_timeout"], on_call=self.metrics.on_rpc)
            self.rpc_server = RpcServer(dispatcher, max_frame=limits["max_frame_bytes"], rate=limits["rpc_rate_per_peer"], burst=limits["rpc_burst_per_peer"])
            self.host.set_stream_handler(RPC_PROTOCOL, self.rpc_server.handle_stream)
            self.peers = PeerManager(
                self.host,
                persistent_peers=[multiaddr.Multiaddr(a) for a in net["persistent_peers"]],
                keepalive_interval=net["keepalive_interval"],
                keepalive_timeout=net["keepalive_timeout"],
                dial_timeout=net["dial_timeout"],
                backoff_base=net["redial_backoff_base"],
                backoff_cap=net["redial_backoff_cap"],
            )
            listen = [multiaddr.Multiaddr(a) for a in net["listen"]]
            with trio.CancelScope() as self._cancel:
                try:
                    async with running_host(self.host, listen):
                        async with trio.open_nursery() as nursery:
                            await nursery.start(self.peers.run)
                            if cfg.metrics["listen"]:
                                host, port = cfg.metrics["listen"].rsplit(":", 1)
                                self.metrics_port = await nursery.start(self.metrics.serve, host, int(port))
                            nursery.start_soon(self._update_metrics)
                            for service in self.services:
                                await nursery.start(service.run)
                            log.info("daemon started", peer_id=self.identity.peer_id, listen=self.listen_addrs(), roles=cfg.roles)
                            task_status.started(self)
                except OSError as exc:
                    raise UserError(f"{cfg.path}: [network] listen: {exc.strerror or exc}", exit_code=2) from None
        finally:
            if self.cage_pool is not None:
                self.cage_pool.close()
            if self.db is not None:
                self.db.close()
            lock.release()
            log.info("daemon stopped", peer_id=self.identity.peer_id)

    def _add_services(self) -> None:
        """Role services that live on the chain: registration and the gateway."""
        from node.roles.artifacts import ArtifactFetcher, ArtifactStore, register_artifact_methods
        from node.roles.gateway import Gateway
        from node.roles.issuer import NodeIssuer
        from node.roles.publisher import ReceiptPublisher
        from node.roles.node_txs import NodeTransactions
        from node.roles.registrar import Registrar

        cfg, services = self.config, self.config.services
        node_txs = NodeTransactions(self.identity, self.chain)
        issuer = NodeIssuer(self.db, self.identity)
        publisher = ReceiptPublisher(issuer=issuer, node_txs=node_txs, chain=self.chain, max_batch=self.app.rules.max_batch_receipts)
        self.services.append(Service("receipts", publisher.run, lambda: {"pending": len(publisher.pending), "published": publisher.published}))
        if "scheduler" in cfg.roles:
            # Schedulers sign the job.schedule / job.verdict receipts each block implies.
            self.app.on_effects.append(lambda effects, block: [
                publisher.issue(body.kind, subject=body.subject, fields=body.fields, height=block.height)
                for body in effects.receipt_bodies
            ])
        if cfg.roles:
            registrar = Registrar(node_txs=node_txs, chain=self.chain, app=self.app, roles=cfg.roles,
                                  capacity=services["processing_capacity"], moniker=cfg.moniker or self.identity.peer_id[-8:])
            self.services.append(Service("registrar", registrar.run, lambda: {"registered": registrar.registered}))
        artifacts = ArtifactStore(cfg.data_dir / "artifacts") if {"gateway", "processing"} & set(cfg.roles) else None
        if "gateway" in cfg.roles:
            gateway = Gateway(identity=self.identity, chain=self.chain, app=self.app, publisher=publisher,
                              jobs_per_minute=services["gateway_jobs_per_minute"],
                              allowed_tenants=[bytes.fromhex(t) for t in services["gateway_tenants"]] or None,
                              artifacts=ArtifactFetcher(artifacts, self.host, self.identity.peer_id))
            gateway.register(self.registry)
            self.services.append(Service("gateway", _no_task, lambda: {"tenants": "allow-list" if gateway.allowed else "open"}))
            if services["http_listen"]:
                # The HTTP gateway (node/roles/http_gateway.py): same registry, rate limits and receipts.
                from node.roles.http_gateway import HttpGateway

                http_host, http_port = services["http_listen"].rsplit(":", 1)
                http = HttpGateway(lambda: self.rpc_server, host=http_host, port=int(http_port),
                                   spool_dir=cfg.data_dir / "http-spool", max_body_bytes=services["http_max_body_bytes"],
                                   allowed_tenants=gateway.allowed and list(gateway.allowed),
                                   check_tx=self.app.state.check_tx_against_state)
                self.services.append(Service("http", http.run, http.status))  # status()["listen"]: the bound address
        storage = self.storage = self._add_storage(publisher) if {"storage", "gateway", "processing"} & set(cfg.roles) else None
        if self.cage_pool is not None:
            from node.roles.processing import ProcessingService, storage_resolver

            processing = ProcessingService(
                identity=self.identity, chain=self.chain, app=self.app, pool=self.cage_pool, issuer=issuer,
                node_txs=node_txs, resolve_input=storage_resolver(storage, self._storage_peers), artifacts=artifacts,
            )
            register_artifact_methods(self.registry, artifacts, self._is_registered_gateway)
            self.services.append(Service("processing", processing.run, lambda: {"completed": processing.completed}))

    async def _update_metrics(self) -> None:
        """Gauges sampled every few seconds; counters are updated where events happen."""
        while True:
            self.metrics.set_peers(len(self.peers.peers) if self.peers else 0)
            if self.chain is not None:
                self.metrics.set_mempool(len(self.chain.mempool), self.chain.mempool.size_bytes)
                self.metrics.set_jobs(self.app.state.queue_depth())
            if self.storage is not None:
                self.metrics.set_storage_bytes(self.storage.store.total_bytes())
            await trio.sleep(METRICS_INTERVAL_S)

    def _on_block_metrics(self, block: Any) -> None:
        finality_s = max(0.0, (time.time_ns() // 1_000_000 - block.header.timestamp_ms) / 1000)
        self.metrics.on_block(block.height, block.commit_round, finality_s)

    def _is_registered_storage(self, key: bytes) -> bool:
        return any(n["node"] == key.hex() and {"storage", "gateway"} & set(n["roles"]) for n in self.app.state.nodes(processing_only=False))

    def _is_registered_gateway(self, key: bytes) -> bool:
        return any(n["node"] == key.hex() and "gateway" in n["roles"] for n in self.app.state.nodes(processing_only=False))

    def _storage_peers(self) -> list[str]:
        """Peer ids of the nodes the chain knows as storage nodes (not this one)."""
        return [n["peer_id"] for n in self.app.state.nodes(processing_only=False)
                if "storage" in n["roles"] and n["peer_id"] != self.identity.peer_id]

    def _add_storage(self, publisher: Any) -> Any:
        """Content-addressed blobs and the dataset catalog; the blob protocol;
        dataset_* RPC methods where the node takes uploads."""
        from node.roles.storage import BlobClient, BlobStore, Catalog, QuotaPolicy, StorageService, register_storage_methods

        cfg, services = self.config, self.config.services
        registered = {"storage", "gateway"}

        def accept_push(peer_id: str, *rest: Any) -> bool:
            # Only nodes the chain knows as storage or gateway may push blobs here.
            return any(n["peer_id"] == peer_id and registered & set(n["roles"]) for n in self.app.state.nodes(processing_only=False))

        storage = StorageService(
            BlobStore(cfg.data_dir / "blobs", max_blob_size=services["max_blob_bytes"]),
            Catalog(self.db, QuotaPolicy(default_bytes=services["storage_quota_bytes"])),
            BlobClient(self.host), node_id=self.identity.peer_id,
            replicas=services["storage_replicas"] if "storage" in cfg.roles else 1,
            storage_peers=self._storage_peers, clock=lambda: self.chain.core.tip.height, accept_push=accept_push,
        )
        storage.install(self.host)
        if {"storage", "gateway"} & set(cfg.roles):
            def data_store_receipt(info: Any, fields: dict[str, Any]) -> str:
                return publisher.issue("data.store", subject=info.digest, fields=fields).id.hex()

            def not_ready() -> str | None:
                # Its data.store receipts prove uploads on chain only once the chain knows this node.
                return None if self._is_registered_storage(self.identity.public_key) else "not yet registered on chain as a storage or gateway node"

            uploads = register_storage_methods(self.registry, storage, on_stored=data_store_receipt, not_ready=not_ready)
            self.services.append(Service("storage", lambda *, task_status=trio.TASK_STATUS_IGNORED: _started(task_status, uploads.run_sweeper()),
                                         lambda: {"bytes": storage.store.total_bytes()}))
        return storage

    def _add_chain(self) -> None:
        """Every node with a genesis follows the chain; validators also vote."""
        from node.consensus.mempool import MempoolConfig
        from node.consensus.rpc import register_chain_methods
        from node.consensus.block import genesis_header
        from node.consensus.service import ConsensusService
        from node.consensus.store import ChainStore
        from node.consensus.tx import TxTypeRegistry
        from node.base.db import open_node_db

        from node.receipts.rpc import register_receipt_methods
        from node.app.chain_app import ChainApplication

        cfg = self.config
        self.db = open_node_db(cfg.data_dir)
        registry = TxTypeRegistry.with_builtins()
        store = ChainStore(self.db, first_height=1, first_parent=genesis_header(self.genesis).hash)
        self.app = ChainApplication(self.db, store)
        self.app.register(registry)
        self.app.catch_up()
        self.chain = ConsensusService(
            host=self.host, identity=self.identity, genesis=self.genesis, conn=self.db, store=store, app=self.app,
            data_dir=cfg.data_dir, registry=registry,
            mempool_config=MempoolConfig(max_txs=cfg.consensus["mempool_max_txs"], max_bytes=cfg.consensus["mempool_max_bytes"]),
            max_frame=cfg.limits["max_frame_bytes"],
        )
        register_chain_methods(self.registry, self.chain)
        self.chain.on_finalized.append(self._on_block_metrics)
        register_receipt_methods(self.registry, self.app.receipts, store, self.genesis, self.app)
        self._add_services()
        self.services.append(Service("consensus", self.chain.run, lambda: {"height": self.chain.core.height, "validator": self.chain.is_validator}))


async def _no_task(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A role whose work is all in RPC handlers: nothing runs in the background."""
    task_status.started()


async def _started(task_status: Any, body: Any) -> None:
    task_status.started()
    await body


def register_debug_methods(registry: Registry) -> None:
    """debug_* methods, only when [debug] enable_debug_rpc is set: they let a
    test act as a compromised parser would, to prove the confinement holds."""

    async def read_file(ctx: CallContext, path: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as handle:
                return {"bytes": len(handle.read())}
        except OSError as exc:
            raise RpcError(DEBUG_OS_ERROR, "os error", {"errno": exc.errno, "reason": exc.strerror}) from None

    async def write_file(ctx: CallContext, path: str) -> dict[str, Any]:
        try:
            with open(path, "wb") as handle:
                handle.write(b"written by debug_write_file\n")
            return {"written": path}
        except OSError as exc:
            raise RpcError(DEBUG_OS_ERROR, "os error", {"errno": exc.errno, "reason": exc.strerror}) from None

    async def exec_program(ctx: CallContext, argv: list[str]) -> dict[str, Any]:
        import subprocess

        try:
            done = subprocess.run(argv, capture_output=True, timeout=10)
            return {"returncode": done.returncode}
        except OSError as exc:
            raise RpcError(DEBUG_OS_ERROR, "os error", {"errno": exc.errno, "reason": exc.strerror}) from None

    path_param = {"properties": {"path": {"type": "string"}}, "required": ["path"]}
    registry.register("debug_read_file", read_file, path_param, "DEBUG: read a file as the daemon.")
    registry.register("debug_write_file", write_file, path_param, "DEBUG: create a file as the daemon.")
    registry.register("debug_exec", exec_program, {"properties": {"argv": {"type": "array", "items": {"type": "string"}, "minItems": 1}}, "required": ["argv"]}, "DEBUG: run a program as the daemon.")


async def run_until_signalled(daemon: Daemon) -> None:
    """Run ``daemon``; SIGINT/SIGTERM stop it within the shutdown grace period."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    log.info("shutting down", signal=signal.Signals(signum).name)
                    daemon.stop()
                    # Hard deadline: whatever still runs after the grace period is cancelled.
                    nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_S
                    return

            nursery.start_soon(watch)
            await daemon.run()
            nursery.cancel_scope.cancel()

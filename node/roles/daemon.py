"""The metanode daemon: composes the roles a config selects under one trio nursery.

Start-up order: lock the data directory, load the identity, build the
hardened host, open the chain (when a genesis is configured) and build the
enabled roles of :data:`ROLES` in order (node/roles/role.py is their one
interface), register RPC methods, listen, start peer management, then each
role's service. Everything runs in one nursery; SIGINT or SIGTERM cancels it,
and the host closes every socket on the way out.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import multiaddr
import structlog
import trio

from node import __version__
from node.app.chain_app import ChainApplication
from node.base.config import NodeConfig
from node.base.db import open_node_db
from node.base.errors import ErrorCode, UserError
from node.base.keys import Identity, peer_id_from_public_key
from node.consensus.genesis import Genesis, load_genesis
from node.consensus.service import IBFT_PROTOCOL, SYNC_PROTOCOL, TX_PROTOCOL, ConsensusService
from node.p2p.chain_hello import ChainHello, ChainIdentity
from node.p2p.host import build_host, running_host
from node.p2p.jsonrpc import CallContext, Dispatcher, Registry, RpcError
from node.p2p.peers import PeerManager
from node.p2p.rpc import RPC_PROTOCOL, RpcServer, StreamLimits
from node.roles.confinement import FdBudget, confine_daemon, daemon_connection_limits, fit_fd_budget, open_fd_count
from node.roles.gateway_role import GatewayRole
from node.roles.issuer import NodeIssuer
from node.roles.mesh import MeshView, register_mesh_methods
from node.roles.metrics import NodeMetrics
from node.roles.node_txs import NodeTransactions
from node.roles.processing_role import ProcessingRole
from node.roles.publisher import ReceiptPublisher
from node.roles.receipts_role import ReceiptsRole
from node.roles.registrar_role import RegistrarRole
from node.roles.role import Role, RoleContext, Service
from node.roles.scheduler import SchedulerRole
from node.roles.security import daemon_security_view, register_security_methods
from node.roles.storage_role import StorageRole
from node.roles.supervise import StartedProxy, Supervisor, daemon_failure, data_dir_lost_error, lock_lost
from node.roles.validator import ChainRole, open_chain

if TYPE_CHECKING:
    from node.cage.pool import CagePool
    from node.roles.storage import StorageService

log = structlog.get_logger("metanode.daemon")

SHUTDOWN_GRACE_S = 4.0
DATA_DIR_CHECK_S = 1.0  # how often the data directory lock is checked
METRICS_INTERVAL_S = 2.0
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

    @property
    def fd(self) -> int | None:
        """The descriptor holding the lock (None when not held)."""
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


# The roles a node can have, in the order they are built and their services
# start (so in node_status's "services"). Storage comes before processing,
# which fetches its inputs through it; the chain role comes last, so the
# consensus service starts after the roles that follow its blocks.
ROLES: tuple[Role, ...] = (
    ReceiptsRole(), SchedulerRole(), RegistrarRole(), GatewayRole(), StorageRole(), ProcessingRole(), ChainRole(),
)


class Daemon:
    """One node: host, RPC, peers and role services."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.identity = Identity.load(config.identity_key)
        # Read before confinement: the genesis file lives outside the data dir.
        self.genesis: Genesis | None = load_genesis(config.consensus["genesis"]) if config.consensus["genesis"] else None
        # Built in run(), once confined and the host exists (and only with a genesis).
        self.db: duckdb.DuckDBPyConnection | None = None
        self.app: ChainApplication | None = None
        self.chain: ConsensusService | None = None
        self.cage_pool: CagePool | None = None
        self.storage: StorageService | None = None
        self.host: Any = None  # the libp2p host (py-libp2p is untyped)
        self.peers: PeerManager | None = None
        self.chain_hello: ChainHello | None = None  # the chain handshake (with a genesis)
        self.rpc_server: RpcServer | None = None
        self.confinement: dict[str, Any] | None = None
        self.fd_budget: FdBudget | None = None
        self.metrics = NodeMetrics()
        self.metrics_port: int | None = None
        self.registry = Registry()
        self.services: list[Service] = []
        self.started_at = time.monotonic()
        self._cancel: trio.CancelScope | None = None
        self.supervisor = Supervisor()
        self._register_core_methods()
        if config.debug["enable_debug_rpc"]:
            register_debug_methods(self.registry)

    # -- RPC methods of every node ------------------------------------------
    def _register_core_methods(self) -> None:
        self.registry.register("node_status", self._node_status, {}, "Identity, version, roles, uptime and listen addresses of this node.")
        self.registry.register("net_peers", self._net_peers, {}, "Connected peers: id, direction, address, keepalive latency.")
        # node_metrics / mesh_nodes: what `metanode mesh status` and `testnet status` read.
        register_mesh_methods(self.registry, MeshView(
            peer_id=self.identity.peer_id,
            persistent_peers=tuple(self.config.network["persistent_peers"]),
            peer_snapshot=lambda: self.peers.snapshot() if self.peers else [],
            registered_nodes=self._registered_nodes,
            validators=self._current_validators,
            metrics=lambda: self.metrics,
            under_replicated=lambda: self.storage.under_replicated() if self.storage else {"count": 0, "datasets": []},
        ))
        # security_report: what `metanode security export-audit` reads (node/roles/security.py).
        register_security_methods(self.registry, daemon_security_view(self))

    def _privilege_new_validators(self, block: Any) -> None:
        """A validator voted in may use the connection slots kept for validators,
        as the genesis validators do (a stranger flood must not cut it off). The
        set only grows: a removed validator keeps its privilege until a restart."""
        if self.host is None or self.chain is None:
            return
        admission = self.host.get_network().admission
        for key in self.chain.validators.keys:
            peer = peer_id_from_public_key(key)
            if peer != self.identity.peer_id and peer not in admission.privileged:
                admission.privileged.add(peer)
                log.info("validator joined: its connections may use the reserved slots", peer=peer)

    def _max_receipt_batch(self) -> int:
        """The chain's max_batch_receipts rule for the next block (votes may change it)."""
        assert self.app is not None  # publishers exist only once the chain is open
        state = self.app.state
        return state.rules_at(state.next_height()).max_batch_receipts

    def _current_validators(self) -> tuple[bytes, ...]:
        """The set deciding the next block (it changes by vote); the genesis set before the chain runs."""
        if self.chain is not None:
            return self.chain.validators.keys
        return tuple(self.genesis.validators) if self.genesis else ()

    def _registered_nodes(self) -> list[dict[str, Any]]:
        """The nodes registered on the chain this node follows (none without a chain)."""
        return self.app.state.nodes(processing_only=False) if self.app is not None and self.chain is not None else []

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
            "budget": self.budget_report(),
        }

    def budget_report(self) -> dict[str, Any]:
        """Open files, connections, handshakes (and streams): limits, use, refusals."""
        report: dict[str, Any] = {}
        if self.fd_budget is not None:
            report["open_files"] = {**self.fd_budget.to_dict(), "in_use": open_fd_count()}
        if self.host is not None:
            report.update(self.host.get_network().admission.report())
        return report

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
        """Run until cancelled (or :meth:`stop`). ``task_status.started(self)`` once serving.

        A failure that ends the daemon leaves as one UserError (node/roles/supervise.py):
        a failed data directory as DataDirError (exit code 5) naming the path and cause.
        Once serving, it is also logged, as one error line, and marked ``reported``."""
        serving = StartedProxy(task_status)
        try:
            await self._run(task_status=serving)
        except BaseException as exc:
            verdict = daemon_failure(exc, self.config.data_dir, self.supervisor.failed[0] if self.supervisor.failed else None)
            if verdict is None:
                raise
            failure, unexpected = verdict
            if serving.done:
                log.error("daemon stopped by a failure", cause=str(failure), exit_code=failure.exit_code,
                          task=self.supervisor.failed[0] if self.supervisor.failed else None,
                          exc_info=exc if unexpected else None)  # a traceback only for a bug
                failure.reported = True
            raise failure from None

    async def _run(self, *, task_status: Any) -> None:
        cfg = self.config
        # Refused before anything starts: limits the OS's descriptor limit cannot hold.
        self.fd_budget = fit_fd_budget(cfg)
        connection_limits, privileged = daemon_connection_limits(
            cfg, self.genesis.validators if self.genesis else (), self.identity.peer_id)
        lock = DataDirLock(cfg.data_dir)
        lock.acquire()
        try:
            if "processing" in cfg.roles and self.genesis is not None:
                # Fork servers exec Python: they must start before confinement denies exec.
                from node.cage.pool import CagePool

                self.cage_pool = CagePool(cfg.cage["policies_file"])
            # Before any thread starts or any peer byte is parsed.
            self.confinement = confine_daemon(cfg, open_files=self.fd_budget.total)
            net, limits = cfg.network, cfg.limits
            self.host = build_host(self.identity, limits=connection_limits, privileged_peers=privileged)
            if self.genesis is not None:
                self._compose_roles(self.genesis)
                # Peers on another genesis are refused at connection time, naming what differs.
                self.chain_hello = ChainHello(
                    self.host, ChainIdentity.of(self.genesis.chain_id, self.genesis.hash, self.genesis.full_value()),
                    gated_protocols=(IBFT_PROTOCOL, TX_PROTOCOL, SYNC_PROTOCOL))
            dispatcher = Dispatcher(self.registry, default_timeout=limits["request_timeout"], on_call=self.metrics.on_rpc)
            self.rpc_server = RpcServer(dispatcher, max_frame=limits["max_frame_bytes"], rate=limits["rpc_rate_per_peer"], burst=limits["rpc_burst_per_peer"],
                                        rate_total=limits["rpc_rate_total"], burst_total=limits["rpc_burst_total"], idle_timeout=limits["stream_idle_timeout"],
                                        streams=StreamLimits(limits["max_streams_per_connection"], limits["max_streams_per_peer"],
                                                             budget=self.host.get_network().admission.budget))
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
                            if self.chain_hello is not None:  # watching connections before any is dialled
                                await nursery.start(self.supervisor.task("chain-hello", self.chain_hello.run))
                            await nursery.start(self.supervisor.task("peers", self.peers.run))
                            nursery.start_soon(self.supervisor.loop("data-dir", self._watch_data_dir, lock))
                            if cfg.metrics["listen"]:
                                host, port = cfg.metrics["listen"].rsplit(":", 1)
                                self.metrics_port = await nursery.start(self.supervisor.task("metrics", self.metrics.serve, host, int(port)))
                            nursery.start_soon(self.supervisor.loop("metrics-sampler", self._update_metrics))
                            for service in self.services:
                                await nursery.start(self.supervisor.task(service.name, service.run))
                            log.info("daemon started", peer_id=self.identity.peer_id, listen=self.listen_addrs(), roles=cfg.roles)
                            task_status.started(self)
                except OSError as exc:
                    raise UserError(f"{cfg.path}: [network] listen: {exc.strerror or exc}", exit_code=2) from None
        finally:
            if self.cage_pool is not None:
                self.cage_pool.close()
            if self.db is not None:
                try:
                    self.db.close()
                except Exception as exc:  # a database that failed under us: the failure is reported already
                    log.debug("node database close failed", reason=str(exc)[:200])
            lock.release()
            log.info("daemon stopped", peer_id=self.identity.peer_id)

    def _compose_roles(self, genesis: Genesis) -> None:
        """Open the chain, then build every enabled role of :data:`ROLES`, in order."""
        cfg = self.config
        self.db = open_node_db(cfg.data_dir)
        self.app, self.chain = open_chain(cfg, self.identity, genesis, self.host, self.db)
        self.chain.on_finalized.append(self._privilege_new_validators)
        node_txs = NodeTransactions(self.identity, self.chain)
        issuer = NodeIssuer(self.db, self.identity)
        context = RoleContext(
            config=cfg, identity=self.identity, genesis=genesis, host=self.host, registry=self.registry,
            rpc_server=lambda: self.rpc_server, metrics=self.metrics, db=self.db, chain=self.chain, app=self.app,
            cage_pool=self.cage_pool, node_txs=node_txs, issuer=issuer,
            publisher=ReceiptPublisher(issuer=issuer, node_txs=node_txs, chain=self.chain,
                                       max_batch=self._max_receipt_batch),
        )
        for role in ROLES:
            if role.enabled(cfg):
                self.services.extend(role.build(context))
        self.storage = context.storage

    async def _watch_data_dir(self, lock: DataDirLock) -> None:
        """Stop the daemon when its data directory lock is lost (the file removed
        or replaced): another daemon could then take the directory and sign with
        the same key."""
        while True:
            await trio.sleep(DATA_DIR_CHECK_S)
            why = lock_lost(lock.path, lock.fd)
            if why is not None:
                raise data_dir_lost_error(lock.path, why)

    async def _update_metrics(self) -> None:
        """Gauges sampled every few seconds; counters are updated where events happen."""
        while True:
            self.metrics.set_peers(len(self.peers.peers) if self.peers else 0)
            self.metrics.set_budget(self.budget_report())
            if self.chain is not None and self.app is not None:
                self.metrics.set_mempool(len(self.chain.mempool), self.chain.mempool.size_bytes)
                self.metrics.set_jobs(self.app.state.queue_depth())
            if self.storage is not None:
                self.metrics.set_storage_bytes(self.storage.store.total_bytes())
            await trio.sleep(METRICS_INTERVAL_S)


def register_debug_methods(registry: Registry) -> None:
    """debug_* methods, only when [debug] enable_debug_rpc is set: they let a
    test act as a compromised parser would, to prove the confinement holds."""

    async def read_file(ctx: CallContext, path: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as handle:
                return {"bytes": len(handle.read())}
        except OSError as exc:
            raise RpcError(ErrorCode.DEBUG_OS_ERROR, "os error", {"errno": exc.errno, "reason": exc.strerror}) from None

    async def write_file(ctx: CallContext, path: str) -> dict[str, Any]:
        try:
            with open(path, "wb") as handle:
                handle.write(b"written by debug_write_file\n")
            return {"written": path}
        except OSError as exc:
            raise RpcError(ErrorCode.DEBUG_OS_ERROR, "os error", {"errno": exc.errno, "reason": exc.strerror}) from None

    async def exec_program(ctx: CallContext, argv: list[str]) -> dict[str, Any]:
        import subprocess

        try:
            done = subprocess.run(argv, capture_output=True, timeout=10)
            return {"returncode": done.returncode}
        except OSError as exc:
            raise RpcError(ErrorCode.DEBUG_OS_ERROR, "os error", {"errno": exc.errno, "reason": exc.strerror}) from None

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

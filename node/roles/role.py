"""The one small interface every role has, and what roles share.

A role is one thing a node can be configured to do on the chain (follow and
validate it, schedule, serve tenants, run jobs, store data). Each is a
:class:`Role`: it says whether a config enables it, and builds itself from a
:class:`RoleContext`, registering its RPC methods and returning the
:class:`Service` s to run in the daemon's nursery. The daemon
(node/roles/daemon.py) builds the context once and composes the enabled roles
from one ordered tuple; a role built later may use what an earlier one put in
the context (the storage service, for processing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import duckdb
import trio

from node.app.chain_app import ChainApplication
from node.base.config import NodeConfig
from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.service import ConsensusService
from node.p2p.jsonrpc import Registry
from node.p2p.rpc import RpcServer
from node.roles.artifacts import ArtifactStore
from node.roles.issuer import NodeIssuer
from node.roles.metrics import NodeMetrics
from node.roles.node_txs import NodeTransactions
from node.roles.publisher import ReceiptPublisher

if TYPE_CHECKING:  # built only for the roles that need them
    from node.cage.pool import CagePool
    from node.roles.storage import StorageService


@dataclass
class Service:
    """A role's long-running part: started in the daemon's nursery after the host is up."""

    name: str
    run: Callable[..., Awaitable[None]]  # async def run(*, task_status)
    status: Callable[[], dict[str, Any]] = field(default=lambda: {})


@dataclass
class RoleContext:
    """What the roles of one node share: built by the daemon once the host and the chain are up."""

    config: NodeConfig
    identity: Identity
    genesis: Genesis
    host: Any  # the libp2p host (py-libp2p is untyped)
    registry: Registry  # the node's RPC methods
    rpc_server: Callable[[], RpcServer | None]  # the RPC server, once the daemon has built it
    metrics: NodeMetrics
    db: duckdb.DuckDBPyConnection
    chain: ConsensusService
    app: ChainApplication
    cage_pool: CagePool | None
    # Every node on the chain signs transactions and receipts with its own key, through these.
    node_txs: NodeTransactions
    issuer: NodeIssuer
    publisher: ReceiptPublisher
    # Built by a role, for the roles after it.
    storage: StorageService | None = None
    _artifacts: ArtifactStore | None = None

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def roles(self) -> set[str]:
        return set(self.config.roles)

    def artifacts(self) -> ArtifactStore:
        """The results and witnesses this node keeps (shared by the gateway and processing roles)."""
        if self._artifacts is None:
            self._artifacts = ArtifactStore(self.data_dir / "artifacts")
        return self._artifacts

    # -- the chain's registry of nodes ------------------------------------------------
    def registered_nodes(self) -> list[dict[str, Any]]:
        """Every node registered on chain, with its roles (StateQueries.nodes)."""
        return self.app.state.nodes(processing_only=False)

    def is_registered_as(self, key: bytes, roles: set[str]) -> bool:
        """Whether the node with public key ``key`` is registered on chain with one of ``roles``."""
        return any(n["node"] == key.hex() and roles & set(n["roles"]) for n in self.registered_nodes())

    def storage_peers(self) -> list[str]:
        """Peer ids of the nodes the chain knows as storage nodes (not this one)."""
        return [n["peer_id"] for n in self.registered_nodes()
                if "storage" in n["roles"] and n["peer_id"] != self.identity.peer_id]


class Role(Protocol):
    """One thing a node can be configured to do."""

    @property
    def name(self) -> str:
        """The role's name, as in logs (its services carry their own names in ``node_status``)."""
        ...

    def enabled(self, config: NodeConfig) -> bool:
        """Whether ``config`` asks this node for the role (the chain must be configured too)."""
        ...

    def build(self, context: RoleContext) -> list[Service]:
        """Build the role: register its RPC methods and hooks, put what later roles
        use into ``context``, and return the services to run, in start order."""
        ...


async def no_background_task(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A role whose work is all in RPC handlers: nothing runs in the background."""
    task_status.started()


def started_then(body: Callable[[], Coroutine[Any, Any, None]]) -> Callable[..., Awaitable[None]]:
    """A service run that reports started at once, then runs ``body()``."""

    async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await body()

    return run

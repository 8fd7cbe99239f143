"""The console's connection to its node, and what the API asks of it.

One :class:`AsyncClient` (the SDK's, with the user's key) carries every call
the pages cause. The node closes an RPC stream that stays quiet (its
``stream_idle_timeout``) and may restart; a read that fails because the
connection failed is sent once more on a new connection (the SDK's
:class:`Link` dials again), so a console left open overnight still answers.
Anything the node answers with an error is passed on as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from node.base.errors import ErrorCode, UnreachableError, UserError, sole_exception
from node.base.keys import Identity

if TYPE_CHECKING:
    from node.consensus.genesis import Genesis
    from node.receipts.audit import FetchedLog
    from node.sdk.client import AsyncClient

MESH_TTL_S = 2.0  # one crawl of the mesh answers every page asking within this long
CALL_TIMEOUT_S = 30.0
# A stream the node closed (idle, too many) fails the call with one of these: a new connection is the cure.
_STREAM_ENDED = (ErrorCode.STREAM_IDLE, ErrorCode.TOO_MANY_STREAMS)


def genesis_mismatch(trusted: Genesis, path: str, node_genesis_hash: str, node_chain_id: str, address: str) -> str | None:
    """Why the node at ``address`` is not on the chain of the genesis the user trusts (None: it is)."""
    if trusted.hash.hex() == node_genesis_hash:
        return None
    return (f"--genesis {path} is chain {trusted.chain_id!r} (genesis {trusted.hash.hex()[:16]}...), but the node at "
            f"{address} follows chain {node_chain_id!r} (genesis {node_genesis_hash[:16]}...): give the genesis file of that chain")


@dataclass(frozen=True)
class NodeFacts:
    """What the console learns of its node once, at start."""

    address: str
    peer_id: str
    chain_id: str
    genesis_hash: str


class NodeSession:
    """The user's connection to one node (built by :func:`open_node_session`)."""

    def __init__(self, client: AsyncClient, facts: NodeFacts, identity: Identity,
                 genesis: Genesis | None, genesis_path: str | None) -> None:
        self.client = client
        self.facts = facts
        self.identity = identity
        self.genesis = genesis
        self.genesis_path = genesis_path
        self._mesh: tuple[float, dict[str, Any]] | None = None
        self._mesh_lock = trio.Lock()
        self._audit_log: tuple[int, FetchedLog] | None = None
        self._audit_lock = trio.Lock()

    @property
    def tenant(self) -> str:
        return self.identity.public_key.hex()

    async def call(self, method: str, params: Any = None, *, timeout: float = CALL_TIMEOUT_S) -> Any:
        """One read on the node; once more on a new connection when the first failed
        for the connection's sake. RpcCallError (the node's answer) passes through."""
        from node.p2p.rpc_client import RpcCallError
        from node.sdk.link import is_transport_failure

        link = self.client.link
        for attempt in (0, 1):
            generation = link.generation
            try:
                return await link.rpc.call(method, params, timeout=timeout)
            except RpcCallError as exc:
                if exc.code not in _STREAM_ENDED or attempt:
                    raise
            except Exception as exc:
                if not is_transport_failure(exc):
                    raise
                if attempt:
                    raise UnreachableError(f"lost the node {self.facts.address}: {exc or type(exc).__name__}") from None
            await link.reconnect(generation)
        raise AssertionError("unreachable")

    async def mesh(self) -> dict[str, Any]:
        """``metanode mesh status --json``'s report, crawled at most once per :data:`MESH_TTL_S`."""
        from node.sdk.mesh import mesh_status

        async with self._mesh_lock:
            now = trio.current_time()
            if self._mesh is None or now - self._mesh[0] > MESH_TTL_S:
                self._mesh = (now, await mesh_status(self.facts.address))
            return self._mesh[1]

    async def audit_log(self, height: int) -> FetchedLog:
        """The node's receipt log, fetched again only when a block newer than the
        last fetch's is known (``height``): the log only grows with blocks."""
        from node.receipts.audit_remote import fetch_log

        async with self._audit_lock:
            if self._audit_log is None or self._audit_log[0] < height or height == 0:
                log = await fetch_log(self.client.link.rpc)
                self._audit_log = (height, log)
            return self._audit_log[1]

    async def upload(self, path: Path, *, name: str, fmt: str, on_bad_rows: str,
                     progress: Any) -> dict[str, Any]:
        """The SDK's upload: streamed, resumed after a dropped connection, registered on chain."""
        return await self.client.upload_dataset(path, name=name, format=fmt, on_bad_rows=on_bad_rows, progress=progress)


@asynccontextmanager
async def open_node_session(address: str, identity: Identity, *, genesis_path: str | None = None,
                            timeout: float = 10.0) -> AsyncIterator[NodeSession]:
    """Connect to the node as the user, learn its chain and check it against the
    genesis the user trusts. UnreachableError when it does not answer; UserError
    (exit 2) when it follows another chain than ``genesis_path``'s."""
    from node.consensus.genesis import load_genesis
    from node.p2p.rpc_client import RpcCallError
    from node.sdk.client import AsyncClient

    genesis = load_genesis(genesis_path) if genesis_path else None  # ConfigError names the file and key
    try:
        async with AsyncClient.connect(address, identity, timeout=timeout, genesis=genesis_path) as client:
            status = await client.rpc.call("node_status", timeout=timeout)
            head = await client.rpc.call("chain_head", timeout=timeout)
            facts = NodeFacts(address, str(status["peer_id"]), str(head["chain_id"]), str(head["genesis_hash"]))
            if genesis is not None and genesis_path is not None:
                wrong = genesis_mismatch(genesis, genesis_path, facts.genesis_hash, facts.chain_id, address)
                if wrong:
                    raise UserError(wrong, exit_code=2)
            yield NodeSession(client, facts, identity, genesis, genesis_path)
    except BaseExceptionGroup as group:
        inner = sole_exception(group)
        if isinstance(inner, RpcCallError) and inner.code == ErrorCode.METHOD_NOT_FOUND:
            raise UserError(f"the node at {address} keeps no chain ({inner.message}: {inner.data}); "
                            "point --node at a node that follows the chain (a validator or a gateway)") from None
        if isinstance(inner, RpcCallError):
            raise UserError(f"the node at {address} refused: {inner}") from None
        if isinstance(inner, UserError):
            raise inner from None
        raise

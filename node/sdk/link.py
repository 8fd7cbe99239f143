"""A client's connection to its gateway, replaceable while the client is in use.

An upload of a large file outlives many things: a NAT entry, a node's restart
of its listener, a proxy's idle timer. When the connection drops mid-upload the
client dials again with the same key (the node binds an upload to the caller's
peer id, so the new connection may continue it) and resumes. In trio a
connection is an ``async with`` block that must be left in the task and in the
order it was entered, so the connection cannot be swapped from inside the
caller's code (it may sit under cancel scopes of its own). It lives instead in
a task of its own (:meth:`Link.run`) that opens one connection, hands it out,
and opens the next one when a caller asks (:meth:`Link.reconnect`).

Nothing here imports the transport at import time: the dialer is imported
when the link runs, so ``import node.sdk.client`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from node.base.errors import UnreachableError, sole_exception
from node.base.keys import Identity
from node.p2p.framing import FrameError

if TYPE_CHECKING:
    from node.p2p.rpc_client import RpcClient


def is_transport_failure(exc: BaseException) -> bool:
    """Did this call fail because the connection failed (worth a new one),
    rather than because the node answered with an error or our code is wrong?"""
    from node.p2p.stream_errors import stream_errors

    exc = sole_exception(exc)
    if isinstance(exc, (ConnectionError, OSError, EOFError, trio.BrokenResourceError, trio.ClosedResourceError,
                        trio.TooSlowError, UnreachableError, FrameError, *stream_errors())):
        return True
    # The dialer's protocol errors (a yamux or multistream violation ends the connection),
    # named by module so that neither it nor libp2p is imported here.
    return type(exc).__module__.startswith(("node.p2p.dialer", "libp2p"))


class Link:
    """One RPC connection to ``address`` at a time, owned by :meth:`run`'s task."""

    def __init__(self, address: str, identity: Identity, timeout: float) -> None:
        self.address = address
        self.identity = identity
        self.timeout = timeout
        self.generation = 0  # how many connections were opened: a caller names the one that failed it
        self.failure: BaseException | None = None  # why the last reconnect failed
        self._rpc: RpcClient | None = None
        self._send_request, self._requests = trio.open_memory_channel[trio.Event](0)
        self._lock = trio.Lock()

    @property
    def rpc(self) -> RpcClient:
        """The current connection's RPC client."""
        if self._rpc is None:
            raise UnreachableError(f"not connected to {self.address}")
        return self._rpc

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, report started, then serve reconnect requests until cancelled.
        The first connection's failure is raised (to ``nursery.start``); a later
        one is stored in :attr:`failure` for the caller that asked."""
        from node.p2p.client import connect_to_node

        started = False
        answering: trio.Event | None = None  # the reconnect request being served
        while True:
            request: trio.Event | None = None
            try:
                async with connect_to_node(self.address, identity=self.identity, timeout=self.timeout) as rpc:
                    self._rpc, self.failure = rpc, None
                    self.generation += 1
                    if not started:
                        started = True
                        task_status.started()
                    if answering is not None:
                        answering.set()
                        answering = None
                    request = await self._requests.receive()
            except Exception as exc:  # the dial failed, or the open connection died under us
                if not started:
                    raise
                if request is None:
                    self._rpc = None
                    self.failure = sole_exception(exc)
                    if answering is not None:
                        answering.set()
                        answering = None
                # else: the old connection failed while being closed: irrelevant, a new one follows
            if request is None:
                request = await self._requests.receive()
            answering = request

    async def reconnect(self, generation: int) -> None:
        """Replace connection number ``generation`` (the caller saw it fail);
        a no-op when it was replaced already. Raises UnreachableError when the
        node cannot be reached again."""
        async with self._lock:
            if self.generation != generation and self._rpc is not None:
                return
            done = trio.Event()
            await self._send_request.send(done)
            await done.wait()
            if self.failure is not None:
                raise UnreachableError(f"lost the connection to {self.address} and could not open a new one: "
                                       f"{self.failure}") from None

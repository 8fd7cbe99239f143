"""Talk to a node from outside: an ephemeral identity, one connection, one RPC stream.

The connection is made by the light dialer (node/p2p/dialer/), not by a
py-libp2p host: a command that calls one method must not spend most of a
second importing libp2p. This module, and what it imports, loads neither
libp2p nor DuckDB (tests/architecture/test_cli_imports.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio

from node.base.errors import UnreachableError, UserError, sole_exception
from node.base.keys import Identity
from node.p2p.dialer import NodeAddress, open_connection
from node.p2p.dialer.multistream import NegotiationError
from node.p2p.framing import DEFAULT_MAX_FRAME
from node.p2p.rpc_client import RPC_PROTOCOL, RpcClient, open_rpc_client, rpc_client_over
from node.p2p.stream_errors import StreamError

__all__ = ["call_node", "connect_to_node", "open_rpc_client", "parse_node_addr"]


def parse_node_addr(text: str) -> multiaddr.Multiaddr:
    """A node address: a TCP multiaddr ending in /p2p/<peer id>."""
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:
        raise UserError(f"--node {text!r}: not a multiaddr ({exc})", exit_code=2) from None
    names = [p.name for p in addr.protocols()]
    if "tcp" not in names or "p2p" not in names:
        raise UserError(f"--node {text!r}: expected /ip4/HOST/tcp/PORT/p2p/PEER_ID", exit_code=2)
    return addr


@asynccontextmanager
async def connect_to_node(
    addr: str | multiaddr.Multiaddr,
    *,
    identity: Identity | None = None,
    timeout: float = 10.0,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> AsyncIterator[RpcClient]:
    """Dial a node and open an RPC stream; UnreachableError if that fails in
    time, with the reason: the port closed, the peer id not the node's, the
    handshake failed, or the deadline passed (and during which step)."""
    maddr = parse_node_addr(addr) if isinstance(addr, str) else addr
    try:
        address = NodeAddress.from_multiaddr(maddr)
    except ValueError as exc:
        raise UserError(f"--node {str(maddr)!r}: {exc}", exit_code=2) from None
    seed = (identity or Identity.generate()).seed
    refused: UnreachableError | None = None
    async with open_connection(address, seed, timeout=timeout) as connection:
        stream = None
        try:
            with trio.fail_after(timeout):
                stream = await connection.open_stream(RPC_PROTOCOL)
        except trio.TooSlowError:
            refused = UnreachableError(f"{maddr} did not open an RPC stream within {timeout:g} s")
        except (NegotiationError, StreamError) as exc:
            # Connected, then the node closed the connection or refused the stream
            # (limits, shutting down): as unreachable as a failed dial.
            refused = UnreachableError(f"{maddr} did not open an RPC stream: {_short(exc)}")
        if stream is not None:
            async with rpc_client_over(stream, max_frame=max_frame) as client:
                yield client
    if refused is not None:
        raise refused  # here, outside the connection's nursery: not wrapped in an exception group


async def call_node(addr: str, method: str, params: Any = None, *, timeout: float = 30.0) -> Any:
    """One call to one node. Raises the error itself (RpcCallError,
    UnreachableError...), not the nursery exception groups around it."""
    try:
        async with connect_to_node(addr, timeout=min(timeout, 10.0)) as client:
            return await client.call(method, params, timeout=timeout)
    except BaseExceptionGroup as group:
        raise sole_exception(group) from None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]

"""Talk to a node from outside: an ephemeral identity, one connection, one RPC stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.errors import UnreachableError, UserError, sole_exception
from node.base.keys import Identity
from node.p2p.framing import DEFAULT_MAX_FRAME
from node.p2p.host import build_host, running_host
from node.p2p.peers import PING_PROTOCOL, answer_pings
from node.p2p.rpc import RpcClient, open_rpc_client


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
    """Dial a node and open an RPC stream; UnreachableError if that fails in time."""
    maddr = parse_node_addr(addr) if isinstance(addr, str) else addr
    info = info_from_p2p_addr(maddr)
    host = build_host(identity or Identity.generate(), max_connections=8)
    host.set_stream_handler(PING_PROTOCOL, answer_pings)  # the node's keepalive pings clients too
    async with running_host(host, []):
        try:
            with trio.fail_after(timeout):
                await host.connect(info)
        except trio.TooSlowError:
            raise UnreachableError(f"could not reach {maddr} within {timeout:g} s") from None
        except Exception as exc:
            raise UnreachableError(f"could not reach {maddr}: {_short(exc)}") from None
        opened = False
        try:
            async with open_rpc_client(host, info.peer_id, timeout=timeout, max_frame=max_frame) as client:
                opened = True
                yield client
        except trio.TooSlowError:
            raise UnreachableError(f"{maddr} did not open an RPC stream within {timeout:g} s") from None
        except Exception as exc:
            if opened:
                raise  # the caller's own failure, not ours to rename
            # Connected, then the node closed the connection or refused the stream
            # (limits, shutting down): as unreachable as a failed dial.
            raise UnreachableError(f"{maddr} did not open an RPC stream: {_short(exc)}") from None


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

"""The libp2p attackers: one host with a fresh identity per connection.

Each :class:`Attacker` is a real libp2p host (Noise + yamux) that answers the
node's pings and otherwise obeys no client library: the attacks of
node/testnet/attack_connections.py, attack_streams.py and attack_rpc.py
connect through :func:`attacker_session` (one) or :func:`connected_attackers`
(many at once, with the handshakes in flight bounded).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.custom_types import TProtocol

from node.base.keys import Identity
from node.p2p.host import build_host, running_host
from node.p2p.peers import PING_PROTOCOL, answer_pings
from node.p2p.rpc import RPC_PROTOCOL
from node.testnet.attack_kit import (
    CONNECT_TIMEOUT_S,
    DEFAULT_SOURCES,
    HANDSHAKE_CONCURRENCY,
    AttackReport,
    Target,
    failure_kind,
    raise_fd_limit,
)


class Attacker:
    """One libp2p host with a fresh identity, connected (or not) to the target."""

    def __init__(self, target: Target, source: str = "") -> None:
        self.target = target
        self.source = source
        self.host = build_host(Identity.generate(), max_connections=4)
        # A real client answers the node's keepalive pings, so the attack is not
        # dropped for being dead: it is dropped only if the node's limits drop it.
        self.host.set_stream_handler(PING_PROTOCOL, answer_pings)

    @property
    def connection(self) -> Any:
        conns = self.host.get_network().connections.get(self.target.peer_info.peer_id, [])
        return conns[0] if conns else None

    async def connect(self, timeout: float) -> None:
        """Dial (from ``source`` when given: libp2p's own source-bound dial) and
        run Noise + yamux; raises what the dial raised."""
        peer = self.target.peer_info
        with trio.fail_after(timeout):
            if self.source:
                await self.host.get_network().dial_addr(peer.addrs[0], peer.peer_id, source=(self.source, 0))
            else:
                await self.host.connect(peer)

    async def open_stream(self, protocol: str = RPC_PROTOCOL) -> Any:
        return await self.host.new_stream(self.target.peer_info.peer_id, [TProtocol(protocol)])

    def allow_many_streams(self) -> None:
        """Lift the *attacker's own* yamux cap of 256 outbound streams per
        connection: a hostile client is not bound by our client library."""
        muxed = getattr(self.connection, "muxed_conn", None)
        if muxed is not None and hasattr(muxed, "stream_backlog_semaphore"):
            muxed.stream_backlog_limit = 1_000_000
            muxed.stream_backlog_semaphore = trio.Semaphore(1_000_000)


@asynccontextmanager
async def attacker_session(target: Target, source: str, report: AttackReport, limiter: trio.CapacityLimiter,
                   connect_timeout: float) -> AsyncIterator[Attacker | None]:
    """A fresh-identity host connected to the target (None when the node did not
    take the connection; counted in ``report``); closed on exit, bounded."""
    attacker = Attacker(target, source)
    async with running_host(attacker.host, []):
        report.attempted += 1
        connected = False
        try:
            async with limiter:
                await attacker.connect(connect_timeout)
            connected = True
            report.opened += 1
        except trio.TooSlowError:
            report.timed_out += 1
        except Exception as exc:
            report.refused += 1
            report.errors[f"connect: {failure_kind(exc)}"] += 1
        yield attacker if connected else None


@asynccontextmanager
async def connected_attackers(target: Target, count: int, report: AttackReport, *, sources: Sequence[str] = DEFAULT_SOURCES,
                     connect_timeout: float = CONNECT_TIMEOUT_S) -> AsyncIterator[list[Attacker]]:
    """``count`` fresh-identity hosts, each connected to the target (those that
    could be); all closed on exit. Connect outcomes go into ``report``."""
    raise_fd_limit()
    connected: list[Attacker] = []
    limiter = trio.CapacityLimiter(HANDSHAKE_CONCURRENCY)
    release = trio.Event()

    async def run_one(index: int, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        source = sources[index % len(sources)] if sources else ""
        async with attacker_session(target, source, report, limiter, connect_timeout) as attacker:
            if attacker is not None:
                connected.append(attacker)
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starting:
            for index in range(count):
                starting.start_soon(nursery.start, run_one, index)
        try:
            yield connected
        finally:
            release.set()  # each host closes through running_host (bounded)

"""py-libp2p subclasses that fix its swarm and yamux for a long-running daemon.

libp2p is pinned exactly (pyproject.toml): these override a few private
methods of 0.8.1. Each override says which upstream behaviour it replaces
and why; tests/p2p/ fails if any of them stops applying. Which connections
the swarm keeps is :mod:`node.p2p.admission`'s decision.
"""

from __future__ import annotations

import contextvars
import logging
import os
from typing import Any

import trio
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.exceptions import SwarmException
from libp2p.network.swarm import Swarm
from libp2p.stream_muxer.yamux.yamux import Yamux

from node.p2p.admission import ConnectionAdmission, PendingHandshake, close_quietly
from node.p2p.budget import BudgetExceeded
from node.p2p.fastpath import Baton
from node.p2p.muxer import BpciYamux

log = logging.getLogger("metanode.p2p.swarm")

# go-yamux semantics for window updates: one update per half window
# consumed. py-libp2p defaults to also sending one after every read, which
# doubles the frames of request/response traffic (each small message is
# answered by a WINDOW_UPDATE). Upstream reads this switch from the
# environment on every call; an operator's explicit setting wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")


# The pending handshake of the task running an inbound upgrade: add_conn,
# called from inside upstream's upgrade, finds it here.
_CURRENT_HANDSHAKE: contextvars.ContextVar[PendingHandshake | None] = contextvars.ContextVar(
    "metanode_pending_handshake", default=None)


class _CountingRawConnection(RawConnection):
    """A raw connection that tells its pending handshake when the dialer speaks."""

    handshake: PendingHandshake | None = None

    async def read(self, n: int | None = None) -> bytes:
        data = await super().read(n)
        if self.handshake is not None:
            self.handshake.received += len(data)
        return data


async def _first_byte(read_write_closer: Any) -> None:
    """Wait until the dialer has sent something (it speaks first: its
    multistream-select header). A silent connection then costs the node a
    task and a wait, not upstream's negotiation machinery: under a silent
    flood that machinery was most of a validator's loop (py-spy, wave A of
    test_adversary), and honest handshakes waited behind it."""
    sock = getattr(getattr(read_write_closer, "stream", None), "socket", None)
    if sock is not None:
        await trio.lowlevel.wait_readable(sock)


def _remote_ip(read_write_closer: Any) -> str:
    try:
        remote = read_write_closer.get_remote_address()
    except Exception:
        remote = None
    return str(remote[0]) if remote else "unknown"


class HardenedSwarm(Swarm):
    """A Swarm that admits connections on a budget and whose inbound handler
    lives exactly as long as its connection.

    Upstream keeps every accepted connection's handler task (and its
    inbound-limiter slot) alive until the whole swarm stops, so a daemon
    stops accepting after ``max_connections - min_connections`` inbound
    connections in its lifetime and leaks a task per connection. Upstream
    also counts a silent TCP connection like an authenticated one and gives
    it the whole upgrade timeout: :class:`ConnectionAdmission` (set by
    node/p2p/host.py's build_host) replaces that inbound limiter.
    """

    admission: ConnectionAdmission

    async def _handle_inbound_connection(self, read_write_closer: Any, maddr: Any) -> None:
        handshake = self.admission.admit_pending(_remote_ip(read_write_closer))
        if handshake is None:
            # Closed at once: a refused stranger costs a descriptor for one accept.
            await close_quietly(read_write_closer)
            return
        token = _CURRENT_HANDSHAKE.set(handshake)
        try:
            await self._do_handle_inbound_connection(read_write_closer, maddr, handshake)
        finally:
            handshake.finish()
            _CURRENT_HANDSHAKE.reset(token)

    async def _do_handle_inbound_connection(self, read_write_closer: Any, maddr: Any, failure_event: Any) -> None:
        handshake = failure_event if isinstance(failure_event, PendingHandshake) else None
        remote_maddr = self._build_remote_multiaddr(read_write_closer)
        if remote_maddr is not None and not await self.connection_gate.is_allowed(remote_maddr):
            await close_quietly(read_write_closer)
            return
        raw_conn = _CountingRawConnection(read_write_closer, False)
        raw_conn.handshake = handshake
        muxed_conn = None
        with handshake.scope if handshake is not None else trio.CancelScope():
            try:
                await _first_byte(read_write_closer)
                muxed_conn = await self.upgrade_inbound_raw_conn(raw_conn, maddr)
            except Exception:
                # Handshake failures (garbage, plaintext dialers, timeouts,
                # refusals) are expected from hostile or confused peers: drop this one only.
                pass
        if muxed_conn is None:
            if handshake is not None and handshake.scope.cancelled_caught and not handshake.evicted:
                self.admission.handshake_timeouts += 1
            await close_quietly(raw_conn)
            return
        # The swarm's connections are SwarmConns (typed upstream as INetConn, which has no event_closed).
        swarm_conn = next(
            (c for c in self.connections.get(muxed_conn.peer_id, [])
             if isinstance(c, SwarmConn) and c.muxed_conn is muxed_conn),
            None,
        )
        if swarm_conn is None:  # rejected at registration (limits)
            await close_quietly(muxed_conn)
            return
        await swarm_conn.event_closed.wait()

    async def add_conn(self, muxed_conn: Any, direction: str = "unknown") -> Any:
        handshake = _CURRENT_HANDSHAKE.get()
        if handshake is not None:
            handshake.finish()  # authenticated: no longer pending, no handshake deadline
        already = any(c.muxed_conn is muxed_conn for c in self.connections.get(muxed_conn.peer_id, []))
        admission = getattr(self, "admission", None)
        if admission is not None and not already:
            try:
                await admission.admit(self, muxed_conn, handshake.ip if handshake is not None else "")
            except BudgetExceeded as refusal:
                log.debug("connection refused: %s (peer %s)", refusal, muxed_conn.peer_id)
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await close_quietly(muxed_conn)
                raise SwarmException(f"connection refused: {refusal}") from None
        # Upstream's muxer negotiation constructs Yamux directly, ignoring the
        # configured class, so the subclass is applied here, before start.
        if type(muxed_conn) is Yamux:
            BpciYamux.adopt(muxed_conn)  # and its Noise session becomes a FastNoiseSession
        try:
            conn = await super().add_conn(muxed_conn, direction)
        except BaseException:
            if admission is not None and not already:
                admission.release(muxed_conn)
            raise
        if type(conn) is SwarmConn:
            conn.__class__ = BpciSwarmConn
        return conn

    def remove_conn(self, swarm_conn: Any) -> None:
        super().remove_conn(swarm_conn)
        admission = getattr(self, "admission", None)
        if admission is not None and not getattr(swarm_conn, "_shared_muxed_conn", False):
            admission.release(swarm_conn.muxed_conn)

    def _schedule_auto_connect(self) -> None:
        """Never dial peers on our behalf: node/p2p/peers.py decides whom to dial."""


class NoAutoConnector:
    """Stands in for libp2p's AutoConnector, which dials every peer in the
    peerstore whenever connections fall below the watermarks' midpoint, so
    dropped peers come back on their own and ``disconnect()`` never sticks."""

    _is_connecting = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def run_background_task(self, nursery: Any) -> None:
        pass

    async def maybe_connect(self) -> None:
        pass


class BpciSwarmConn(SwarmConn):
    """SwarmConn whose cleanup yields with a checkpoint instead of sleeping 100 ms.

    Upstream sleeps 0.1 s on every connection close "to force a context
    switch"; a checkpoint is a context switch. Short-lived RPC clients paid
    it on every call.
    """

    async def _cleanup(self) -> None:
        self.swarm.remove_conn(self)
        if not getattr(self, "_shared_muxed_conn", False):
            try:
                if not self.muxed_conn.is_closed:
                    await self.muxed_conn.close()
            except Exception as exc:
                log.debug("error closing muxed connection: %s", exc)
        for stream in self.streams.copy():
            try:
                await stream.reset()
            except Exception as exc:
                log.debug("error resetting stream: %s", exc)
        await trio.lowlevel.checkpoint()
        await self._notify_disconnected()

    async def _add_stream(self, muxed_stream: Any) -> Any:
        net_stream = await super()._add_stream(muxed_stream)
        # NetStream takes its trio.Lock around every read and write: a task
        # switch each time, for a state check that never waits in practice.
        net_stream._state_lock = Baton()  # type: ignore[assignment]  # the same async-with interface
        return net_stream

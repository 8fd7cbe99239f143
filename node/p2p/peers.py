"""Peer management: keepalive on every connection, persistent-peer redial.

py-libp2p has no keepalive: a peer frozen with SIGSTOP leaves reads blocked
forever, and it does not redial peers once they are lost. Here every
connection gets a ping loop on ``/metanode/ping/1.0.0`` (one long-lived
stream, a frame echoed back within ``keepalive_timeout``); a connection that
misses it is closed, so a dead peer is detected within
``keepalive_interval + keepalive_timeout``. Each persistent peer has a task
that redials it with capped exponential backoff for the daemon's whole
life, including after every peer was lost.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import multiaddr
import structlog
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import MultiselectClientError

from node.base.retry import Backoff, retry
from node.p2p.framing import FramedStream, FrameError
from node.p2p.notifee import ChannelNotifee

PING_PROTOCOL = TProtocol("/metanode/ping/1.0.0")
PING_SIZE = 8

log = structlog.get_logger("metanode.peers")


@dataclass
class PeerState:
    peer_id: str
    direction: str
    remote_addr: str
    connected_at: float
    latency_ms: float | None = None
    persistent: bool = False


async def answer_pings(stream: Any) -> None:
    """Echo keepalive pings. Every metanode host serves this, clients included,
    so a node can tell a live client from a dead one."""
    framed = FramedStream(stream, max_size=PING_SIZE)
    try:
        while (frame := await framed.read_frame()) is not None:
            await framed.write_frame(frame)
    except FrameError:
        await framed.reset()
        return
    except Exception:
        return
    await framed.close()


class _ConnectionEvents(ChannelNotifee[tuple[str, Any]]):
    """Forwards libp2p connection events into the peer manager's channel."""

    async def connected(self, network: Any, conn: Any) -> None:
        self.push(("connected", conn))

    async def disconnected(self, network: Any, conn: Any) -> None:
        self.push(("disconnected", conn))


class PeerManager:
    """Keeps connections alive and persistent peers connected."""

    def __init__(
        self,
        host: Any,
        *,
        persistent_peers: list[multiaddr.Multiaddr] = (),  # type: ignore[assignment]
        keepalive_interval: float = 5.0,
        keepalive_timeout: float = 10.0,
        dial_timeout: float = 5.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self.host = host
        self.persistent = [info_from_p2p_addr(a) for a in persistent_peers]
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.dial_timeout = dial_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        # A connection that lives this long is stable: the flap backoff starts over.
        self._stable_after_s = max(keepalive_interval, 1.0)
        self.peers: dict[str, PeerState] = {}
        self.dial_attempts: dict[str, int] = {}
        self.keepalive_failures = 0
        self._changed = trio.Event()
        host.set_stream_handler(PING_PROTOCOL, answer_pings)

    # -- public ------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        """Connected peers for ``net_peers``."""
        now = time.monotonic()
        persistent_ids = {p.peer_id.to_base58() for p in self.persistent}
        return [
            {
                "peer_id": s.peer_id,
                "direction": s.direction,
                "address": s.remote_addr,
                "latency_ms": None if s.latency_ms is None else round(s.latency_ms, 3),
                "connected_s": round(now - s.connected_at, 3),
                "persistent": s.peer_id in persistent_ids,
            }
            for s in sorted(self.peers.values(), key=lambda s: s.peer_id)
        ]

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[tuple[str, Any]](math.inf)
        notifee = _ConnectionEvents(send)
        self.host.get_network().register_notifee(notifee)
        try:
            async with trio.open_nursery() as nursery:
                for info in self.persistent:
                    nursery.start_soon(self._maintain, info)
                task_status.started()
                async for kind, conn in receive:
                    if kind == "connected":
                        self._on_connected(conn)
                        nursery.start_soon(self._keepalive, conn)
                    else:
                        self._on_disconnected(conn)
        finally:
            self.host.get_network().remove_notifee(notifee)

    # -- connection tracking -----------------------------------------------
    def _on_connected(self, conn: Any) -> None:
        peer_id = conn.muxed_conn.peer_id.to_base58()
        raw = getattr(conn, "direction", None)
        direction = getattr(raw, "name", str(raw)).lower()
        try:
            addrs = conn.get_transport_addresses()
            remote = str(addrs[0]) if addrs else ""
        except Exception:
            remote = ""
        self.peers[peer_id] = PeerState(peer_id, direction, remote, time.monotonic())
        self._notify_change()
        log.debug("peer connected", peer=peer_id, direction=direction)

    def _on_disconnected(self, conn: Any) -> None:
        peer_id = conn.muxed_conn.peer_id.to_base58()
        if not self.host.get_network().get_connections(conn.muxed_conn.peer_id):
            self.peers.pop(peer_id, None)
        self._notify_change()
        log.debug("peer disconnected", peer=peer_id)

    def _notify_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _is_connected(self, peer_id: ID) -> bool:
        return any(not c.is_closed for c in self.host.get_network().get_connections(peer_id))

    # -- keepalive ---------------------------------------------------------
    async def _keepalive(self, conn: Any) -> None:
        """Ping over ``conn`` until it closes; close it if a ping goes unanswered."""
        peer = conn.muxed_conn.peer_id
        framed: FramedStream | None = None
        try:
            while not conn.is_closed:
                with trio.move_on_after(self.keepalive_interval):
                    await conn.event_closed.wait()
                    return
                with trio.fail_after(self.keepalive_timeout):
                    if framed is None:
                        framed = FramedStream(await self.host.new_stream(peer, [PING_PROTOCOL]), max_size=PING_SIZE)
                    nonce = os.urandom(PING_SIZE)
                    started = time.perf_counter()
                    await framed.write_frame(nonce)
                    if await framed.read_frame() != nonce:
                        raise FrameError("ping answered with the wrong bytes")
                state = self.peers.get(peer.to_base58())
                if state is not None:
                    elapsed = (time.perf_counter() - started) * 1000
                    state.latency_ms = elapsed if state.latency_ms is None else 0.8 * state.latency_ms + 0.2 * elapsed
        except Exception as exc:  # TooSlowError, stream errors, framing: the link is not healthy
            if conn.is_closed:
                return
            if framed is None and isinstance(exc.__cause__, MultiselectClientError):
                # Not a metanode peer (it does not speak the ping protocol):
                # nothing to check its liveness with; max_peers bounds such peers.
                log.debug("peer does not answer keepalive pings", peer=peer.to_base58())
                return
            self.keepalive_failures += 1
            log.warning("peer unresponsive; closing connection", peer=peer.to_base58(), reason=type(exc).__name__)
            with trio.move_on_after(2):
                await conn.close()
        finally:
            if framed is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await framed.close()

    async def _forget_dead_connections(self, peer: ID) -> None:
        """Drop the swarm's entries for a peer whose connections are all dead,
        so the next dial really dials."""
        with trio.move_on_after(2):
            await self.host.get_network().close_peer(peer)

    # -- persistent peers --------------------------------------------------
    async def _maintain(self, info: Any) -> None:
        """Keep one persistent peer connected, forever: while it is connected, wait
        for a change; once it is not, redial it until it is (backoff from the first
        failure of each outage on).

        A dial that succeeds but whose connection dies at once (the peer refuses
        us after the handshake, or still holds our dead connection) is a failure
        too: the backoff carries over such flaps, or the loop would redial as fast
        as handshakes complete and starve the node."""
        key = info.peer_id.to_base58()
        # Jitter spreads the redials of a restarted cluster.
        redial = Backoff(self.backoff_base, factor=2.0, cap=self.backoff_cap, jitter=(0.5, 1.0))

        async def dial() -> bool:
            """True once this dial connected; False if the peer was back already (it dialled us)."""
            if self._is_connected(info.peer_id):
                return False
            self.dial_attempts[key] = self.dial_attempts.get(key, 0) + 1
            # libp2p blocks a peer for 60 s after a failed dial; our
            # backoff replaces that policy.
            self.host.get_network().unblock_peer(info.peer_id)
            with trio.fail_after(self.dial_timeout):
                await self.host.connect(info)
            if not self._is_connected(info.peer_id):
                # libp2p returns at once when it still lists a dead
                # connection: that is a failed dial, not a success.
                await self._forget_dead_connections(info.peer_id)
                raise ConnectionError("dial returned without a live connection")
            return True

        def failed(attempt: int, delay: float, exc: BaseException) -> None:
            log.debug("dial failed", peer=key, attempt=attempt, retry_in_s=round(delay, 2), reason=str(exc)[:200])

        connected_at: float | None = None  # when our last successful dial connected
        flaps = 0  # consecutive connections that died before they were stable
        while True:
            if self._is_connected(info.peer_id):
                changed = self._changed
                if self._is_connected(info.peer_id):
                    await changed.wait()
                continue
            if connected_at is not None:
                lived = trio.current_time() - connected_at
                flaps = flaps + 1 if lived < self._stable_after_s else 0
                connected_at = None
                if flaps:
                    log.debug("persistent peer connection died at once", peer=key, flaps=flaps)
                    await trio.sleep(redial.delay(flaps - 1))
            if await retry(dial, backoff=redial, retry_on=Exception, on_retry=failed):
                connected_at = trio.current_time()
                if not flaps:
                    log.info("connected to persistent peer", peer=key)

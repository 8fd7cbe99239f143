"""py-libp2p subclasses that fix its swarm and yamux for a long-running daemon.

libp2p is pinned exactly (pyproject.toml): these override a few private
methods of 0.8.1. Each override says which upstream behaviour it replaces
and why; tests/p2p/ fails if any of them stops applying.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Any

import trio
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.swarm import Swarm
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import (
    GO_AWAY_NORMAL,
    HEADER_SIZE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

log = logging.getLogger("metanode.p2p.swarm")

# go-yamux semantics for window updates: one update per half window
# consumed. py-libp2p defaults to also sending one after every read, which
# doubles the frames of request/response traffic (each small message is
# answered by a WINDOW_UPDATE). Upstream reads this switch from the
# environment on every call; an operator's explicit setting wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")


class HardenedSwarm(Swarm):
    """A Swarm whose inbound handler lives exactly as long as its connection.

    Upstream keeps every accepted connection's handler task (and its
    inbound-limiter slot) alive until the whole swarm stops, so a daemon
    stops accepting after ``max_connections - min_connections`` inbound
    connections in its lifetime and leaks a task per connection.
    """

    async def _do_handle_inbound_connection(self, read_write_closer: Any, maddr: Any, failure_event: Any) -> None:
        remote_maddr = self._build_remote_multiaddr(read_write_closer)
        if remote_maddr is not None and not await self.connection_gate.is_allowed(remote_maddr):
            await _close_quietly(read_write_closer)
            return
        raw_conn = RawConnection(read_write_closer, False)
        try:
            muxed_conn = await self.upgrade_inbound_raw_conn(raw_conn, maddr)
        except Exception:
            # Handshake failures (garbage, plaintext dialers, timeouts) are
            # expected from hostile or confused peers: drop this one only.
            await _close_quietly(raw_conn)
            return
        # The swarm's connections are SwarmConns (typed upstream as INetConn, which has no event_closed).
        swarm_conn = next(
            (c for c in self.connections.get(muxed_conn.peer_id, [])
             if isinstance(c, SwarmConn) and c.muxed_conn is muxed_conn),
            None,
        )
        if swarm_conn is None:  # rejected at registration (limits)
            await _close_quietly(muxed_conn)
            return
        await swarm_conn.event_closed.wait()

    async def add_conn(self, muxed_conn: Any, direction: str = "unknown") -> Any:
        # Upstream's muxer negotiation constructs Yamux directly, ignoring the
        # configured class, so the subclass is applied here, before start.
        if type(muxed_conn) is Yamux:
            muxed_conn.__class__ = BpciYamux
        conn = await super().add_conn(muxed_conn, direction)
        if type(conn) is SwarmConn:
            conn.__class__ = BpciSwarmConn
        return conn

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


async def _close_quietly(closable: Any) -> None:
    try:
        await closable.close()
    except Exception:
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


# Noise carries at most 65,535 bytes per message, 16 of them the AEAD tag:
# a yamux frame (12-byte header + payload) that fits is sent as one message
# instead of being split in two.
NOISE_MAX_PLAINTEXT = 65535 - 16
FRAME_PAYLOAD = NOISE_MAX_PLAINTEXT - HEADER_SIZE
WINDOW_WAIT_S = 5.0


class BpciYamuxStream(YamuxStream):
    """A yamux stream whose writer sleeps until the send window grows.

    Upstream polls every 10 ms while the window is exhausted, which caps one
    stream at roughly a window (256 KiB) per 10 ms. Here window updates and
    close/reset wake the writer at once.
    """

    # Held in the instance __dict__ (set by adopt) behind the properties below.
    _send_window: int
    _closed: bool
    _wake: trio.Event

    @classmethod
    def adopt(cls, stream: YamuxStream) -> None:
        state = stream.__dict__
        send_window, closed = state.pop("send_window"), state.pop("closed")
        stream.__class__ = cls
        state["_wake"] = trio.Event()
        state["_send_window"], state["_closed"] = send_window, closed

    def _wake_writer(self) -> None:
        wake = self.__dict__.get("_wake")
        if wake is not None:
            wake.set()
            self.__dict__["_wake"] = trio.Event()

    @property
    def send_window(self) -> int:
        return self._send_window

    @send_window.setter
    def send_window(self, value: int) -> None:
        grew = value > self.__dict__.get("_send_window", 0)
        self.__dict__["_send_window"] = value
        if grew:
            self._wake_writer()

    @property
    def closed(self) -> bool:
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self.__dict__["_closed"] = value
        if value:
            self._wake_writer()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        total, sent = len(view), 0
        while sent < total:
            frame = None
            async with self.rw_lock.write_lock():
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                async with self.window_lock:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    if self.send_window > 0:
                        size = min(self.send_window, FRAME_PAYLOAD, total - sent)
                        self.send_window -= size
                        header = struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_DATA, 0, self.stream_id, size)
                        frame = header + view[sent : sent + size]
                    else:
                        wake = self._wake
            if frame is None:
                with trio.move_on_after(WINDOW_WAIT_S) as scope:
                    await wake.wait()
                if scope.cancelled_caught:
                    raise MuxedStreamError(f"Timed out waiting for window update after {WINDOW_WAIT_S:g} seconds.")
                continue
            await self.conn._write_frame(frame)
            sent += len(frame) - HEADER_SIZE


class BpciYamux(Yamux):
    """Yamux with BpciYamuxStream streams and a close without a fixed 100 ms sleep.

    Upstream constructs YamuxStream directly, so streams are adopted as
    they are opened or accepted, before anyone writes to them.
    """

    async def open_stream(self) -> Any:
        stream = await super().open_stream()
        if type(stream) is YamuxStream:
            BpciYamuxStream.adopt(stream)
        return stream

    async def accept_stream(self) -> Any:
        stream = await super().accept_stream()
        if type(stream) is YamuxStream:
            BpciYamuxStream.adopt(stream)
        return stream

    async def close(self, error_code: int = GO_AWAY_NORMAL) -> None:
        async with self.streams_lock:
            if not self.event_shutting_down.is_set():
                try:
                    await self._write_frame(struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_GO_AWAY, 0, 0, error_code))
                except Exception as exc:
                    log.debug("failed to send GO_AWAY: %s", exc)
                self.event_shutting_down.set()
                self.new_stream_send_channel.close()
                for stream in self.streams.values():
                    stream.closed = stream.send_closed = stream.recv_closed = True
                    event = self.stream_events.get(stream.stream_id)
                    if event is not None:
                        event.set()
                self.streams.clear()
                self.stream_buffers.clear()
                self.stream_events.clear()
        try:
            await self.secured_conn.close()
        except Exception as exc:
            log.debug("error closing secured connection: %s", exc)
        self.event_closed.set()
        if self.on_close is not None:
            await self.on_close()
        await trio.lowlevel.checkpoint()

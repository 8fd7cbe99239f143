"""Yamux for the BPCI host: py-libp2p's Yamux with our data path.

py-libp2p 0.8.1 (pinned) reads each yamux header and body with exact reads
through the secure session, takes two trio locks per frame on each side,
formats debug strings for every frame sent and received, sleeps-polls for
window updates, and may send a WINDOW_UPDATE per read. Each of those is a
trio checkpoint (a task switch under load). Here, over a
:class:`node.p2p.fastpath.FastNoiseSession`:

* the reader (:meth:`BpciYamux.handle_incoming`) parses every complete frame
  of a decrypted chunk in one pass and applies DATA and WINDOW_UPDATE frames
  synchronously: no await per frame;
* a stream write packs all the frames its send window allows into one write
  of the session (one ``send_all``), and a writer out of window sleeps until
  an update or a close wakes it;
* a read takes what is buffered synchronously and returns credit go-yamux's
  way: one WINDOW_UPDATE once half the window has been consumed (with
  upstream's window auto-tuning).

The frames are upstream's and the yamux spec's, byte for byte (docs/wire.md).
What stays enforced: a DATA frame body must arrive within upstream's data
read timeout (60 s) of its header; a DATA frame over 16 MiB, a frame of
unknown version or type closes the connection (GO_AWAY protocol error); a
peer that sends past a stream's receive window gets that stream reset (the
buffer per stream is bounded by the window; upstream only logged it).
A connection that could not be adopted (not Noise over TCP) runs upstream's
reader unchanged.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import trio
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamError, MuxedStreamReset
from libp2p.stream_muxer.yamux.yamux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    MAX_WINDOW_SIZE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
    _yamux_data_read_timeout,
)

from node.p2p.fastpath import NOISE_MAX_PLAINTEXT, Baton, FastNoiseSession

log = logging.getLogger("metanode.p2p.muxer")

_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)
# A yamux frame (12-byte header + payload) that fits one Noise message is sent
# as one instead of being split in two.
FRAME_PAYLOAD = NOISE_MAX_PLAINTEXT - HEADER_SIZE
# What one stream write hands the session at once: several frames, one send_all.
# Bounded so that one bulk stream holds the connection's sender for no longer
# than 256 KiB take to leave (other streams' messages wait behind it).
WRITE_BATCH = 256 * 1024
WINDOW_WAIT_S = 5.0


class BpciYamuxStream(YamuxStream):
    """A yamux stream with batched writes, synchronous buffered reads and a
    writer that sleeps until the send window grows (upstream polls every 10 ms)."""

    # Held in the instance __dict__ (set by adopt) behind the properties below.
    _send_window: int
    _closed: bool
    _wake: trio.Event
    _write_baton: Baton

    @classmethod
    def adopt(cls, stream: YamuxStream) -> None:
        state = stream.__dict__
        send_window, closed = state.pop("send_window"), state.pop("closed")
        stream.__class__ = cls
        state["_wake"] = trio.Event()
        state["_send_window"], state["_closed"] = send_window, closed
        state["_write_baton"] = Baton()

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
        # One write's frames stay together: concurrent writers of a stream take turns.
        await self._write_baton.acquire()
        try:
            while sent < total:
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                if self.closed:
                    raise MuxedStreamError("Stream is closed")
                window = self.send_window
                if window <= 0:
                    wake = self._wake
                    with trio.move_on_after(WINDOW_WAIT_S) as scope:
                        await wake.wait()
                    if scope.cancelled_caught:
                        raise MuxedStreamError(f"Timed out waiting for window update after {WINDOW_WAIT_S:g} seconds.")
                    continue
                size = min(window, total - sent, WRITE_BATCH)
                self.send_window = window - size
                parts: list[bytes | memoryview] = []
                at, end = sent, sent + size
                while at < end:
                    step = min(FRAME_PAYLOAD, end - at)
                    parts.append(_HEADER.pack(0, TYPE_DATA, 0, self.stream_id, step))
                    parts.append(view[at : at + step])
                    at += step
                await self.conn._write_frame(b"".join(parts))
                sent = end
        finally:
            self._write_baton.release()

    def _credit(self) -> int:
        """The WINDOW_UPDATE increment due after a read (0: none yet).

        go-yamux's rule: credit what was consumed once it reaches half the
        window, doubling the window (up to 16 MiB) when updates come within
        4 RTTs (upstream's auto-tuning)."""
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        consumed = self.target_recv_window - (self.recv_window + buffered)
        if consumed <= 0 or consumed < self.target_recv_window // 2:
            return 0
        self._pending_recv_release = 0
        return self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)

    async def read(self, n: int | None = -1) -> bytes:
        if not isinstance(self.conn, BpciYamux) or not self.conn.fast:
            return await super().read(n)
        conn, sid = self.conn, self.stream_id
        waited = False
        while True:
            buffer = conn.stream_buffers.get(sid)
            if buffer:
                if n is None or n < 0 or n >= len(buffer):
                    data = bytes(buffer)
                    buffer.clear()
                else:
                    data = bytes(buffer[:n])
                    del buffer[:n]
                if self.closed and not buffer:
                    conn._finalize_stream_locked(self, fully_closed=True)
                credit = 0 if self.recv_closed else self._credit()  # nothing more is coming: no credit
                if credit:
                    await self.send_window_update(credit)
                elif not waited:
                    # A schedule point, not only a cancel check: a peer flooding one stream must
                    # not keep the loop from other connections' handshakes (trio's fairness rests
                    # on every read yielding; a buffered read awaits nothing else).
                    await trio.lowlevel.checkpoint()
                return data
            if buffer is None:
                # Upstream's order: a stream already gone when read is called
                # reports its reset; one that goes while a read waits (the
                # connection closed under it) ends that read as EOF.
                if self.reset_received and not waited:
                    raise MuxedStreamReset("Stream was reset")
                raise MuxedStreamEOF("Stream closed")
            if self.reset_received:
                raise MuxedStreamReset("Stream was reset")
            if self.recv_closed:
                raise MuxedStreamEOF("Stream is closed for receiving")
            if conn.event_shutting_down.is_set():
                raise MuxedStreamEOF("Connection shut down")
            if self.closed:
                raise MuxedStreamReset("Stream is reset or closed")
            event = conn.stream_events.get(sid)
            if event is None:
                raise MuxedStreamEOF("Stream was removed")
            await event.wait()
            waited = True
            if conn.stream_events.get(sid) is event:
                conn.stream_events[sid] = trio.Event()


class BpciYamux(Yamux):
    """Yamux with BpciYamuxStream streams, the batched reader and writer over a
    FastNoiseSession, and a close without upstream's fixed 100 ms sleep.

    Made from upstream's Yamux by :meth:`adopt` (upstream constructs Yamux and
    YamuxStream directly): streams are adopted as they are opened or accepted,
    before anyone writes to them."""

    fast = False  # the secure session is a FastNoiseSession
    _peer_went_away = False  # the reader saw GO_AWAY or a protocol error

    @classmethod
    def adopt(cls, muxed_conn: Yamux) -> None:
        muxed_conn.__class__ = cls
        assert isinstance(muxed_conn, BpciYamux)
        muxed_conn.fast = FastNoiseSession.adopt(muxed_conn.secured_conn)

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

    async def _write_frame(self, data: bytes) -> None:
        # No per-frame debug formatting, and no extra checkpoint: the session's
        # send_all is one. The session serialises its writers itself.
        if self.fast:
            await self.secured_conn.write(data)
            return
        async with self._write_lock:
            await self.secured_conn.write(data)

    async def close(self, error_code: int = GO_AWAY_NORMAL) -> None:
        async with self.streams_lock:
            if not self.event_shutting_down.is_set():
                try:
                    await self._write_frame(_HEADER.pack(0, TYPE_GO_AWAY, 0, 0, error_code))
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

    # -- the reader ---------------------------------------------------------------
    async def handle_incoming(self) -> None:
        if not self.fast:
            await super().handle_incoming()
            return
        try:
            await self._read_frames()
        except (MuxedStreamError, trio.TooSlowError) as exc:
            log.debug("yamux connection to %s closed: %s", self.peer_id, exc)
        except Exception as exc:  # noqa: BLE001 - a dead or broken connection ends here, whatever broke it
            log.debug("yamux connection to %s ended: %s: %s", self.peer_id, type(exc).__name__, exc)
        if self.event_shutting_down.is_set() and not self._peer_went_away:
            return  # closed on our side: close() does the cleanup (and calls on_close once)
        self.event_shutting_down.set()
        await self._cleanup_on_error()

    async def _protocol_error(self, why: str) -> None:
        log.warning("yamux protocol error from %s: %s; closing the connection", self.peer_id, why)
        self._peer_went_away = True
        with trio.move_on_after(1):
            try:
                await self._write_frame(_HEADER.pack(0, TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR))
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        raise MuxedStreamError(why)

    async def _read_frames(self) -> None:
        session = self.secured_conn
        assert isinstance(session, FastNoiseSession)
        receive = session.receive_some
        unpack = _HEADER.unpack_from
        buf = bytearray()
        while not self.event_shutting_down.is_set():
            chunk = await receive()
            if not chunk:
                if buf:
                    raise MuxedStreamError(f"connection closed inside a yamux frame ({len(buf)} bytes of it)")
                return  # a clean close between frames
            buf += chunk
            at = 0
            size = len(buf)
            while size - at >= HEADER_SIZE:
                version, typ, flags, sid, length = unpack(buf, at)
                if version != 0:
                    await self._protocol_error(f"yamux version {version}")
                if typ == TYPE_DATA:
                    if length > MAX_WINDOW_SIZE:
                        await self._protocol_error(f"DATA frame of {length} bytes")
                    end = at + HEADER_SIZE + length
                    if end > size:
                        # The body is still coming: keep the frame, read on, but
                        # only for as long as upstream's data read timeout.
                        del buf[:at]
                        at, size = 0, len(buf)
                        await self._complete_body(buf, HEADER_SIZE + length)
                        size, end = len(buf), HEADER_SIZE + length
                    with memoryview(buf) as view:  # one copy, and the view is gone before buf grows
                        body = bytes(view[at + HEADER_SIZE : end])
                    at = end
                    await self._on_frame(typ, flags, sid, length, body)
                elif typ > TYPE_GO_AWAY:
                    await self._protocol_error(f"unknown frame type {typ}")
                else:
                    at += HEADER_SIZE
                    if typ == TYPE_GO_AWAY:
                        log.debug("GO_AWAY from %s (code %d)", self.peer_id, length)
                        self._peer_went_away = True
                        return
                    await self._on_frame(typ, flags, sid, length, b"")
                if self.event_shutting_down.is_set():
                    return
            if at:
                del buf[:at]

    async def _complete_body(self, buf: bytearray, need: int) -> None:
        with trio.fail_after(_yamux_data_read_timeout()):
            while len(buf) < need:
                chunk = await self.secured_conn.receive_some()  # type: ignore[attr-defined]
                if not chunk:
                    raise MuxedStreamError(f"connection closed inside a DATA frame ({len(buf)} of {need} bytes)")
                buf += chunk

    async def _on_frame(self, typ: int, flags: int, sid: int, length: int, body: bytes) -> None:
        """Apply one frame; awaits only to answer (ACK, RST, pong) or hand over a new stream."""
        if typ == TYPE_PING:
            if flags & FLAG_SYN:
                await self._write_frame(_HEADER.pack(0, TYPE_PING, FLAG_ACK, 0, length))
            elif flags & FLAG_ACK:
                rtt = trio.current_time() - self._ping_sent_time
                self._rtt = rtt if self._rtt == 0.0 else (self._rtt + rtt) / 2
                self._ping_event.set()
            return
        stream = self.streams.get(sid)
        new_stream = None
        if flags & FLAG_SYN:
            if stream is not None:  # a SYN for a stream that exists: refuse it
                await self._write_frame(_HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
                return
            stream = new_stream = YamuxStream(sid, self, False)
            BpciYamuxStream.adopt(stream)
            self.streams[sid] = stream
            self.stream_buffers[sid] = bytearray()
            self.stream_events[sid] = trio.Event()
        elif stream is None:
            return  # a late frame for a stream already gone
        if typ == TYPE_WINDOW_UPDATE:
            if length > 0:
                stream.send_window += length
        elif body:
            buffer = self.stream_buffers.get(sid)
            if buffer is not None and not stream.reset_received:
                if len(body) > stream.recv_window:
                    # Past the window it granted: the buffer would grow unbounded.
                    log.warning("yamux: %s sent %d bytes on stream %d past its window of %d; stream reset",
                                self.peer_id, len(body), sid, stream.recv_window)
                    await self._write_frame(_HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
                    flags |= FLAG_RST
                    buffer.clear()
                else:
                    buffer += body
                    stream.recv_window -= len(body)
        event = self.stream_events.get(sid)
        if flags & FLAG_FIN:
            stream.recv_closed = True
            if stream.send_closed:
                stream.closed = True
        if flags & FLAG_RST:
            stream.closed = True
            stream.reset_received = True
        if event is not None:
            event.set()
        if stream.closed:
            self._finalize_stream_locked(stream, fully_closed=True)
        if new_stream is not None:
            if not flags & FLAG_RST:
                await self._write_frame(_HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_ACK, sid, 0))
            # Delivered even when reset on arrival, so accept_stream observes it (upstream does the same).
            await self.new_stream_send_channel.send(new_stream)

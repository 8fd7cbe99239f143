"""yamux 1.0.0 over the Noise channel, as the dialing side.

Spec: hashicorp/yamux spec.md, as libp2p/specs yamux/README.md adopts it.
Each frame is a 12-byte header ``version (0) | type | flags (u16) |
stream id (u32) | length (u32)``, big-endian, then ``length`` bytes for a
DATA frame. Types: DATA 0, WINDOW_UPDATE 1, PING 2, GO_AWAY 3; flags SYN 1,
ACK 2, FIN 4, RST 8. The dialer's streams have odd ids, the listener's
even ones. Each direction of a stream starts with a 256 KiB window; the
sender may have at most that many unacknowledged DATA bytes in flight, and
the receiver returns credit with WINDOW_UPDATE (length = the increment).

What this side does, and its bounds:

* a stream is opened by WINDOW_UPDATE+SYN (length 0, so both windows stay
  256 KiB); the node's streams (its keepalive pings) are accepted with
  WINDOW_UPDATE+ACK, at most :data:`MAX_INBOUND_STREAMS` at once, any more
  reset at once;
* credit is returned once half a window has been read (go-yamux's rule, the
  node's too), so a stream buffers at most one window: 256 KiB;
* a DATA frame larger than the stream's remaining credit, an unknown frame
  type, a version other than 0 or a SYN with one of our ids is a protocol
  violation: GO_AWAY (protocol error) and the connection ends;
* PING+SYN is answered PING+ACK with the same opaque value; GO_AWAY stops new
  streams (the node is leaving); a FIN half-closes, a RST aborts.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from node.p2p.dialer.reader import ByteReader, EndOfStream
from node.p2p.stream_errors import ConnectionLost, StreamError, StreamReset

PROTOCOL_ID = "/yamux/1.0.0"
HEADER = struct.Struct("!BBHII")
VERSION = 0
TYPE_DATA, TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY = 0, 1, 2, 3
FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST = 1, 2, 4, 8
GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, GO_AWAY_INTERNAL_ERROR = 0, 1, 2
INITIAL_WINDOW = 256 * 1024
MAX_SEND_WINDOW = 2**32 - 1  # a window update past this is nonsense
# One DATA frame, header included, fits one Noise message (65535 - 16 tag bytes).
MAX_DATA_PAYLOAD = 65535 - 16 - HEADER.size
MAX_INBOUND_STREAMS = 4
_GO_AWAY_NAMES = {GO_AWAY_NORMAL: "normal close", GO_AWAY_PROTOCOL_ERROR: "protocol error", GO_AWAY_INTERNAL_ERROR: "internal error"}


class YamuxError(Exception):
    """The node broke the yamux protocol."""


class Channel(Protocol):
    """What the session writes to: the Noise channel."""

    async def write(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


class Stream:
    """One yamux stream: ``read``, ``write``, ``close`` (half-close), ``reset``.

    ``read`` returns b"" once the node has closed its side and everything
    before was read; a reset or a lost connection raises (StreamReset,
    ConnectionLost: both StreamError)."""

    def __init__(self, session: Session, stream_id: int, *, inbound: bool) -> None:
        self._session = session
        self.stream_id = stream_id
        self.inbound = inbound
        self._buffer = bytearray()
        self._recv_credit = INITIAL_WINDOW  # DATA bytes the node may still send
        self._consumed = 0  # bytes read since credit was last returned
        self._send_credit = INITIAL_WINDOW
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()
        self._write_lock = trio.Lock()
        self.local_closed = False  # our FIN sent
        self.remote_closed = False  # the node's FIN received
        self.failure: StreamError | None = None  # reset, or the connection lost

    # -- the application's side ------------------------------------------------
    async def read(self, max_bytes: int | None = None) -> bytes:
        while not self._buffer:
            if self.failure is not None:
                raise self.failure
            if self.remote_closed:
                return b""
            await self._readable.park()
        size = len(self._buffer) if max_bytes is None or max_bytes < 0 else max_bytes
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._consumed += len(data)
        if self._consumed >= INITIAL_WINDOW // 2 and not self.remote_closed and self.failure is None:
            increment, self._consumed = self._consumed, 0
            self._recv_credit += increment
            await self._session.send_frame(TYPE_WINDOW_UPDATE, 0, self.stream_id, increment)
        return data

    def unread(self, data: bytes) -> None:
        """Give back bytes a negotiation read past its last message (already credited)."""
        self._buffer[:0] = data

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            view = memoryview(data)
            while view:
                self._check_writable()
                if not self._send_credit:
                    await self._writable.park()
                    continue
                size = min(len(view), self._send_credit, MAX_DATA_PAYLOAD)
                self._send_credit -= size
                await self._session.send_frame(TYPE_DATA, 0, self.stream_id, size, bytes(view[:size]))
                view = view[size:]

    def _check_writable(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.local_closed:
            raise StreamError("write after close")

    async def close(self) -> None:
        """Half-close: send FIN; the node may still send until its own FIN."""
        if self.local_closed or self.failure is not None:
            return
        self.local_closed = True
        self._writable.unpark_all()
        try:
            await self._session.send_frame(TYPE_WINDOW_UPDATE, FLAG_FIN, self.stream_id, 0)
        finally:
            if self.remote_closed:
                self._session.forget(self)

    async def reset(self) -> None:
        """Abort both directions: RST, and drop whatever is buffered."""
        if self.failure is not None:
            return
        self._fail(StreamReset("stream reset by this side"))
        try:
            await self._session.send_frame(TYPE_WINDOW_UPDATE, FLAG_RST, self.stream_id, 0)
        except ConnectionLost:
            pass  # the connection is gone; so is the stream

    # -- the session's side -----------------------------------------------------
    def _fail(self, failure: StreamError) -> None:
        if self.failure is None:
            self.failure = failure
        self._buffer.clear()
        self._session.forget(self)
        self._readable.unpark_all()
        self._writable.unpark_all()

    def _received(self, data: bytes) -> None:
        if len(data) > self._recv_credit:
            raise YamuxError(f"stream {self.stream_id}: {len(data)} bytes of DATA with {self._recv_credit} bytes of window left")
        self._recv_credit -= len(data)
        if self.failure is None and not self.remote_closed:
            self._buffer += data
            self._readable.unpark_all()

    def _granted(self, increment: int) -> None:
        if self._send_credit + increment > MAX_SEND_WINDOW:
            raise YamuxError(f"stream {self.stream_id}: window update past {MAX_SEND_WINDOW} bytes")
        self._send_credit += increment
        if increment:
            self._writable.unpark_all()

    def _remote_fin(self) -> None:
        self.remote_closed = True
        self._readable.unpark_all()
        if self.local_closed:
            self._session.forget(self)


InboundHandler = Callable[[Stream], Awaitable[None]]


class Session:
    """The client end of a yamux session over ``channel``, read through ``reader``.

    :meth:`run` is the reader task; the node's streams are served by
    ``on_inbound`` in ``nursery``. When the connection ends, for whatever
    reason, every stream fails with ConnectionLost naming it (``closed_reason``)."""

    def __init__(self, channel: Channel, reader: ByteReader, nursery: trio.Nursery, on_inbound: InboundHandler,
                 *, max_inbound: int = MAX_INBOUND_STREAMS) -> None:
        self._channel = channel
        self._reader = reader
        self._nursery = nursery
        self._on_inbound = on_inbound
        self._max_inbound = max_inbound
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self.inbound_open = 0
        self.inbound_refused = 0
        self.pings_answered = 0
        self.go_away: int | None = None  # the node's GO_AWAY code, once received
        self.closed_reason: str | None = None

    async def send_frame(self, frame_type: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> None:
        if self.closed_reason is not None:
            raise ConnectionLost(self.closed_reason)
        try:
            await self._channel.write(HEADER.pack(VERSION, frame_type, flags, stream_id, length) + payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._lose(f"the connection broke while sending ({type(exc).__name__}: {exc})")
            raise ConnectionLost(self.closed_reason or "connection lost") from None

    async def open_stream(self) -> Stream:
        if self.closed_reason is not None:
            raise ConnectionLost(self.closed_reason)
        if self.go_away is not None:
            raise ConnectionLost(f"the node is closing the connection (GO_AWAY: {_GO_AWAY_NAMES.get(self.go_away, self.go_away)})")
        stream = Stream(self, self._next_id, inbound=False)
        self._next_id += 2
        self._streams[stream.stream_id] = stream
        await self.send_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, stream.stream_id, 0)
        return stream

    def forget(self, stream: Stream) -> None:
        if self._streams.pop(stream.stream_id, None) is not None and stream.inbound:
            self.inbound_open -= 1

    async def run(self) -> None:
        """Read frames until the connection ends; never raises for a failure of the peer's."""
        try:
            while self.closed_reason is None:
                await self._frame()
        except EndOfStream as end:
            self._lose("the node closed the connection" if not end.got else "the connection ended inside a yamux frame")
        except YamuxError as exc:
            with trio.move_on_after(1):
                try:
                    await self.send_frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)
                except ConnectionLost:
                    pass
            self._lose(f"the node broke the yamux protocol: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._lose(f"the connection broke ({type(exc).__name__}: {exc})")
        except Exception as exc:  # a damaged Noise message: the channel cannot go on
            self._lose(f"the connection failed: {exc}")
        finally:
            self._lose("the connection closed")

    async def _frame(self) -> None:
        version, frame_type, flags, stream_id, length = HEADER.unpack(await self._reader.read_exactly(HEADER.size))
        if version != VERSION:
            raise YamuxError(f"version {version}")
        if frame_type == TYPE_PING:
            if flags & FLAG_SYN:
                await self.send_frame(TYPE_PING, FLAG_ACK, 0, length)
                self.pings_answered += 1
            return
        if frame_type == TYPE_GO_AWAY:
            self.go_away = length
            return
        if frame_type not in (TYPE_DATA, TYPE_WINDOW_UPDATE):
            raise YamuxError(f"unknown frame type {frame_type}")
        if stream_id == 0:
            raise YamuxError("a stream frame on stream 0")
        payload = b""
        if frame_type == TYPE_DATA:
            if length > INITIAL_WINDOW:  # more than any window this side ever grants
                raise YamuxError(f"a DATA frame of {length} bytes")
            payload = await self._reader.read_exactly(length)
        stream = self._streams.get(stream_id)
        if flags & FLAG_SYN:
            stream = await self._accept(stream, stream_id, flags)
        if stream is None:
            return  # a stream already forgotten (reset, or closed both ways): drop
        if frame_type == TYPE_DATA:
            stream._received(payload)
        else:
            stream._granted(length)
        if flags & FLAG_FIN:
            stream._remote_fin()
        if flags & FLAG_RST:
            stream._fail(StreamReset("stream reset by the node"))

    async def _accept(self, existing: Stream | None, stream_id: int, flags: int) -> Stream | None:
        if existing is not None:
            raise YamuxError(f"SYN for stream {stream_id}, which is open")
        if stream_id % 2 == 1:
            raise YamuxError(f"the node opened stream {stream_id}, an id of the dialing side")
        if flags & FLAG_RST:
            return None
        if self.inbound_open >= self._max_inbound or self.go_away is not None:
            self.inbound_refused += 1
            await self.send_frame(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)
            return None
        stream = Stream(self, stream_id, inbound=True)
        self._streams[stream_id] = stream
        self.inbound_open += 1
        await self.send_frame(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, 0)
        self._nursery.start_soon(self._on_inbound, stream)
        return stream

    def _lose(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        for stream in list(self._streams.values()):
            stream._fail(ConnectionLost(reason))
        self._streams.clear()
        self.inbound_open = 0

    async def aclose(self) -> None:
        """GO_AWAY (normal) and close the connection; every stream fails."""
        if self.closed_reason is None:
            with trio.move_on_after(1):
                try:
                    await self.send_frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL)
                except ConnectionLost:
                    pass
        self._lose("the connection was closed by this side")
        with trio.move_on_after(1):
            await self._channel.aclose()

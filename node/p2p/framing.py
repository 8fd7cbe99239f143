"""Length-prefixed frames: unsigned-varint length, then the payload.

Every metanode protocol speaks frames. :class:`FrameDecoder` is the pure
part (bytes in, frames out); :class:`FramedStream` is the thin I/O shell
over a libp2p stream. A frame that claims more than the maximum size, or a
length prefix that is not a minimal varint, is a protocol violation: the
caller resets that stream (and only that stream).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from node.p2p.stream_errors import stream_eof_errors

DEFAULT_MAX_FRAME = 4 * 1024 * 1024
_MAX_VARINT_BYTES = 5  # enough for 2**35: any frame limit we allow
READ_CHUNK = 256 * 1024


class FrameError(Exception):
    """The peer broke framing: oversize, malformed length, or truncated frame."""


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(payload: bytes, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    if len(payload) > max_size:
        raise FrameError(f"frame of {len(payload)} bytes exceeds the limit of {max_size}")
    return encode_uvarint(len(payload)) + payload


class FrameDecoder:
    """Pure frame decoder: :meth:`feed` bytes, get complete frames back."""

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._need: int | None = None  # payload length of the frame in progress

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame now complete, in order."""
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                parsed = self._parse_length()
                if parsed is None:
                    return frames
                self._need = parsed
            if len(self._buf) < self._need:
                return frames
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place to end)."""
        return self._need is None and not self._buf

    def _parse_length(self) -> int | None:
        value = 0
        for i, byte in enumerate(self._buf[:_MAX_VARINT_BYTES]):
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if i > 0 and byte == 0:
                    raise FrameError("frame length is not a minimal varint")
                if value > self.max_size:
                    raise FrameError(f"frame of {value} bytes exceeds the limit of {self.max_size}")
                del self._buf[: i + 1]
                return value
        if len(self._buf) >= _MAX_VARINT_BYTES:
            raise FrameError("frame length prefix is too long")
        return None


class FramedStream:
    """Frames over a libp2p stream. Deadlines belong to the caller's cancel scopes.

    ``partial_since`` is when the frame now half received began (trio time),
    None between frames: a server's deadline for finishing a frame starts
    there, however slowly the rest trickles in (slowloris). ``on_partial``
    is called whenever a new partial frame begins, so that deadline can be
    set while a read is still waiting.
    """

    def __init__(self, stream: Any, max_size: int = DEFAULT_MAX_FRAME, *, on_partial: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self.max_size = max_size
        self._decoder = FrameDecoder(max_size)
        self._ready: deque[bytes] = deque()
        self.partial_since: float | None = None
        self.on_partial = on_partial

    async def read_frame(self) -> bytes | None:
        """The next frame, or None on a clean end of stream between frames."""
        while not self._ready:
            try:
                chunk = await self.stream.read(READ_CHUNK)
            except stream_eof_errors():  # libp2p's streams raise at EOF; the light dialer's return b""
                chunk = b""
            if not chunk:
                if self._decoder.at_boundary():
                    return None
                raise FrameError("stream ended inside a frame")
            frames = self._decoder.feed(chunk)
            self._ready.extend(frames)
            if self._decoder.at_boundary():
                self.partial_since = None
            elif frames or self.partial_since is None:  # a new frame has begun
                self.partial_since = trio.current_time()
                if self.on_partial is not None:
                    self.on_partial()
        return self._ready.popleft()

    async def write_frame(self, payload: bytes) -> None:
        await self.stream.write(encode_frame(payload, self.max_size))

    async def reset(self) -> None:
        """Abort the stream (protocol violation): the connection lives on."""
        try:
            await self.stream.reset()
        except Exception:
            pass

    async def close(self) -> None:
        try:
            await self.stream.close()
        except Exception:
            pass

"""A buffered reader over any source of byte chunks.

Each layer of the dialer reads whole units (a multistream line, a Noise
message, a yamux header and body) from the layer below, which hands out
bytes in chunks of its own size. Whatever one layer over-reads stays in
the buffer for the next read, so the raw TCP bytes that follow the
multistream answer reach the Noise handshake intact.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable


class EndOfStream(Exception):
    """The source ended (``b""``) before the bytes asked for arrived."""

    def __init__(self, wanted: int, got: bytes) -> None:
        super().__init__(f"the connection ended after {len(got)} of {wanted} bytes")
        self.got = got


class ByteReader:
    """``read_exactly`` and ``read_uvarint`` over ``receive`` (a chunk, or b"" at the end)."""

    def __init__(self, receive: Callable[[], Awaitable[bytes]]) -> None:
        self._receive = receive
        self._buffer = bytearray()
        self.received = 0  # bytes taken from the source so far, for error messages

    def peek(self) -> bytes:
        """What is buffered and not yet read."""
        return bytes(self._buffer)

    async def _fill(self) -> bool:
        chunk = await self._receive()
        if not chunk:
            return False
        self.received += len(chunk)
        self._buffer += chunk
        return True

    async def read_exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            if not await self._fill():
                got = bytes(self._buffer)
                self._buffer.clear()
                raise EndOfStream(count, got)
        out = bytes(self._buffer[:count])
        del self._buffer[:count]
        return out

    async def read_uvarint(self, max_bytes: int) -> int | None:
        """An unsigned LEB128 varint of at most ``max_bytes`` bytes; None if it
        is longer (the caller says what that means), leaving the buffer as is."""
        while True:
            value = 0
            for i, byte in enumerate(self._buffer[:max_bytes]):
                value |= (byte & 0x7F) << (7 * i)
                if not byte & 0x80:
                    del self._buffer[: i + 1]
                    return value
            if len(self._buffer) >= max_bytes:
                return None
            if not await self._fill():
                got = bytes(self._buffer)
                self._buffer.clear()
                raise EndOfStream(len(got) + 1, got)


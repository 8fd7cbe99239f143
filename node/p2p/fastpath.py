"""The BPCI transport's data path below yamux: Noise transport messages, batched.

py-libp2p's secure session reads each Noise message with two exact reads (a
2-byte length, then the body: two socket reads and a dozen awaits through
msgio, RawConnection and TrioTCPStream, each with its own lock), and the
yamux reader above it does the same again per frame header and body. Every
one of those awaits is a trio checkpoint and, with other tasks runnable, a
task switch: that, not the cipher, was the cost of a 64 KiB frame
(shared/notes/py-libp2p.md; bench/transport.py).

:class:`FastNoiseSession` takes over an established libp2p Noise session
(after the handshake and the muxer negotiation, before the muxer starts):

* it reads the socket in large chunks and decrypts every complete Noise
  message in them at once (:meth:`FastNoiseSession.receive_some`);
* it encrypts a write's Noise messages together and sends them with one
  ``send_all``;
* it calls ``cryptography``'s ChaCha20-Poly1305 directly with the session's
  keys and counters (exactly what noiseprotocol does per message, without
  its per-call checks and copies).

The bytes on the wire are unchanged (docs/wire.md): a 2-byte big-endian
length, then ``ChaCha20-Poly1305(key, nonce = 0^32 || LE64(counter), ad = "")``
of at most 65519 plaintext bytes, counters from where the handshake left
them. A message that fails authentication, is shorter than its tag, or is cut
off by the end of the connection is an error (the connection is closed);
nothing is ever skipped, so the counters cannot drift.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from libp2p.io.exceptions import ConnectionClosedError, IOException
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession

log = logging.getLogger("metanode.p2p.fastpath")

NOISE_MAX_MESSAGE = 65535  # the 2-byte length prefix's limit, tag included
NOISE_TAG = 16
NOISE_MAX_PLAINTEXT = NOISE_MAX_MESSAGE - NOISE_TAG
# Nonce 2**64 - 1 is reserved by the Noise spec; a session never gets near it
# (that is 2**64 messages), but the check keeps the cipher from ever reusing one.
_MAX_NONCE = 2**64 - 1
# One socket read takes whatever the kernel holds, up to this: several Noise
# messages per read under load, one small one for a request/response.
RECEIVE_CHUNK = 256 * 1024
_LEN = struct.Struct(">H")
_NONCE_PREFIX = b"\x00\x00\x00\x00"


class NoiseMessageError(IOException):
    """A transport message that cannot be accepted: the connection must close."""


class Baton:
    """A mutual-exclusion lock that costs nothing when nobody else holds it.

    ``trio.Lock.acquire`` yields to the scheduler even when the lock is free;
    on the data path that is a task switch per frame. Here a free baton is
    taken synchronously; a waiter parks and the holder hands the baton over
    on release (FIFO, no barging), so a waiter is never starved."""

    __slots__ = ("_held", "_lot")

    def __init__(self) -> None:
        self._held = False
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self) -> None:
        if not self._held:
            self._held = True
            return
        await self._lot.park()  # returns holding the baton (handed over in release)

    def release(self) -> None:
        if self._lot:
            self._lot.unpark(count=1)  # ownership passes to the first waiter
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class FastNoiseSession(SecureSession):
    """A libp2p Noise ``SecureSession`` with a batched transport data path.

    Made by :meth:`adopt` from the session upstream's handshake returned;
    everything else (peer ids, keys, addresses) is the session's own."""

    _sock: trio.SocketStream
    _tx: ChaCha20Poly1305
    _rx: ChaCha20Poly1305
    _tx_n: int
    _rx_n: int
    _raw: bytearray  # received ciphertext not yet a whole message
    _plain: bytearray  # decrypted bytes not yet read through read()
    _send_baton: Baton
    _read_closed: bool

    @classmethod
    def adopt(cls, session: Any) -> bool:
        """Switch ``session`` to this class if it is an established Noise
        session over a trio TCP socket; False (left as it is) otherwise."""
        if type(session) is not SecureSession:
            return False
        conn = session.conn
        if type(conn) is not NoiseTransportReadWriter:
            return False
        raw = getattr(getattr(conn, "read_writer", None), "read_write_closer", None)
        sock = getattr(getattr(raw, "stream", None), "stream", None)
        if not isinstance(sock, trio.SocketStream):
            return False
        state = conn.noise_state
        protocol = state.noise_protocol
        send, receive = protocol.cipher_state_encrypt, protocol.cipher_state_decrypt
        if not (state.handshake_finished and send.has_key() and receive.has_key()):
            return False
        if type(send.cipher).__name__ != "ChaCha20Cipher" or type(receive.cipher).__name__ != "ChaCha20Cipher":
            return False
        leftover = session._drain(None)  # plaintext the muxer negotiation read ahead
        session.__class__ = cls
        assert isinstance(session, FastNoiseSession)
        session._sock = sock
        session._tx, session._tx_n = ChaCha20Poly1305(bytes(send.k)), send.n
        session._rx, session._rx_n = ChaCha20Poly1305(bytes(receive.k)), receive.n
        session._raw = bytearray()
        session._plain = bytearray(leftover)
        session._send_baton = Baton()
        session._read_closed = False
        return True

    # -- sending ------------------------------------------------------------------
    def _seal(self, data: bytes | bytearray | memoryview) -> bytes:
        """``data`` as consecutive Noise transport messages, each length-prefixed."""
        view = memoryview(data)
        total = len(view)
        parts: list[bytes] = []
        encrypt, n = self._tx.encrypt, self._tx_n
        at = 0
        while True:
            chunk = view[at : at + NOISE_MAX_PLAINTEXT]
            if n >= _MAX_NONCE:
                raise NoiseMessageError("Noise send nonce exhausted")
            sealed = encrypt(_NONCE_PREFIX + n.to_bytes(8, "little"), chunk, None)
            n += 1
            parts.append(_LEN.pack(len(sealed)))
            parts.append(sealed)
            at += len(chunk)
            if at >= total:
                break
        self._tx_n = n
        return b"".join(parts)

    async def write(self, data: bytes) -> None:
        if not data:
            return
        # Sealing and sending under one baton: the counters follow the wire order.
        await self._send_baton.acquire()
        try:
            wire = self._seal(data)
            await self._sock.send_all(wire)
        except trio.BrokenResourceError as exc:
            raise ConnectionClosedError(f"TCP connection reset by remote peer: {exc}", transport="tcp") from exc
        except trio.ClosedResourceError:
            # Closed locally (teardown): upstream's TrioTCPStream drops the write silently too.
            return
        finally:
            self._send_baton.release()

    # -- receiving ----------------------------------------------------------------
    def _open(self, data: bytes | bytearray) -> tuple[bytes, int]:
        """Decrypt every complete message at the start of ``data``: the
        plaintext (b"" if there is no whole message yet) and the bytes used."""
        size = len(data)
        at = 0
        parts: list[bytes] = []
        decrypt, n = self._rx.decrypt, self._rx_n
        with memoryview(data) as view:
            try:
                while size - at >= 2:
                    length = (data[at] << 8) | data[at + 1]
                    end = at + 2 + length
                    if end > size:
                        break
                    if length < NOISE_TAG:
                        raise NoiseMessageError(f"Noise message of {length} bytes is shorter than its tag")
                    if n >= _MAX_NONCE:
                        raise NoiseMessageError("Noise receive nonce exhausted")
                    try:
                        parts.append(decrypt(_NONCE_PREFIX + n.to_bytes(8, "little"), view[at + 2 : end], None))
                    except InvalidTag:
                        raise NoiseMessageError("Noise message failed authentication") from None
                    n += 1
                    at = end
            finally:
                self._rx_n = n
        if not parts:
            return b"", at
        return (parts[0] if len(parts) == 1 else b"".join(parts)), at

    async def receive_some(self) -> bytes:
        """The next decrypted bytes (one or more whole messages' worth), or b""
        at a clean end of the connection. Only one task may call this at a time."""
        if self._plain:
            out = bytes(self._plain)
            self._plain.clear()
            return out
        while True:
            if self._read_closed:
                return b""
            try:
                chunk = await self._sock.receive_some(RECEIVE_CHUNK)
            except trio.BrokenResourceError as exc:
                raise ConnectionClosedError(f"TCP connection reset by remote peer: {exc}", transport="tcp") from exc
            except trio.ClosedResourceError:
                chunk = b""
            if not chunk:
                self._read_closed = True
                if self._raw:
                    raise ConnectionClosedError(
                        f"connection closed inside a Noise message ({len(self._raw)} bytes of it received)",
                        transport="tcp")
                return b""
            if self._raw:  # the rest of a message begun in an earlier read
                self._raw += chunk
                out, used = self._open(self._raw)
                del self._raw[:used]
            else:  # decrypted straight from the chunk: no copy into the buffer
                out, used = self._open(chunk)
                if used < len(chunk):
                    self._raw = bytearray(chunk[used:])
            if out:
                return out

    async def read(self, n: int | None = None) -> bytes:
        """SecureSession's reader interface: up to ``n`` bytes (None: what is
        there), raising ConnectionClosedError at the end like upstream."""
        if n == 0:
            return b""
        if not self._plain:
            data = await self.receive_some()
            if not data:
                raise ConnectionClosedError("Connection closed")
            self._plain += data
        if n is None or n >= len(self._plain):
            out = bytes(self._plain)
            self._plain.clear()
        else:
            out = bytes(self._plain[:n])
            del self._plain[:n]
        return out

    async def close(self) -> None:
        self._read_closed = True
        await self._sock.aclose()

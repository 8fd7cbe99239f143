"""The blob protocol ``/metanode/blob/1.0.0``: blobs by digest, in chunks.

Wire (every frame is varint-length framed; headers are deterministic CBOR):

* get: the caller sends ``{"op": "get", "digest": <32 bytes>, "offset": n}``;
  the server answers ``{"ok": true, "size": n}`` (bytes that follow), then
  data frames, then one empty frame. The final empty frame is only sent
  after the server has re-hashed the whole blob; a corrupt blob resets the
  stream instead, so a caller never mistakes it for a complete copy (and
  checks the digest itself anyway).
* put: the caller sends ``{"op": "put", "digest", "size"}`` (optionally
  ``"tenant": <32 bytes>``); the server answers ``{"ok": true, "size",
  "stored": false}`` (send it) or ``"stored": true`` (already held). The
  caller then sends data frames and one empty frame; the server checks the
  digest and answers ``{"ok": true, "size", "stored": true}``.
* errors: ``{"ok": false, "error": code, "detail": text}`` with code one of
  ``not_found``, ``corrupt``, ``too_large``, ``digest_mismatch``,
  ``refused``, ``busy``, ``bad_request``.

A malformed request (bad framing, non-canonical CBOR, unknown op or
fields) resets that stream only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import trio
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID

from node.base.codec import CodecError, decode, encode
from node.p2p.framing import FramedStream, FrameError
from node.roles.storage.blobstore import DEFAULT_CHUNK_SIZE, BlobStore
from node.roles.storage.errors import BlobTransferError, StorageError

BLOB_PROTOCOL = "/metanode/blob/1.0.0"
MAX_FRAME = DEFAULT_CHUNK_SIZE + 1024
MAX_HEADER = 1024
FRAME_TIMEOUT_S = 20.0
MAX_STREAMS = 16

log = structlog.get_logger("metanode.storage")


class ProtocolViolation(Exception):
    """A frame that is not a valid blob protocol message."""


@dataclass(frozen=True)
class GetRequest:
    digest: bytes
    offset: int


@dataclass(frozen=True)
class PutRequest:
    digest: bytes
    size: int
    tenant: bytes | None


def parse_request(frame: bytes) -> GetRequest | PutRequest:
    """The request a frame holds; ProtocolViolation naming what is wrong."""
    try:
        value = decode(frame, max_size=MAX_HEADER)
    except CodecError as exc:
        raise ProtocolViolation(f"request is not canonical CBOR: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolViolation("request must be a map")
    op = value.get("op")
    allowed = {"get": {"op", "digest", "offset"}, "put": {"op", "digest", "size", "tenant"}}.get(op)  # type: ignore[arg-type]
    if allowed is None:
        raise ProtocolViolation("op must be get or put")
    extra = set(value) - allowed
    if extra:
        raise ProtocolViolation(f"unknown field {sorted(extra)[0]!r}")
    digest = value.get("digest")
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise ProtocolViolation("digest must be 32 bytes")
    if op == "get":
        offset = value.get("offset")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ProtocolViolation("offset must be a non-negative integer")
        return GetRequest(digest, offset)
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolViolation("size must be a non-negative integer")
    tenant = value.get("tenant")
    if tenant is not None and (not isinstance(tenant, bytes) or len(tenant) != 32):
        raise ProtocolViolation("tenant must be 32 bytes")
    return PutRequest(digest, size, tenant)


def parse_header(frame: bytes) -> dict[str, Any]:
    try:
        value = decode(frame, max_size=MAX_HEADER)
    except CodecError as exc:
        raise BlobTransferError(f"response header is not canonical CBOR: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("ok"), bool):
        raise BlobTransferError("response header must be a map with ok")
    if value["ok"] and (isinstance(value.get("size"), bool) or not isinstance(value.get("size"), int) or value["size"] < 0):
        raise BlobTransferError("response header size must be a non-negative integer")
    return value


def error_header(code: str, detail: str) -> bytes:
    return encode({"ok": False, "error": code, "detail": detail[:200]})


PushPolicy = Callable[[str, PutRequest], bool]  # (pushing peer id, request) -> accept?
OnStored = Callable[[str, PutRequest], None]  # a push this node now holds (stored now, or held already)
Throttle = Callable[[int], Awaitable[None]]  # awaited with the bytes just moved


class BlobServer:
    """Serves ``store`` on inbound blob streams."""

    def __init__(self, store: BlobStore, *, accept_push: PushPolicy | None = None,
                 on_stored: OnStored | None = None, max_streams: int = MAX_STREAMS) -> None:
        self.store = store
        self.accept_push = accept_push
        self.on_stored = on_stored
        self._slots = trio.Semaphore(max_streams)
        self.violations = 0

    def install(self, host: Any) -> None:
        host.set_stream_handler(BLOB_PROTOCOL, self.handle_stream)

    async def handle_stream(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        framed = FramedStream(stream, MAX_FRAME)
        try:
            with trio.fail_after(FRAME_TIMEOUT_S):
                frame = await framed.read_frame()
            if frame is None:
                await framed.close()
                return
            request = parse_request(frame)
        except (FrameError, ProtocolViolation, StreamError, trio.TooSlowError) as exc:
            await self._violation(framed, peer, exc)
            return
        if self._slots.value == 0:
            await self._answer_error(framed, "busy", "too many blob transfers in progress")
            return
        async with self._slots:
            try:
                if isinstance(request, GetRequest):
                    await self._serve_get(framed, request)
                else:
                    await self._serve_put(framed, request, peer)
            except (FrameError, ProtocolViolation, trio.TooSlowError) as exc:
                await self._violation(framed, peer, exc)
            except (StreamError, trio.BrokenResourceError, trio.ClosedResourceError):
                await framed.reset()  # the caller went away
            except StorageError as exc:  # e.g. the blob vanished mid-request
                log.info("blob request failed", peer=peer, reason=str(exc))
                await framed.reset()

    async def _violation(self, framed: FramedStream, peer: str, exc: BaseException) -> None:
        self.violations += 1
        log.info("blob stream reset", peer=peer, reason=str(exc) or type(exc).__name__)
        await framed.reset()

    async def _answer_error(self, framed: FramedStream, code: str, detail: str) -> None:
        try:
            await framed.write_frame(error_header(code, detail))
        except (StreamError, Exception):
            pass
        await framed.close()

    async def _serve_get(self, framed: FramedStream, request: GetRequest) -> None:
        if not self.store.has(request.digest):
            await self._answer_error(framed, "not_found", f"no blob {request.digest.hex()}")
            return
        size = self.store.size(request.digest)
        if request.offset > size:
            await self._answer_error(framed, "bad_request", f"offset {request.offset} is past the end ({size} bytes)")
            return
        await framed.write_frame(encode({"ok": True, "size": size - request.offset}))
        try:
            for chunk in self.store.read_chunks(request.digest, DEFAULT_CHUNK_SIZE, request.offset):
                with trio.fail_after(FRAME_TIMEOUT_S):
                    await framed.write_frame(chunk)
        except StorageError as exc:  # corrupt on disk: quarantined; never finish the stream
            log.warning("blob not served", digest=request.digest.hex(), reason=str(exc))
            await framed.reset()
            return
        await framed.write_frame(b"")
        await framed.close()

    async def _serve_put(self, framed: FramedStream, request: PutRequest, peer: str) -> None:
        if self.accept_push is not None and not self.accept_push(peer, request):
            await self._answer_error(framed, "refused", "this node does not take blobs from you")
            return
        if request.size > self.store.max_blob_size:
            await self._answer_error(framed, "too_large", f"limit is {self.store.max_blob_size} bytes")
            return
        if self.store.has(request.digest):
            if self.on_stored is not None:  # the pusher counts this node as a holder from now on
                self.on_stored(peer, request)
            await framed.write_frame(encode({"ok": True, "size": request.size, "stored": True}))
            await framed.close()
            return
        writer = self.store.writer(request.digest, request.size)
        try:
            await framed.write_frame(encode({"ok": True, "size": request.size, "stored": False}))
            while True:
                with trio.fail_after(FRAME_TIMEOUT_S):
                    frame = await framed.read_frame()
                if frame is None:
                    raise ProtocolViolation("stream ended before the final empty frame")
                if not frame:
                    break
                writer.write(frame)
            writer.commit()
        except StorageError as exc:
            writer.abort()
            await self._answer_error(framed, exc.wire, str(exc))
            return
        except BaseException:
            writer.abort()
            raise
        if self.on_stored is not None:
            self.on_stored(peer, request)
        await framed.write_frame(encode({"ok": True, "size": request.size, "stored": True}))
        await framed.close()


def _peer_id(peer: Any) -> ID:
    return ID.from_base58(peer) if isinstance(peer, str) else peer


class BlobClient:
    """Fetches blobs from and pushes blobs to connected peers."""

    def __init__(self, host: Any, *, frame_timeout: float = FRAME_TIMEOUT_S) -> None:
        self.host = host
        self.frame_timeout = frame_timeout

    async def _open(self, peer: Any) -> FramedStream:
        try:
            with trio.fail_after(self.frame_timeout):
                stream = await self.host.new_stream(_peer_id(peer), [BLOB_PROTOCOL])
        except trio.TooSlowError:
            raise BlobTransferError(f"peer {peer} did not open a blob stream in time", peer=str(peer)) from None
        except Exception as exc:
            raise BlobTransferError(f"cannot open a blob stream to {peer}: {exc}", peer=str(peer)) from None
        return FramedStream(stream, MAX_FRAME)

    async def _read(self, framed: FramedStream, peer: Any) -> bytes | None:
        try:
            with trio.fail_after(self.frame_timeout):
                return await framed.read_frame()
        except trio.TooSlowError:
            raise BlobTransferError(f"peer {peer} stalled", peer=str(peer)) from None
        except (FrameError, StreamError) as exc:
            raise BlobTransferError(f"stream from {peer} failed: {exc or type(exc).__name__}", peer=str(peer)) from None

    async def _header(self, framed: FramedStream, peer: Any) -> dict[str, Any]:
        frame = await self._read(framed, peer)
        if frame is None:
            raise BlobTransferError(f"peer {peer} closed the stream without answering", peer=str(peer))
        header = parse_header(frame)
        if not header["ok"]:
            raise BlobTransferError(f"peer {peer} refused: {header.get('error')}: {str(header.get('detail'))[:200]}",
                                    peer=str(peer), error=str(header.get("error"))[:40])
        return header

    async def fetch(self, peer: Any, digest: bytes, dest: BlobStore, *, throttle: Throttle | None = None) -> int:
        """Copy blob ``digest`` from ``peer`` into ``dest``, verified; return its size.

        BlobTransferError when the peer does not give a good copy; an OSError
        of this node's own disk (out of space, a path that cannot be written)
        propagates as it is. ``throttle(n)`` is awaited after each ``n`` bytes
        received (the repair loop's bandwidth budget)."""
        if dest.has(digest):
            return dest.size(digest)
        framed = await self._open(peer)
        writer = None
        try:
            await framed.write_frame(encode({"op": "get", "digest": digest, "offset": 0}))
            header = await self._header(framed, peer)
            writer = dest.writer(digest, header["size"])
            while (frame := await self._read(framed, peer)) is not None and frame:
                writer.write(frame)
                if throttle is not None:
                    await throttle(len(frame))
            if frame is None:
                raise BlobTransferError(f"peer {peer} ended the blob early", peer=str(peer))
            writer.commit()
            return header["size"]
        except StorageError as exc:
            if writer is not None:
                writer.abort()
            if isinstance(exc, BlobTransferError):
                raise
            raise BlobTransferError(f"bad blob from {peer}: {exc}", peer=str(peer), error=exc.wire) from None
        except StreamError as exc:
            if writer is not None:
                writer.abort()
            raise BlobTransferError(f"stream to {peer} failed: {exc}", peer=str(peer)) from None
        except BaseException:  # this node's own failure (disk), or cancelled: no partial file left behind
            if writer is not None:
                writer.abort()
            raise
        finally:
            await framed.close()

    async def fetch_any(self, peers: Sequence[Any], digest: bytes, dest: BlobStore, *,
                        throttle: Throttle | None = None) -> str:
        """Fetch from the first of ``peers`` that gives a verified copy; return its id."""
        failures: list[str] = []
        for peer in peers:
            try:
                await self.fetch(peer, digest, dest, throttle=throttle)
                return str(peer)
            except BlobTransferError as exc:
                log.info("blob fetch failed; trying the next peer", peer=str(peer), reason=str(exc))
                failures.append(str(exc))
        raise BlobTransferError(f"no peer gave a verified copy of {digest.hex()}", failures=failures)

    async def push(self, peer: Any, digest: bytes, store: BlobStore, *, tenant: bytes | None = None) -> None:
        """Give ``peer`` a copy of blob ``digest`` (a no-op there if it has one)."""
        size = store.size(digest)
        framed = await self._open(peer)
        try:
            request: dict[str, Any] = {"op": "put", "digest": digest, "size": size}
            if tenant is not None:
                request["tenant"] = tenant
            await framed.write_frame(encode(request))
            header = await self._header(framed, peer)
            if header.get("stored") is True:
                return
            for chunk in store.read_chunks(digest):
                with trio.fail_after(self.frame_timeout):
                    await framed.write_frame(chunk)
            await framed.write_frame(b"")
            final = await self._header(framed, peer)
            if final.get("stored") is not True:
                raise BlobTransferError(f"peer {peer} did not confirm storing {digest.hex()}", peer=str(peer))
        except trio.TooSlowError:
            raise BlobTransferError(f"peer {peer} stalled", peer=str(peer)) from None
        except StreamError as exc:
            raise BlobTransferError(f"stream to {peer} failed: {exc}", peer=str(peer)) from None
        finally:
            await framed.close()

"""JSON-RPC 2.0 over p2p: protocol ``/metanode/rpc/1.0.0``, one message per frame.

The server side runs each stream's requests concurrently (bounded), writes
responses and subscription notifications through one lock, rate-limits per
peer, and resets a stream whose framing is broken without touching the
connection. The client side opens a stream, matches responses by id, and
delivers notifications to a channel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
import trio
from libp2p.network.stream.exceptions import StreamError

from node.base.errors import ErrorCode
from node.p2p.framing import DEFAULT_MAX_FRAME, FramedStream, FrameError
from node.p2p.jsonrpc import (
    CallContext,
    Dispatcher,
    RpcError,
    dump_json,
    parse_json,
)
from node.p2p.ratelimit import TokenBuckets

RPC_PROTOCOL = "/metanode/rpc/1.0.0"
MAX_IN_FLIGHT_PER_STREAM = 16

log = structlog.get_logger("metanode.rpc")


class RpcServer:
    """Serves a :class:`Dispatcher` on every inbound RPC stream."""

    def __init__(self, dispatcher: Dispatcher, *, max_frame: int = DEFAULT_MAX_FRAME, rate: float = 100.0, burst: float = 200.0) -> None:
        self.dispatcher = dispatcher
        self.max_frame = max_frame
        self.limiter = TokenBuckets(rate, burst)
        self.framing_errors = 0
        self.rate_limited = 0

    async def handle_stream(self, stream: Any) -> None:
        """libp2p stream handler: lives as long as the caller keeps the stream open."""
        peer_id = stream.muxed_conn.peer_id.to_base58()
        framed = FramedStream(stream, self.max_frame)
        write_lock = trio.Lock()

        async def send(payload: bytes) -> None:
            async with write_lock:
                await framed.write_frame(payload)

        async def notify(method: str, params: Any) -> None:
            await send(dump_json({"jsonrpc": "2.0", "method": method, "params": params}))

        slots = trio.Semaphore(MAX_IN_FLIGHT_PER_STREAM)
        violation: FrameError | None = None
        async with trio.open_nursery() as nursery:
            ctx = CallContext(peer_id=peer_id, notify=notify, nursery=nursery)

            async def serve(frame: bytes) -> None:
                try:
                    response = await self._answer(frame, ctx)
                    if response is not None:
                        await send(response)
                except (StreamError, FrameError, trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()  # the caller is gone
                finally:
                    slots.release()

            try:
                while (frame := await framed.read_frame()) is not None:
                    await slots.acquire()
                    nursery.start_soon(serve, frame)
                # Clean close by the caller: finish what is in flight.
            except FrameError as exc:
                violation = exc
                nursery.cancel_scope.cancel()
            except StreamError:
                nursery.cancel_scope.cancel()  # peer went away mid-stream
                return
        if violation is not None:
            self.framing_errors += 1
            log.info("rpc stream reset", peer=peer_id, reason=str(violation))
            await framed.reset()
            return
        await framed.close()

    async def _answer(self, frame: bytes, ctx: CallContext) -> bytes | None:
        wait = self.limiter.take(ctx.peer_id, trio.current_time())
        if wait:
            self.rate_limited += 1
            try:
                message = parse_json(frame)
                id_ = message.get("id") if isinstance(message, dict) else None
            except ValueError:
                id_ = None
            if isinstance(id_, (dict, list, bool)):
                id_ = None
            error = RpcError(ErrorCode.RATE_LIMITED, "Rate limited", {"retry_after_s": math.ceil(wait * 1000) / 1000})
            return dump_json({"jsonrpc": "2.0", "error": error.to_json(), "id": id_})
        return await self.dispatcher.handle(frame, ctx)


class RpcCallError(Exception):
    """The server answered a call with a JSON-RPC error."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.code = error.get("code")
        self.message = error.get("message", "")
        self.data = error.get("data")
        detail = f" {self.data}" if self.data is not None else ""
        super().__init__(f"{self.message} (code {self.code}){detail}")


class RpcClient:
    """A JSON-RPC client over one p2p stream.

    Use inside ``async with open_rpc_client(host, peer_id) as client``.
    Every call has a deadline; notifications (subscriptions) arrive on
    :attr:`notifications`.
    """

    def __init__(self, framed: FramedStream) -> None:
        self._framed = framed
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._send_notification, self.notifications = trio.open_memory_channel[dict[str, Any]](1024)
        self._write_lock = trio.Lock()
        self._closed_reason: str | None = None

    async def _reader(self) -> None:
        try:
            while True:
                frame = await self._framed.read_frame()
                if frame is None:
                    break
                message = parse_json(frame)
                for item in message if isinstance(message, list) else [message]:
                    self._dispatch(item)
            self._closed_reason = "the node closed the stream"
        except (FrameError, StreamError, ValueError) as exc:
            self._closed_reason = f"stream failed: {exc}"
        finally:
            for event, _ in self._waiting.values():
                event.set()
            self._send_notification.close()

    def _dispatch(self, item: Any) -> None:
        if not isinstance(item, dict):
            return
        if "method" in item and "id" not in item:
            try:
                self._send_notification.send_nowait(item)
            except trio.WouldBlock:
                pass  # a consumer that never reads loses notifications, not the stream
            return
        waiter = self._waiting.get(item.get("id"))  # type: ignore[arg-type]
        if waiter is not None:
            waiter[1].append(item)
            waiter[0].set()

    async def call(self, method: str, params: Any = None, *, timeout: float = 30.0) -> Any:
        """Call ``method`` and return its result; raise RpcCallError on an error reply."""
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            request["params"] = params
        event, box = trio.Event(), list[dict[str, Any]]()
        self._waiting[request_id] = (event, box)
        try:
            with trio.fail_after(timeout):
                async with self._write_lock:
                    await self._framed.write_frame(dump_json(request))
                await event.wait()
        finally:
            self._waiting.pop(request_id, None)
        if not box:
            raise ConnectionError(self._closed_reason or "stream closed")
        response = box[0]
        if "error" in response:
            raise RpcCallError(response["error"])
        return response.get("result")

    async def call_batch(self, calls: list[tuple[str, Any]], *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Send ``calls`` (method, params) as one JSON-RPC batch frame; return
        each raw response object (``result`` or ``error``), in call order."""
        ids = [next(self._ids) for _ in calls]
        request = [
            {"jsonrpc": "2.0", "method": method, "id": request_id, **({"params": params} if params is not None else {})}
            for request_id, (method, params) in zip(ids, calls)
        ]
        waiters = {request_id: (trio.Event(), list[dict[str, Any]]()) for request_id in ids}
        self._waiting.update(waiters)
        try:
            with trio.fail_after(timeout):
                async with self._write_lock:
                    await self._framed.write_frame(dump_json(request))
                for event, _ in waiters.values():
                    await event.wait()
        finally:
            for request_id in ids:
                self._waiting.pop(request_id, None)
        if any(not box for _, box in waiters.values()):
            raise ConnectionError(self._closed_reason or "stream closed")
        return [waiters[request_id][1][0] for request_id in ids]


@asynccontextmanager
async def open_rpc_client(host: Any, peer_id: Any, *, timeout: float = 10.0, max_frame: int = DEFAULT_MAX_FRAME) -> AsyncIterator[RpcClient]:
    """Open an RPC stream to a connected peer; close it on exit."""
    with trio.fail_after(timeout):
        stream = await host.new_stream(peer_id, [RPC_PROTOCOL])
    framed = FramedStream(stream, max_frame)
    client = RpcClient(framed)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._reader)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await framed.close()

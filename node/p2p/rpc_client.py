"""The client side of JSON-RPC over p2p: one stream, calls matched to answers by id.

Split from node/p2p/rpc.py (the server) so that a program that only calls
a node (the command line, the client library) loads neither libp2p nor the
server's limits and logging: the stream under a :class:`RpcClient` is any
object with ``read``/``write``/``close``/``reset`` (a py-libp2p stream, or
the light dialer's, node/p2p/dialer/). node/p2p/rpc.py re-exports every
name here.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import trio

from node.p2p.framing import DEFAULT_MAX_FRAME, FramedStream, FrameError
from node.p2p.jsonrpc import dump_json, parse_json
from node.p2p.stream_errors import stream_errors

RPC_PROTOCOL = "/metanode/rpc/1.0.0"


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
        # An error about the stream itself (id null: too many streams, idle),
        # the answer of every call still waiting when the stream then ends.
        self.stream_error: dict[str, Any] | None = None

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
        except Exception as exc:
            if not isinstance(exc, (FrameError, ValueError, *stream_errors())):
                raise
            self._closed_reason = f"stream failed: {exc}"
        finally:
            for event, _ in self._waiting.values():
                event.set()
            self._send_notification.close()

    def _dispatch(self, item: Any) -> None:
        if not isinstance(item, dict):
            return
        if "error" in item and item.get("id") is None and isinstance(item["error"], dict):
            self.stream_error = item["error"]
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

    def _raise_closed(self) -> NoReturn:
        """The stream ended before an answer: the node's stated reason if it gave one."""
        if self.stream_error is not None:
            raise RpcCallError(self.stream_error)
        raise ConnectionError(self._closed_reason or "stream closed")

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
            self._raise_closed()
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
            self._raise_closed()
        return [waiters[request_id][1][0] for request_id in ids]


@asynccontextmanager
async def rpc_client_over(stream: Any, *, max_frame: int = DEFAULT_MAX_FRAME) -> AsyncIterator[RpcClient]:
    """An :class:`RpcClient` on an RPC stream already open; the stream is closed on exit."""
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


@asynccontextmanager
async def open_rpc_client(host: Any, peer_id: Any, *, timeout: float = 10.0, max_frame: int = DEFAULT_MAX_FRAME) -> AsyncIterator[RpcClient]:
    """Open an RPC stream to a peer connected to a py-libp2p ``host``; close it on exit."""
    with trio.fail_after(timeout):
        stream = await host.new_stream(peer_id, [RPC_PROTOCOL])
    async with rpc_client_over(stream, max_frame=max_frame) as client:
        yield client

"""JSON-RPC 2.0 over p2p: protocol ``/metanode/rpc/1.0.0``, one message per frame.

The server side treats every caller as a budget. Each RPC stream counts
against its connection and its peer in the host's resource budget
(:class:`StreamLimits`); a stream past
either limit is answered with one ``TOO_MANY_STREAMS`` error and closed, never
dropped silently. Every call (a batch of n is n calls) spends a token from
the caller's bucket and from the node's total (node/p2p/ratelimit.py); a
refused call is answered ``RATE_LIMITED`` with ``retry_after_s``. A stream
that completes no request within the idle deadline (it sent nothing, or
half a frame) while nothing runs for it is answered ``STREAM_IDLE`` and
closed, so it holds no task or buffer after that. Requests on a stream run
concurrently (bounded); responses and subscription notifications share one
lock and a write deadline. Whatever fails inside one stream, one call or one
subscription ends that stream, call or subscription only: the libp2p task
that called the handler never sees it.

The client side (:class:`RpcClient`, :func:`open_rpc_client`) lives in
node/p2p/rpc_client.py, which loads no libp2p; its names are re-exported here.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import structlog
import trio
from libp2p.network.stream.exceptions import StreamError

from node.base.errors import ErrorCode
from node.p2p.budget import STREAMS, BudgetExceeded, Reservation, ResourceBudget
from node.p2p.framing import DEFAULT_MAX_FRAME, READ_CHUNK, FramedStream, FrameError
from node.p2p.jsonrpc import (
    CallContext,
    Dispatcher,
    RpcError,
    Subscription,
    dump_json,
    parse_json,
)
from node.p2p.ratelimit import CallLimiter
from node.p2p.rpc_client import RPC_PROTOCOL, RpcCallError, RpcClient, open_rpc_client, rpc_client_over  # noqa: F401 - re-exported

MAX_IN_FLIGHT_PER_STREAM = 16
MAX_SUBSCRIPTIONS_PER_STREAM = 8
WRITE_TIMEOUT_S = 10.0  # a caller that reads nothing for this long is gone
REFUSAL_LINGER_S = 1.0  # after a refusal, how long the caller's last bytes are read and dropped
REFUSAL_DRAIN_BYTES = 64 * 1024
DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_STREAMS_PER_CONNECTION = 32
DEFAULT_STREAMS_PER_PEER = 64

# What ends a stream because the caller went away (or stopped reading): not an error of ours.
CALLER_GONE = (StreamError, FrameError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)

log = structlog.get_logger("metanode.rpc")


class StreamLimits:
    """Open RPC streams, counted per connection and per peer in the host's
    resource budget (node/p2p/budget.py: resource ``streams``, scopes ``conn``
    and ``peer``, and ``system`` if the budget limits it).

    A connection is keyed by identity while it has streams counted (they
    keep it alive, so its id cannot be reused meanwhile).
    """

    _SCOPE_NAMES = {"conn": "connection", "peer": "peer", "system": "node"}

    def __init__(self, per_connection: int = DEFAULT_STREAMS_PER_CONNECTION, per_peer: int = DEFAULT_STREAMS_PER_PEER,
                 budget: ResourceBudget | None = None) -> None:
        if per_connection < 1 or per_peer < 1:
            raise ValueError("stream limits must be at least 1")
        self.budget = budget or ResourceBudget()
        self.budget.set_limit("conn", STREAMS, per_connection)
        self.budget.set_limit("peer", STREAMS, per_peer)

    def acquire(self, peer: str, connection: object) -> Reservation | RpcError:
        """Count one more stream (release the reservation when it ends), or
        return the error refusing it (nothing counted)."""
        try:
            return self.budget.reserve(STREAMS, peer=peer, conn=f"{id(connection):x}")
        except BudgetExceeded as exc:
            scope = self._SCOPE_NAMES.get(exc.scope, exc.scope)
            return RpcError(ErrorCode.TOO_MANY_STREAMS, "Too many streams",
                            {"scope": scope, "limit": exc.limit, "reason": f"at most {exc.limit} RPC streams per {scope}; reuse an open one"})

    def in_use(self) -> int:
        """Streams open now, over all peers."""
        return self.budget.in_use(STREAMS)

    def of_peer(self, peer: str) -> int:
        return self.budget.in_use(STREAMS, scope="peer", key=peer)

    @property
    def refused(self) -> Counter[str]:
        """Streams refused since start, by scope (connection, peer, node)."""
        return Counter({self._SCOPE_NAMES.get(kind, kind): n for (resource, kind), n in self.budget.refused.items() if resource == STREAMS})


class _StreamActivity:
    """When a stream's reader must give up: the idle deadline.

    A stream is idle while it runs no call and holds no subscription; then
    its next frame must complete within ``idle_timeout`` of the moment it
    went quiet. A frame that has begun must complete within ``idle_timeout``
    of its first byte whatever else runs (slowloris). The deadline is kept on
    the reader's cancel scope and moved at each event, so no timer task is
    needed.
    """

    def __init__(self, framed: FramedStream, idle_timeout: float) -> None:
        self.framed = framed
        self.idle_timeout = idle_timeout
        self.reader = trio.CancelScope()
        self.in_flight = 0
        self.subscriptions = 0
        self.quiet_since = trio.current_time()
        self.answered = trio.Event()  # set whenever no call is in flight
        self.answered.set()
        framed.on_partial = self.refresh

    def refresh(self) -> None:
        if self.framed.partial_since is not None:
            self.reader.deadline = self.framed.partial_since + self.idle_timeout
        elif self.in_flight or self.subscriptions:
            self.reader.deadline = math.inf
        else:
            self.reader.deadline = self.quiet_since + self.idle_timeout

    def call_started(self) -> None:
        self.in_flight += 1
        self.quiet_since = trio.current_time()
        if self.answered.is_set():
            self.answered = trio.Event()
        self.refresh()

    def call_done(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.quiet_since = trio.current_time()
            self.answered.set()
        self.refresh()

    def subscription_started(self) -> None:
        self.subscriptions += 1
        self.refresh()

    def subscription_done(self) -> None:
        self.subscriptions -= 1
        if not self.subscriptions:
            self.quiet_since = trio.current_time()
        self.refresh()


def _error_frame(error: RpcError) -> bytes:
    return dump_json({"jsonrpc": "2.0", "error": error.to_json(), "id": None})


class RpcServer:
    """Serves a :class:`Dispatcher` on every inbound RPC stream, within its limits."""

    def __init__(self, dispatcher: Dispatcher, *, max_frame: int = DEFAULT_MAX_FRAME, rate: float = 100.0, burst: float = 200.0,
                 rate_total: float | None = None, burst_total: float | None = None, streams: StreamLimits | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S) -> None:
        self.dispatcher = dispatcher
        self.max_frame = max_frame
        self.limiter = CallLimiter(rate, burst, rate_total=rate_total, burst_total=burst_total)
        self.streams = streams or StreamLimits()
        self.idle_timeout = idle_timeout
        self.framing_errors = 0
        self.rate_limited = 0
        self.idle_closed = 0
        self.stream_failures = 0  # streams ended by an unexpected error (logged), the server serving on

    async def handle_stream(self, stream: Any) -> None:
        """libp2p stream handler: lives as long as the caller keeps the stream
        open (and is not idle). Never raises: libp2p runs handlers in the
        connection's task, and an escaping error would end the connection."""
        framed = FramedStream(stream, self.max_frame)
        try:
            peer_id = stream.muxed_conn.peer_id.to_base58()
            connection = stream.muxed_conn
        except Exception:  # a stream whose connection is already gone
            await framed.reset()
            return
        reservation = self.streams.acquire(peer_id, connection)
        if isinstance(reservation, RpcError):
            await self._refuse(framed, reservation)
            return
        try:
            await self._serve(framed, peer_id)
        except Exception as exc:  # contained: this stream ends, nothing else does
            self.stream_failures += 1
            log.warning("rpc stream failed", peer=peer_id, error=f"{type(exc).__name__}: {exc}"[:300])
            await framed.reset()
        finally:
            reservation.release()

    async def _refuse(self, framed: FramedStream, error: RpcError) -> None:
        """Answer ``error`` (id null: it concerns the stream) and close for good.

        The answer and our FIN go first; then, for at most REFUSAL_LINGER_S,
        whatever the caller still sends is read and dropped (a caller whose
        request write failed on a reset stream could no longer read the
        answer); then the reset makes both ends forget the stream even if the
        caller never closes it."""
        with trio.move_on_after(WRITE_TIMEOUT_S):
            try:
                await framed.write_frame(_error_frame(error))
            except CALLER_GONE:
                pass
            await framed.close()
        with trio.move_on_after(REFUSAL_LINGER_S):
            drained = 0
            try:
                while drained < REFUSAL_DRAIN_BYTES and (chunk := await framed.stream.read(READ_CHUNK)):
                    drained += len(chunk)
            except Exception:
                pass  # EOF, reset, anything: the stream is over either way
        await framed.reset()

    async def _serve(self, framed: FramedStream, peer_id: str) -> None:
        write_lock = trio.Lock()
        activity = _StreamActivity(framed, self.idle_timeout)

        async def send(payload: bytes) -> None:
            async with write_lock:
                with trio.fail_after(WRITE_TIMEOUT_S):
                    await framed.write_frame(payload)

        async def notify(method: str, params: Any) -> None:
            await send(dump_json({"jsonrpc": "2.0", "method": method, "params": params}))

        def admit() -> RpcError | None:
            refusal = self.limiter.admit(peer_id, trio.current_time())
            if refusal is None:
                return None
            self.rate_limited += 1
            return RpcError(ErrorCode.RATE_LIMITED, "Rate limited", {"retry_after_s": refusal.retry_after_s, "scope": refusal.scope})

        slots = trio.Semaphore(MAX_IN_FLIGHT_PER_STREAM)
        violation: FrameError | None = None
        gone = idle = False
        async with trio.open_nursery() as nursery:

            async def run_subscription(forward: Subscription) -> None:
                try:
                    await forward()
                except CALLER_GONE:
                    pass  # the subscriber closed, reset or stopped reading its stream
                except Exception as exc:  # a bug in one subscription ends that subscription
                    log.warning("rpc subscription failed", peer=peer_id, error=f"{type(exc).__name__}: {exc}"[:300])
                finally:
                    activity.subscription_done()

            def start_subscription(forward: Subscription) -> None:
                if activity.subscriptions >= MAX_SUBSCRIPTIONS_PER_STREAM:
                    raise RpcError(ErrorCode.TOO_MANY_SUBSCRIPTIONS, "Too many subscriptions", {"limit": MAX_SUBSCRIPTIONS_PER_STREAM})
                activity.subscription_started()
                nursery.start_soon(run_subscription, forward)

            ctx = CallContext(peer_id=peer_id, notify=notify, nursery=nursery, start_subscription=start_subscription)

            async def serve(frame: bytes) -> None:
                try:
                    response = await self.dispatcher.handle(frame, ctx, admit=admit)
                    if response is not None:
                        if len(response) > self.max_frame:
                            response = _too_large(response, self.max_frame)
                        await send(response)
                except CALLER_GONE:
                    nursery.cancel_scope.cancel()  # the caller is gone, or not reading
                finally:
                    slots.release()
                    activity.call_done()

            with activity.reader:
                activity.refresh()
                try:
                    while (frame := await framed.read_frame()) is not None:
                        # A request received is a request answered: the idle
                        # deadline may not drop it while it waits for a slot.
                        with trio.CancelScope(shield=True):
                            await slots.acquire()
                        activity.call_started()
                        nursery.start_soon(serve, frame)
                    # Clean close by the caller: finish what is in flight.
                except FrameError as exc:
                    violation = exc
                    nursery.cancel_scope.cancel()
                except StreamError:
                    gone = True
                    nursery.cancel_scope.cancel()  # peer went away mid-stream
            if activity.reader.cancelled_caught:
                idle = True
                self.idle_closed += 1
                await activity.answered.wait()  # what was asked before the deadline is answered
                nursery.cancel_scope.cancel()  # subscriptions end with the stream
        if violation is not None:
            self.framing_errors += 1
            log.info("rpc stream reset", peer=peer_id, reason=str(violation))
            await framed.reset()
        elif gone:
            await framed.reset()
        elif idle:
            half = framed.partial_since is not None
            await self._refuse(framed, RpcError(ErrorCode.STREAM_IDLE, "Stream idle", {
                "idle_timeout_s": self.idle_timeout,
                "reason": "a frame was begun and not finished in time" if half else "no request within the idle deadline"}))
        else:
            await framed.close()


def _too_large(response: bytes, max_frame: int) -> bytes:
    """The answer to send instead of a response larger than a frame may be:
    each call answered with an internal error saying so (the caller can ask
    for less), rather than a stream reset with no answer."""
    message = parse_json(response)
    error = RpcError(ErrorCode.INTERNAL_ERROR, "Internal error",
                     {"reason": f"the response is larger than the frame limit of {max_frame} bytes; ask for less"}).to_json()
    items = message if isinstance(message, list) else [message]
    answers = [{"jsonrpc": "2.0", "error": error, "id": item.get("id") if isinstance(item, dict) else None} for item in items]
    return dump_json(answers if isinstance(message, list) else answers[0])

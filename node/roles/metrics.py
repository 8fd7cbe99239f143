"""Prometheus metrics of one daemon, served over HTTP (``/metrics``, ``/healthz``).

:class:`NodeMetrics` owns a private registry (several daemons in one test
process never share series). The daemon calls its ``on_*``/``set_*`` methods
as things happen and runs :meth:`NodeMetrics.serve` in its nursery. All
metric names start with ``metanode_``.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from node.base.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
MAX_RPC_METHOD_LABELS = 200  # method names come from clients: bound the label cardinality
OTHER_METHOD = "other"
_MAX_REQUEST_BYTES = 8192
_REQUEST_TIMEOUT_S = 5.0


class NodeMetrics:
    """The daemon's metrics. Update methods are cheap and never raise on valid numbers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.height = Gauge("metanode_height", "Height of the latest finalised block.", registry=r)
        self.round = Gauge("metanode_round", "Round in which the latest block was committed.", registry=r)
        self.rounds_per_height = Histogram("metanode_rounds_per_height", "Rounds needed per finalised height (1 = first round).", buckets=(1, 2, 3, 4, 6, 8, 16), registry=r)
        self.finality = Histogram("metanode_time_to_finality_seconds", "From a block's proposal timestamp to its finalisation here.", buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64), registry=r)
        self.mempool_txs = Gauge("metanode_mempool_transactions", "Pending transactions in the mempool.", registry=r)
        self.mempool_bytes = Gauge("metanode_mempool_bytes", "Bytes of pending transactions in the mempool.", registry=r)
        self.peers = Gauge("metanode_peers", "Connected peers.", registry=r)
        self.rpc_calls = Counter("metanode_rpc_calls", "JSON-RPC calls by method.", ["method"], registry=r)
        self.rpc_errors = Counter("metanode_rpc_errors", "JSON-RPC calls answered with an error, by method.", ["method"], registry=r)
        self.jobs = Gauge("metanode_jobs", "Jobs by state.", ["state"], registry=r)
        self.cage_runs = Counter("metanode_cage_runs", "Cage runs by outcome.", ["status"], registry=r)
        self.cage_seconds = Histogram("metanode_cage_run_seconds", "Wall time of cage runs.", buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r)
        self.storage_bytes = Gauge("metanode_storage_bytes", "Bytes in the node's data directory (database and blobs).", registry=r)
        self._rpc_methods: set[str] = set()
        self._job_states: set[str] = set()

    def on_block(self, height: int, round: int, finality_s: float) -> None:
        """A block was finalised at ``height`` in round ``round`` (0-based), ``finality_s`` after its proposal."""
        self.height.set(height)
        self.round.set(round)
        self.rounds_per_height.observe(round + 1)
        self.finality.observe(max(0.0, finality_s))

    def set_mempool(self, count: int, size_bytes: int) -> None:
        self.mempool_txs.set(count)
        self.mempool_bytes.set(size_bytes)

    def set_peers(self, n: int) -> None:
        self.peers.set(n)

    def on_rpc(self, method: str, ok: bool) -> None:
        """Count one answered call; past MAX_RPC_METHOD_LABELS distinct names, new ones count as "other"."""
        if method not in self._rpc_methods:
            if len(self._rpc_methods) >= MAX_RPC_METHOD_LABELS:
                method = OTHER_METHOD
            else:
                self._rpc_methods.add(method)
        self.rpc_calls.labels(method=method).inc()
        if not ok:
            self.rpc_errors.labels(method=method).inc()

    def set_jobs(self, state_counts: Mapping[str, int]) -> None:
        """The current number of jobs in each state; states missing from ``state_counts`` drop to 0."""
        for state in self._job_states - set(state_counts):
            self.jobs.labels(state=state).set(0)
        for state, count in state_counts.items():
            self.jobs.labels(state=state).set(count)
            self._job_states.add(state)

    def on_cage_run(self, seconds: float, status: str) -> None:
        self.cage_runs.labels(status=status).inc()
        self.cage_seconds.observe(max(0.0, seconds))

    def set_storage_bytes(self, n: int) -> None:
        self.storage_bytes.set(n)

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)

    async def serve(self, host: str = DEFAULT_HOST, port: int = 9464, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve ``/metrics`` and ``/healthz`` until cancelled. Use with
        ``await nursery.start(metrics.serve, host, port)``, which returns the
        bound port (useful with ``port=0``). A busy port raises ConfigError."""
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"metrics: cannot listen on {host}:{port}: the port is already in use") from None
            raise ConfigError(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = listeners[0].socket.getsockname()[1]
        task_status.started(bound)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(_REQUEST_TIMEOUT_S):
                    request = await _read_request_head(stream)
                    await stream.send_all(self._respond(request))
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
                return  # a slow or broken client only loses its own connection

    def _respond(self, head: bytes | None) -> bytes:
        if head is None:
            return _response(400, b"bad request\n", "text/plain")
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response(400, b"bad request\n", "text/plain")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(405, b"only GET\n", "text/plain")
        if target == b"/metrics":
            body, ctype = self.exposition(), CONTENT_TYPE_LATEST
        elif target == b"/healthz":
            body, ctype = b"ok\n", "text/plain"
        else:
            return _response(404, b"not found; try /metrics or /healthz\n", "text/plain")
        return _response(200, b"" if method == b"HEAD" else body, ctype, length=len(body))


async def _read_request_head(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
        if len(data) > _MAX_REQUEST_BYTES:
            return None
    return data.split(b"\r\n\r\n", 1)[0]


def _response(status: int, body: bytes, content_type: str, *, length: int | None = None) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body

"""Prometheus metrics of one daemon, served over HTTP (``/metrics``, ``/healthz``).

:class:`NodeMetrics` owns a private registry (several daemons in one test
process never share series). The daemon calls its ``on_*``/``set_*`` methods
as things happen and runs :meth:`NodeMetrics.serve` in its nursery. All
metric names start with ``metanode_``.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from node.base.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
MAX_RPC_METHOD_LABELS = 200  # method names come from clients: bound the label cardinality
OTHER_METHOD = "other"
_REQUEST_TIMEOUT_S = 5.0
_SHUTDOWN_POLL_S = 0.1  # how often the server thread looks for shutdown(): the longest a daemon's stop waits for it

log = structlog.get_logger("metanode.metrics")


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
        self.checkpoint_seconds = Histogram(
            "metanode_db_checkpoint_seconds", "Wall time of each checkpoint of the node database (it delays the block whose append ran it).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.checkpoint_log_bytes = Counter("metanode_db_checkpoint_log_bytes", "Bytes of write-ahead log moved into the database file by checkpoints.", registry=r)
        self.storage_bytes = Gauge("metanode_storage_bytes", "Bytes in the node's data directory (database and blobs).", registry=r)
        self.budget_in_use = Gauge("metanode_budget_in_use", "Budgeted resources held (open_files, connections, pending_connections, streams...).", ["resource"], registry=r)
        self.budget_limit = Gauge("metanode_budget_limit", "Limit of each budgeted resource (node-wide).", ["resource"], registry=r)
        self.budget_refused = Gauge("metanode_budget_refused", "Reservations of each resource refused since start.", ["resource"], registry=r)
        # method -> its labelled counter of calls (of errors: made at the method's first error, so a
        # method without errors exports no error series): labels() takes a lock and builds a key
        # on every call, and a batch of transactions is one call each.
        self._rpc_methods: dict[str, Any] = {}
        self._rpc_method_errors: dict[str, Any] = {}
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

    def set_budget(self, report: Mapping[str, Any]) -> None:
        """The daemon's budget report (Daemon.budget_report): each resource's use, limit and refusals."""
        for resource, entry in report.items():
            if not isinstance(entry, Mapping) or "limit" not in entry:
                continue
            if isinstance(entry.get("in_use"), int):
                self.budget_in_use.labels(resource=resource).set(entry["in_use"])
            if isinstance(entry["limit"], int):
                self.budget_limit.labels(resource=resource).set(entry["limit"])
            refused = entry.get("refused")
            if isinstance(refused, Mapping):
                self.budget_refused.labels(resource=resource).set(sum(refused.values()))

    def on_rpc(self, method: str, ok: bool) -> None:
        """Count one answered call; past MAX_RPC_METHOD_LABELS distinct names, new ones count as "other"."""
        calls = self._rpc_methods.get(method)
        if calls is None:
            if len(self._rpc_methods) >= MAX_RPC_METHOD_LABELS:
                method = OTHER_METHOD
            calls = self._rpc_methods.get(method)
            if calls is None:
                calls = self._rpc_methods[method] = self.rpc_calls.labels(method=method)
        calls.inc()
        if not ok:
            errors = self._rpc_method_errors.get(method)
            if errors is None:
                errors = self._rpc_method_errors[method] = self.rpc_errors.labels(method=method)
            errors.inc()

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

    def on_checkpoint(self, seconds: float, log_bytes: int) -> None:
        self.checkpoint_seconds.observe(max(0.0, seconds))
        self.checkpoint_log_bytes.inc(max(0, log_bytes))

    def set_storage_bytes(self, n: int) -> None:
        self.storage_bytes.set(n)

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)

    async def serve(self, host: str = DEFAULT_HOST, port: int = 9464, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve ``/metrics`` and ``/healthz`` until cancelled. Use with
        ``await nursery.start(metrics.serve, host, port)``, which returns the
        bound port (useful with ``port=0``). A busy port raises ConfigError.

        The server is prometheus_client's own (its threaded WSGI server and its
        exposition app, which negotiates the format and compression a scraper
        asks for), on a thread of its own: a scrape never waits for the trio
        loop, nor the loop for a scraper. Cancelled, it stops that thread and
        closes its socket before returning."""
        try:
            server = await trio.to_thread.run_sync(_bind, host, port, self._app())
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"metrics: cannot listen on {host}:{port}: the port is already in use") from None
            raise ConfigError(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = int(server.server_address[1])
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": _SHUTDOWN_POLL_S},
                                  name=f"metrics {host}:{bound}", daemon=True)
        thread.start()
        try:
            task_status.started(bound)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_stop, server, thread)

    def _app(self) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
        """prometheus_client's exposition app on ``/metrics`` (GET, and HEAD: its
        headers without the body), ``/healthz`` beside it, 404 and 405 elsewhere."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
            if method not in ("GET", "HEAD"):
                return _plain(start_response, "405 Method Not Allowed", b"only GET\n")
            if path == "/healthz":
                return _plain(start_response, "200 OK", b"ok\n", head=method == "HEAD")
            if path != "/metrics":
                return _plain(start_response, "404 Not Found", b"not found; try /metrics or /healthz\n")
            if method == "GET":
                return metrics_app(environ, start_response)
            answer: list[Any] = []

            def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
                answer[:] = [status, [(k, v) for k, v in headers if k.lower() != "content-length"]]

            body = b"".join(metrics_app({**environ, "REQUEST_METHOD": "GET"}, keep))
            start_response(answer[0], answer[1] + [("Content-Length", str(len(body)))])
            return [b""]

        return app


class _QuietHandler(WSGIRequestHandler):
    """One request per connection; no access log; a client silent for
    _REQUEST_TIMEOUT_S loses its connection. Malformed requests are answered
    ``HTTP/1.1 400`` with a one-line plain-text body."""

    timeout = _REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(explain)s\n"

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _MetricsServer(ThreadingWSGIServer):
    """prometheus_client's thread-per-request server; a client that times out or
    hangs up costs its own connection and nothing on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics request failed", client=str(client_address), exc_info=True)


def _bind(host: str, port: int, app: Callable[..., Iterable[bytes]]) -> _MetricsServer:
    """Bind (IPv4 or IPv6, as ``host`` is), as prometheus_client's start_http_server does."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(_MetricsServer):
        address_family = family

    return make_server(str(sockaddr[0]), port, app, Server, handler_class=_QuietHandler)


def _stop(server: _MetricsServer, thread: threading.Thread) -> None:
    server.shutdown()  # returns once serve_forever has (within _SHUTDOWN_POLL_S)
    server.server_close()
    thread.join()


def _plain(start_response: Callable[..., Any], status: str, body: bytes, *, head: bool = False) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [b"" if head else body]

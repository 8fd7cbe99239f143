"""The console's HTTP/1.1 server: trio + h11, loopback by default.

Every request passes, in order: the connection limit; the ``Host`` check
(DNS rebinding); the token (``?token=`` sets the session cookie and answers
303 to the same URL without it); the session cookie (else 401: JSON for
``/api/``, a short HTML page saying to open the printed URL for the rest);
the ``Origin`` check for anything but GET and HEAD. Then ``/api/events``
(server-sent events), ``/api/...`` (node/console/api.py) or a file of
``node/console/static/`` (importlib.resources; ``/`` and paths without a
file extension are ``index.html``, so pages may route by path or by hash).

Every answer carries ``Content-Security-Policy: default-src 'self'`` (no
inline script, no other origin), ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer``; the API's ``Cache-Control: no-store``.
Request heads, bodies, connections and the time a client may take are all
bounded, as in the daemon's HTTP gateway (node/roles/http_gateway.py, which
this layer may not import: a client carries no server code).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import h11
import structlog
import trio

from node.base.errors import ErrorCode, UserError
from node.base.keys import Identity
from node.console.api import Api, ApiError, ApiRequest, Reply
from node.console.auth import Gate, is_loopback, is_wildcard
from node.console.events import KEEPALIVE_FRAME, KEEPALIVE_S, EventHub
from node.console.node import NodeSession, open_node_session

log = structlog.get_logger("metanode.console")

MAX_HEAD = 16 * 1024
MAX_CONNECTIONS = 64
HEAD_TIMEOUT_S = 30.0  # a whole request head, from its first byte
IDLE_TIMEOUT_S = 30.0  # between body bytes
# Between requests on a kept-alive connection: longer than a browser keeps a used
# connection for reuse (Chromium: 5 minutes). A server that closes first races the
# browser's next request on that connection, which then fails (a module import
# with it); loopback clients and MAX_CONNECTIONS bound what idle connections hold.
KEEPALIVE_IDLE_S = 330.0
SEND_TIMEOUT_S = 30.0  # one write to a client that does not read
LINGER_S, LINGER_BYTES = 2.0, 4 * 1024 * 1024
CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
                 ".txt": "text/plain; charset=utf-8", ".woff2": "font/woff2", ".map": "application/json"}
_REASONS = {200: "OK", 201: "Created", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large", 431: "Request Header Fields Too Large", 422: "Unprocessable Content",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}
LOGIN_PAGE = (b"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>metanode console</title></head>"
              b"<body><h1>metanode console</h1><p>This console needs its key: open the URL that "
              b"<code>metanode console</code> printed in your terminal (it ends with <code>?token=...</code>).</p>"
              b"</body></html>")


def static_root() -> Traversable:
    """The pages shipped in the package (node/console/static/)."""
    return importlib.resources.files("node.console").joinpath("static")


def static_file(root: Traversable, path: str) -> Traversable | None:
    """The file ``path`` (a decoded URL path) names under ``root``, or None.
    Every segment must be a plain name: no ``..``, no hidden files, no
    backslash or NUL, so nothing outside ``root`` can be named."""
    segments = [s for s in path.split("/")[1:]]
    if not segments or segments == [""]:
        segments = ["index.html"]
    elif "." not in segments[-1] and segments[0] != "api":
        segments = ["index.html"]  # a page's own route (/jobs/ID): the app loads and routes
    node = root
    for segment in segments:
        if not segment or segment.startswith(".") or any(c in segment for c in "\\\x00:"):
            return None
        node = node.joinpath(segment)
    return node if node.is_file() else None


class _Gone(Exception):
    """The client went away or broke the protocol."""


class ConsoleServer:
    """Serves one console: ``gate`` decides who, ``api`` answers ``/api/``, ``hub`` feeds ``/api/events``."""

    def __init__(self, gate: Gate, api: Api, hub: EventHub, *, root: Traversable | None = None,
                 max_connections: int = MAX_CONNECTIONS, max_body_bytes: int = 256 * 1024**2) -> None:
        self.gate, self.api, self.hub = gate, api, hub
        self.root = root if root is not None else static_root()
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self.connections = 0
        self.requests = 0
        self.refused = 0  # 401 and 403 answers

    @property
    def url(self) -> str:
        return self.gate.url()

    async def connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.connections >= self.max_connections:
                body = ApiError(503, "too many connections to the console; retry", code=ErrorCode.SERVER_BUSY).body()
                with trio.move_on_after(2):
                    try:  # before any request is read, so written by hand rather than through h11
                        await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                              b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                return
            self.connections += 1
            try:
                await self._serve(stream)
            except (_Gone, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                pass  # a slow, broken or gone client loses only its own connection
            except Exception:
                log.exception("console connection failed")
            finally:
                self.connections -= 1

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            if not await self._await_request(conn, stream):
                break  # idle past KEEPALIVE_IDLE_S, or the client closed
            try:
                with trio.fail_after(HEAD_TIMEOUT_S):
                    event = await self._next_event(conn, stream)
            except h11.RemoteProtocolError as exc:
                await self._reply(conn, stream, _error_reply(ApiError(exc.error_status_hint, "malformed HTTP request",
                                                                      code=ErrorCode.INVALID_REQUEST)), close=True)
                break
            if not isinstance(event, h11.Request):
                return
            self.requests += 1
            await self._request(conn, stream, event)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
        with trio.move_on_after(LINGER_S):  # closing with unread input would reset the answer away
            await stream.send_eof()
            drained = 0
            while drained < LINGER_BYTES and (data := await stream.receive_some(65536)):
                drained += len(data)

    async def _await_request(self, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        """Wait (up to KEEPALIVE_IDLE_S) for the first byte of the next request on a
        connection with nothing buffered; False if none came."""
        if conn.their_state is not h11.IDLE or conn.trailing_data[0]:
            return True  # a request is under way, or already buffered (pipelined)
        with trio.move_on_after(KEEPALIVE_IDLE_S):
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            return bool(data)
        return False

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_after(IDLE_TIMEOUT_S):
                data = await stream.receive_some(65536)
            conn.receive_data(data)

    async def _reply(self, conn: h11.Connection, stream: trio.SocketStream, reply: Reply, *, head: bool = False,
                     close: bool = False) -> None:
        if conn.our_state is not h11.SEND_RESPONSE:
            return
        headers = [(b"content-type", reply.content_type.encode()), (b"content-length", str(len(reply.body)).encode()),
                   *SECURITY_HEADERS, *reply.headers]
        if not any(name == b"cache-control" for name, _ in headers):
            headers.append((b"cache-control", b"no-store"))
        if close or conn.their_state is not h11.DONE:
            headers.append((b"connection", b"close"))  # the request body was not (fully) read
        response = h11.Response(status_code=reply.status, headers=headers, reason=_REASONS.get(reply.status, "").encode())
        with trio.fail_after(SEND_TIMEOUT_S):
            await stream.send_all(conn.send(response) + conn.send(h11.Data(data=b"" if head else reply.body))
                                  + conn.send(h11.EndOfMessage()))

    async def _request(self, conn: h11.Connection, stream: trio.SocketStream, event: h11.Request) -> None:
        headers: dict[bytes, list[bytes]] = {}
        for name, value in event.headers:
            headers.setdefault(name, []).append(value)

        def header(name: bytes) -> str | None:
            values = headers.get(name)
            return b", ".join(values).decode("latin-1") if values else None

        method = event.method.decode("ascii", "replace")
        if len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers) > MAX_HEAD:
            # h11 bounds a head that arrives in pieces; one that arrived whole is measured here
            await self._reply(conn, stream, _error_reply(ApiError(431, f"the request head is larger than {MAX_HEAD} bytes",
                                                                  code=ErrorCode.INVALID_REQUEST)), close=True)
            return
        if b"transfer-encoding" not in headers and headers.get(b"content-length", [b"0"]) == [b"0"]:
            conn.next_event()  # the request's EndOfMessage, already here: the connection can be kept alive
        try:
            reply = await self._answer(conn, stream, method, event.target, header)
        except ApiError as exc:
            reply = _error_reply(exc)
        except (_Gone, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            raise
        except Exception as exc:  # a bug costs one request, never the console
            log.exception("console request failed", target=event.target[:200].decode("ascii", "replace"))
            reply = _error_reply(ApiError(500, f"internal error ({type(exc).__name__})", code=ErrorCode.INTERNAL_ERROR))
        if reply is not None:
            if reply.status in (401, 403):
                self.refused += 1
            await self._reply(conn, stream, reply, head=method == "HEAD")

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, method: str, raw_target: bytes,
                      header: Any) -> Reply | None:
        """The reply to one request (None when it was streamed already)."""
        if not self.gate.host_ok(header(b"host")):
            raise ApiError(403, "the Host header does not name this console (open the URL it printed)")
        try:
            target = raw_target.decode("ascii")
        except UnicodeDecodeError:
            raise ApiError(400, "the request target must be ASCII", code=ErrorCode.INVALID_REQUEST) from None
        parts = urlsplit(target)
        if not target.startswith("/") or parts.fragment:
            raise ApiError(400, "the request target must be a path", code=ErrorCode.INVALID_REQUEST)
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, max_num_fields=20)
        except ValueError as exc:
            raise ApiError(400, f"bad query string: {exc}", code=ErrorCode.INVALID_PARAMS) from None
        path = unquote(parts.path)
        is_api = path == "/api" or path.startswith("/api/")
        tokens = [value for name, value in pairs if name == "token"]
        if tokens:
            if method not in ("GET", "HEAD") or len(tokens) != 1 or not self.gate.token_ok(tokens[0]):
                raise ApiError(401, "wrong token: open the URL metanode console printed", code=ErrorCode.UNAUTHORIZED)
            rest = urlencode([(name, value) for name, value in pairs if name != "token"])
            location = parts.path + (f"?{rest}" if rest else "")
            return Reply(303, b"", "text/plain; charset=utf-8",
                         [(b"location", location.encode()), (b"set-cookie", self.gate.set_cookie(self.gate.open_session()).encode())])
        if not self.gate.session_ok(header(b"cookie")):
            if is_api:
                raise ApiError(401, "not logged in: open the URL metanode console printed (it ends with ?token=...)",
                               code=ErrorCode.UNAUTHORIZED)
            return Reply(401, LOGIN_PAGE, "text/html; charset=utf-8")
        if method not in ("GET", "HEAD") and not self.gate.origin_ok(header(b"origin"), header(b"host")):
            raise ApiError(403, "cross-origin request refused")
        if header(b"sec-fetch-site") not in (None, "same-origin", "none") and method not in ("GET", "HEAD"):
            raise ApiError(403, "cross-site request refused")
        if path == "/api/events":
            if method != "GET":
                raise ApiError(405, "GET /api/events only", code=ErrorCode.METHOD_NOT_FOUND)
            await self._events(conn, stream)
            return None
        if is_api:
            length = header(b"content-length")
            request = ApiRequest(method, path, dict(pairs), int(length) if length and length.isdigit() else None,
                                 lambda: self._body(conn, stream))
            return await self.api.handle(request)
        if method not in ("GET", "HEAD"):
            raise ApiError(405, f"{method} is not allowed on {path[:200]}", code=ErrorCode.METHOD_NOT_FOUND)
        found = static_file(self.root, path)
        if found is None:
            raise ApiError(404, f"{path[:200]}: no such file", code=ErrorCode.METHOD_NOT_FOUND)
        suffix = Path(found.name).suffix.lower()
        return Reply(200, found.read_bytes(), CONTENT_TYPES.get(suffix, "application/octet-stream"),
                     [(b"cache-control", b"no-cache")])

    async def _body(self, conn: h11.Connection, stream: trio.SocketStream) -> AsyncIterator[bytes]:
        """The request body as it arrives (at most ``max_body_bytes``)."""
        if conn.client_is_waiting_for_100_continue:
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        size = 0
        while True:
            event = await self._next_event(conn, stream)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body_bytes:
                    raise ApiError(413, f"the request body is larger than {self.max_body_bytes} bytes",
                                   code=ErrorCode.BODY_TOO_LARGE)
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise _Gone()

    async def _events(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        """``text/event-stream`` until the client leaves or is dropped for not keeping up."""
        client = self.hub.join()
        if client is None:
            await self._reply(conn, stream, _error_reply(ApiError(503, "too many event streams open", code=ErrorCode.SERVER_BUSY)))
            return
        try:
            headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"), *SECURITY_HEADERS]
            if conn.their_state is not h11.DONE:
                headers.append((b"connection", b"close"))
            with trio.fail_after(SEND_TIMEOUT_S):
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=b": metanode console events\n\n")))
            while True:
                frame: bytes | None = KEEPALIVE_FRAME  # unless an event comes first
                with trio.move_on_after(KEEPALIVE_S):
                    try:
                        frame = await client.receive.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        frame = None  # dropped: it did not keep up
                if frame is None:
                    break
                with trio.fail_after(SEND_TIMEOUT_S):
                    await stream.send_all(conn.send(h11.Data(data=frame)))
            with trio.fail_after(SEND_TIMEOUT_S):
                await stream.send_all(conn.send(h11.EndOfMessage()))
        finally:
            self.hub.leave(client)


def _error_reply(exc: ApiError) -> Reply:
    return Reply(exc.status, exc.body())


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); UserError (exit 2) otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UserError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8765 (port 0 picks a free one)", exit_code=2)
    if host.lower() == "localhost":
        host = "127.0.0.1"  # one address, so that port 0 means one port
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UserError(f"--listen {text!r}: HOST must be an IP address (127.0.0.1, ::1, 0.0.0.0) or localhost", exit_code=2) from None
    return host, int(port_text)


def check_listen_host(host: str, allow_remote: bool) -> str | None:
    """Refuse a non-loopback address without ``--allow-remote``; with it, the warning to print."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise UserError(f"--listen {host}: not a loopback address; the console acts with your key, so anyone who can "
                        "reach it and holds the token can too. Pass --allow-remote to listen there anyway", exit_code=2)
    where = "every interface" if is_wildcard(host) else host
    return (f"warning: the console listens on {where}, reachable from other machines; the token is all that "
            "protects your key's power, and HTTP is not encrypted")


async def bind(host: str, port: int) -> list[trio.SocketListener]:
    """The listening socket; UserError (exit 2) when the port is taken or the address is not ours."""
    try:
        return list(await trio.open_tcp_listeners(port, host=host))
    except OSError as exc:
        import errno

        why = f"port {port} is in use (another console?); choose another with --listen {host}:PORT, or :0 for a free one" \
            if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise UserError(f"--listen {host}:{port}: cannot listen: {why}", exit_code=2) from None


@asynccontextmanager
async def open_console(address: str, identity: Identity, *, host: str = "127.0.0.1", port: int = 0,
                       genesis_path: str | None = None, root: Traversable | None = None,
                       spool_dir: Path | None = None, token: str | None = None,
                       listeners: list[trio.SocketListener] | None = None) -> AsyncIterator[ConsoleServer]:
    """A running console for the node at ``address`` as ``identity``: bound (or on
    ``listeners``), connected, subscribed, serving until the block is left."""
    listeners = listeners if listeners is not None else await bind(host, port)
    bound_port = listeners[0].socket.getsockname()[1]
    async with open_node_session(address, identity, genesis_path=genesis_path) as node:
        hub = EventHub(node)
        server = ConsoleServer(Gate(host, bound_port, token=token), Api(node, hub, spool_dir=spool_dir), hub, root=root)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            nursery.start_soon(trio.serve_listeners, server.connection, listeners)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()


__all__ = ["ConsoleServer", "NodeSession", "bind", "check_listen_host", "open_console", "parse_listen", "static_file"]

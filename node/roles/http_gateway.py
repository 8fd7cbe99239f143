"""The local HTTP gateway: the tenant API as JSON over HTTP/1.1, for curl and other languages.

Each route is translated into a call on the daemon's JSON-RPC :class:`Registry`
(through its :class:`Dispatcher`), with a :class:`CallContext` whose peer id is
the tenant's. Parameter validation, quotas, tenant checks and ``api.call``
receipts are therefore the p2p gateway's own, and the per-peer rate limit is
the same bucket. RPC errors become HTTP statuses (each code's status is in
node/base/errors.py) with a JSON body ``{"error": {"code", "message", "data"}}``.
The service routes (``/v1/services...``) are node/roles/http_services.py's.

Requests are signed with the tenant key (node/base/http_auth.py). Nothing
is done in a tenant's name before its signature over the whole body
verifies: a dataset body is spooled (to the data directory when large) first.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import structlog
import trio

from node.base.errors import ErrorCode, http_status_of
from node.base.http_auth import AUTH_SCHEME, AuthError, RequestVerifier, sign_request
from node.base.keys import peer_id_from_public_key
from node.p2p.jsonrpc import CallContext, RpcError, dump_json, parse_json
from node.roles.http_services import SERVICE_ROUTES

__all__ = ["HttpGateway", "HttpError", "ROUTES", "sign_request"]
log = structlog.get_logger("metanode.http")

MAX_JSON_BODY = 1024 * 1024
UPLOAD_CHUNK = 1024 * 1024  # decoded bytes per dataset_upload call (its limit)
MAX_HEAD = 16 * 1024
IDLE_TIMEOUT_S = 30.0  # between requests on a kept-alive connection, and between body bytes
HEAD_TIMEOUT_S = 60.0
LINGER_S, LINGER_BYTES = 2.0, 4 * 1024 * 1024  # reading what a refused client still sends
MAX_CONNECTIONS = 64
TENANT_TX_TYPES = ("dataset.register", "job.cancel")

_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout"}


class HttpError(Exception):
    """An error answer: the JSON error object and its HTTP status, which is the
    error code's status in node/base/errors.py unless ``status`` says otherwise
    (405 for a known route with another method; h11's hint for a malformed request)."""

    def __init__(self, code: int, message: str, data: Any = None, *, status: int | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.data, self.close = int(code), message, data, close
        self.status = http_status_of(code, data) if status is None else status

    def body(self) -> bytes:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return dump_json({"error": error})

    @classmethod
    def from_rpc(cls, error: dict[str, Any]) -> "HttpError":
        """The answer to a JSON-RPC error from the dispatcher (an unknown code is 500)."""
        return cls(error.get("code", ErrorCode.INTERNAL_ERROR), error.get("message", ""), error.get("data"))


def _unauthorized(reason: str) -> HttpError:
    return HttpError(ErrorCode.UNAUTHORIZED, "Unauthorized", {"reason": reason})


# -- the server ---------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    target: str
    query: dict[str, Any]  # checked against the route's query parameters
    args: dict[str, str]  # from the route's path
    body: bytes
    file: IO[bytes] | None  # a spooled dataset body
    size: int
    tenant: bytes
    ctx: CallContext


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    rpc: str  # the JSON-RPC method, or "_handler" for a route with its own handler
    query: dict[str, type]  # allowed query parameters and their types
    body: str  # "none", "json" (small, in memory) or "dataset" (spooled, up to max_body_bytes)
    handler: Any = None  # node/roles/http_services.py's Handler for a route with a JSON body, else None


def _route(method: str, path: str, rpc: str, query: dict[str, type] | None = None, body: str = "none",
           handler: Any = None) -> Route:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(method, re.compile(f"^{regex}$"), rpc, query or {}, body, handler)


ROUTES = [
    _route("GET", "/v1/health", "analytics_health"),
    _route("GET", "/v1/chain", "chain_head"),
    _route("GET", "/v1/nonce", "_nonce"),
    _route("POST", "/v1/datasets", "_upload", {"name": str, "format": str, "on_bad_rows": str}, "dataset"),
    _route("GET", "/v1/datasets", "dataset_list", {"limit": int, "offset": int}),
    _route("GET", "/v1/datasets/{digest}", "dataset_get"),
    _route("GET", "/v1/registry", "analytics_datasets", {"name": str, "limit": int, "offset": int}),
    _route("GET", "/v1/registry/{ref}", "analytics_dataset"),
    _route("POST", "/v1/jobs", "_submit", body="json"),
    _route("GET", "/v1/jobs", "analytics_list", {"state": str, "limit": int, "before": int}),
    _route("GET", "/v1/jobs/{job_id}", "analytics_status"),
    _route("GET", "/v1/jobs/{job_id}/result", "analytics_result"),
    _route("GET", "/v1/jobs/{job_id}/witness", "analytics_witness"),
    _route("POST", "/v1/txs", "_tx", body="json"),
    _route("GET", "/v1/receipts/{id}", "receipt_get"),
    _route("GET", "/v1/receipts/{id}/bundle", "receipt_bundle"),
    *(_route(r.method, r.path, r.rpc, body=r.body, handler=r.handler) for r in SERVICE_ROUTES),
]


class _Gone(Exception):
    """The client went away."""


class HttpGateway:
    """Serves :data:`ROUTES` on ``host:port`` through ``rpc()`` (an object with
    ``dispatcher`` and ``limiter``: the daemon's RpcServer, read when needed)."""

    def __init__(self, rpc: Callable[[], Any], *, host: str, port: int, spool_dir: Path,
                 max_body_bytes: int = 256 * 1024**2, allowed_tenants: list[bytes] | None = None,
                 check_tx: Callable[[Any], str | None] | None = None, verifier: RequestVerifier | None = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.rpc, self.host, self.port = rpc, host, port
        self.spool_dir = spool_dir
        self.max_body_bytes = max_body_bytes
        self.allowed = set(allowed_tenants) if allowed_tenants else None
        self.check_tx = check_tx
        self.verifier = verifier or RequestVerifier()
        self.max_connections = max_connections
        self.bound: tuple[str, int] | None = None
        self.connections = 0
        self.requests = 0
        self.errors = 0
        self.auth_failures = 0  # requests refused 401: a missing, malformed or bad signature

    def status(self) -> dict[str, Any]:
        return {"listen": f"{self.bound[0]}:{self.bound[1]}" if self.bound else None,
                "requests": self.requests, "errors": self.errors, "connections": self.connections,
                "auth_failures": self.auth_failures}

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report started, serve until cancelled. A busy port raises ConfigError."""
        from node.base.errors import ConfigError

        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.spool_dir.glob("*"):  # left by a crash mid-upload
            stale.unlink(missing_ok=True)
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise ConfigError(f"[services] http_listen: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.bound = (self.host, listeners[0].socket.getsockname()[1])
        log.info("http gateway listening", listen=self.status()["listen"])
        task_status.started(self.bound[1])
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.connections >= self.max_connections:
                busy = HttpError(ErrorCode.SERVER_BUSY, "too many connections; retry", {"limit": self.max_connections})
                body = busy.body()
                with trio.move_on_after(2):
                    try:  # before any request is read, so written by hand rather than through h11
                        await stream.send_all(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                                              b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                              % (busy.status, _REASONS[busy.status].encode(), len(body), body))
                        await self._linger(stream)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                return
            self.connections += 1
            try:
                await self._serve_connection(stream)
            except (_Gone, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                pass  # a slow, broken or gone client loses only its own connection
            except Exception:
                log.exception("http connection failed")
            finally:
                self.connections -= 1

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            try:
                with trio.fail_after(HEAD_TIMEOUT_S):  # a whole request head, however slowly it trickles
                    event = await self._next_event(conn, stream)
            except h11.RemoteProtocolError as exc:
                await self._error(conn, stream, HttpError(ErrorCode.INVALID_REQUEST, "malformed HTTP request", {"reason": str(exc)},
                                                          status=exc.error_status_hint, close=True))
                break
            if not isinstance(event, h11.Request):
                return  # the client closed
            await self._serve_request(conn, stream, event)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
        await self._linger(stream)

    @staticmethod
    async def _linger(stream: trio.SocketStream) -> None:
        """Close gently: closing with unread input sends a reset, which can destroy
        the answer (say a 413) before a client still sending its body reads it."""
        with trio.move_on_after(LINGER_S):
            await stream.send_eof()
            drained = 0
            while drained < LINGER_BYTES and (data := await stream.receive_some(65536)):
                drained += len(data)

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_after(IDLE_TIMEOUT_S):
                data = await stream.receive_some(65536)
            conn.receive_data(data)

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, status: int, body: bytes,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
        if conn.their_state is not h11.DONE and all(name != b"connection" for name, _ in headers):
            headers.append((b"connection", b"close"))  # the request body was not (fully) read
        response = h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, "").encode())
        await stream.send_all(conn.send(response) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))

    async def _error(self, conn: h11.Connection, stream: trio.SocketStream, exc: HttpError) -> None:
        self.errors += 1
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        extra: list[tuple[bytes, bytes]] = [(b"connection", b"close")] if exc.close else []
        if exc.status == 401:
            self.auth_failures += 1  # security_report's auth_failures (node/roles/security.py)
            extra.append((b"www-authenticate", AUTH_SCHEME.encode()))
        if exc.status == 429 and isinstance(exc.data, dict) and "retry_after_s" in exc.data:
            extra.append((b"retry-after", str(max(1, math.ceil(float(exc.data["retry_after_s"])))).encode()))
        if exc.status == 405 and isinstance(exc.data, dict):
            extra.append((b"allow", ", ".join(exc.data.get("allowed", [])).encode()))
        await self._send(conn, stream, exc.status, exc.body(), extra)

    async def _serve_request(self, conn: h11.Connection, stream: trio.SocketStream, event: h11.Request) -> None:
        self.requests += 1
        spool: IO[bytes] | None = None
        try:
            method = event.method.decode("ascii", "replace")
            try:
                target = event.target.decode("ascii")
            except UnicodeDecodeError:
                raise HttpError(ErrorCode.INVALID_REQUEST, "the request target must be ASCII (percent-encode it)") from None
            parts = urlsplit(target)
            if not target.startswith("/") or parts.fragment:
                raise HttpError(ErrorCode.INVALID_REQUEST, "the request target must be a path such as /v1/jobs", {"target": target[:200]})
            route, args = self._match(method, parts.path)
            params = self._params(route, self._query(parts.query))
            headers: dict[bytes, list[bytes]] = {}
            for name, value in event.headers:
                headers.setdefault(name, []).append(value)
            limit = self.max_body_bytes if route.body == "dataset" else MAX_JSON_BODY
            length = headers.get(b"content-length")
            if length and int(length[0]) > limit:  # h11 has checked it is a number
                raise HttpError(ErrorCode.BODY_TOO_LARGE, f"request body is larger than {limit} bytes", {"limit": limit}, close=True)
            auth = headers.get(b"authorization", [])
            if len(auth) > 1:
                raise _unauthorized("more than one Authorization header")
            creds = self.verifier.preflight(auth[0].decode("latin-1") if auth else None)
            if conn.client_is_waiting_for_100_continue:
                await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            if route.body == "dataset":
                spool = tempfile.SpooledTemporaryFile(max_size=UPLOAD_CHUNK, mode="w+b", dir=str(self.spool_dir))  # noqa: SIM115
            body, size, digest = await self._read_body(conn, stream, limit, spool)
            self.verifier.verify(creds, method, target, digest)
            if self.allowed is not None and creds.key not in self.allowed:
                raise HttpError(ErrorCode.TENANT_NOT_ALLOWED, "tenant not allowed on this gateway", {"tenant": creds.key.hex()})
            peer_id = peer_id_from_public_key(creds.key)
            server = self.rpc()
            wait = server.limiter.take(peer_id, trio.current_time()) if server.limiter is not None else 0
            if wait:
                server.rate_limited += 1
                raise HttpError(ErrorCode.RATE_LIMITED, "Rate limited", {"retry_after_s": math.ceil(wait * 1000) / 1000})
            if route.body == "none" and size:
                raise HttpError(ErrorCode.INVALID_REQUEST, f"{method} {parts.path} takes no request body")
            if spool is not None:
                spool.seek(0)
            request = Request(method, target, params, args, body, spool, size, creds.key, CallContext(peer_id=peer_id))
            if route.handler is not None:
                status, result = await route.handler(self.call, route.rpc, self._json(request, ("tx",)), args, request.ctx)
            elif route.rpc.startswith("_"):
                status, result = await getattr(self, route.rpc)(request)
            else:
                status, result = 200, await self.call(route.rpc, {**params, **args}, request.ctx)
            await self._send(conn, stream, status, dump_json(result))
        except AuthError as exc:
            await self._error(conn, stream, _unauthorized(str(exc)))
        except HttpError as exc:
            await self._error(conn, stream, exc)
        except RpcError as exc:  # a route handler's own check (node/roles/http_services.py)
            await self._error(conn, stream, HttpError(exc.code, exc.message, exc.data))
        except h11.RemoteProtocolError as exc:
            await self._error(conn, stream, HttpError(ErrorCode.INVALID_REQUEST, "malformed HTTP request", {"reason": str(exc)},
                                                      status=exc.error_status_hint, close=True))
        except (_Gone, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as exc:  # a bug (or a full disk) costs one request, never the daemon
            log.exception("http request failed", target=event.target[:200].decode("ascii", "replace"))
            await self._error(conn, stream, HttpError(ErrorCode.INTERNAL_ERROR, "Internal error", {"reason": type(exc).__name__}, close=True))
        finally:
            if spool is not None:
                spool.close()

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = []
        for route in ROUTES:
            match = route.pattern.match(path)
            if match:
                if route.method == method:
                    # Matched on the raw path (so an encoded "/" stays inside its
                    # segment), then each segment decoded: /v1/registry/q1%20sales.
                    return route, {key: unquote(value) for key, value in match.groupdict().items()}
                allowed.append(route.method)
        if allowed:
            raise HttpError(ErrorCode.METHOD_NOT_FOUND, f"{method} is not allowed on {path}", {"allowed": allowed}, status=405)
        raise HttpError(ErrorCode.METHOD_NOT_FOUND, "no such route", {"path": path[:200], "routes": sorted({r.pattern.pattern[1:-1] for r in ROUTES})})

    async def _read_body(self, conn: h11.Connection, stream: trio.SocketStream, limit: int,
                         spool: IO[bytes] | None) -> tuple[bytes, int, str]:
        hasher, size, chunks = hashlib.sha256(), 0, []
        while True:
            event = await self._next_event(conn, stream)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise HttpError(ErrorCode.BODY_TOO_LARGE, f"request body is larger than {limit} bytes", {"limit": limit}, close=True)
                hasher.update(event.data)
                if spool is not None:
                    spool.write(event.data)
                else:
                    chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks), size, hasher.hexdigest()
            else:
                raise _Gone()

    @staticmethod
    def _query(text: str) -> dict[str, str]:
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=20)
        except ValueError as exc:
            raise HttpError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": "query", "reason": str(exc)}) from None
        query: dict[str, str] = {}
        for name, value in pairs:
            if name in query:
                raise HttpError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": name, "reason": "given more than once"})
            query[name] = value
        return query

    # -- calls on the registry --------------------------------------------------------------
    async def call(self, method: str, params: dict[str, Any], ctx: CallContext) -> Any:
        """One JSON-RPC method through the daemon's dispatcher; HttpError on an error."""
        request = {"jsonrpc": "2.0", "method": method, "params": params, "id": 0}
        outcome = await self.rpc().dispatcher.handle_one(request, ctx)
        if "error" in outcome:
            raise HttpError.from_rpc(outcome["error"])
        return outcome["result"]

    @staticmethod
    def _params(route: Route, query: dict[str, str]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, value in query.items():
            kind = route.query.get(name)
            if kind is None:
                raise HttpError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": name, "reason": f"unknown query parameter; expected {sorted(route.query) or 'none'}"})
            if kind is int and not re.fullmatch(r"-?[0-9]{1,18}", value):
                raise HttpError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": name, "reason": "an integer"})
            params[name] = kind(value)
        return params

    @staticmethod
    def _json(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
        try:
            doc = parse_json(request.body)
        except ValueError as exc:
            raise HttpError(ErrorCode.PARSE_ERROR, "request body is not valid JSON", {"reason": str(exc)}) from None
        if not isinstance(doc, dict):
            raise HttpError(ErrorCode.INVALID_REQUEST, "request body must be a JSON object", {"expected": list(allowed)})
        extra = sorted(set(doc) - set(allowed))
        if extra:
            raise HttpError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": extra[0], "reason": f"unknown member; expected {list(allowed)}"})
        return doc

    async def _nonce(self, r: Request) -> tuple[int, Any]:
        return 200, await self.call("chain_nonce", {"sender": r.tenant.hex()}, r.ctx)

    async def _upload(self, r: Request) -> tuple[int, Any]:
        """The body, fed to dataset_upload in chunks (the same path, quota, checks
        and receipts as over p2p): 201 with the new catalog row, or 200 with the
        existing one when the tenant had stored these bytes already."""
        if "name" not in r.query:
            raise HttpError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": "name", "reason": "missing required query parameter"})
        params: dict[str, Any] = {"name": r.query["name"], "format": r.query.get("format", "csv")}
        if "on_bad_rows" in r.query:
            params["on_bad_rows"] = r.query["on_bad_rows"]
        sent, file = 0, r.file
        while file is not None:
            chunk = file.read(UPLOAD_CHUNK)
            params.update(chunk=base64.b64encode(chunk).decode(), final=sent + len(chunk) >= r.size)
            answer = await self.call("dataset_upload", params, r.ctx)
            if params["final"]:
                return (200 if answer.get("deduplicated") else 201), answer
            sent += len(chunk)
            params = {"upload": answer["upload"], "offset": sent}
        raise HttpError(ErrorCode.INTERNAL_ERROR, "dataset body was not spooled")

    async def _submit(self, r: Request) -> tuple[int, Any]:
        body = self._json(r, ("tx",))
        return 201, await self.call("analytics_submit", body, r.ctx)

    async def _tx(self, r: Request) -> tuple[int, Any]:
        """A tenant transaction other than job.submit: dataset.register or job.cancel."""
        from node.consensus.tx import TxError, decode_tx

        body = self._json(r, ("tx", "mode", "timeout"))
        mode = body.get("mode", "sync")
        if mode not in ("sync", "commit"):
            raise HttpError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": "mode", "reason": 'one of "sync", "commit"'})
        if not isinstance(body.get("tx"), str):
            raise HttpError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": "tx", "reason": "a hex string (a signed transaction)"})
        try:
            raw = bytes.fromhex(body["tx"])
            tx = decode_tx(raw)
        except (ValueError, TxError) as exc:
            raise HttpError(ErrorCode.WRONG_TX, "not a transaction", {"param": "tx", "reason": str(exc)[:200]}) from None
        raw_hex = raw.hex()
        if tx.sender != r.tenant:
            raise HttpError(ErrorCode.WRONG_TX, "the transaction must be signed by the caller", {"signed_by_caller": False})
        if tx.type not in TENANT_TX_TYPES:
            hint = {"job.submit": "; submit jobs with POST /v1/jobs", "service.deploy": "; deploy with POST /v1/services",
                    "service.scale": "; POST /v1/services/{name}/scale", "service.stop": "; POST /v1/services/{name}/stop"}.get(tx.type, "")
            raise HttpError(ErrorCode.WRONG_TX, f"a tenant may send {list(TENANT_TX_TYPES)} here{hint}", {"type": tx.type})
        commit = {"tx": raw_hex, "mode": "commit", **({"timeout": body["timeout"]} if "timeout" in body else {})}
        if tx.type == "job.cancel":
            answer = await self.call("analytics_cancel", {"tx": raw_hex}, r.ctx)
            if mode == "commit":
                answer.update(await self.call("tx_submit", commit, r.ctx))
            return 200, answer
        refused = self.check_tx(tx) if self.check_tx is not None else None
        if refused is not None:
            raise HttpError(ErrorCode.STATE_REFUSED, "refused by the chain state", {"reason": refused})
        return 200, await self.call("tx_submit", commit if mode == "commit" else {"tx": raw_hex, "mode": "sync"}, r.ctx)

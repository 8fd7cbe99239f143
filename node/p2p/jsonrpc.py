"""JSON-RPC 2.0 message handling, independent of any transport.

:class:`Dispatcher` turns one received message (a request, a notification
or a batch, as bytes) into the bytes to send back, or None when the
specification says nothing is returned. It follows the specification
(https://www.jsonrpc.org/specification) to the letter: error codes -32700,
-32600, -32601, -32602 and -32603; ``id`` must be a string, a number or
null; a notification gets no response, even when it fails; an empty batch
is one Invalid Request error; a batch of notifications returns nothing.

Methods are registered with a JSON Schema for their named parameters
(positional arrays are mapped onto the schema's properties in order). A
bad parameter is named in the error's ``data``. Handlers raise
:class:`RpcError` for application errors with a stable code.

Every call is admitted separately (``admit``, the transport's rate limit),
so a batch of n calls costs what n single calls cost, and a refused call in
a batch is answered in its place while the others go on. A whole message
has one deadline: a batch cannot hold the server for n request timeouts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node.base.errors import ErrorCode
from node.p2p.schema_fast import compile_acceptor

_MAX_BATCH = 100


class RpcError(Exception):
    """An error to return to the caller: code, message and optional data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = int(code)  # a plain int on the wire, whether given an ErrorCode or a number
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


Subscription = Callable[[], Awaitable[None]]


@dataclass
class CallContext:
    """What a handler knows about its caller."""

    peer_id: str  # the authenticated libp2p peer id of the caller
    notify: Callable[[str, Any], Awaitable[None]] | None = None  # push a notification on the same stream
    nursery: trio.Nursery | None = None  # lives as long as the caller's stream
    # Run a subscription (a task pushing notifications) for as long as the
    # caller's stream: whatever it raises ends only that subscription. Raises
    # RpcError when the stream already has as many as it may.
    start_subscription: Callable[[Subscription], None] | None = None


# The transport's admission of one call: None to run it, or the error to answer instead (rate limited).
Admit = Callable[[], "RpcError | None"]


Handler = Callable[..., Awaitable[Any]]


@dataclass
class Method:
    name: str
    handler: Handler
    params: dict[str, Any]  # JSON Schema of the named parameters (an object schema)
    description: str = ""
    timeout: float | None = None  # overrides the server's default deadline
    _validator: Any = field(default=None, repr=False)
    _accepts: Any = field(default=None, repr=False)  # schema_fast: True only for valid params

    def __post_init__(self) -> None:
        import jsonschema  # here, not at the top: a client that only calls methods never loads it (75 ms)

        schema = {"type": "object", "properties": {}, "additionalProperties": False, **self.params}
        self.params = schema
        jsonschema.Draft202012Validator.check_schema(schema)
        self._validator = jsonschema.Draft202012Validator(schema)
        self._accepts = compile_acceptor(schema)

    def bind(self, params: Any) -> dict[str, Any]:
        """Validate request params; map positional arrays to named ones."""
        if params is None:
            params = {}
        elif isinstance(params, list):
            names = list(self.params["properties"])
            if len(params) > len(names):
                raise RpcError(ErrorCode.INVALID_PARAMS, "Invalid params", {"reason": f"{self.name} takes at most {len(names)} positional parameters"})
            params = dict(zip(names, params))
        if self._accepts is not None and self._accepts(params):
            return params  # valid for sure; jsonschema below names the problem otherwise
        errors = sorted(self._validator.iter_errors(params), key=lambda e: list(e.path))
        if errors:
            err = errors[0]
            where = ".".join(str(p) for p in err.path)
            if err.validator == "additionalProperties":
                extra = sorted(set(params) - set(self.params["properties"]))
                raise RpcError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": extra[0] if extra else where, "reason": "unknown parameter"})
            if err.validator == "required":
                missing = [r for r in err.validator_value if r not in params]
                raise RpcError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": missing[0] if missing else where, "reason": "missing required parameter"})
            raise RpcError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": where or "params", "reason": err.message})
        return params


class Registry:
    """The methods a node serves; each role adds its own."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}
        self.register("rpc_methods", self._rpc_methods, {}, "List every method with its parameter schema.")

    def register(self, name: str, handler: Handler, params: dict[str, Any] | None = None, description: str = "", *, timeout: float | None = None) -> None:
        if name in self._methods:
            raise ValueError(f"RPC method {name} registered twice")
        if name.startswith("rpc.") or "_" not in name:
            raise ValueError(f"RPC method {name!r} must be namespace_method")
        self._methods[name] = Method(name, handler, params or {}, description, timeout)

    def get(self, name: str) -> Method | None:
        return self._methods.get(name)

    def names(self) -> list[str]:
        return sorted(self._methods)

    async def _rpc_methods(self, ctx: CallContext) -> list[dict[str, Any]]:
        return [
            {"name": m.name, "description": m.description, "params": m.params}
            for m in sorted(self._methods.values(), key=lambda m: m.name)
        ]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity. Raises ValueError."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def dump_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _valid_id(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _error(id_: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error.to_json(), "id": id_}


class Dispatcher:
    """Answers JSON-RPC messages by calling registered methods."""

    def __init__(self, registry: Registry, *, default_timeout: float = 30.0, on_call: Callable[[str, bool], None] | None = None) -> None:
        self.registry = registry
        self.default_timeout = default_timeout
        self.on_call = on_call  # metrics hook: (method, ok)

    async def handle(self, data: bytes, ctx: CallContext, *, admit: Admit | None = None) -> bytes | None:
        """Bytes of one received message in; bytes of the response (or None) out.

        ``admit`` is asked once per call (once for a message that is not
        JSON, or a batch refused whole): a call it refuses is answered with
        its error instead of being run."""
        try:
            message = parse_json(data)
        except ValueError as exc:
            refused = admit() if admit is not None else None
            return dump_json(_error(None, refused or RpcError(ErrorCode.PARSE_ERROR, "Parse error", {"reason": str(exc)})))
        if isinstance(message, list):
            if not message or len(message) > _MAX_BATCH:
                refused = admit() if admit is not None else None
                reason = "empty batch" if not message else f"batch of more than {_MAX_BATCH} calls"
                return dump_json(_error(None, refused or RpcError(ErrorCode.INVALID_REQUEST, "Invalid Request", {"reason": reason})))
            answered = [r for r in await self._handle_batch(message, ctx, admit) if r is not None]
            return dump_json(answered) if answered else None
        response = await self.handle_one(message, ctx, admit=admit)
        return None if response is None else dump_json(response)

    def _message_timeout(self, requests: list[Any]) -> float:
        """The deadline of a whole batch: the longest its methods allow, at least the default."""
        longest = self.default_timeout
        for request in requests:
            name = request.get("method") if isinstance(request, dict) else None
            method = self.registry.get(name) if isinstance(name, str) else None
            if method is not None and method.timeout:
                longest = max(longest, method.timeout)
        return longest

    async def _handle_batch(self, requests: list[Any], ctx: CallContext, admit: Admit | None) -> list[dict[str, Any] | None]:
        """The calls of a batch, in order, within one deadline; calls the
        deadline cuts off are answered as timed out (notifications are not)."""
        timeout = self._message_timeout(requests)
        responses: list[dict[str, Any] | None] = []
        with trio.move_on_after(timeout):
            for request in requests:
                # A schedule point per call: a peer's batch of cheap calls (or of refusals,
                # which await nothing) must not hold the loop from other peers' handshakes.
                await trio.lowlevel.checkpoint()
                responses.append(await self.handle_one(request, ctx, admit=admit))
        for request in requests[len(responses):]:
            if isinstance(request, dict) and "id" not in request:
                responses.append(None)
                continue
            id_ = request.get("id") if isinstance(request, dict) else None
            responses.append(_error(id_ if _valid_id(id_) else None, RpcError(
                ErrorCode.REQUEST_TIMEOUT, "Request timed out", {"reason": "the batch did not finish within its deadline", "timeout_s": timeout})))
        return responses

    async def handle_one(self, request: Any, ctx: CallContext, *, admit: Admit | None = None) -> dict[str, Any] | None:
        refused = admit() if admit is not None else None
        if refused is not None:
            if isinstance(request, dict) and "id" not in request:
                return None  # a notification gets no answer, not even a refusal
            id_ = request.get("id") if isinstance(request, dict) else None
            return _error(id_ if _valid_id(id_) else None, refused)
        if not isinstance(request, dict):
            return _error(None, RpcError(ErrorCode.INVALID_REQUEST, "Invalid Request", {"reason": "a request must be a JSON object"}))
        is_notification = "id" not in request
        id_ = request.get("id")
        problem = self._invalid_request(request)
        if problem is not None:
            # An invalid request is answered even without an id: the
            # sender cannot have meant it as a well-formed notification.
            return _error(id_ if _valid_id(id_) else None, RpcError(ErrorCode.INVALID_REQUEST, "Invalid Request", {"reason": problem}))
        method = self.registry.get(request["method"])
        try:
            if method is None:
                raise RpcError(ErrorCode.METHOD_NOT_FOUND, "Method not found", {"method": request["method"]})
            params = method.bind(request.get("params"))
            timeout = method.timeout or self.default_timeout
            with trio.fail_after(timeout):
                result = await method.handler(ctx, **params)
            outcome: dict[str, Any] = {"jsonrpc": "2.0", "result": result, "id": id_}
            dump_json(outcome)  # a result that is not JSON is our bug: report it, don't drop the stream
            ok = True
        except RpcError as exc:
            outcome, ok = _error(id_, exc), False
        except trio.TooSlowError:
            outcome, ok = _error(id_, RpcError(ErrorCode.REQUEST_TIMEOUT, "Request timed out", {"method": request["method"], "timeout_s": timeout})), False
        except Exception as exc:  # a handler bug must not take the stream or daemon down
            outcome, ok = _error(id_, RpcError(ErrorCode.INTERNAL_ERROR, "Internal error", {"reason": f"{type(exc).__name__}: {exc}"})), False
        if self.on_call is not None:
            self.on_call(request["method"], ok)
        return None if is_notification else outcome

    @staticmethod
    def _invalid_request(request: dict[str, Any]) -> str | None:
        if request.get("jsonrpc") != "2.0":
            return 'member "jsonrpc" must be exactly "2.0"'
        if not isinstance(request.get("method"), str):
            return 'member "method" must be a string'
        if "params" in request and not isinstance(request["params"], (list, dict)):
            return 'member "params" must be an array or an object'
        if "id" in request and not _valid_id(request["id"]):
            return 'member "id" must be a string, a number or null'
        extra = set(request) - {"jsonrpc", "method", "params", "id"}
        if extra:
            return f"unknown member(s) {sorted(extra)}"
        return None

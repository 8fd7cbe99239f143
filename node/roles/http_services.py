"""The HTTP gateway's service routes (node/roles/http_gateway.py serves them).

Reads map one to one onto the ``service_*`` JSON-RPC methods
(node/roles/services_rpc.py). Writes take ``{"tx": HEX}``, a transaction the
tenant signed, as ``POST /v1/jobs`` does; on ``/v1/services/{name}/...`` the
transaction must be about that service, so a client that signed a scale of
``a`` cannot post it to ``b``'s URL and read an answer about ``a`` as ``b``'s.
Authentication, rate limits, quotas and receipts are the gateway's own: each
route is a call on the same registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from node.base.errors import ErrorCode
from node.p2p.jsonrpc import CallContext, RpcError

__all__ = ["SERVICE_ROUTES", "ServiceRoute", "post_service_tx"]

Call = Callable[[str, dict[str, Any], CallContext], Awaitable[Any]]
"""The HTTP gateway's call on the daemon's registry (method, params, caller)."""
Handler = Callable[[Call, str, dict[str, Any], dict[str, str], CallContext], Awaitable[tuple[int, Any]]]
"""(call, rpc method, JSON body, path arguments, caller) -> (HTTP status, answer)."""


@dataclass(frozen=True)
class ServiceRoute:
    method: str
    path: str  # with {name} for the service's name
    rpc: str  # the JSON-RPC method it calls
    body: str = "none"  # "none" or "json" (a {"tx": HEX} object)
    handler: Handler | None = None  # None: the method called with the path's arguments


async def post_service_tx(call: Call, rpc: str, body: dict[str, Any], args: dict[str, str],
                          ctx: CallContext) -> tuple[int, Any]:
    """A signed service transaction, sent through ``rpc``; 201 for a deploy."""
    from node.consensus.tx import TxError, decode_tx

    tx = body.get("tx")
    if not isinstance(tx, str):
        raise RpcError(ErrorCode.INVALID_PARAMS, "Invalid params", {"param": "tx", "reason": "a hex string (a signed transaction)"})
    if "name" in args:
        try:
            payload = decode_tx(bytes.fromhex(tx)).payload
        except (ValueError, TxError):
            payload = None  # not a transaction: the method says so (WRONG_TX)
        named = payload.get("name") if isinstance(payload, dict) else None
        if isinstance(named, str) and named != args["name"]:
            raise RpcError(ErrorCode.INVALID_PARAMS, "Invalid params", {
                "param": "name", "reason": f"the transaction is about service {named[:64]!r}, not {args['name'][:64]!r}"})
    answer = await call(rpc, {"tx": tx}, ctx)
    return (201 if rpc == "service_deploy" else 200), answer


SERVICE_ROUTES = (
    ServiceRoute("GET", "/v1/services", "service_list"),
    ServiceRoute("GET", "/v1/services/{name}", "service_status"),
    ServiceRoute("GET", "/v1/services/{name}/result", "service_result"),
    ServiceRoute("POST", "/v1/services", "service_deploy", "json", post_service_tx),
    ServiceRoute("POST", "/v1/services/{name}/scale", "service_scale", "json", post_service_tx),
    ServiceRoute("POST", "/v1/services/{name}/stop", "service_stop", "json", post_service_tx),
)

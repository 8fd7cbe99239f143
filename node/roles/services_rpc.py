"""The gateway's service methods: a tenant's long-running analytics services.

A service (docs/services.md) is deployed, scaled and stopped by transactions
the tenant signs (``service.deploy``, ``service.scale``, ``service.stop``);
these go through the gateway's own submit path (:meth:`Gateway._submit_signed`:
the caller must be the signer, the chain state is asked first, an ``api.call``
receipt is issued), exactly like ``analytics_submit``. The reads (list,
status) are not receipted, like ``analytics_status``; releasing a result is,
like ``analytics_result``.

The result of a service is its latest verified run. It is fetched from the
nodes whose committed result equals the verified digest, least loaded first
(``service_holders``), so a popular service's reads spread over its replicas
instead of landing on whichever node happens to be listed first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from node.app.services import SERVICE_NAME, service_id
from node.base.errors import ErrorCode
from node.consensus.rpc import TX_HEX
from node.p2p.jsonrpc import CallContext, Registry, RpcError
from node.roles.artifacts import result_json

if TYPE_CHECKING:
    from node.roles.gateway import Gateway

__all__ = ["NAME_PATTERN", "register_service_rpcs"]

NAME_PATTERN = f"^{SERVICE_NAME.pattern}$"  # the chain's service name, as a JSON Schema pattern


def register_service_rpcs(registry: Registry, gateway: Gateway) -> None:
    """Add the ``service_*`` methods to ``registry``, over ``gateway``'s tenant
    check, submit path, receipts and artifact fetcher."""
    rpc = _ServiceRpc(gateway)
    tx_param = {"properties": {"tx": TX_HEX}, "required": ["tx"]}
    name_param = {"properties": {"name": {"type": "string", "pattern": NAME_PATTERN}}, "required": ["name"]}
    registry.register("service_deploy", rpc.deploy, tx_param,
                      "Submit a service.deploy transaction signed by the tenant (the caller).")
    registry.register("service_scale", rpc.scale, tx_param, "Submit a service.scale transaction signed by the tenant.")
    registry.register("service_stop", rpc.stop, tx_param, "Submit a service.stop transaction signed by the tenant.")
    registry.register("service_list", rpc.list, {}, "The caller's services by name: type, replicas, state, runs.")
    registry.register("service_status", rpc.status, name_param,
                      "A service of the caller: template, trigger, placements, recent runs, latest verified run.")
    registry.register("service_result", rpc.result, name_param,
                      "The result table of a service's latest verified run, checked against the digest on chain.")


class _ServiceRpc:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def state(self) -> Any:
        return self.gateway.app.state

    # -- transactions ---------------------------------------------------------------------
    async def _submit(self, ctx: CallContext, tx: str, tx_type: str, method: str) -> dict[str, Any]:
        from node.consensus.tx import TxError, decode_tx

        tenant = self.gateway.tenant(ctx)
        if tx_type == "service.deploy":
            # A deploy starts a run at once: it spends the tenant's job quota like a submit.
            wait = self.gateway.jobs_quota.take(tenant.hex(), trio.current_time())
            if wait:
                raise RpcError(ErrorCode.JOB_QUOTA_EXCEEDED, "job quota exceeded", {"retry_after_s": round(wait, 3)})
        tx_hash, receipt_id = await self.gateway._submit_signed(ctx, tx, tx_type, method)
        try:
            # The state accepted it, so the payload is a map with a valid name.
            name = str(decode_tx(bytes.fromhex(tx)).payload["name"])
        except (TxError, KeyError, TypeError, ValueError):  # pragma: no cover -- checked by the state already
            name = ""
        return {"service_id": service_id(tenant, name).hex(), "name": name, "tx": tx_hash.hex(),
                "receipt_id": receipt_id}

    async def deploy(self, ctx: CallContext, tx: str) -> dict[str, Any]:
        return await self._submit(ctx, tx, "service.deploy", "service_deploy")

    async def scale(self, ctx: CallContext, tx: str) -> dict[str, Any]:
        return await self._submit(ctx, tx, "service.scale", "service_scale")

    async def stop(self, ctx: CallContext, tx: str) -> dict[str, Any]:
        return await self._submit(ctx, tx, "service.stop", "service_stop")

    # -- reads ------------------------------------------------------------------------------
    async def list(self, ctx: CallContext) -> dict[str, Any]:
        tenant = self.gateway.tenant(ctx)
        return {"services": self.state.services_by_tenant(tenant)}

    async def status(self, ctx: CallContext, name: str) -> dict[str, Any]:
        tenant = self.gateway.tenant(ctx)
        service: dict[str, Any] | None = self.state.service(tenant, name)
        # Another tenant's service is reported exactly like a missing one (its name is per tenant anyway).
        if service is None:
            raise RpcError(ErrorCode.NOT_FOUND, f"no service named {name!r} of yours", {"name": name})
        return service

    async def result(self, ctx: CallContext, name: str) -> dict[str, Any]:
        service = await self.status(ctx, name)
        verified = service.get("last_verified")
        if not verified:
            latest = (service.get("recent_runs") or [None])[0]
            raise RpcError(ErrorCode.RESULT_NOT_AVAILABLE, f"service {name!r} has no verified run yet", {
                "name": name, "service_state": service.get("state"),
                "run": latest["run"] if latest else None, "job_id": latest["job_id"] if latest else None,
                "state": latest["state"] if latest else None, "reason": latest.get("reason") if latest else None,
                "waiting": service.get("waiting")})
        job_id, digest = str(verified["job_id"]), str(verified["result_digest"])
        job = self.state.job(bytes.fromhex(job_id))
        holders = [h["peer_id"] for h in self.state.service_holders(bytes.fromhex(job_id))]
        fetched = None
        if self.gateway.artifacts is not None:
            fetched = await self.gateway.artifacts.fetch_from("result", bytes.fromhex(digest), holders)
        if fetched is None:
            raise RpcError(ErrorCode.RESULT_NOT_AVAILABLE, "no node that computed this result could serve it now; try again",
                           {"digest": digest, "holders": holders, "run": verified["run"], "job_id": job_id})
        data, served_by = fetched
        results = [r for r in (job or {}).get("results", []) if r.get("result") == digest]
        tenant = self.gateway.tenant(ctx)
        # Releasing a tenant's result is an operation on its data: receipted, as analytics_result.
        receipt_id = self.gateway.receipt("service_result", tenant, b"service_result:" + bytes.fromhex(job_id),
                                          "accepted", 0, data)
        return {"name": name, "service_id": service["service_id"], "run": verified["run"], "job_id": job_id,
                "state": "verified", "result_digest": digest, "height": verified.get("height"),
                "computed_by": [r["peer_id"] for r in results], "served_by": served_by,
                "receipts": [r["receipt"] for r in results], "receipt_id": receipt_id, **result_json(data)}

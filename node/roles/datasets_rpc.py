"""The gateway's view of the chain's dataset registry: a tenant's names and versions.

``dataset.register`` on chain gives each of a tenant's names versions 1, 2,
3... (node/app/handlers.py); these two read-only methods let the tenant (the
caller, as for every gateway method) list its registrations and resolve a
reference (``sales``: the latest version, ``sales@2``, or a 64-hex digest) to
one of them, which is what clients need before naming a dataset in a job or
deciding whether a fresh upload must be registered again. Like the other
reads (status, list), they are not receipted: they release nothing that is not
on chain already.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from node.app.machine import StateMachine
from node.app.queries import BAD_DATASET_REF, MAX_DATASET_PAGE, MAX_DATASET_REF, DatasetRef, parse_dataset_ref
from node.base.errors import ErrorCode
from node.p2p.jsonrpc import CallContext, Registry, RpcError

__all__ = ["register_dataset_rpcs"]

_NAMES_SHOWN = 20  # names listed in a "not found" message


class _HasState(Protocol):
    state: StateMachine


TenantOf = Callable[[CallContext], bytes]


def register_dataset_rpcs(registry: Registry, app: _HasState, tenant_of: TenantOf) -> None:
    """Add ``analytics_datasets`` and ``analytics_dataset`` to ``registry``.

    ``tenant_of`` is the gateway's own caller check (:meth:`Gateway.tenant`:
    the caller's key, refused when not on the allow-list), so these methods
    admit exactly the tenants the other gateway methods admit.
    """
    rpc = _DatasetRpc(app, tenant_of)
    registry.register("analytics_datasets", rpc.datasets, {"properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 128},
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_DATASET_PAGE},
        "offset": {"type": "integer", "minimum": 0}}},
        "The caller's dataset registrations by name, then version (name: only that name's versions).")
    registry.register("analytics_dataset", rpc.dataset, {"properties": {
        "ref": {"type": "string", "maxLength": 4 * MAX_DATASET_REF}}, "required": ["ref"]},
        "One registration of the caller: ref is a name (its latest version), name@version or a 64-hex digest.")


class _DatasetRpc:
    def __init__(self, app: _HasState, tenant_of: TenantOf) -> None:
        self.app = app
        self.tenant_of = tenant_of

    async def datasets(self, ctx: CallContext, name: str | None = None, limit: int = 100,
                       offset: int = 0) -> dict[str, Any]:
        tenant = self.tenant_of(ctx)
        return {"datasets": self.app.state.datasets_by_tenant(tenant, name=name, limit=limit, offset=offset)}

    async def dataset(self, ctx: CallContext, ref: str) -> dict[str, Any]:
        tenant = self.tenant_of(ctx)
        try:
            parsed = parse_dataset_ref(ref)
        except ValueError:
            raise RpcError(ErrorCode.INVALID_PARAMS, f"ref: {BAD_DATASET_REF}",
                           {"param": "ref", "reason": BAD_DATASET_REF}) from None
        row = self.app.state.dataset(tenant, parsed)
        if row is not None:
            return row
        names = self.app.state.dataset_names(tenant)
        raise RpcError(ErrorCode.NOT_FOUND, self._not_found(tenant, ref, parsed, names),
                       {"ref": ref, "names": names[:_NAMES_SHOWN]})

    def _not_found(self, tenant: bytes, ref: str, parsed: DatasetRef, names: list[str]) -> str:
        """Why nothing answers ``ref``, in words, with what the tenant could have meant."""
        if parsed.digest is not None:
            what = f"no dataset with digest {ref.lower()} is registered by you"
        elif parsed.version is not None and parsed.name in names:
            latest = self.app.state.dataset(tenant, DatasetRef(None, parsed.name, None))
            assert latest is not None  # the name is registered
            return (f"{parsed.name!r} has no version {parsed.version} registered by you; "
                    f"its latest is {parsed.name}@{latest['version']}")
        else:
            what = f"no dataset named {parsed.name!r} is registered by you"
        if not names:
            return f"{what}; you have registered no datasets yet"
        shown = ", ".join(names[:_NAMES_SHOWN])
        more = f" (and {len(names) - _NAMES_SHOWN} more)" if len(names) > _NAMES_SHOWN else ""
        return f"{what}; your datasets: {shown}{more}"

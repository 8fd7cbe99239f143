"""The gateway role: the tenant-facing analytics API over JSON-RPC (node/roles/gateway.py)
and, when ``[services] http_listen`` is set, over HTTP (node/roles/http_gateway.py)."""

from __future__ import annotations

from node.base.config import NodeConfig
from node.roles.artifacts import ArtifactFetcher
from node.roles.datasets_rpc import register_dataset_rpcs
from node.roles.gateway import Gateway
from node.roles.http_gateway import HttpGateway
from node.roles.role import RoleContext, Service, no_background_task
from node.roles.services_rpc import register_service_rpcs
from node.roles.submit_check import catalog_schemas


class GatewayRole:
    name = "gateway"

    def enabled(self, config: NodeConfig) -> bool:
        return "gateway" in config.roles

    def build(self, context: RoleContext) -> list[Service]:
        services = context.config.services
        # Node tables, height and queue depth read per job: kept until the next applied block.
        context.app.state.follow_blocks()
        gateway = Gateway(identity=context.identity, chain=context.chain, app=context.app, publisher=context.publisher,
                          jobs_per_minute=services["gateway_jobs_per_minute"],
                          allowed_tenants=[bytes.fromhex(t) for t in services["gateway_tenants"]] or None,
                          artifacts=ArtifactFetcher(context.artifacts(), context.host, context.identity.peer_id),
                          schemas=catalog_schemas(lambda: context.storage))  # the storage role is built after this one
        gateway.register(context.registry)
        register_dataset_rpcs(context.registry, context.app, gateway.tenant)  # same tenant check as the gateway's
        register_service_rpcs(context.registry, gateway)
        built = [Service("gateway", no_background_task, lambda: {"tenants": "allow-list" if gateway.allowed else "open"})]
        if services["http_listen"]:
            # Same registry, rate limits and receipts as the JSON-RPC gateway.
            http_host, http_port = services["http_listen"].rsplit(":", 1)
            http = HttpGateway(context.rpc_server, host=http_host, port=int(http_port),
                               spool_dir=context.data_dir / "http-spool", max_body_bytes=services["http_max_body_bytes"],
                               allowed_tenants=list(gateway.allowed) if gateway.allowed is not None else None,
                               check_tx=context.app.check_tx_against_state)
            built.append(Service("http", http.run, http.status))  # status()["listen"]: the bound address
        return built

"""The client library's service methods against a real in-process node:
``deploy_service`` builds the payload as ``prepare_job`` builds a job's (job
type spelling, trend-analysis parameters from the input's schema, inputs as a
name or {input: name}); ``follow_service`` yields each newly verified result;
``Client`` (plain Python) offers the same, its follower a generator."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from node.base.errors import UserError
from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.sdk.client import AsyncClient, Client
from tests.support import running_daemon, write_node_config

CHAIN = "svc-sdk-test"
SALES = "day,region,units\n2026-01-01,north,3\n2026-01-02,north,5\n2026-01-03,south,4\n"
SALES2 = SALES + "2026-01-04,south,9\n"

pytestmark = pytest.mark.timeout(600)


def node_config(node_dir: Path) -> Path:
    identity = Identity.from_label("test-node-svc-sdk")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=200, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    return write_node_config(node_dir, "svc-sdk", identity=identity, genesis=genesis,
                             roles=["validator", "scheduler", "gateway", "processing", "storage"],
                             extra="\n[services]\nstorage_replicas = 1\n")


async def test_deploy_follow_scale_and_stop_a_service(node_dir, tmp_path):
    tenant = Identity.from_label("svc-sdk-tenant")
    csv = tmp_path / "sales.csv"
    csv.write_text(SALES)
    async with running_daemon(node_config(node_dir)) as daemon:
        address = f"{daemon.listen_addrs()[0]}"
        async with AsyncClient.connect(address, tenant, timeout=30) as client:
            with trio.fail_after(120):
                while (await client.health())["processing_nodes"] < 1:
                    await trio.sleep(0.2)
            await client.upload_dataset(csv)  # registered as "sales"

            # Mistakes are named before anything is signed.
            for bad, words in ((dict(inputs="sales@1"), "latest version"), (dict(inputs={}), "empty map"),
                               (dict(inputs="sales", on_new_version=False), "trigger"),
                               (dict(inputs="sales", job_type="nosuch"), "job_type")):
                with pytest.raises(UserError, match=words):
                    await client.prepare_service("trend", **{"job_type": "trend_analysis", **bad})
            with pytest.raises(UserError, match="service name"):
                await client.prepare_service("Bad Name", job_type="sql", inputs="sales", params={"query": "SELECT 1"})

            prepared = await client.prepare_service("trend", job_type="Trend_Analysis", inputs="sales",
                                                    params={"window": "2d"}, replicas=1)
            payload = prepared.payload
            assert payload["type"] == "trend-analysis" and payload["inputs"] == {"sales": "sales"}
            assert payload["params"]["time_column"] == "day" and payload["params"]["value_column"] == "units"
            assert payload["trigger"] == {"on_new_version": True} and payload["policy"] == "processing"
            assert any("time_column" in note for note in prepared.notes)
            every = await client.prepare_service("counts", job_type="sql", inputs={"t": "sales"}, every_blocks=50,
                                                 params={"query": "SELECT count(*) AS n FROM t"})
            assert every.payload["inputs"] == {"t": "sales"} and every.payload["trigger"] == {"every_blocks": 50}

            deployed = await client.deploy_prepared(prepared)
            assert deployed["name"] == "trend" and deployed["notes"] == prepared.notes
            follower = client.follow_service("trend")
            with trio.fail_after(180):
                first = await follower.__anext__()
            assert first["run"] == 1 and first["state"] == "verified" and first["served_by"] == daemon.identity.peer_id
            assert first["rows"] and first["computed_by"] == [daemon.identity.peer_id]
            csv.write_text(SALES2)
            await client.upload_dataset(csv)  # sales@2: a new run
            with trio.fail_after(180):
                second = await follower.__anext__()
            assert second["run"] == 2 and second["row_count"] > first["row_count"]
            await follower.aclose()

            assert [s["name"] for s in await client.services()] == ["trend"]
            assert (await client.service_status("trend"))["last_verified"]["run"] == 2
            assert await client.service_status("nosuch") is None
            assert (await client.service_result("trend"))["job_id"] == second["job_id"]

            # Plain Python: one connection per call; the follower is a generator over a thread.
            sync = Client(address, tenant, timeout=30)
            assert [s["name"] for s in await trio.to_thread.run_sync(sync.services)] == ["trend"]

            def first_followed() -> dict:
                followed = sync.follow_service("trend")
                try:
                    return next(followed)
                finally:
                    followed.close()

            assert (await trio.to_thread.run_sync(first_followed))["run"] == 2
            await client.scale_service("trend", 2)
            await client.stop_service("trend")
            with trio.fail_after(60):
                while (await client.service_status("trend"))["state"] != "stopped":
                    await trio.sleep(0.2)
            # Following a stopped service yields its last result, then ends.
            assert [r["run"] async for r in client.follow_service("trend")] == [2]

"""A job from upload to verified on a real node: the tenant uploads a dataset
(storage), registers it and submits a SQL job (gateway); the scheduler assigns
it; the processing service runs it in the cage and submits its signed job.exec
receipt; the chain verifies it. The result equals an independent cage run."""

from __future__ import annotations

import time

import trio

from node.base.keys import Identity
from node.cage.job import JobSpec
from node.cage.pool import CagePool
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError
from node.receipts.envelope import verify_receipt
from tests.support import running_daemon, upload_and_register, write_node_config

CHAIN = "job-e2e"
CSV = b"product,units\napples,3\npears,5\napples,4\nplums,1\n"
QUERY = "SELECT product, sum(units) AS units FROM sales GROUP BY product ORDER BY units DESC"


async def eventually(fetch, seconds=120):
    with trio.fail_after(seconds):
        while True:
            try:
                value = await fetch()
            except RpcCallError as exc:
                if exc.code != 1404:
                    raise
                value = None
            if value:
                return value
            await trio.sleep(0.2)


async def test_sql_job_goes_to_verified_with_a_receipt(node_dir):
    identity = Identity.from_label("test-node-all")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=200, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    cfg = write_node_config(node_dir, "all", roles=["validator", "scheduler", "gateway", "processing", "storage"], genesis=genesis)
    cfg.write_text(cfg.read_text() + "\n[services]\nstorage_replicas = 1\n")
    tenant = Identity.from_label("tenant-e2e")
    async with running_daemon(cfg) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0], identity=tenant, timeout=30) as rpc:
            uploaded = await upload_and_register(rpc, tenant, chain_id=CHAIN, nonce=0, data=CSV)
            digest = bytes.fromhex(uploaded["digest"])
            assert uploaded["row_count"] == 4
            job = sign_tx(tenant, chain_id=CHAIN, nonce=1, tx_type="job.submit", payload={
                "type": "sql", "inputs": {"sales": digest}, "params": {"query": QUERY},
                "replication": 1, "deadline_blocks": 100})
            await eventually(lambda: _processing_registered(rpc))
            submitted = await rpc.call("analytics_submit", {"tx": job.encoded.hex()})
            status = await eventually(lambda: _in_state(rpc, submitted["job_id"], ("verified", "disputed", "failed")))
            assert status["state"] == "verified", status
            [result] = status["results"]
            assert result["node"] == daemon.identity.public_key.hex() and result["exit"] == 0
            receipt = await rpc.call("receipt_get", {"id": result["receipt"]})
            exec_receipt = verify_receipt(bytes.fromhex(receipt["envelope"]))
            assert exec_receipt.kind == "job.exec" and exec_receipt.subject.hex() == submitted["job_id"]
            seed, clock = bytes.fromhex(status["seed"]), status["clock"]
            # Storing the dataset left a data.store receipt in the log too.
            stored = await eventually(lambda: rpc.call("receipt_get", {"id": uploaded["receipt"]["id"]}))
            data_store = verify_receipt(bytes.fromhex(stored["envelope"]))
            assert data_store.kind == "data.store" and data_store.subject == digest

            # The tenant reads the verified result back, and each execution's witness.
            table = await rpc.call("analytics_result", {"job_id": submitted["job_id"]})
            assert table["result_digest"] == result["result"] and table["receipts"] == [result["receipt"]]
            assert [c[0] for c in table["columns"]] == ["product", "units"]
            assert table["rows"] == [["apples", 7], ["pears", 5], ["plums", 1]]
            witness = await rpc.call("analytics_witness", {"job_id": submitted["job_id"]})
            [execution] = witness["executions"]
            assert execution["available"] and execution["witness_digest"] == result["witness"]
            assert [i["name"] for i in execution["witness"]["inputs"]] == ["sales"]
            # Releasing the result was receipted (api.call, by this gateway, for this tenant).
            read = await eventually(lambda: rpc.call("receipt_get", {"id": table["receipt_id"]}))
            assert read["kind"] == "api.call" and read["fields"]["method"] == "analytics_result"
            assert read["fields"]["tenant"] == tenant.public_key.hex()
            # Another tenant gets neither: their job is reported as missing.
            async with connect_to_node(daemon.listen_addrs()[0], identity=Identity.from_label("tenant-other"), timeout=30) as other:
                for method in ("analytics_result", "analytics_witness", "analytics_status"):
                    try:
                        await other.call(method, {"job_id": submitted["job_id"]})
                        raise AssertionError(f"{method} answered another tenant")
                    except RpcCallError as exc:
                        assert exc.code == 1404, exc

    # The same job, run independently in a fresh cage from the same inputs,
    # seed and clock, gives the same result digest the chain verified.
    data = node_dir / "sales.csv"
    data.write_bytes(CSV)
    with CagePool() as pool:
        outcome = pool.run(JobSpec(kind="sql", policy="processing", inputs={"sales": str(data)}, sql=QUERY, seed=seed, clock=clock))
    assert outcome.status == "ok" and outcome.result_digest.hex() == result["result"]


async def _processing_registered(rpc):
    return (await rpc.call("analytics_health"))["processing_nodes"] >= 1


async def _in_state(rpc, job_id, states):
    status = await rpc.call("analytics_status", {"job_id": job_id})
    return status if status["state"] in states else None

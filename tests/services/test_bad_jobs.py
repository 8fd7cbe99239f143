"""Bad jobs fail with a clear reason on chain, and the node keeps serving:
an unknown column, SQL the cage refuses, a trend over a text column."""

from __future__ import annotations

import time

import pytest
import trio

from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from tests.support import running_daemon, upload_and_register, write_node_config

CHAIN = "bad-jobs"
CSV = b"day,product,units\n2026-01-01,apples,3\n2026-01-02,pears,5\n2026-01-09,apples,4\n"
TREND = {"input": "sales", "time_column": "day", "value_column": "units", "window": "7d"}
BAD_JOBS = [
    ("sql", {"query": "SELECT nosuch FROM sales"}, "nosuch"),
    ("sql", {"query": "SELECT * FROM read_csv('/etc/passwd')"}, "read_csv"),
    ("trend-analysis", {**TREND, "time_column": "nosuch"}, "nosuch"),
    ("trend-analysis", {**TREND, "value_column": "product"}, "product"),
]


@pytest.mark.timeout(300)
async def test_bad_jobs_fail_with_the_reason_on_chain(node_dir):
    identity = Identity.from_label("test-node-all")  # the key write_node_config gives node "all"
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=200, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    cfg = write_node_config(node_dir, "all", roles=["validator", "scheduler", "gateway", "processing", "storage"], genesis=genesis)
    cfg.write_text(cfg.read_text() + "\n[services]\nstorage_replicas = 1\n")
    tenant = Identity.from_label("tenant-bad-jobs")
    async with running_daemon(cfg) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0], identity=tenant, timeout=30) as rpc:
            uploaded = await upload_and_register(rpc, tenant, chain_id=CHAIN, nonce=0, data=CSV)
            digest = bytes.fromhex(uploaded["digest"])
            with trio.fail_after(60):
                while (await rpc.call("analytics_health"))["processing_nodes"] < 1:
                    await trio.sleep(0.2)
            ids = []
            for nonce, (job_type, params, _) in enumerate(BAD_JOBS, start=1):
                tx = sign_tx(tenant, chain_id=CHAIN, nonce=nonce, tx_type="job.submit", payload={
                    "type": job_type, "inputs": {"sales": digest}, "params": params, "replication": 1, "deadline_blocks": 20})
                # Straight to the chain: the gateway would refuse most of these at submit
                # (tests/services/test_submit_checks.py); a client may still bypass it.
                ids.append((await rpc.call("tx_submit", {"tx": tx.encoded.hex()}))["hash"])
            with trio.fail_after(180):
                while True:
                    statuses = []
                    for job_id in ids:
                        try:
                            statuses.append(await rpc.call("analytics_status", {"job_id": job_id}))
                        except Exception:
                            statuses.append(None)
                    if all(s is not None and s["state"] in ("verified", "failed", "disputed") for s in statuses):
                        break
                    await trio.sleep(0.3)
            for (_job_type, params, named), status in zip(BAD_JOBS, statuses):
                assert status["state"] == "failed", (params, status)
                assert named in status["reason"], (params, status["reason"])
            assert (await rpc.call("node_status"))["peer_id"] == daemon.identity.peer_id  # still serving

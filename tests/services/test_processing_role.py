"""The processing role: the state's named query of a node's pending assignments,
and the cage-run metrics it records after each run (``metanode_cage_runs``)."""

from __future__ import annotations

import time

import trio

from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from tests.services.test_job_end_to_end import CSV, QUERY, _in_state, _processing_registered, eventually
from tests.services.test_state_support import ALICE, NODES, Chain, content_digest
from tests.support import running_daemon, upload_and_register, write_node_config

SALES = content_digest("sales")


def test_pending_assignments_of_a_node_until_it_answers():
    chain = Chain()
    chain.block(chain.register_dataset(ALICE, SALES), *(chain.register_node(n) for n in NODES[:3]))
    job = chain.submit_job(ALICE, {"sales": SALES}, replication=2)
    chain.block(job)
    assigned = chain.assignees(job.hash)
    idle = [n for n in NODES[:3] if n not in assigned]
    assert len(assigned) == 2 and len(idle) == 1
    attempt = chain.machine.job(job.hash)["attempt"]
    for node in assigned:
        assert chain.machine.pending_assignments_of(node.public_key) == [(job.hash, attempt)]
    assert chain.machine.pending_assignments_of(idle[0].public_key) == []
    chain.block(chain.result(assigned[0], job.hash, b"\x11" * 32))
    assert chain.machine.pending_assignments_of(assigned[0].public_key) == []
    assert chain.machine.pending_assignments_of(assigned[1].public_key) == [(job.hash, attempt)]


async def test_each_cage_run_is_counted_in_the_metrics(node_dir):
    chain_id = "cage-metrics"
    identity = Identity.from_label("test-node-cage-metrics")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=chain_id, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=200, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    cfg = write_node_config(node_dir, "cage-metrics", identity=identity,
                            roles=["validator", "scheduler", "gateway", "processing", "storage"], genesis=genesis)
    cfg.write_text(cfg.read_text() + "\n[services]\nstorage_replicas = 1\n")
    tenant = Identity.from_label("tenant-cage-metrics")
    async with running_daemon(cfg) as daemon:
        runs = daemon.metrics.registry.get_sample_value
        assert runs("metanode_cage_runs_total", {"status": "ok"}) is None  # nothing ran yet
        async with connect_to_node(daemon.listen_addrs()[0], identity=tenant, timeout=30) as rpc:
            status = await rpc.call("node_status")
            # The roles' services, in the order the daemon composes them.
            assert list(status["services"]) == ["receipts", "registrar", "gateway", "storage", "processing", "consensus"]
            uploaded = await upload_and_register(rpc, tenant, chain_id=chain_id, nonce=0, data=CSV)
            job = sign_tx(tenant, chain_id=chain_id, nonce=1, tx_type="job.submit", payload={
                "type": "sql", "inputs": {"sales": bytes.fromhex(uploaded["digest"])}, "params": {"query": QUERY},
                "replication": 1, "deadline_blocks": 100})
            await eventually(lambda: _processing_registered(rpc))
            submitted = await rpc.call("analytics_submit", {"tx": job.encoded.hex()})
            done = await eventually(lambda: _in_state(rpc, submitted["job_id"], ("verified", "disputed", "failed")))
            assert done["state"] == "verified", done
            with trio.fail_after(10):
                while (await rpc.call("node_status"))["services"]["processing"]["completed"] < 1:
                    await trio.sleep(0.1)
        assert runs("metanode_cage_runs_total", {"status": "ok"}) == 1
        assert runs("metanode_cage_run_seconds_count") == 1
        assert runs("metanode_cage_run_seconds_sum") > 0

"""A processing node runs a job under the job's DockLock policy (a service's
``policy``; ``processing`` for plain jobs) when its policy file defines it, and
otherwise declines it on chain at once with ``policy_unavailable`` (no local
retries: its policy file does not change while it runs; the chain does not
exclude it for this)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import trio

from node.base.keys import Identity
from node.cage.pool import CagePool
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError
from node.roles.processing import DEFAULT_POLICY, job_spec
from tests.support import running_daemon, upload_and_register, write_node_config

CHAIN = "svc-policy-test"
CSV = "product,units\napples,3\npears,5\napples,4\n"
QUERY = "SELECT product, sum(units) AS units FROM sales GROUP BY product ORDER BY product"
TENANT = Identity.from_label("svc-policy-tenant")

pytestmark = pytest.mark.timeout(600)


def test_the_cage_runs_a_job_under_the_jobs_policy(tmp_path: Path):
    path = tmp_path / "sales.csv"
    path.write_text(CSV)
    job = {"type": "sql", "params": {"query": QUERY}, "seed": "00" * 32, "clock": 1_700_000_000}
    assert job_spec(job, {"sales": str(path)}).policy == DEFAULT_POLICY == "processing"  # a plain job
    strict = job_spec({**job, "policy": "strict-determinism"}, {"sales": str(path)})
    assert strict.policy == "strict-determinism"
    with CagePool() as pool:
        assert "strict-determinism" in pool.policies
        outcome = pool.run(strict)
    assert outcome.status == "ok", outcome.detail
    assert outcome.witness["inputs"][0]["sha256"] == hashlib.sha256(CSV.encode()).digest()


def node_config(node_dir: Path) -> Path:
    identity = Identity.from_label("test-node-svc-policy")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=200, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    return write_node_config(node_dir, "svc-policy", identity=identity, genesis=genesis,
                             roles=["validator", "scheduler", "gateway", "processing", "storage"],
                             extra="\n[services]\nstorage_replicas = 1\n")


def deploy(name: str, policy: str, nonce: int):
    return sign_tx(TENANT, chain_id=CHAIN, nonce=nonce, tx_type="service.deploy", payload={
        "name": name, "type": "sql", "inputs": {"sales": "sales"}, "params": {"query": QUERY}, "replicas": 1,
        "policy": policy, "trigger": {"on_new_version": True}, "deadline_blocks": 40})


async def first_run(rpc, name: str, done) -> dict | None:
    try:
        status = await rpc.call("service_status", {"name": name})
    except RpcCallError as exc:
        if exc.code == 1404:
            return None
        raise
    if not status["recent_runs"]:
        return None
    job = await rpc.call("analytics_status", {"job_id": status["recent_runs"][-1]["job_id"]})
    return job if done(job) else None


async def wait_for(predicate, seconds=180):
    with trio.fail_after(seconds):
        while not (value := await predicate()):
            await trio.sleep(0.2)
    return value


async def test_a_node_declines_a_policy_it_lacks_and_runs_one_it_has(node_dir):
    async with running_daemon(node_config(node_dir)) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0], identity=TENANT) as rpc:
            await upload_and_register(rpc, TENANT, chain_id=CHAIN, nonce=0, data=CSV.encode())
            assert "no-such-policy" not in daemon.cage_pool.policies
            await rpc.call("service_deploy", {"tx": deploy("lacking", "no-such-policy", 1).encoded.hex()})
            await rpc.call("service_deploy", {"tx": deploy("strict", "strict-determinism", 2).encoded.hex()})
            # The daemon's own policy (network, host clock) is in the file but is no job policy.
            assert "gateway" in daemon.cage_pool.policies
            await rpc.call("service_deploy", {"tx": deploy("daemons", "gateway", 3).encoded.hex()})

            def declined(job):
                return any(a["status"] == "declined" for a in job["assignments"])

            lacking = await wait_for(lambda: first_run(rpc, "lacking", declined))
            assert lacking["policy"] == "no-such-policy" and lacking["results"] == []
            [note] = [a["note"] for a in lacking["assignments"] if a["status"] == "declined"]
            assert note.startswith("policy_unavailable: this node has no job policy 'no-such-policy'"), note
            assert "strict-determinism" in note  # what it has, for the operator
            daemons = await wait_for(lambda: first_run(rpc, "daemons", declined))
            [note] = [a["note"] for a in daemons["assignments"] if a["status"] == "declined"]
            assert note.startswith("policy_unavailable: this node has no job policy 'gateway'"), note

            strict = await wait_for(lambda: first_run(rpc, "strict", lambda job: job["state"] == "verified"))
            assert strict["policy"] == "strict-determinism"
            result = await rpc.call("service_result", {"name": "strict"})
            assert result["rows"] == [["apples", 7], ["pears", 5]]
            # Declining for a policy is not a fault of the node: it is not excluded from new work.
            [node] = [n for n in daemon.app.state.nodes() if n["peer_id"] == daemon.identity.peer_id]
            assert node["declined"] >= 1 and node["last_missed_height"] is None
            processing = (await rpc.call("node_status"))["services"]["processing"]
            assert processing["declined"] >= 1 and processing["completed"] >= 1

"""The gateway over JSON-RPC on p2p against a real in-process node: tenants are
the connection's identity, see only their own jobs, and every accepted call
leaves an api.call receipt that enters the chain's receipt log."""

from __future__ import annotations

import hashlib
import time

import pytest
import trio

from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError
from node.receipts.envelope import verify_receipt
from tests.support import running_daemon, upload_and_register, write_node_config

CHAIN = "gateway-test"


def node_config(node_dir):
    identity = Identity.from_label("test-node-g")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=100, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    return write_node_config(node_dir, "g", roles=["validator", "gateway", "processing"], genesis=genesis)


async def wait_for(predicate, seconds=60):
    with trio.fail_after(seconds):
        while not (value := await predicate()):
            await trio.sleep(0.1)
    return value


async def test_tenant_submits_and_sees_only_its_own_jobs(node_dir):
    alice, bob = Identity.from_label("tenant-alice"), Identity.from_label("tenant-bob")
    data = b"product,units\napples,3\n"
    digest = hashlib.sha256(data).digest()
    async with running_daemon(node_config(node_dir)) as daemon:
        addr = daemon.listen_addrs()[0]
        async with connect_to_node(addr, identity=alice) as a, connect_to_node(addr, identity=bob) as b:
            # The node registers itself as a processing node on chain.
            health = await wait_for(lambda: _health_with_nodes(a))
            assert health["processing_nodes"] == 1 and health["validators"] == 1

            await upload_and_register(a, alice, chain_id=CHAIN, nonce=0, data=data)
            job = sign_tx(alice, chain_id=CHAIN, nonce=1, tx_type="job.submit", payload={
                "type": "sql", "inputs": {"sales": digest}, "params": {"query": "SELECT count(*) AS n FROM sales"},
                "replication": 1, "deadline_blocks": 50})
            # Bob cannot submit Alice's signed transaction as his own.
            with pytest.raises(RpcCallError) as info:
                await b.call("analytics_submit", {"tx": job.encoded.hex()})
            assert info.value.code == 1303
            accepted = await a.call("analytics_submit", {"tx": job.encoded.hex()})
            job_id = accepted["job_id"]
            # Scheduled, or already past it: the job may run between two polls.
            status = await wait_for(lambda: _status_if(a, job_id, ("scheduled", "running", "verified")))
            assert status["assignments"][0]["node"] == daemon.identity.public_key.hex()
            assert (await a.call("analytics_list"))["jobs"][0]["id"] == job_id
            # Bob sees nothing of it: not in his list, and "not found" exactly like a missing job.
            assert (await b.call("analytics_list"))["jobs"] == []
            for who in (b,):
                with pytest.raises(RpcCallError) as info:
                    await who.call("analytics_status", {"job_id": job_id})
                assert info.value.code == 1404
            # Bob over Alice's dataset: refused by the chain state, before the mempool.
            theft = sign_tx(bob, chain_id=CHAIN, nonce=0, tx_type="job.submit", payload={
                "type": "sql", "inputs": {"sales": digest}, "params": {"query": "SELECT * FROM sales"},
                "replication": 1, "deadline_blocks": 50})
            with pytest.raises(RpcCallError) as info:
                await b.call("analytics_submit", {"tx": theft.encoded.hex()})
            assert info.value.code == 1304

            # The api.call receipt of the accepted submission reaches the chain's receipt log.
            receipt = await wait_for(lambda: _receipt(a, accepted["receipt_id"]))
            verified = verify_receipt(bytes.fromhex(receipt["envelope"]))
            assert verified.kind == "api.call" and verified.issuer_key == daemon.identity.public_key
            assert verified.fields["tenant"] == alice.public_key
            bundle = await a.call("receipt_bundle", {"id": accepted["receipt_id"]})
            assert bundle["height"] >= 1


async def _health_with_nodes(client):
    health = await client.call("analytics_health")
    return health if health["processing_nodes"] else None


async def _status_if(client, job_id, states):
    try:
        status = await client.call("analytics_status", {"job_id": job_id})
    except RpcCallError as exc:  # not in a committed block yet
        assert exc.code == 1404
        return None
    return status if status["state"] in states else None


async def _receipt(client, receipt_id):
    try:
        return await client.call("receipt_get", {"id": receipt_id})
    except RpcCallError:
        return None


async def test_closed_gateway_refuses_unknown_tenants(node_dir):
    cfg = node_config(node_dir)
    allowed = Identity.from_label("tenant-allowed")
    cfg.write_text(cfg.read_text() + f'\n[services]\ngateway_tenants = ["{allowed.public_key.hex()}"]\n')
    async with running_daemon(cfg) as daemon:
        addr = daemon.listen_addrs()[0]
        async with connect_to_node(addr, identity=Identity.from_label("stranger")) as stranger:
            with pytest.raises(RpcCallError) as info:
                await stranger.call("analytics_list")
            assert info.value.code == 1301
        async with connect_to_node(addr, identity=allowed) as friend:
            assert (await friend.call("analytics_list"))["jobs"] == []


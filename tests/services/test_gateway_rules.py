"""The gateway checks a job.submit under the chain rules in force at the next block: after a
vote raises max_query_bytes above the genesis value, a query longer than the genesis allows is
taken (a real in-process validator + gateway + processing node)."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
import trio

from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError
from tests.support import running_daemon, upload_and_register, write_node_config

CHAIN = "gateway-rules-test"
NODE = Identity.from_label("test-node-g")
ALICE = Identity.from_label("tenant-alice")
LONG_QUERY = "SELECT count(*) AS n FROM sales WHERE units >= 0" + " " * 40 + "-- longer than 64 bytes"


async def test_the_gateway_takes_a_job_the_voted_rule_allows(node_dir):
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(NODE.public_key,),
            block_period_ms=100, round_timeout_base_ms=1000, round_timeout_cap_ms=4000,
            rules={"max_query_bytes": 64}).write(genesis)
    config = write_node_config(node_dir, "g", roles=["validator", "gateway", "processing"], genesis=genesis)
    data = b"product,units\napples,3\n"
    digest = hashlib.sha256(data).digest()

    def job(nonce: int):
        return sign_tx(ALICE, chain_id=CHAIN, nonce=nonce, tx_type="job.submit", payload={
            "type": "sql", "inputs": {"sales": digest}, "params": {"query": LONG_QUERY},
            "replication": 1, "deadline_blocks": 50})

    async with running_daemon(config) as daemon:
        addr = daemon.listen_addrs()[0]
        async with connect_to_node(addr, identity=ALICE) as rpc:
            await upload_and_register(rpc, ALICE, chain_id=CHAIN, nonce=0, data=data)
            with pytest.raises(RpcCallError) as refused:  # the genesis rule: 64 bytes
                await rpc.call("analytics_submit", {"tx": job(1).encoded.hex()})
            assert refused.value.data["reason"] == "invalid payload: params.query: is longer than 64 bytes"

            nonce = (await rpc.call("chain_nonce", {"sender": NODE.public_key.hex()}))["pending_next"]
            vote = sign_tx(NODE, chain_id=CHAIN, nonce=nonce, tx_type="gov.propose", payload={
                "action": {"kind": "set_rule", "name": "max_query_bytes", "value": 1024}})
            with trio.fail_after(30):
                done = await rpc.call("tx_submit", {"tx": vote.encoded.hex(), "mode": "commit", "timeout": 20})
            assert "state_rejected" not in done
            with trio.fail_after(30):  # the rule changes from the executing block + 2
                while (await rpc.call("chain_head"))["height"] < done["height"] + 1:
                    await trio.sleep(0.05)
            accepted = await rpc.call("analytics_submit", {"tx": job(1).encoded.hex()})
            assert accepted["status"] == "submitted"


async def test_receipt_batches_follow_a_voted_max_batch_receipts(node_dir):
    """Once a vote lowers max_batch_receipts, the node's publisher sends smaller
    batches: three uploads' data.store receipts, stored at once, all reach the
    state, so each upload can be registered (a batch over the rule would be
    refused by the state and its receipts would be unusable)."""
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(NODE.public_key,),
            block_period_ms=100, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    config = write_node_config(node_dir, "g", roles=["validator", "gateway", "storage"], genesis=genesis)
    config.write_text(config.read_text() + "\n[services]\nstorage_replicas = 1\n")
    async with running_daemon(config) as daemon:
        addr = daemon.listen_addrs()[0]
        async with connect_to_node(addr, identity=ALICE) as rpc:
            nonce = (await rpc.call("chain_nonce", {"sender": NODE.public_key.hex()}))["pending_next"]
            vote = sign_tx(NODE, chain_id=CHAIN, nonce=nonce, tx_type="gov.propose", payload={
                "action": {"kind": "set_rule", "name": "max_batch_receipts", "value": 1}})
            done = await rpc.call("tx_submit", {"tx": vote.encoded.hex(), "mode": "commit", "timeout": 20})
            assert "state_rejected" not in done
            # A proposal from a non-validator is ordered but refused by the state; tx_get says so.
            stray = sign_tx(ALICE, chain_id=CHAIN, nonce=0, tx_type="gov.propose", payload={
                "action": {"kind": "set_rule", "name": "max_batch_receipts", "value": 2}})
            refused = await rpc.call("tx_submit", {"tx": stray.encoded.hex(), "mode": "commit", "timeout": 20})
            looked_up = await rpc.call("tx_get", {"hash": stray.hash.hex()})
            assert looked_up["status"] == "committed" and looked_up["state_rejected"] == refused["state_rejected"]
            assert "not a validator" in looked_up["state_rejected"]
            with trio.fail_after(30):  # in force from the executing block + 2
                while (await rpc.call("chain_head"))["height"] < done["height"] + 2:
                    await trio.sleep(0.05)
            files = [f"product,units\napples,{n}\n".encode() for n in range(3)]
            uploads = []
            with trio.fail_after(60):
                for data in files:  # stored back to back: their receipts queue together
                    while True:
                        try:
                            uploads.append(await rpc.call("dataset_upload", {
                                "name": "sales", "format": "csv", "chunk": base64.b64encode(data).decode(), "final": True}))
                            break
                        except RpcCallError as exc:
                            if exc.code != 1213:  # the node takes uploads once it is registered
                                raise
                            await trio.sleep(0.2)
            for i, (data, uploaded) in enumerate(zip(files, uploads)):
                with trio.fail_after(60):
                    while True:
                        try:
                            await rpc.call("receipt_get", {"id": uploaded["receipt"]["id"]})
                            break
                        except RpcCallError as exc:
                            if exc.code != 1404:
                                raise
                            await trio.sleep(0.1)
                register = sign_tx(ALICE, chain_id=CHAIN, nonce=i + 1, tx_type="dataset.register", payload={
                    "digest": bytes.fromhex(uploaded["digest"]), "size": len(data), "name": f"sales{i}", "format": "csv",
                    "receipt": bytes.fromhex(uploaded["receipt"]["id"])})
                registered = await rpc.call("tx_submit", {"tx": register.encoded.hex(), "mode": "commit", "timeout": 30})
                assert "state_rejected" not in registered, registered

"""The chain's JSON-RPC surface against a real in-process validator."""

from __future__ import annotations

import time

import pytest
import trio

from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError
from tests.support import running_daemon, write_node_config

CHAIN = "rpc-test"


def single_validator(node_dir, *, period_ms: int, **config) -> tuple:
    identity = Identity.from_label("test-node-v")
    genesis = Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
                      block_period_ms=period_ms, round_timeout_base_ms=1000, round_timeout_cap_ms=4000)
    path = node_dir / "genesis.toml"
    genesis.write(path)
    return write_node_config(node_dir, "v", roles=["validator"], genesis=path, **config), genesis


def tx(sender: Identity, nonce: int, payload=None) -> str:
    return sign_tx(sender, chain_id=CHAIN, nonce=nonce, tx_type="noop", payload=payload or {"n": nonce}).encoded.hex()


async def test_submit_modes_lookups_and_subscription(node_dir):
    cfg, genesis = single_validator(node_dir, period_ms=100)
    alice = Identity.from_label("alice")
    async with running_daemon(cfg) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0]) as rpc:
            sub = await rpc.call("chain_subscribe")
            committed = await rpc.call("tx_submit", {"tx": tx(alice, 0), "mode": "commit", "timeout": 20})
            assert committed["status"] == "committed" and committed["height"] >= 1
            pending = await rpc.call("tx_submit", {"tx": tx(alice, 1), "mode": "sync"})
            assert pending["status"] == "pending"
            queued = await rpc.call("tx_submit", {"tx": tx(alice, 2), "mode": "async"})
            assert queued["status"] == "submitted"
            with trio.fail_after(20):
                while (await rpc.call("chain_nonce", {"sender": alice.public_key.hex()}))["committed_next"] < 3:
                    await trio.sleep(0.05)
            got = await rpc.call("tx_get", {"hash": queued["hash"]})
            assert got["status"] == "committed" and got["nonce"] == 2 and got["sender"] == alice.public_key.hex()
            # The same transaction again after commit is reported as committed, not re-admitted.
            again = await rpc.call("tx_submit", {"tx": tx(alice, 0), "mode": "commit"})
            assert again["height"] == committed["height"]

            by_height = await rpc.call("chain_block", {"height": committed["height"], "include_txs": True})
            assert committed["hash"] in by_height["tx_hashes"] and by_height["transactions"]
            by_hash = await rpc.call("chain_block", {"hash": by_height["hash"]})
            assert by_hash["height"] == committed["height"] and len(by_hash["seals"]) == 1
            head = await rpc.call("chain_head")
            assert head["genesis_hash"] == genesis.hash.hex() and head["height"] >= committed["height"]
            vals = await rpc.call("validators_list")
            assert [v["public_key"] for v in vals] == [daemon.identity.public_key.hex()]
            state = await rpc.call("consensus_state")
            assert state["validator"] and state["started"] and state["recent_blocks"]
            note = await rpc.notifications.receive()
            assert note["method"] == "chain_newBlock" and note["params"]["subscription"] == sub["subscription"]

            for method, params in (("chain_block", {"height": 10**9}), ("tx_get", {"hash": "00" * 32})):
                with pytest.raises(RpcCallError) as info:
                    await rpc.call(method, params)
                assert info.value.code == 1404
            with pytest.raises(RpcCallError) as info:
                await rpc.call("chain_block", {})
            assert info.value.code == -32602


async def test_rejections_have_distinct_codes_and_full_is_not_success(node_dir):
    # A block period of an hour: transactions stay pending, so the pool fills.
    cfg, _ = single_validator(node_dir, period_ms=3_600_000, extra="")
    cfg.write_text(cfg.read_text().replace("[consensus]", "[consensus]\nmempool_max_txs = 3", 1))
    senders = [Identity.from_label(f"s{i}") for i in range(5)]
    async with running_daemon(cfg) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0]) as rpc:
            for s in senders[:3]:
                assert (await rpc.call("tx_submit", {"tx": tx(s, 0)}))["status"] == "pending"
            cases = [
                (tx(senders[3], 0), 1010, "mempool_full"),
                (tx(senders[0], 0), 1008, "duplicate"),
                ("00ff", 1001, "malformed"),
                (sign_tx(senders[4], chain_id="other-chain", nonce=0, tx_type="noop", payload={}).encoded.hex(), 1003, "wrong_chain"),
            ]
            for raw, code, reason in cases:
                with pytest.raises(RpcCallError) as info:
                    await rpc.call("tx_submit", {"tx": raw, "mode": "sync"})
                assert (info.value.code, info.value.data["reason"]) == (code, reason)
            status = await rpc.call("mempool_status")
            assert status["count"] == 3 and status["max_count"] == 3
            with pytest.raises(RpcCallError) as info:
                await rpc.call("tx_submit", {"tx": tx(senders[1], 1), "mode": "commit", "timeout": 0.5})
            assert info.value.code == 1010  # refused at admission: never a silent success

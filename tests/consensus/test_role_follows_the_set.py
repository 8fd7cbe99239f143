"""The shell follows the validator set with no restart (two in-process daemons).

A one-validator chain and a second node that follows it. The validator votes
the follower in: from the height the change decides, the set is two, a quorum
is two, and the chain goes on only because the newcomer's service, never
restarted, signs. Both then vote it out: from its last height on it stops
signing and reports itself a non-validator, and the first validator goes on
alone.
"""

from __future__ import annotations

import time

import pytest
import trio

from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.tx import sign_tx
from node.p2p.client import call_node
from tests.support import running_daemon, write_node_config

pytestmark = pytest.mark.timeout(120)

CHAIN = "role-follows-the-set"
V = Identity.from_label("role-test-validator")
W = Identity.from_label("role-test-newcomer")


async def rpc(address: str, method: str, params: dict | None = None):
    return await call_node(address, method, params, timeout=20)


async def commit(address: str, sender: Identity, tx_type: str, payload: dict) -> tuple[int, bytes]:
    """Sign with the sender's next nonce (the sender is a node whose daemon signs
    transactions of its own too) and wait for the commit: (height, tx hash)."""
    nonce = (await rpc(address, "chain_nonce", {"sender": sender.public_key.hex()}))["expected_next"]
    tx = sign_tx(sender, chain_id=CHAIN, nonce=nonce, tx_type=tx_type, payload=payload)
    answer = await rpc(address, "tx_submit", {"tx": tx.encoded.hex(), "mode": "commit", "timeout": 60})
    assert "state_rejected" not in answer, answer
    return answer["height"], tx.hash


async def wait_for_height(address: str, height: int) -> None:
    with trio.fail_after(60):
        while (await rpc(address, "chain_head"))["height"] < height:
            await trio.sleep(0.1)


async def seals(address: str, height: int) -> set[str]:
    return {s["validator"] for s in (await rpc(address, "chain_block", {"height": height}))["seals"]}


async def test_a_node_voted_in_signs_and_voted_out_stops_without_a_restart(tmp_path):
    genesis = Genesis(chain_id=CHAIN, genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(V.public_key,),
                      block_period_ms=100, round_timeout_base_ms=1000, round_timeout_cap_ms=4000)
    path = tmp_path / "genesis.toml"
    genesis.write(path)
    v_cfg = write_node_config(tmp_path, "v", identity=V, roles=["validator"], genesis=path)
    async with running_daemon(v_cfg) as v:
        v_addr = v.listen_addrs()[0]
        w_cfg = write_node_config(tmp_path, "w", identity=W, roles=["validator"], genesis=path, peers=[v_addr])
        async with running_daemon(w_cfg) as w:
            w_addr = w.listen_addrs()[0]
            state = await rpc(w_addr, "consensus_state")
            assert state["validator"] is False
            assert [x["public_key"] for x in await rpc(w_addr, "validators_list")] == [V.public_key.hex()]
            assert W.peer_id not in v.host.get_network().admission.privileged

            executed, _ = await commit(v_addr, V, "gov.propose", {"action": {"kind": "add_validator", "key": W.public_key}})
            first = executed + 2  # ACTIVATION_DELAY
            await wait_for_height(v_addr, first + 3)  # two validators, quorum two: W must be signing
            for height in range(first, first + 4):
                assert await seals(v_addr, height) == {V.public_key.hex(), W.public_key.hex()}, height
            assert await seals(v_addr, first - 1) == {V.public_key.hex()}
            assert (await rpc(w_addr, "consensus_state"))["validator"] is True
            status = (await rpc(w_addr, "node_status"))["services"]["consensus"]
            assert status["validator"] is True and status["signing"]["state"] == "open"
            # The newcomer may now use the connection slots kept for validators.
            assert W.peer_id in v.host.get_network().admission.privileged
            listed = await rpc(v_addr, "validators_list")
            assert sorted(x["public_key"] for x in listed) == sorted([V.public_key.hex(), W.public_key.hex()])

            # Out again: V proposes, W votes (two of two).
            _, proposal = await commit(v_addr, V, "gov.propose", {"action": {"kind": "remove_validator", "key": W.public_key}})
            removed_at, _ = await commit(w_addr, W, "gov.vote", {"proposal": proposal})
            last = removed_at + 1
            await wait_for_height(v_addr, last + 4)
            for height in range(last + 1, last + 5):
                assert await seals(v_addr, height) == {V.public_key.hex()}, height
            state = await rpc(w_addr, "consensus_state")
            assert state["validator"] is False and state["height"] > last
            status = (await rpc(w_addr, "node_status"))["services"]["consensus"]
            assert status["validator"] is False and status["signing"] == {"state": "not-a-validator"}

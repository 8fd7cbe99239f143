"""A sender refused for a nonce resubmits from the nonce the chain names and
all of its transactions commit (issue 13, case 6), against a real
in-process validator."""

from __future__ import annotations

import pytest
import trio

from node.base.keys import Identity
from node.consensus.tx import sign_tx
from node.p2p.client import connect_to_node
from node.p2p.rpc import RpcCallError
from node.sdk.client import submit_signed
from node.testnet.loadgen import LoadGenerator
from tests.consensus.test_chain_rpc import CHAIN, single_validator, tx
from tests.support import running_daemon


async def test_refusals_and_held_admissions_name_the_expected_nonce(node_dir):
    cfg, _ = single_validator(node_dir, period_ms=3_600_000)  # nothing commits: what is sent stays pending
    alice = Identity.from_label("recovery-alice")
    async with running_daemon(cfg) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0]) as rpc:
            assert (await rpc.call("tx_submit", {"tx": tx(alice, 0)}))["status"] == "pending"
            held = await rpc.call("tx_submit", {"tx": tx(alice, 2)})  # nonce 1 never sent
            assert held == {"hash": held["hash"], "status": "pending", "expected_nonce": 1}
            with pytest.raises(RpcCallError) as info:
                await rpc.call("tx_submit", {"tx": tx(alice, 500)})
            assert info.value.data["reason"] == "bad_nonce" and info.value.data["expected_nonce"] == 1
            nonce = await rpc.call("chain_nonce", {"sender": alice.public_key.hex()})
            assert (nonce["committed_next"], nonce["expected_next"], nonce["pending_next"]) == (0, 1, 3)


async def test_the_load_generator_resends_from_expected_nonce_and_everything_commits(node_dir):
    cfg, _ = single_validator(node_dir, period_ms=100)
    async with running_daemon(cfg) as daemon:
        address = daemon.listen_addrs()[0]
        gen = LoadGenerator([address], CHAIN, tx_rate=2.0, label="recovery")
        # Sender 0's first 70 transactions were lost (say, with a node that died
        # holding them): its next one is refused as too far ahead, bad_nonce.
        wedged = gen.senders[0]
        wedged.txs = [sign_tx(wedged.identity, chain_id=CHAIN, nonce=n, tx_type="noop", payload={"lost": n})
                      for n in range(70)]
        await gen.run(trio.current_time() + 4)
        assert gen.rejected >= 1 and gen.resent >= 1  # refused, then resent from expected_nonce
        async with connect_to_node(address) as rpc:
            with trio.fail_after(30):
                for sender in gen.senders:  # no drain(): the senders recovered by themselves
                    key = sender.identity.public_key.hex()
                    while (await rpc.call("chain_nonce", {"sender": key}))["committed_next"] < len(sender.txs):
                        await trio.sleep(0.1)


async def test_a_nonce_taken_meanwhile_is_signed_again_with_the_one_the_node_names(node_dir):
    """The governance CLI's race: the nonce read through one node, the sender's
    previous transaction heard by it just after. submit_signed re-signs with the
    node's expected nonce; any other refusal is not retried."""
    cfg, _ = single_validator(node_dir, period_ms=3_600_000)
    carol = Identity.from_label("recovery-carol")
    asked: list[int | None] = []

    async def signed(nonce: int | None) -> bytes:
        asked.append(nonce)
        return bytes.fromhex(tx(carol, nonce or 0, {"vote": "second"}))  # nonce 0: read before tx 0 arrived

    async with running_daemon(cfg) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0]) as rpc:
            await rpc.call("tx_submit", {"tx": tx(carol, 0)})
            answer = await submit_signed(rpc, "tx_submit", signed)
            assert answer["status"] == "pending" and asked == [None, 1]
            nonce = await rpc.call("chain_nonce", {"sender": carol.public_key.hex()})
            assert nonce["pending_next"] == 2

            async def garbled(nonce: int | None) -> bytes:
                asked.append(nonce)
                return b"\x00"

            asked.clear()
            with pytest.raises(RpcCallError):
                await submit_signed(rpc, "tx_submit", garbled)
            assert asked == [None]

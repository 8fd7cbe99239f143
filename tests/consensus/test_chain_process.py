"""Four real validator daemons on loopback, driven through JSON-RPC: faults
from the consensus issue (kill -9, restart, losing a quorum) never fork the
chain, and finality stops and resumes exactly as IBFT promises."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import trio

from node.base.keys import Identity
from node.consensus.tx import sign_tx
from node.p2p.client import call_node
from node.testnet import layout, processes
from tests.support import wait_until

pytestmark = pytest.mark.timeout(600)


def rpc(address: str, method: str, params: dict | None = None, timeout: float = 20):
    return trio.run(lambda: call_node(address, method, params, timeout=timeout))


def height(address: str) -> int:
    return rpc(address, "chain_head")["height"]


def kill9(directory, name: str) -> None:
    pid = processes.running_pid(directory, name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: processes.running_pid(directory, name) is None, 10, what=f"{name} to die")


def assert_no_fork(addresses: list[str], up_to: int) -> None:
    for h in range(1, up_to + 1):
        hashes = {rpc(a, "chain_block", {"height": h})["hash"] for a in addresses}
        assert len(hashes) == 1, f"fork at height {h}: {hashes}"


def test_four_validators_survive_crashes_without_forking(tmp_path):
    directory = tmp_path / "net"
    plans = layout.plan_testnet(4, non_validators=1, seed="chain-process")
    layout.write_testnet(directory, plans)
    addr = {p.name: p.address for p in plans}
    processes.up(directory)
    try:
        follower = addr.pop("node4")  # not a validator: follows and verifies the chain
        wait_until(lambda: all(height(a) >= 2 for a in addr.values()), 90, what="all four validators finalising")

        # Transactions sent to different nodes all commit.
        sender = Identity.from_label("chain-process-sender")

        async def submit_all():
            results = {}

            async def one(i: int, name: str) -> None:
                tx = sign_tx(sender, chain_id="metanode-testnet", nonce=i, tx_type="noop", payload={"n": i})
                results[i] = await call_node(addr[name], "tx_submit", {"tx": tx.encoded.hex(), "mode": "commit", "timeout": 60}, timeout=90)

            async with trio.open_nursery() as nursery:
                for i, name in enumerate(["node0", "node1", "node2", "node3"] * 2):
                    nursery.start_soon(one, i, name)
            return results

        committed = trio.run(submit_all)
        assert all(r["status"] == "committed" for r in committed.values())
        for r in committed.values():  # every node knows every transaction at the same place
            assert {json.dumps({k: rpc(a, "tx_get", {"hash": r["hash"]})[k] for k in ("height", "index")}) for a in addr.values()} == {json.dumps({"height": r["height"], "index": r["index"]})}

        # kill -9 one validator: the other three keep finalising.
        kill9(directory, "node3")
        live3 = [addr[n] for n in ("node0", "node1", "node2")]
        start = height(addr["node0"])
        wait_until(lambda: min(height(a) for a in live3) >= start + 5, 120, what="three validators to go on finalising")

        # Restart it: it catches up.
        processes.start_node(directory, "node3", "node3.toml")
        wait_until(lambda: height(addr["node3"]) >= height(addr["node0"]) - 1 >= start + 5, 120, what="node3 to catch up")

        # kill -9 two: no quorum (3 of 4 needed), so finality stops...
        kill9(directory, "node2")
        kill9(directory, "node3")
        live2 = [addr["node0"], addr["node1"]]
        time.sleep(3)  # let any block already past its commit quorum land
        stalled = max(height(a) for a in live2)
        time.sleep(8)  # many block periods (0.5 s each)
        assert max(height(a) for a in live2) == stalled, "finalised without a quorum"

        # ...and resumes when one returns.
        processes.start_node(directory, "node2", "node2.toml")
        live3 = [addr["node0"], addr["node1"], addr["node2"]]
        wait_until(lambda: min(height(a) for a in live3) >= stalled + 3, 180, what="finality to resume with a quorum back")

        processes.start_node(directory, "node3", "node3.toml")
        top = min(height(a) for a in live3)
        wait_until(lambda: height(addr["node3"]) >= top, 120, what="node3 to catch up again")
        wait_until(lambda: height(follower) >= top, 60, what="the follower to keep up")
        assert_no_fork([*addr.values(), follower], top)
        assert not rpc(follower, "consensus_state")["validator"]
        state = rpc(addr["node0"], "consensus_state")
        assert state["validator"] and state["height"] > top
    finally:
        processes.down(directory)

"""Who gets a gossiped transaction, between real hosts with real mempools.

Validators do not relay to each other what a validator sent them (each had
it from the sender directly); the transactions a validator missed while its
link to the sender was down (a flap, a restart, a late connection) reach it
as the catch-up every validator sends a validator that connects. A full
node's transactions still go to everyone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial

import multiaddr
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.keys import Identity
from node.consensus.mempool import Admission, Mempool
from node.consensus.tx import TxTypeRegistry, sign_tx, tx_hash
from node.consensus.tx_gossip import TX_GOSSIP_LINGER_S, TX_PROTOCOL, TxGossip, _batches
from node.consensus.validators import ValidatorSet
from node.p2p.host import build_host, running_host
from node.p2p.links import PeerLinks

pytestmark = pytest.mark.timeout(90)

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
CHAIN = "gossip-relay"
VALIDATORS = [Identity.from_label(f"relay-validator-{i}") for i in range(3)]
FULL = Identity.from_label("relay-full-node")
SET = ValidatorSet(v.public_key for v in VALIDATORS)
SENDER = Identity.from_label("relay-sender")
TXS = [sign_tx(SENDER, chain_id=CHAIN, nonce=n, tx_type="noop", payload={"n": n}).encoded for n in range(5)]


@dataclass
class Node:
    host: object
    pool: Mempool
    gossip: TxGossip

    def has_all(self) -> bool:
        return all(tx_hash(tx) in self.pool for tx in TXS)

    def has_none(self) -> bool:
        return not any(tx_hash(tx) in self.pool for tx in TXS)

    async def dial(self, other: Node) -> None:
        await self.host.connect(info_from_p2p_addr(other.host.get_addrs()[0]))  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self.host.close()  # type: ignore[attr-defined]


def admit(pool: Mempool, tx: bytes, digest: bytes | None) -> Admission:
    return pool.add(tx, digest=digest)


def next_proposal(pool: Mempool, blocks: int) -> list[bytes]:
    return pool.reap(blocks * (1 << 20), blocks * 100)


@asynccontextmanager
async def network(*identities: Identity) -> AsyncIterator[list[Node]]:
    """One running node per identity: a host, a mempool and the node's TxGossip
    (the parts ConsensusService wires together, without the consensus core)."""
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        nodes = []
        for identity in identities:
            host = build_host(identity)
            pool = Mempool(chain_id=CHAIN, registry=TxTypeRegistry.with_builtins(), committed_nonce=lambda _: 0)
            gossip = TxGossip(host=host, max_frame=1 << 20, admit=partial(admit, pool), validators=lambda: SET,
                              next_proposal=partial(next_proposal, pool))
            host.set_stream_handler(TProtocol(TX_PROTOCOL), gossip.serve)
            await stack.enter_async_context(running_host(host, [LOOPBACK]))
            await nursery.start(gossip.run, PeerLinks(host, nursery, linger_s={TX_PROTOCOL: TX_GOSSIP_LINGER_S}))
            nodes.append(Node(host, pool, gossip))
        yield nodes
        nursery.cancel_scope.cancel()  # the gossip tasks stop; then the hosts close


async def until(condition, what: str, timeout: float = 20) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting until {what}")


def submit_all(node: Node) -> None:
    for tx in TXS:
        assert node.gossip.submit(tx).accepted


async def test_what_a_validator_sent_goes_on_to_full_nodes_not_to_validators():
    async with network(*VALIDATORS, FULL) as (v1, v2, v3, full):
        # A line v1 - v2 - v3, and the full node on v2: v3 is cut off from v1.
        await v1.dial(v2)
        await v2.dial(v3)
        await full.dial(v2)
        submit_all(v1)
        await until(full.has_all, "the full node has v1's transactions through v2")
        await until(v2.has_all, "v2 has them")
        await trio.sleep(20 * TX_GOSSIP_LINGER_S)  # time enough for a relay to v3 to land, were there one
        assert v3.has_none()
        assert v2.gossip.links.counters[f"sent:{TX_PROTOCOL}"] == len(TXS)  # to the full node only
        # v3 connects to v1: the catch-up brings what it missed.
        await v3.dial(v1)
        await until(v3.has_all, "v3 has v1's transactions by its catch-up")
        assert v1.gossip.links.counters[f"catch_up_sent:{TX_PROTOCOL}"] == len(TXS)


async def test_a_full_nodes_transactions_reach_every_validator():
    async with network(*VALIDATORS, FULL) as (v1, v2, v3, full):
        await v1.dial(v2)
        await v1.dial(v3)
        await full.dial(v1)  # the full node knows one validator only
        submit_all(full)
        for name, node in (("v1", v1), ("v2", v2), ("v3", v3)):
            await until(node.has_all, f"{name} has the full node's transactions")


async def test_a_validator_that_restarts_gets_what_a_peer_holds_when_it_reconnects():
    async with network(*VALIDATORS) as (v1, v2, v3):
        await v1.dial(v2)
        submit_all(v1)  # v3 is down
        await until(v2.has_all, "v2 has v1's transactions")
        await v1.close()  # and v1 dies: v2 alone holds them
        assert v3.has_none()
        await v3.dial(v2)  # v3 (re)starts with an empty pool and connects
        await until(v3.has_all, "v3 has them by v2's catch-up")


def test_a_catch_up_is_cut_into_frames_under_the_budgets_in_order():
    txs = [bytes([i]) * size for i, size in enumerate([10, 30, 50, 70, 5])]
    batches = _batches(txs, 60, 10)
    assert [tx for batch in batches for tx in batch] == txs
    assert [sum(map(len, b)) for b in batches] == [40, 50, 70, 5]  # a 70-byte one goes alone
    assert [len(b) for b in _batches(txs, 1000, 2)] == [2, 2, 1]
    assert _batches([], 60, 10) == []

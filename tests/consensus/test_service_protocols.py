"""A peer that connects while a node is still starting learns, from its
identify record, that the node speaks the consensus protocols: gossip skips
peers whose record lacks a protocol, and the record is taken once per
connection (a handler registered later is never announced to that peer)."""

from __future__ import annotations

import time

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.db import open_node_db
from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.consensus.service import IBFT_PROTOCOL, SYNC_PROTOCOL, TX_PROTOCOL, ConsensusService
from node.consensus.tx import TxTypeRegistry
from node.p2p.host import build_host, running_host
from node.p2p.links import PeerLinks

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


async def test_a_peer_that_connects_before_consensus_runs_sees_its_protocols(tmp_path):
    node_id, peer_id = Identity.from_label("starting-node"), Identity.from_label("early-peer")
    genesis = Genesis(chain_id="identify-test", genesis_time_ms=time.time_ns() // 1_000_000, validators=(node_id.public_key,))
    node_host, peer_host = build_host(node_id), build_host(peer_id)
    service = ConsensusService(host=node_host, identity=node_id, genesis=genesis, conn=open_node_db(tmp_path),
                               data_dir=tmp_path, registry=TxTypeRegistry(), max_frame=1 << 20)
    async with running_host(node_host, [LOOPBACK]), running_host(peer_host, []):
        # The peer connects and identifies the node before its consensus service runs.
        node_peer = node_host.get_id()
        await peer_host.connect(info_from_p2p_addr(node_host.get_addrs()[0]))
        with trio.fail_after(10):
            while not peer_host.get_peerstore().get_protocols(node_peer):
                await trio.sleep(0.02)
        async with trio.open_nursery() as nursery:
            links = PeerLinks(peer_host, nursery)
            assert all(links.speaks(node_peer, p) for p in (IBFT_PROTOCOL, TX_PROTOCOL, SYNC_PROTOCOL)), \
                peer_host.get_peerstore().get_protocols(node_peer)
            # A consensus message gossiped now waits for the service, then reaches its core.
            assert links.send(node_peer, IBFT_PROTOCOL, b"\xff not a consensus message")
            await nursery.start(service.run)
            with trio.fail_after(10):
                while service.core.counters["dropped_malformed"] == 0:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

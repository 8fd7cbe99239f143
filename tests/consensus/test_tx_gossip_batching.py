"""Transaction gossip leaves in batches: a link that lingers gathers what is
queued one message per scheduling step (a JSON-RPC batch of tx_submit calls)
into one frame, between two real hosts."""

from __future__ import annotations

import multiaddr
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.keys import Identity
from node.consensus.tx import sign_tx
from node.consensus.tx_gossip import TX_GOSSIP_LINGER_S, TX_PROTOCOL
from node.p2p.framing import FramedStream
from node.p2p.host import build_host, running_host
from node.p2p.links import PeerLinks, read_batch

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
SENDER = Identity.from_label("gossip-sender")
TXS = [sign_tx(SENDER, chain_id="gossip-test", nonce=i, tx_type="noop", payload={"i": i}).encoded for i in range(30)]


async def _gossip(linger: dict[str, float] | None) -> tuple[list[list[bytes]], PeerLinks]:
    sender_host, receiver_host = build_host(Identity.from_label("a")), build_host(Identity.from_label("b"))
    frames: list[list[bytes]] = []
    all_in = trio.Event()

    async def handler(stream) -> None:
        framed = FramedStream(stream, 1 << 20)
        while (frame := await framed.read_frame()) is not None:
            frames.append(read_batch(frame, max_size=1 << 20))
            if sum(len(f) for f in frames) >= len(TXS):
                all_in.set()

    receiver_host.set_stream_handler(TProtocol(TX_PROTOCOL), handler)
    async with running_host(receiver_host, [LOOPBACK]), running_host(sender_host, []):
        await sender_host.connect(info_from_p2p_addr(receiver_host.get_addrs()[0]))
        async with trio.open_nursery() as nursery:
            links = PeerLinks(sender_host, nursery, linger_s=linger)
            for tx in TXS:  # one per scheduling step, as an RPC batch is served
                assert links.send(receiver_host.get_id(), TX_PROTOCOL, tx)
                await trio.sleep(0)
            with trio.fail_after(20):
                await all_in.wait()
            nursery.cancel_scope.cancel()
    return frames, links


async def test_a_lingering_link_sends_a_burst_as_one_frame():
    frames, links = await _gossip({TX_PROTOCOL: 0.5})  # long enough for a loaded machine
    assert [tx for frame in frames for tx in frame] == TXS  # all of them, in order
    assert len(frames) == 1
    assert links.counters[f"frames:{TX_PROTOCOL}"] == 1 and links.counters[f"sent:{TX_PROTOCOL}"] == len(TXS)


async def test_without_linger_every_message_still_arrives_in_order():
    frames, _ = await _gossip(None)
    assert [tx for frame in frames for tx in frame] == TXS


async def test_the_node_lingers_briefly_and_bad_lingers_are_refused():
    assert 0 < TX_GOSSIP_LINGER_S <= 0.02  # a few ms: far below a block interval
    async with trio.open_nursery() as nursery:
        for bad in (-0.001, 2.0):
            with pytest.raises(ValueError, match="linger"):
                PeerLinks(build_host(Identity.from_label("c")), nursery, linger_s={TX_PROTOCOL: bad})

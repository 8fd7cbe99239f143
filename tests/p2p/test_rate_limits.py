"""Rate limits count calls, not frames (issue 13, case 3): a batch of n calls
spends n tokens from the caller's bucket and from the node's total, and
every refused call is answered -32002 with data.retry_after_s in its place."""

from __future__ import annotations

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.keys import Identity
from node.p2p.client import connect_to_node
from node.p2p.framing import FramedStream
from node.p2p.host import build_host, running_host
from node.p2p.jsonrpc import dump_json, parse_json
from node.p2p.ratelimit import CallLimiter
from node.p2p.rpc import RPC_PROTOCOL, RpcCallError
from tests.support import running_daemon, write_node_config


def test_call_limiter_spends_from_both_buckets_or_neither():
    limiter = CallLimiter(rate=1.0, burst=3, rate_total=2.0, burst_total=4)
    assert [limiter.admit("a", 0.0) for _ in range(3)] == [None, None, None]
    refusal = limiter.admit("a", 0.0)
    assert refusal is not None and refusal.scope == "peer" and refusal.retry_after_s == 1.0
    assert limiter.admit("b", 0.0) is None  # the 4th token of the total
    refusal = limiter.admit("b", 0.0)
    assert refusal is not None and refusal.scope == "total" and refusal.retry_after_s == 0.5
    # b's refusal spent nothing of b's own bucket: after the total refills, b has 2 left.
    assert limiter.admit("b", 1.0) is None and limiter.admit("b", 1.0) is None
    assert limiter.admit("b", 1.0) is not None
    assert limiter.take("a", 1.0) == 0.5  # the gateway's interface: seconds to wait


async def _batch(framed: FramedStream, first_id: int, n: int) -> list[dict]:
    await framed.write_frame(dump_json([{"jsonrpc": "2.0", "method": "node_status", "id": first_id + i} for i in range(n)]))
    with trio.fail_after(20):
        answers = parse_json(await framed.read_frame())
    assert isinstance(answers, list)
    return answers


async def test_a_batch_of_n_calls_costs_n_tokens(node_dir):
    """Before: 8 frames of 100 calls were 8 tokens and all 800 calls ran."""
    cfg = write_node_config(node_dir, "a", limits={"rpc_rate_per_peer": 1.0, "rpc_burst_per_peer": 150})
    async with running_daemon(cfg) as daemon:
        info = info_from_p2p_addr(multiaddr.Multiaddr(daemon.listen_addrs()[0]))
        host = build_host(Identity.from_label("batcher"))
        async with running_host(host, []):
            await host.connect(info)
            framed = FramedStream(await host.new_stream(info.peer_id, [RPC_PROTOCOL]))
            answers = [a for b in range(8) for a in await _batch(framed, b * 100, 100)]
            assert [a["id"] for a in answers] == list(range(800))  # every call answered, in its place
            ran = [a for a in answers if "result" in a]
            refused = [a for a in answers if "error" in a]
            assert 150 <= len(ran) <= 170  # the burst, plus what refilled at 1/s meanwhile
            assert all(a["error"]["code"] == -32002 and a["error"]["data"]["scope"] == "peer"
                       and 0 < a["error"]["data"]["retry_after_s"] <= 1.0 for a in refused)
            assert daemon.rpc_server.rate_limited == len(refused)
            # A notification in a batch is refused silently, as JSON-RPC says; the call beside it is answered.
            await framed.write_frame(dump_json([{"jsonrpc": "2.0", "method": "node_status"},
                                                {"jsonrpc": "2.0", "method": "node_status", "id": "x"}]))
            with trio.fail_after(20):
                (only,) = parse_json(await framed.read_frame())
            assert only["id"] == "x" and only["error"]["code"] == -32002


async def test_the_total_limit_binds_many_peers_together(node_dir):
    """Peers with fresh identities each have their own bucket; the node's total caps them together."""
    cfg = write_node_config(node_dir, "a", limits={"rpc_burst_per_peer": 400, "rpc_rate_total": 1.0, "rpc_burst_total": 30})
    async with running_daemon(cfg) as daemon:
        addr = daemon.listen_addrs()[0]
        answered = refused = 0
        for _ in range(4):
            async with connect_to_node(addr, identity=Identity.generate()) as client:
                for answer in await client.call_batch([("node_status", None)] * 10):
                    if "result" in answer:
                        answered += 1
                    else:
                        assert answer["error"]["code"] == -32002 and answer["error"]["data"]["scope"] == "total"
                        refused += 1
        assert 30 <= answered <= 33 and answered + refused == 40
        async with connect_to_node(addr, identity=Identity.generate()) as client:
            with pytest.raises(RpcCallError) as info:
                await client.call("node_status")
            assert info.value.code == -32002 and info.value.data["retry_after_s"] > 0

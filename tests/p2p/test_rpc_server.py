"""JSON-RPC over p2p against a real in-process daemon."""

from __future__ import annotations

import gc
import os
import random

import multiaddr
import psutil
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.keys import Identity
from node.p2p.client import connect_to_node
from node.p2p.framing import FramedStream, encode_uvarint
from node.p2p.host import build_host, running_host
from node.p2p.rpc import RPC_PROTOCOL, RpcCallError
from tests.support import running_daemon, write_node_config


async def test_node_status_and_net_peers(node_dir):
    async with running_daemon(write_node_config(node_dir, "a", roles=["scheduler"])) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0]) as client:
            status = await client.call("node_status")
            assert status["peer_id"] == daemon.identity.peer_id
            assert status["roles"] == ["scheduler"]
            assert status["listen_addrs"] == daemon.listen_addrs()
            assert status["uptime_s"] >= 0 and status["version"]
            peers = await client.call("net_peers")
            assert [p["direction"] for p in peers] == ["inbound"]  # that is us
            methods = {m["name"] for m in await client.call("rpc_methods")}
            assert {"node_status", "net_peers", "rpc_methods"} <= methods
            with pytest.raises(RpcCallError) as info:
                await client.call("node_status", {"bogus": 1})
            assert info.value.code == -32602 and info.value.data["param"] == "bogus"
            with pytest.raises(RpcCallError) as info:
                await client.call("no_such")
            assert info.value.code == -32601


async def test_rate_limit_per_peer(node_dir):
    cfg = write_node_config(node_dir, "a", limits={"rpc_rate_per_peer": 0.5, "rpc_burst_per_peer": 2})
    async with running_daemon(cfg) as daemon:
        async with connect_to_node(daemon.listen_addrs()[0]) as client:
            await client.call("node_status")
            await client.call("node_status")
            with pytest.raises(RpcCallError) as info:
                await client.call("node_status")
            assert info.value.code == -32002 and info.value.data["retry_after_s"] > 0
        # Another peer has its own bucket.
        async with connect_to_node(daemon.listen_addrs()[0]) as other:
            await other.call("node_status")


async def test_bad_frames_reset_only_their_stream(node_dir):
    async with running_daemon(write_node_config(node_dir, "a", limits={"max_frame_bytes": 4096})) as daemon:
        addr = multiaddr.Multiaddr(daemon.listen_addrs()[0])
        info = info_from_p2p_addr(addr)
        host = build_host(Identity.from_label("hostile"))
        async with running_host(host, []):
            await host.connect(info)
            conn_before = host.get_network().get_connections(info.peer_id)[0]
            for payload in (encode_uvarint(10**6) + b"x" * 100, b"\x81\x00garbage", b"\xff" * 8):
                stream = await host.new_stream(info.peer_id, [RPC_PROTOCOL])
                await stream.write(payload)
                with trio.fail_after(10):
                    with pytest.raises(Exception):  # reset (or EOF) by the daemon
                        while True:
                            if not await stream.read(100):
                                raise EOFError
            # A well-formed frame with garbage JSON gets a parse error; the stream lives on.
            framed = FramedStream(await host.new_stream(info.peer_id, [RPC_PROTOCOL]))
            await framed.write_frame(bytes(random.Random(1).randrange(256) for _ in range(300)))
            assert b"-32700" in await framed.read_frame()
            await framed.write_frame(b'{"jsonrpc":"2.0","method":"node_status","id":1}')
            assert daemon.identity.peer_id.encode() in await framed.read_frame()
            # Same connection throughout: nothing beyond the bad streams was torn down.
            assert host.get_network().get_connections(info.peer_id)[0] is conn_before
        assert daemon.rpc_server.framing_errors == 3


async def test_random_bytes_at_the_listen_port(node_dir):
    async with running_daemon(write_node_config(node_dir, "a")) as daemon:
        addr = multiaddr.Multiaddr(daemon.listen_addrs()[0])
        port = int(addr.value_for_protocol("tcp"))
        rng = random.Random(7)
        for size in (1, 17, 300, 70_000):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                await stream.send_all(bytes(rng.randrange(256) for _ in range(size)))
            except trio.BrokenResourceError:
                pass
            await stream.aclose()
        # A bogus multistream header claiming Noise, then garbage Noise frames.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"\x13/multistream/1.0.0\n\x07/noise\n" + b"\x00\x20" + os.urandom(32))
        await stream.aclose()
        async with connect_to_node(addr) as client:
            assert (await client.call("node_status"))["peer_id"] == daemon.identity.peer_id


@pytest.mark.timeout(600)
async def test_a_thousand_sequential_clients(node_dir):
    """py-libp2p stops accepting after 250 inbound connections in a lifetime and
    leaks a task and ~11 KB per connection. The daemon must keep serving with
    flat task count and memory."""
    process = psutil.Process()
    async with running_daemon(write_node_config(node_dir, "a", limits={"max_peers": 64, "rpc_burst_per_peer": 10})) as daemon:
        addr = daemon.listen_addrs()[0]
        network = daemon.host.get_network()

        async def settle() -> tuple[int, int]:
            with trio.fail_after(30):
                while network.connections or daemon.peers.peers:
                    await trio.sleep(0.05)
            await trio.sleep(0.2)
            gc.collect()
            return trio.lowlevel.current_statistics().tasks_living, process.memory_info().rss

        async def clients(n: int) -> None:
            for _ in range(n):
                async with connect_to_node(addr, identity=Identity.generate()) as client:
                    assert (await client.call("node_status"))["peer_id"] == daemon.identity.peer_id

        await clients(100)  # warm up allocator and caches
        tasks_warm, rss_warm = await settle()
        await clients(900)
        tasks_end, rss_end = await settle()
        assert tasks_end <= tasks_warm, (tasks_warm, tasks_end)
        per_connection = (rss_end - rss_warm) / 900
        assert per_connection < 4096, f"{per_connection:.0f} bytes retained per connection"
        async with connect_to_node(addr) as client:  # the 1,001st still gets in
            await client.call("node_status")

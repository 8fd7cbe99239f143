"""The hardened host: each py-libp2p pitfall from shared/notes/py-libp2p.md, handled."""

from __future__ import annotations

import gc
import os
import threading

import multiaddr
import pytest
import trio
import trio.testing
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from node.base.keys import Identity
from node.p2p.client import connect_to_node
from node.p2p.host import build_host, check_port_free, running_host
from tests.support import running_daemon, write_node_config

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


async def test_plaintext_dialer_is_refused_and_server_keeps_serving(node_dir):
    async with running_daemon(write_node_config(node_dir, "a")) as daemon:
        addr = multiaddr.Multiaddr(daemon.listen_addrs()[0])
        key_pair = create_new_key_pair()
        plaintext = new_host(key_pair=key_pair, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)})
        async with plaintext.run(listen_addrs=[]):
            with pytest.raises(Exception):
                with trio.fail_after(10):
                    await plaintext.connect(info_from_p2p_addr(addr))
            assert not plaintext.get_network().get_connections(info_from_p2p_addr(addr).peer_id)
        await plaintext.close()
        async with connect_to_node(addr) as client:  # a Noise client still gets in
            assert (await client.call("node_status"))["peer_id"] == daemon.identity.peer_id


def test_dial_waits_on_no_timer():
    """py-libp2p's default waits out a 250 ms happy-eyeballs timer after every
    successful dial. Under a clock that never advances, any such wait would
    hang forever; the dial must complete on I/O alone."""
    outcome: list[object] = []
    clock = trio.testing.MockClock(rate=0)

    async def dial_under_frozen_clock():
        server = build_host(Identity.from_label("frozen-server"))
        client = build_host(Identity.from_label("frozen-client"))
        async with running_host(server, [LOOPBACK]), running_host(client, []):
            await client.connect(info_from_p2p_addr(server.get_addrs()[0]))
            outcome.append(len(client.get_network().get_connections(server.get_id())))
            clock.rate = 1.0  # shutdown has its own (legitimate) sleeps

    def run():
        try:
            trio.run(dial_under_frozen_clock, clock=clock)
        except BaseException as exc:  # surfaced below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "dial waited on a timer (the 250 ms stall is back)"
    assert outcome and outcome[0] == 1, outcome


async def test_second_listener_on_same_port_is_refused(node_dir):
    async with running_daemon(write_node_config(node_dir, "a")) as daemon:
        addr = multiaddr.Multiaddr(daemon.listen_addrs()[0]).decapsulate("/p2p")
        with pytest.raises(OSError, match="cannot listen"):
            check_port_free(addr)


def _open_fds() -> dict[str, str]:
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return fds


async def test_shutdown_closes_every_socket_and_task(node_dir):
    gc.collect()
    fds_before = _open_fds()
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    b_cfg = write_node_config(node_dir, "b")
    async with running_daemon(b_cfg) as b:
        a_cfg = write_node_config(node_dir, "a", peers=b.listen_addrs())
        async with running_daemon(a_cfg) as a:
            with trio.fail_after(20):
                while not a.peers.peers or not b.peers.peers:
                    await trio.sleep(0.05)
            async with connect_to_node(b.listen_addrs()[0]) as client:
                await client.call("node_status")
            port = multiaddr.Multiaddr(b.listen_addrs()[0]).decapsulate("/p2p")
    with trio.fail_after(10):
        while trio.lowlevel.current_statistics().tasks_living > tasks_before:
            await trio.sleep(0.05)
    gc.collect()
    leaked = {fd: target for fd, target in _open_fds().items() if fd not in fds_before}
    assert not leaked, os.popen(f"ss -tanpe | grep pid={os.getpid()},").read()
    check_port_free(port)  # nobody listens any more


async def test_a_failing_stream_handler_resets_its_stream_only(node_dir):
    """A handler that lets an exception out (a disk error, a bug) must not end the
    peer's connection: libp2p awaits handlers inside the connection's own task."""
    from node.p2p.client import open_rpc_client
    from node.p2p.framing import FramedStream

    boom = "/metanode/test-boom/1.0.0"

    async def failing_handler(stream):
        await FramedStream(stream, 1024).read_frame()
        raise OSError(28, "No space left on device")

    async with running_daemon(write_node_config(node_dir, "a")) as daemon:
        daemon.host.set_stream_handler(boom, failing_handler)
        info = info_from_p2p_addr(multiaddr.Multiaddr(daemon.listen_addrs()[0]))
        client = build_host(Identity.generate(), max_connections=8)
        async with running_host(client, []):
            with trio.fail_after(20):
                await client.connect(info)
                [conn] = client.get_network().get_connections(info.peer_id)
                framed = FramedStream(await client.new_stream(info.peer_id, [boom]), 1024)
                await framed.write_frame(b"go")
                with pytest.raises(Exception):
                    if await framed.read_frame() is None:  # reset or closed: either way, no answer
                        raise EOFError
                while daemon.host.stream_handler_failures < 1:
                    await trio.sleep(0.02)
                assert not conn.is_closed  # the connection outlived the failing stream
                async with open_rpc_client(client, info.peer_id) as rpc:
                    assert (await rpc.call("node_status"))["peer_id"] == daemon.identity.peer_id
                assert client.get_network().get_connections(info.peer_id) == [conn]


async def test_a_node_that_refuses_the_rpc_stream_is_unreachable_not_a_traceback():
    """Connected, then the stream refused (no RPC handler, limits, shutting down):
    the client says the node is unreachable (exit 3 in the CLI), with no traceback."""
    from node.base.errors import EXIT_UNREACHABLE, UnreachableError, sole_exception

    server = build_host(Identity.generate(), max_connections=8)  # speaks no /metanode/rpc
    async with running_host(server, [LOOPBACK]):
        address = f"{server.get_addrs()[0]}"
        with pytest.raises(BaseException) as raised:  # trio wraps it in exception groups; the CLI unwraps
            async with connect_to_node(address, timeout=10):
                pass
        refused = sole_exception(raised.value)
        assert isinstance(refused, UnreachableError), repr(refused)
        assert "did not open an RPC stream" in str(refused)
        assert refused.exit_code == EXIT_UNREACHABLE

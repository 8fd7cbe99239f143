"""The light dialer (node/p2p/dialer/) against real py-libp2p peers: the daemon,
and a bare hardened host. Faults are real sockets: a closed port, a wrong peer
id, a listener that is not libp2p, one that breaks the Noise handshake."""

from __future__ import annotations

import os
from functools import partial

import multiaddr
import pytest
import trio
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID

from node.base.errors import EXIT_UNREACHABLE, UnreachableError, sole_exception
from node.base.keys import Identity
from node.p2p.client import call_node, connect_to_node
from node.p2p.dialer import PING_PROTOCOL, DialError, NodeAddress, ProtocolRefused, multistream, open_connection, yamux
from node.p2p.dialer import connection as dialer_connection
from node.p2p.framing import FramedStream
from node.p2p.host import build_host, running_host
from node.p2p.peers import PING_PROTOCOL as NODE_PING_PROTOCOL
from node.p2p.peers import PING_SIZE as NODE_PING_SIZE
from node.p2p.rpc import RPC_PROTOCOL
from node.p2p.rpc_client import rpc_client_over
from tests.support import free_port, running_daemon, write_node_config

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
ECHO = "/metanode/test-echo/1.0.0"


def _address(text: str) -> NodeAddress:
    return NodeAddress.from_multiaddr(multiaddr.Multiaddr(text))


async def _dial_error(address: str, timeout: float = 10.0) -> DialError:
    with pytest.raises(DialError) as raised:
        async with connect_to_node(address, timeout=timeout):
            pass
    assert raised.value.exit_code == EXIT_UNREACHABLE
    return raised.value


def test_ping_protocol_is_the_nodes():
    """The dialer names the keepalive protocol itself (node/p2p/peers.py loads libp2p)."""
    assert PING_PROTOCOL == NODE_PING_PROTOCOL
    assert dialer_connection.PING_SIZE == NODE_PING_SIZE


async def test_node_status_and_keepalive_over_the_light_dialer(node_dir):
    """node_status over JSON-RPC, then the connection outlives several of the
    node's keepalive rounds (it pings every 0.3 s and drops a peer that does not
    answer within 1 s): the dialer answers its pings."""
    network = {"keepalive_interval": 0.3, "keepalive_timeout": 1.0}
    async with running_daemon(write_node_config(node_dir, "a", network=network)) as daemon:
        me = Identity.generate()
        async with connect_to_node(daemon.listen_addrs()[0], identity=me) as client:
            assert (await client.call("node_status"))["peer_id"] == daemon.identity.peer_id
            await trio.sleep(2.5)  # > keepalive_interval + keepalive_timeout, several times over
            assert (await client.call("node_status"))["peer_id"] == daemon.identity.peer_id
            peer = daemon.peers.peers[me.peer_id]
            assert peer.latency_ms is not None  # the node's pings were answered
            [entry] = [p for p in await client.call("net_peers") if p["peer_id"] == me.peer_id]
            assert entry["connected_s"] >= 2.5  # one connection all along
        with trio.fail_after(10):
            while me.peer_id in daemon.peers.peers:  # our GO_AWAY and close were seen
                await trio.sleep(0.05)


async def test_closed_port_is_reported_as_refused():
    port = free_port()
    error = await _dial_error(f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.generate().peer_id}")
    assert error.reason == "refused"
    assert str(error) == f"connection refused at 127.0.0.1:{port} (is the node running?)"


async def test_wrong_peer_id_is_reported_as_a_mismatch(node_dir):
    async with running_daemon(write_node_config(node_dir, "a")) as daemon:
        right = multiaddr.Multiaddr(daemon.listen_addrs()[0])
        port = right.value_for_protocol("tcp")
        wrong = Identity.generate().peer_id
        error = await _dial_error(f"/ip4/127.0.0.1/tcp/{port}/p2p/{wrong}")
        assert error.reason == "peer_id_mismatch"
        assert str(error) == f"peer id mismatch: the node at 127.0.0.1:{port} is {daemon.identity.peer_id}, not {wrong}"
        # the node is unharmed, and the right id still gets in
        assert (await call_node(str(right), "node_status"))["peer_id"] == daemon.identity.peer_id


async def _serve(nursery: trio.Nursery, handler) -> int:  # type: ignore[no-untyped-def]
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def test_a_listener_that_is_not_libp2p_is_named_so():
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, garbage)
        error = await _dial_error(f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.generate().peer_id}")
        nursery.cancel_scope.cancel()
    assert error.reason == "not_libp2p"
    assert str(error).startswith(f"127.0.0.1:{port} is not a libp2p node: it does not speak multistream-select")
    assert "HTTP/1.1 400" in str(error)


async def test_a_silent_listener_times_out_naming_the_step():
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep(30)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, silent)
        error = await _dial_error(f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.generate().peer_id}", timeout=0.5)
        nursery.cancel_scope.cancel()
    assert error.reason == "timeout"
    assert str(error) == "timed out after 0.5 s while agreeing on the security protocol (multistream-select)"


async def test_a_listener_that_hangs_up_is_retried_then_reported_closed():
    """Hung up on before a word (what a node does to newcomers while a flood
    fills its pending-handshake table): tried a few times, then reported."""
    accepted = 0

    async def hang_up(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, hang_up)
        error = await _dial_error(f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.generate().peer_id}")
        nursery.cancel_scope.cancel()
    assert error.reason == "closed"
    assert "closed the connection while agreeing on the security protocol" in str(error)
    assert accepted == dialer_connection.CLOSED_ATTEMPTS
    assert str(error).endswith(f"({dialer_connection.CLOSED_ATTEMPTS} attempts)")


async def test_a_node_that_hangs_up_once_is_reached_on_the_next_try(node_dir):
    """A proxy that closes the first connection and forwards the next to a real
    daemon: the dial succeeds."""
    async with running_daemon(write_node_config(node_dir, "a")) as daemon:
        real = multiaddr.Multiaddr(daemon.listen_addrs()[0])
        real_port = int(real.value_for_protocol("tcp"))
        seen = 0

        async def flaky_proxy(client: trio.SocketStream) -> None:
            nonlocal seen
            seen += 1
            if seen == 1:
                await client.aclose()
                return
            upstream = await trio.open_tcp_stream("127.0.0.1", real_port)

            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                try:
                    while data := await source.receive_some(65536):
                        await sink.send_all(data)
                except trio.BrokenResourceError:
                    pass
                with trio.move_on_after(1):
                    await sink.aclose()

            async with trio.open_nursery() as pumps:
                pumps.start_soon(pump, client, upstream)
                pumps.start_soon(pump, upstream, client)

        async with trio.open_nursery() as nursery:
            port = await _serve(nursery, flaky_proxy)
            status = await call_node(f"/ip4/127.0.0.1/tcp/{port}/p2p/{daemon.identity.peer_id}", "node_status")
            nursery.cancel_scope.cancel()
        assert status["peer_id"] == daemon.identity.peer_id
        assert seen == 2


async def test_a_broken_noise_handshake_is_named():
    """A listener that agrees on /noise and then answers message 1 with bytes
    that are not a Noise reply: the handshake fails, and says so."""

    async def bad_noise(stream: trio.SocketStream) -> None:
        await stream.send_all(multistream.encode(multistream.MULTISTREAM))
        await stream.receive_some(1024)  # the header and /noise, sent together
        await stream.send_all(multistream.encode("/noise"))
        await stream.receive_some(1024)  # noise message 1
        reply = os.urandom(200)
        await stream.send_all(len(reply).to_bytes(2, "big") + reply)
        await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, bad_noise)
        error = await _dial_error(f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.generate().peer_id}")
        nursery.cancel_scope.cancel()
    assert error.reason == "handshake"
    assert str(error).startswith(f"Noise handshake failed with 127.0.0.1:{port}: ")
    assert "authentication" in str(error)


async def test_several_concurrent_streams_on_one_connection(node_dir):
    async with running_daemon(write_node_config(node_dir, "a")) as daemon:
        address = _address(daemon.listen_addrs()[0])
        async with open_connection(address, Identity.generate().seed) as connection:
            answers: list[str] = []

            async def one_stream() -> None:
                stream = await connection.open_stream(RPC_PROTOCOL)
                async with rpc_client_over(stream) as client:
                    for _ in range(3):
                        answers.append((await client.call("node_status"))["peer_id"])

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    for _ in range(8):
                        nursery.start_soon(one_stream)
            assert answers == [daemon.identity.peer_id] * 24


async def test_refused_rpc_stream_is_unreachable_not_a_traceback():
    server = build_host(Identity.generate(), max_connections=8)  # speaks no /metanode/rpc
    async with running_host(server, [LOOPBACK]):
        with pytest.raises(UnreachableError) as raised:
            async with connect_to_node(f"{server.get_addrs()[0]}", timeout=10):
                pass
        assert "did not open an RPC stream" in str(raised.value)
        assert RPC_PROTOCOL in str(raised.value)


async def _echo(stream) -> None:  # type: ignore[no-untyped-def]
    try:
        while data := await stream.read(65536):
            await stream.write(data)
    except StreamEOF:  # py-libp2p's streams raise at the end
        pass
    await stream.close()


async def test_flow_control_both_ways_with_a_py_libp2p_host():
    """4 MiB through an echo stream, 16 windows each way: window updates flow
    both ways, and a stream the host does not serve is refused with "na"."""
    server = build_host(Identity.generate(), max_connections=8)
    server.set_stream_handler(ECHO, _echo)
    async with running_host(server, [LOOPBACK]):
        address = _address(f"{server.get_addrs()[0]}")
        async with open_connection(address, Identity.generate().seed) as connection:
            with pytest.raises(ProtocolRefused):
                await connection.open_stream("/metanode/nobody-speaks-this/1.0.0")
            stream = await connection.open_stream(ECHO)
            payload = os.urandom(4 * 1024 * 1024)
            received = bytearray()

            async def send() -> None:
                await stream.write(payload)
                await stream.close()

            async def receive() -> None:
                while chunk := await stream.read(1 << 20):
                    received.extend(chunk)

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    nursery.start_soon(receive)
            assert bytes(received) == payload


async def test_the_nodes_streams_pings_answered_others_refused_and_bounded():
    """The host (as the node would) opens streams to the dialer: its ping is
    echoed, any other protocol is refused, and past MAX_INBOUND_STREAMS open
    at once the next is reset."""
    server = build_host(Identity.generate(), max_connections=8)
    me = Identity.generate()
    async with running_host(server, [LOOPBACK]):
        address = _address(f"{server.get_addrs()[0]}")
        async with open_connection(address, me.seed) as connection:
            peer = ID.from_base58(me.peer_id)
            with trio.fail_after(10):
                while not server.get_network().get_connections(peer):
                    await trio.sleep(0.02)
                with pytest.raises(BaseException):  # libp2p's own failure: "na" from the dialer
                    await server.new_stream(peer, ["/metanode/not-served/1.0.0"])
                pings = []
                for _ in range(yamux.MAX_INBOUND_STREAMS):
                    framed = FramedStream(await server.new_stream(peer, [PING_PROTOCOL]), NODE_PING_SIZE)
                    nonce = os.urandom(NODE_PING_SIZE)
                    await framed.write_frame(nonce)
                    assert await framed.read_frame() == nonce
                    pings.append(framed)
                with pytest.raises(BaseException):  # one more while all are open: reset
                    extra = FramedStream(await server.new_stream(peer, [PING_PROTOCOL]), NODE_PING_SIZE)
                    await extra.write_frame(b"x" * NODE_PING_SIZE)
                    if await extra.read_frame() is None:
                        raise EOFError
                assert connection.session.inbound_refused >= 1
                await pings[0].close()  # one closes: room for one more
                while connection.session.inbound_open >= yamux.MAX_INBOUND_STREAMS:
                    await trio.sleep(0.02)
                again = FramedStream(await server.new_stream(peer, [PING_PROTOCOL]), NODE_PING_SIZE)
                await again.write_frame(b"y" * NODE_PING_SIZE)
                assert await again.read_frame() == b"y" * NODE_PING_SIZE
            # the connection itself was never harmed
            assert connection.session.closed_reason is None


async def test_call_node_unwraps_dial_errors():
    """The CLI's one-call helper raises the DialError itself, not an exception group."""
    port = free_port()
    with pytest.raises(DialError) as raised:
        await call_node(f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.generate().peer_id}", "node_status")
    assert sole_exception(raised.value) is raised.value

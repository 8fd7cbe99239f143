"""The transport fast path (node/p2p/fastpath.py, node/p2p/muxer.py) through a real host pair.

Bytes must arrive exactly as sent whatever the sizes and the way writes are
split (frame boundaries at 65507/65519 bytes, windows of 256 KiB, several
Noise messages per socket read), and the guards must still hold: a BPCI frame
over its limit, a yamux frame over 16 MiB or past the window, a Noise message
that fails authentication, a DATA body that never arrives.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.stream_muxer.yamux.yamux import FLAG_SYN, TYPE_DATA, TYPE_WINDOW_UPDATE

from node.base.keys import Identity
from node.p2p.fastpath import FastNoiseSession
from node.p2p.framing import FramedStream
from node.p2p.host import build_host, running_host
from node.p2p.muxer import BpciYamux

ECHO = TProtocol("/metanode/test-fastpath-echo/1.0.0")
FRAMED = TProtocol("/metanode/test-fastpath-framed/1.0.0")
HEADER = struct.Struct("!BBHII")
SIZES = [1, 2, 11, 12, 13, 100, 4095, 65506, 65507, 65508, 65518, 65519, 65520, 65536,
         131072, 262143, 262144, 262145, 1 << 20, 3 * (1 << 20) + 17]


@asynccontextmanager
async def host_pair(handlers: dict[TProtocol, Any]) -> AsyncIterator[tuple[Any, Any, Any]]:
    server = build_host(Identity.from_label("fastpath-server"))
    for protocol, handler in handlers.items():
        server.set_stream_handler(protocol, handler)
    async with running_host(server, [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        info = info_from_p2p_addr(server.get_addrs()[0])
        client = build_host(Identity.from_label("fastpath-client"))
        async with running_host(client, []):
            with trio.fail_after(10):
                await client.connect(info)
            yield server, client, info


def muxed_of(host: Any, peer_id: Any) -> BpciYamux:
    [conn] = host.get_network().get_connections(peer_id)
    muxed = conn.muxed_conn
    assert isinstance(muxed, BpciYamux) and muxed.fast, "the fast path is not in use"
    assert isinstance(muxed.secured_conn, FastNoiseSession)
    return muxed


async def echo(stream: Any) -> None:
    try:
        while True:
            data = await stream.read(random.choice([1, 7, 4096, 65536, 1 << 20]))
            if not data:
                break
            await stream.write(data)
    except Exception:  # the client's EOF (libp2p raises it)
        pass
    await stream.close()


async def test_every_size_and_split_arrives_intact_both_ways():
    rng = random.Random(16)
    async with host_pair({ECHO: echo}) as (server, client, info):
        muxed_of(client, info.peer_id)
        muxed_of(server, client.get_id())
        for size in SIZES:
            payload = rng.randbytes(size)
            stream = await client.new_stream(info.peer_id, [ECHO])
            received = bytearray()

            async def send() -> None:
                at = 0
                while at < size:
                    step = rng.choice([1, 3, 12, 100, 65519, 65536, 200_000, size])
                    await stream.write(payload[at : at + step])
                    at += step

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    while len(received) < size:
                        received += await stream.read(rng.choice([1, 13, 65536, 1 << 20]))
            assert len(received) == size and hashlib.sha256(received).digest() == hashlib.sha256(payload).digest(), size
            await stream.close()


async def test_concurrent_streams_keep_their_bytes_apart():
    async with host_pair({ECHO: echo}) as (_server, client, info):
        results: dict[int, bool] = {}

        async def one(index: int) -> None:
            payload = random.Random(index).randbytes(300_000 + index * 7919)
            stream = await client.new_stream(info.peer_id, [ECHO])
            received = bytearray()

            async def send() -> None:
                for at in range(0, len(payload), 50_000):
                    await stream.write(payload[at : at + 50_000])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while len(received) < len(payload):
                    received += await stream.read(1 << 20)
            results[index] = bytes(received) == payload
            await stream.close()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index in range(8):
                    nursery.start_soon(one, index)
        assert results == {index: True for index in range(8)}


async def test_an_oversize_bpci_frame_resets_its_stream_only():
    async def framed_echo(stream: Any) -> None:
        framed = FramedStream(stream, 1024)
        try:
            while (frame := await framed.read_frame()) is not None:
                await framed.write_frame(frame)
        except Exception:
            await stream.reset()

    async with host_pair({FRAMED: framed_echo}) as (_server, client, info):
        framed = FramedStream(await client.new_stream(info.peer_id, [FRAMED]), 1 << 20)
        await framed.write_frame(b"a" * 1024)
        assert await framed.read_frame() == b"a" * 1024
        await framed.write_frame(b"b" * 1025)  # one byte over the server's limit
        with pytest.raises(Exception), trio.fail_after(10):
            if await framed.read_frame() is None:
                raise EOFError
        again = FramedStream(await client.new_stream(info.peer_id, [FRAMED]), 1024)
        await again.write_frame(b"still here")
        assert await again.read_frame() == b"still here"


async def _closed_within(host: Any, peer_id: Any, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        while host.get_network().get_connections(peer_id):
            await trio.sleep(0.02)
        return True
    return False


async def test_a_yamux_frame_over_16_mib_closes_the_connection():
    async with host_pair({ECHO: echo}) as (server, client, info):
        muxed = muxed_of(client, info.peer_id)
        await muxed.secured_conn.write(HEADER.pack(0, TYPE_DATA, FLAG_SYN, 101, 16 * 1024 * 1024 + 1))
        assert await _closed_within(server, client.get_id(), 5)


async def test_data_past_the_window_resets_that_stream_only(caplog):
    caplog.set_level("WARNING", logger="metanode.p2p.muxer")
    async with host_pair({ECHO: echo}) as (server, client, info):
        muxed = muxed_of(client, info.peer_id)
        before = server.get_network().get_connections(client.get_id())
        # A stream the server never granted more than 256 KiB to, sent 256 KiB + 1 in one frame.
        await muxed.secured_conn.write(HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 1001, 0))
        await muxed.secured_conn.write(HEADER.pack(0, TYPE_DATA, 0, 1001, 256 * 1024 + 1) + b"x" * (256 * 1024 + 1))
        stream = await client.new_stream(info.peer_id, [ECHO])
        await stream.write(b"ping")
        echoed = b""
        with trio.fail_after(10):
            while len(echoed) < 4:  # the echo may come back in pieces
                echoed += await stream.read(4)
        assert echoed == b"ping"
        assert server.get_network().get_connections(client.get_id()) == before
        assert "past its window of 262144; stream reset" in caplog.text


async def test_a_forged_noise_message_closes_the_connection():
    async with host_pair({ECHO: echo}) as (server, client, info):
        session = muxed_of(client, info.peer_id).secured_conn
        assert isinstance(session, FastNoiseSession)
        async with session._send_baton:  # the client's own tasks (identify) may be sending too
            await session._sock.send_all(b"\x00\x20" + bytes(32))  # a 32-byte message that is not authentic
        assert await _closed_within(server, client.get_id(), 5)


async def test_a_data_body_that_never_comes_closes_the_connection(monkeypatch):
    monkeypatch.setenv("PY_YAMUX_DATA_READ_TIMEOUT", "0.5")
    async with host_pair({ECHO: echo}) as (server, client, info):
        muxed = muxed_of(client, info.peer_id)
        await muxed.secured_conn.write(HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 2001, 0))
        await muxed.secured_conn.write(HEADER.pack(0, TYPE_DATA, 0, 2001, 1000) + b"only ten b")
        assert not await _closed_within(server, client.get_id(), 0.2)
        assert await _closed_within(server, client.get_id(), 5)


async def test_a_frame_split_across_noise_messages_and_reads_arrives_intact():
    """Our writer never splits a frame across Noise messages, other
    implementations do (py-libp2p's 65536-byte frames): a header and a body
    that arrive in pieces, reads apart, are reassembled."""
    async with host_pair({ECHO: echo}) as (_server, client, info):
        session = muxed_of(client, info.peer_id).secured_conn
        stream = await client.new_stream(info.peer_id, [ECHO])
        payload = random.Random(3).randbytes(100_000)
        frame = HEADER.pack(0, TYPE_DATA, 0, stream.muxed_stream.stream_id, len(payload)) + payload
        # The pieces are sealed and sent under the session's send baton, as its write
        # does, but held across the pauses: a frame the muxer sends meanwhile (identify,
        # a window update) would land inside ours. A peer's writer holds it likewise.
        await session._send_baton.acquire()
        try:
            for piece in (frame[:5], frame[5:40_000], frame[40_000:70_001], frame[70_001:]):
                await session._sock.send_all(session._seal(piece))
                await trio.sleep(0.05)
        finally:
            session._send_baton.release()
        received = bytearray()
        with trio.fail_after(10):
            while len(received) < len(payload):
                received += await stream.read(1 << 20)
        assert bytes(received) == payload


async def test_an_upstream_py_libp2p_peer_interoperates():
    """py-libp2p's own Noise + yamux (no fast path, 65536-byte frames split over
    two Noise messages, its window updates) against the fast path, both ways."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
    from libp2p.network.config import ConnectionConfig
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    server = build_host(Identity.from_label("fastpath-server"))
    server.set_stream_handler(ECHO, echo)
    async with running_host(server, [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        info = info_from_p2p_addr(server.get_addrs()[0])
        key_pair = create_new_key_pair()
        upstream = new_host(key_pair=key_pair,
                            sec_opt={NOISE_ID: NoiseTransport(key_pair, noise_privkey=x25519_key_pair().private_key)},
                            muxer_opt={TProtocol(YAMUX_ID): Yamux},
                            connection_config=ConnectionConfig(max_connections_per_peer=1),
                            enable_mDNS=False, enable_upnp=False)
        async with upstream.run(listen_addrs=[]):
            with trio.fail_after(60):
                await upstream.connect(info)
                [conn] = upstream.get_network().get_connections(info.peer_id)
                assert type(conn.muxed_conn) is Yamux  # the peer really is upstream's
                muxed_of(server, upstream.get_id())
                payload = random.Random(5).randbytes(3 * (1 << 20) + 5)
                stream = await upstream.new_stream(info.peer_id, [ECHO])
                received = bytearray()

                async def send() -> None:
                    for at in range(0, len(payload), 100_000):
                        await stream.write(payload[at : at + 100_000])

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    while len(received) < len(payload):
                        received += await stream.read(1 << 20)
                assert bytes(received) == payload
                await stream.close()
        await upstream.close()

"""The TCP listener empties the kernel's accept queue at each wakeup.

Under a connection flood, one accept per event-loop turn (upstream's
``trio.serve_listeners``) left hundreds of connections queued in the
kernel, an honest client's among them (test_adversary's honest call timed
out "agreeing on the security protocol"). Counted in loop turns, not
seconds: deterministic on a loaded machine.
"""

from __future__ import annotations

import socket

import multiaddr
import pytest
import trio

from node.p2p.listener import MAX_UNJUDGED, DrainingTCPListener

pytestmark = pytest.mark.timeout(60)
QUEUED = 200
QUEUE_TURNS = 3 * QUEUED // MAX_UNJUDGED  # a few loop turns per MAX_UNJUDGED connections


async def test_a_queue_of_connections_is_taken_in_a_few_loop_turns():
    handled: list[object] = []

    async def handler(stream: object) -> None:
        handled.append(stream)
        await trio.sleep_forever()

    listener = DrainingTCPListener(handler)
    await listener.listen(multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0"))
    port = listener.listeners[0].socket.getsockname()[1]
    clients = []
    try:
        # Blocking connects, no checkpoint: the kernel completes each one into the
        # listen queue while the event loop is held, as a flood does.
        for _ in range(QUEUED):
            client = socket.create_connection(("127.0.0.1", port))
            clients.append(client)
        assert handled == []
        for _ in range(QUEUE_TURNS):
            await trio.lowlevel.checkpoint()
            # Never more accepted sockets waiting for admission than the fd budget's headroom covers.
            assert listener._unjudged <= MAX_UNJUDGED
        assert len(handled) == QUEUED  # one accept per turn would have taken QUEUED turns
        # The listener keeps serving afterwards.
        clients.append(socket.create_connection(("127.0.0.1", port)))
        for _ in range(10):
            await trio.lowlevel.checkpoint()
        assert len(handled) == QUEUED + 1
    finally:
        for client in clients:
            client.close()
        await listener.close()


async def test_a_closed_listener_stops_accepting_and_frees_its_port():
    listener = DrainingTCPListener(lambda stream: trio.sleep(0))
    await listener.listen(multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0"))
    port = listener.listeners[0].socket.getsockname()[1]
    await listener.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)

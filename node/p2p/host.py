"""BPCI: a hardened py-libp2p host.

py-libp2p 0.8.1 (pinned exactly in pyproject.toml) works, but its defaults
are unsafe or slow for a long-running daemon. Each fix here answers one
pitfall measured in shared/notes/py-libp2p.md and has a test in
tests/p2p/:

1. plaintext/TLS/SECIO accepted  -> ``sec_opt`` holds Noise XX only;
2. 250 ms stall per dial        -> ``max_connections_per_peer=1``;
3. inbound accept dies after 250 connections (each handler holds an
   inbound-limiter slot until the *swarm* ends) -> :class:`HardenedSwarm`
   holds the slot only while *its own* connection lives;
9. sockets left open on exit    -> :func:`running_host` always ``close()``s;
6. a failed dial is retried 4 times and then blocked for 60 s -> one
   attempt per dial; node/p2p/peers.py retries with capped backoff;
10. auto-connector redials peers we dropped -> replaced by a no-op: peer
   management is ours (node/p2p/peers.py);
11. libp2p logs to stderr's last resort -> node/logging.py routes them.

Keepalive (4, 5), deadlines and framing (7, 8) live in node/p2p/peers.py and
node/p2p/framing.py.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from node.keys import Identity
from node.logging import route_libp2p_logs

route_libp2p_logs()

DEFAULT_MAX_CONNECTIONS = 512
DIAL_TIMEOUT_S = 5.0


class HardenedSwarm(Swarm):
    """A Swarm whose inbound handler lives exactly as long as its connection.

    Upstream keeps every accepted connection's handler task (and its
    inbound-limiter slot) alive until the whole swarm stops, so a daemon
    stops accepting after ``max_connections - min_connections`` inbound
    connections in its lifetime and leaks a task per connection.
    """

    async def _do_handle_inbound_connection(self, read_write_closer: Any, maddr: Any, failure_event: Any) -> None:
        remote_maddr = self._build_remote_multiaddr(read_write_closer)
        if remote_maddr is not None and not await self.connection_gate.is_allowed(remote_maddr):
            await _close_quietly(read_write_closer)
            return
        raw_conn = RawConnection(read_write_closer, False)
        try:
            muxed_conn = await self.upgrade_inbound_raw_conn(raw_conn, maddr)
        except Exception:
            # Handshake failures (garbage, plaintext dialers, timeouts) are
            # expected from hostile or confused peers: drop this one only.
            await _close_quietly(raw_conn)
            return
        swarm_conn = next(
            (c for c in self.connections.get(muxed_conn.peer_id, []) if c.muxed_conn is muxed_conn),
            None,
        )
        if swarm_conn is None:  # rejected at registration (limits)
            await _close_quietly(muxed_conn)
            return
        await swarm_conn.event_closed.wait()

    def _schedule_auto_connect(self) -> None:
        """Never dial peers on our behalf: node/p2p/peers.py decides whom to dial."""


class _NoAutoConnector:
    """Stands in for libp2p's AutoConnector, which dials every peer in the
    peerstore whenever connections fall below the watermarks' midpoint, so
    dropped peers come back on their own and ``disconnect()`` never sticks."""

    _is_connecting = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def run_background_task(self, nursery: Any) -> None:
        pass

    async def maybe_connect(self) -> None:
        pass


async def _close_quietly(closable: Any) -> None:
    try:
        await closable.close()
    except Exception:
        pass


def libp2p_key_pair(identity: Identity) -> Any:
    """The libp2p Ed25519 key pair of a metanode identity."""
    return ed25519_key_pair(identity.seed)


def build_host(identity: Identity, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> IHost:
    """A py-libp2p host restricted to Noise XX + yamux, with our fixes applied."""
    key_pair = libp2p_key_pair(identity)
    noise = NoiseTransport(key_pair, noise_privkey=x25519_key_pair().private_key)
    config = ConnectionConfig(
        max_connections=max_connections,
        max_connections_per_peer=1,
        min_connections=0,
        low_watermark=0,
        high_watermark=max_connections,
        dial_timeout=DIAL_TIMEOUT_S,
        inbound_upgrade_timeout=DIAL_TIMEOUT_S,
        outbound_upgrade_timeout=DIAL_TIMEOUT_S,
        inbound_stream_protocol_negotiation_timeout=DIAL_TIMEOUT_S,
        outbound_stream_protocol_negotiation_timeout=DIAL_TIMEOUT_S,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: noise},
        muxer_opt={YAMUX_ID: Yamux},
        connection_config=config,
        enable_mDNS=False,
        enable_upnp=False,
    )
    swarm = host.get_network()
    if type(swarm) is not Swarm:  # the pin guarantees this; fail loudly if not
        raise RuntimeError(f"unexpected libp2p network type {type(swarm).__name__}")
    swarm.__class__ = HardenedSwarm
    swarm.auto_connector = _NoAutoConnector()
    # Redial policy (capped backoff, no 60 s negative cache) is ours:
    # node/p2p/peers.py. One attempt per dial here.
    swarm.retry_config = RetryConfig(max_retries=0)
    return host


def check_port_free(addr: multiaddr.Multiaddr) -> None:
    """Refuse a listen port another process already holds.

    libp2p binds with SO_REUSEPORT (for hole punching), so a second daemon
    on the same port would silently share it and steal half the
    connections. A plain bind without that flag detects the clash.
    """
    names = [p.name for p in addr.protocols()]
    if "ip4" in names:
        family, ip = socket.AF_INET, addr.value_for_protocol("ip4")
    else:
        family, ip = socket.AF_INET6, addr.value_for_protocol("ip6")
    port = int(addr.value_for_protocol("tcp"))
    if port == 0:
        return
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((ip, port))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {addr}: {exc.strerror}") from None
    finally:
        probe.close()


@asynccontextmanager
async def running_host(
    host: IHost, listen_addrs: Sequence[multiaddr.Multiaddr]
) -> AsyncIterator[IHost]:
    """Run ``host`` listening on ``listen_addrs``; close every socket on exit."""
    for addr in listen_addrs:
        check_port_free(addr)
    try:
        async with host.run(listen_addrs=list(listen_addrs)):
            if listen_addrs and not host.get_addrs():
                raise OSError(f"could not listen on {', '.join(map(str, listen_addrs))}")
            yield host
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await host.close()

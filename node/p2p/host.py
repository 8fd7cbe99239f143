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
9. sockets left open on exit    -> :func:`running_host` always ``close()``s,
   and outer cancellation reaches libp2p only through that close;
6. a failed dial is retried 4 times and then blocked for 60 s -> one
   attempt per dial; node/p2p/peers.py retries with capped backoff;
10. auto-connector redials peers we dropped -> replaced by a no-op: peer
   management is ours (node/p2p/peers.py);
11. libp2p logs to stderr's last resort -> node/logging.py routes them.

And one it did not list: a silent TCP connection costs a descriptor for as
long as the upgrade timeout, counted like an authenticated one, and nothing
keeps strangers from the slots validators need -> connections are admitted
on a budget (:class:`node.p2p.admission.ConnectionAdmission`, the books in
node/p2p/budget.py): pending handshakes capped in total and per source IP
under a handshake deadline, authenticated ones capped at ``max_peers`` with
slots reserved for privileged peers. The TCP listener takes every queued
connection at each wakeup (node/p2p/listener.py), so admission judges a
flood's connections as they arrive rather than one per loop turn.

Keepalive (4, 5), deadlines and framing (7, 8) live in node/p2p/peers.py and
node/p2p/framing.py. The transport's data path (Noise messages read and
sealed in batches, yamux frames parsed from large reads, no task switch per
frame) is node/p2p/fastpath.py and node/p2p/muxer.py, applied to every
connection by :class:`HardenedSwarm`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import structlog
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.custom_types import StreamHandlerFn, TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.swarm import Swarm
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.tcp.tcp import TCP

from node.base.keys import Identity
from node.base.logging import route_libp2p_logs
from node.p2p.admission import ConnectionAdmission, ConnectionLimits
from node.p2p.budget import ResourceBudget
from node.p2p.listener import DrainingTCP
from node.p2p.peers import PING_PROTOCOL
from node.p2p.swarm import HardenedSwarm, NoAutoConnector

route_libp2p_logs()

log = structlog.get_logger("metanode.p2p")

DEFAULT_MAX_CONNECTIONS = 512
DIAL_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0


def libp2p_key_pair(identity: Identity) -> Any:
    """The libp2p Ed25519 key pair of a metanode identity."""
    return ed25519_key_pair(identity.seed)


class ContainedHost(BasicHost):
    """A host whose stream handlers cannot take their connection down.

    libp2p awaits a protocol's handler inside the connection's own task: an
    exception a handler lets out (a disk error in the blob protocol, a bug)
    would end every stream of that peer's connection. Each handler registered
    here runs wrapped: an unexpected failure is logged as one line and resets
    that stream only. Cancellation passes through untouched."""

    def set_stream_handler(self, protocol_id: TProtocol, stream_handler: StreamHandlerFn) -> None:
        async def contained(stream: Any) -> None:
            try:
                gate = self.stream_gate
                if gate is not None and not await gate(stream, str(protocol_id)):
                    with trio.move_on_after(1), contextlib.suppress(Exception):
                        await stream.reset()  # kept out (node/p2p/chain_hello.py): a peer on another genesis
                    return
                await stream_handler(stream)
            except Exception as exc:  # noqa: BLE001 - the point is to contain anything a handler lets out
                self.stream_handler_failures += 1
                log.warning("stream handler failed; stream reset", protocol=str(protocol_id),
                            error=f"{type(exc).__name__}: {exc}"[:300])
                with trio.move_on_after(1):
                    try:
                        await stream.reset()
                    except Exception:  # noqa: BLE001 - already broken; the reset is a courtesy
                        pass

        super().set_stream_handler(protocol_id, contained)

    stream_handler_failures = 0
    # Asked before each inbound stream reaches its handler; None lets every stream in.
    stream_gate: Callable[[Any, str], Awaitable[bool]] | None = None


def build_host(
    identity: Identity,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    limits: ConnectionLimits | None = None,
    privileged_peers: Iterable[str] = (),
    budget: ResourceBudget | None = None,
) -> IHost:
    """A py-libp2p host restricted to Noise XX + yamux, with our fixes applied.

    ``limits`` (default: ``max_connections`` peers and the other defaults of
    :class:`ConnectionLimits`) is enforced by the swarm's admission on
    ``budget`` (a fresh one if None; ``host.get_network().admission`` holds
    both); ``privileged_peers`` (base58 peer ids) may use the reserved slots.
    """
    limits = limits or ConnectionLimits(max_peers=max_connections)
    # Upstream's own caps sit above ours, so the admission is the one that
    # refuses (upstream's refusal logs a traceback at WARNING).
    upstream_cap = limits.max_peers + limits.max_pending + 16
    key_pair = libp2p_key_pair(identity)
    noise = NoiseTransport(key_pair, noise_privkey=x25519_key_pair().private_key)
    config = ConnectionConfig(
        max_connections=upstream_cap,
        max_connections_per_peer=1,
        min_connections=0,
        low_watermark=0,
        high_watermark=upstream_cap,
        dial_timeout=DIAL_TIMEOUT_S,
        # A backstop only: the admission's handshake deadline closes first.
        inbound_upgrade_timeout=limits.handshake_timeout + 1.0,
        outbound_upgrade_timeout=DIAL_TIMEOUT_S,
        inbound_stream_protocol_negotiation_timeout=DIAL_TIMEOUT_S,
        outbound_stream_protocol_negotiation_timeout=DIAL_TIMEOUT_S,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: noise},
        # Upstream declares its yamux PROTOCOL_ID as a plain str (noise's is a TProtocol).
        muxer_opt={TProtocol(YAMUX_ID): Yamux},  # HardenedSwarm.add_conn applies BpciYamux
        connection_config=config,
        enable_mDNS=False,
        enable_upnp=False,
    )
    if type(host) is not BasicHost:  # the pin guarantees this; fail loudly if not
        raise RuntimeError(f"unexpected libp2p host type {type(host).__name__}")
    host.__class__ = ContainedHost
    swarm = host.get_network()
    if type(swarm) is not Swarm:  # the pin guarantees this; fail loudly if not
        raise RuntimeError(f"unexpected libp2p network type {type(swarm).__name__}")
    swarm.__class__ = HardenedSwarm
    for transport in swarm.transport_manager.get_transports():
        if type(transport) is TCP:  # accepts a flood's whole queue each wakeup (node/p2p/listener.py)
            transport.__class__ = DrainingTCP
    # py-libp2p types the network as INetworkService; build_host just made it a HardenedSwarm.
    swarm.admission = ConnectionAdmission(  # type: ignore[attr-defined]
        limits, budget, privileged=privileged_peers, idle_protocols=[PING_PROTOCOL])
    # A duck-typed stand-in: libp2p types the attribute as its concrete class, not an interface.
    swarm.auto_connector = NoAutoConnector()  # type: ignore[assignment]
    # Upstream's own resource manager (libp2p.rcmgr) keeps opaque limits of its own and,
    # under a connection flood, "gracefully degrades" by refusing streams on every
    # connection, honest ones included. The admission's budget is the one authority.
    swarm.set_resource_manager(None)
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
    # SO_REUSEADDR ignores TIME_WAIT leftovers of a previous run (a restart
    # must work) but still fails on a port someone is listening on.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    """Run ``host`` listening on ``listen_addrs``; close every socket on exit.

    libp2p's own tasks run in a nursery inside ``host.run()``. If the
    caller's cancellation reached them directly, the swarm's cleanup would
    close connections in an already-cancelled scope and leave their sockets
    in CLOSE-WAIT. So the host runs in a shielded task of its own, and the
    only way it stops is through ``host.close()``, bounded by a deadline.
    """
    for addr in listen_addrs:
        check_port_free(addr)
    stop = trio.Event()

    async def serve(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope(shield=True):
            async with host.run(listen_addrs=list(listen_addrs)):
                try:
                    if listen_addrs and not host.get_addrs():
                        raise OSError(f"could not listen on {', '.join(map(str, listen_addrs))}")
                    task_status.started()
                    await stop.wait()
                finally:
                    with trio.move_on_after(CLOSE_TIMEOUT_S):
                        await host.close()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        try:
            yield host
        finally:
            stop.set()

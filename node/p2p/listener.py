"""A TCP listener that takes every queued connection at each wakeup.

libp2p accepts through ``trio.serve_listeners``: one ``accept`` per turn of
the event loop. Under a connection flood a turn runs every ready task, so
the node accepted ~700 connections a second (test_adversary, wave A) while
the kernel queued the rest; an honest client's connection waited in that
queue behind hundreds of silent ones, connected from its side but never
answered, and its 2 s call timed out "agreeing on the security protocol".
Admission (node/p2p/admission.py) can only judge a connection it has accepted:
so this listener keeps taking connections from the kernel's queue, turn after
turn, until it is empty, handing each to the swarm's handler at once. A
queued connection now waits a few loop turns, not the queue's length.

Descriptors stay within the daemon's budget (node/roles/confinement.py
counts ``max_pending`` handshakes): at most :data:`MAX_UNJUDGED` accepted
connections wait for their handler's first step, where admission takes a
pending slot or closes them. Taking the whole queue at once ran a confined
validator out of descriptors under 2,000 silent connections, and its
safety state could not be written.

Sockets, addresses and closing are upstream's (``TCPListener``); only the
accept loop and the listen backlog differ. The wire is unchanged.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import trio
from libp2p.io.trio import TrioTCPStream
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp.tcp import TCP, TCPListener
from libp2p.utils.multiaddr_utils import extract_ip_from_multiaddr
from multiaddr import Multiaddr

# Accepted connections not yet judged by admission (their handler has not
# run its first step): descriptors the budget's headroom must cover, and how
# many connections one loop turn takes from the queue.
MAX_UNJUDGED = 16
# The kernel queue of completed connections not yet accepted (capped by
# net.core.somaxconn). Too short and the kernel drops every newcomer's SYN,
# an honest client's too, before admission can judge it.
LISTEN_BACKLOG = 4096
# Out of descriptors or memory: accepting again at once would spin.
OVERLOAD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
OVERLOAD_BACKOFF_S = 0.1
# A dialler that gave up while queued: nothing to accept, take the next.
GONE_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET, errno.EPERM})

log = logging.getLogger("metanode.p2p.listener")


def _listen_socket(ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As upstream: SO_REUSEPORT lets hole-punch dials leave from the listen
        # port (node/p2p/host.py check_port_free refuses a port already held).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((ip, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class DrainingTCPListener(TCPListener):
    """Upstream's TCP listener with an accept loop that empties the queue."""

    _unjudged = 0  # accepted, handler not started yet (one loop task per socket mutates it)

    async def listen(self, maddr: Multiaddr) -> None:
        port_text = maddr.value_for_protocol("tcp")
        try:
            port = int(port_text or "")
        except ValueError:
            raise OpenConnectionError(f"Cannot listen: no valid TCP port in multiaddress {maddr}") from None
        ip = extract_ip_from_multiaddr(maddr)
        ips = [ip] if ip else ["0.0.0.0"]
        async with self._lifecycle_lock:
            if self._closed:
                raise OpenConnectionError(f"Cannot listen on {maddr}: listener is closed")
            if self._nursery is None:
                await self._spawn_background_task()
            nursery = self._nursery
            if nursery is None:
                raise OpenConnectionError(f"Cannot listen on {maddr}: background task is not running")
            for address in ips:
                try:
                    sock = _listen_socket(address, port)
                except OSError as exc:
                    raise OpenConnectionError(f"Failed to listen on {address}:{port}: {exc}") from exc
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                self.listeners.append(listener)  # upstream's get_addrs and close use these
                await nursery.start(self._serve, sock)

    async def _serve(self, sock: socket.socket, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Accept from ``sock`` until the listener closes; each connection's
        handler runs in this task's nursery (cancelled with it)."""
        async with trio.open_nursery() as handlers:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(sock.fileno())
                while True:  # until the queue is empty
                    if self._unjudged >= MAX_UNJUDGED:
                        await trio.lowlevel.checkpoint()  # the handlers started run their first step
                        continue
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in GONE_ERRNOS:
                            continue
                        if exc.errno in OVERLOAD_ERRNOS:
                            # Counted and folded by log_filters.AcceptOverloadLog (node_status).
                            log.error("accept failed", exc_info=exc)
                            await trio.sleep(OVERLOAD_BACKOFF_S)
                            break
                        raise
                    self._unjudged += 1
                    handlers.start_soon(self._handle, trio.SocketStream(trio.socket.from_stdlib_socket(conn)))

    async def _handle(self, stream: trio.SocketStream) -> None:
        # The swarm's handler admits or refuses in its first step, before any await.
        self._unjudged -= 1
        try:
            await self.handler(TrioTCPStream(stream))
        except Exception:  # noqa: BLE001 - as upstream: one connection's failure is its own
            log.debug("inbound connection failed", exc_info=True)


class DrainingTCP(TCP):
    """Upstream's TCP transport; its listeners are :class:`DrainingTCPListener`."""

    def create_listener(self, handler_function: Any) -> DrainingTCPListener:
        return DrainingTCPListener(handler_function)

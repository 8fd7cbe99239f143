"""py-libp2p subclasses that fix its swarm and yamux for a long-running daemon.

libp2p is pinned exactly (pyproject.toml): these override a few private
methods of 0.8.1. Each override says which upstream behaviour it replaces
and why; tests/p2p/ fails if any of them stops applying.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.exceptions import SwarmException
from libp2p.network.swarm import Swarm
from libp2p.stream_muxer.yamux.yamux import Yamux

from node.p2p.budget import CONNECTIONS, PENDING, BudgetExceeded, Reservation, ResourceBudget
from node.p2p.fastpath import Baton
from node.p2p.muxer import BpciYamux, BpciYamuxStream  # noqa: F401 - BpciYamuxStream re-exported

log = logging.getLogger("metanode.p2p.swarm")

# go-yamux semantics for window updates: one update per half window
# consumed. py-libp2p defaults to also sending one after every read, which
# doubles the frames of request/response traffic (each small message is
# answered by a WINDOW_UPDATE). Upstream reads this switch from the
# environment on every call; an operator's explicit setting wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")


@dataclass(frozen=True)
class ConnectionLimits:
    """What a host lets strangers hold (node/base/config.py's [limits] keys).

    ``max_peers`` authenticated connections in all, ``reserved_slots`` of
    them kept for privileged peers (validators, persistent peers);
    ``max_pending`` inbound connections still in their Noise + yamux
    handshake, ``max_pending_per_ip`` of them from one source address, each
    closed if not done within ``handshake_timeout`` seconds."""

    max_peers: int = 512
    max_pending: int = 64
    max_pending_per_ip: int = 32
    handshake_timeout: float = 5.0
    reserved_slots: int = 0

    @property
    def evict_after(self) -> float:
        """How long a pending handshake or an idle stranger's connection is
        safe from eviction. An honest Noise + yamux handshake takes ~10 ms on
        loopback (shared/notes/py-libp2p.md), so one still pending after a
        fifth of the deadline is most likely a slowloris."""
        return self.handshake_timeout / 5


# A dialer speaks first (its multistream-select header): a connection that
# has sent nothing this long after accept is silent, and is the first to go.
SILENT_AFTER_S = 0.1


# The pending handshake of the task running an inbound upgrade: add_conn,
# called from inside upstream's upgrade, finds it here.
_CURRENT_HANDSHAKE: contextvars.ContextVar[PendingHandshake | None] = contextvars.ContextVar(
    "metanode_pending_handshake", default=None)


class PendingHandshake:
    """One inbound connection between accept and the end of its handshake."""

    def __init__(self, admission: ConnectionAdmission, ip: str, reservation: Reservation, deadline: float) -> None:
        self.admission, self.ip, self.reservation = admission, ip, reservation
        self.started = trio.current_time()
        self.received = 0  # bytes the dialer sent so far
        self.scope = trio.CancelScope(deadline=deadline)
        self.evicted = False
        self.done = False

    def evict(self) -> None:
        """Make room for a newcomer: give the slot back now, close this one soon."""
        self.evicted = True
        self.finish()
        self.scope.cancel()

    def finish(self) -> None:
        """Leave the pending table (handshake done, failed, timed out or evicted)."""
        if not self.done:
            self.done = True
            self.reservation.release()
            self.admission.pending.pop(id(self), None)
            # Registration (add_conn) is local work: no handshake deadline on it.
            self.scope.deadline = math.inf


@dataclass
class _Admitted:
    """An authenticated connection's slot."""

    reservation: Reservation
    peer: str
    since: float
    ip: str = ""  # source address of an inbound connection ("" for one we dialled)


class ConnectionAdmission:
    """Decides which connections the host keeps, on the books of a :class:`ResourceBudget`.

    Before authentication: a connection takes a ``pending_connections`` slot
    (system and per source IP) at accept. When one of those is full, the
    oldest pending handshake of the full scope is closed to make room if it
    has been pending for ``evict_after`` (it is almost certainly silent);
    else, when the whole table is full of young handshakes (a fast flood),
    the oldest of the address holding the most, if that is more than one
    beyond the newcomer's address (fair shares per source address);
    otherwise the newcomer is closed at once. Either way the descriptors
    held by handshakes stay within ``max_pending``.

    After authentication: a connection takes a ``connections`` slot. A
    stranger may use ``max_peers - reserved_slots`` of them; privileged
    peers (validators, persistent peers) all of them. When a stranger finds
    them full, the oldest stranger connection that carries no stream but
    keepalive pings and is older than ``evict_after`` is closed for it; if
    there is none the newcomer is refused (closed right after its handshake).
    """

    def __init__(self, limits: ConnectionLimits, budget: ResourceBudget | None = None,
                 privileged: Iterable[str] = (), idle_protocols: Iterable[str] = ()) -> None:
        self.limits = limits
        self.budget = budget or ResourceBudget()
        self.privileged = set(privileged)
        self.idle_protocols = frozenset(idle_protocols)
        reserved = min(limits.reserved_slots, limits.max_peers)
        self.budget.set_limit("system", CONNECTIONS, limits.max_peers, reserved=reserved)
        self.budget.set_limit("system", PENDING, limits.max_pending)
        self.budget.set_limit("ip", PENDING, limits.max_pending_per_ip)
        self.pending: dict[int, PendingHandshake] = {}
        self.admitted: dict[int, _Admitted] = {}  # id(muxed_conn) -> slot
        self.evicted_pending = 0
        self.evicted_idle = 0
        self.handshake_timeouts = 0

    # -- before authentication ---------------------------------------------------
    def admit_pending(self, ip: str) -> PendingHandshake | None:
        """A pending slot for a connection just accepted from ``ip``, or None (close it)."""
        for _ in range(2):  # the per-IP scope, then the system scope, may each need a victim
            full = self.budget.check(PENDING, ip=ip)
            if full is None:
                break
            victim = self._oldest_pending(ip if full.scope == "ip" else None, newcomer_ip=ip)
            if victim is None:
                break
            self.evicted_pending += 1
            victim.evict()
        try:
            reservation = self.budget.reserve(PENDING, ip=ip)  # counts the refusal if still full
        except BudgetExceeded:
            return None
        handshake = PendingHandshake(self, ip, reservation, trio.current_time() + self.limits.handshake_timeout)
        self.pending[id(handshake)] = handshake
        return handshake

    def _oldest_pending(self, ip: str | None, *, newcomer_ip: str) -> PendingHandshake | None:
        """The handshake to close for a newcomer: the oldest silent one, else
        the oldest past ``evict_after``; else, when the whole table is full, the
        oldest of the source address holding the most handshakes, if it holds
        more than one beyond the newcomer's address (fair shares: a flood, from
        however many addresses, cannot keep a quiet address's handshake out);
        None if no handshake may go."""
        now = trio.current_time()
        scope = [h for h in self.pending.values() if ip is None or h.ip == ip]
        per_ip = Counter(h.ip for h in scope)
        silent = [h for h in scope if h.received == 0 and h.started <= now - SILENT_AFTER_S]
        stale = [h for h in scope if h.started <= now - self.limits.evict_after]
        # The busiest address's first, then the oldest: a flood's own handshakes go before a quiet address's.
        victim = min(silent or stale, key=lambda h: (-per_ip[h.ip], h.started), default=None)
        if victim is not None or ip is not None:
            return victim
        held = max(per_ip.values(), default=0)
        if held <= per_ip.get(newcomer_ip, 0) + 1:
            return None
        return min((h for h in scope if per_ip[h.ip] == held), key=lambda h: h.started)

    # -- after authentication ----------------------------------------------------
    async def admit(self, swarm: Swarm, muxed_conn: Any, ip: str = "") -> None:
        """Take a connection slot for ``muxed_conn`` (inbound from ``ip``) or raise BudgetExceeded."""
        peer = muxed_conn.peer_id.to_base58()
        privileged = peer in self.privileged
        if self.budget.check(CONNECTIONS, peer=peer, privileged=privileged) is not None:
            victim = self._idlest_stranger(swarm, newcomer_ip=ip)
            if victim is not None:
                self.evicted_idle += 1
                await self._evict(victim)
        # Raises (and counts the refusal) if there was no room and no one to make it.
        reservation = self.budget.reserve(CONNECTIONS, peer=peer, privileged=privileged)
        self.admitted[id(muxed_conn)] = _Admitted(reservation, peer, trio.current_time(), ip)

    def release(self, muxed_conn: Any) -> None:
        slot = self.admitted.pop(id(muxed_conn), None)
        if slot is not None:
            slot.reservation.release()

    def _idlest_stranger(self, swarm: Swarm, *, newcomer_ip: str = "") -> Any:
        """The stranger connection to close for a newcomer: the oldest idle one
        past ``evict_after``; else (a flood keeps every slot young) the oldest
        idle one of the source address holding the most stranger connections,
        if it holds more than one beyond the newcomer's address (fair shares);
        None if none may go. Idle: no stream but keepalive pings."""
        cutoff = trio.current_time() - self.limits.evict_after
        idle: list[tuple[_Admitted, Any]] = []
        per_ip: Counter[str] = Counter()
        for conns in list(swarm.connections.values()):
            for conn in conns:
                slot = self.admitted.get(id(conn.muxed_conn))
                if slot is None or slot.peer in self.privileged:
                    continue
                per_ip[slot.ip] += 1
                if not any(_busy(s, self.idle_protocols) for s in getattr(conn, "streams", ())):
                    idle.append((slot, conn))
        stale = [(slot, conn) for slot, conn in idle if slot.since <= cutoff]
        if stale:
            # The busiest address's first: under a flood of reconnecting strangers the
            # longest-lived idle connection is often the one honest client.
            return min(stale, key=lambda item: (-per_ip[item[0].ip], item[0].since))[1]
        held = max((per_ip[slot.ip] for slot, _ in idle if slot.ip), default=0)
        if held <= per_ip.get(newcomer_ip, 0) + 1:
            return None
        busiest = [(slot, conn) for slot, conn in idle if slot.ip and per_ip[slot.ip] == held]
        return min(busiest, key=lambda item: item[0].since)[1]

    async def _evict(self, conn: Any) -> None:
        self.release(conn.muxed_conn)  # its slot is the newcomer's from now on
        with trio.move_on_after(2):
            await _close_quietly(conn)

    def report(self) -> dict[str, Any]:
        """Books and eviction counts, for node_status and metrics."""
        return {
            **self.budget.report(),
            "handshake_timeout_s": self.limits.handshake_timeout,
            "evicted": {"pending": self.evicted_pending, "idle_strangers": self.evicted_idle},
            "handshake_timeouts": self.handshake_timeouts,
            "accept_overloads": ACCEPT_OVERLOAD.count,
        }


class AcceptOverloadLog(logging.Filter):
    """Turns trio's account of an overloaded accept into one counted line.

    Our TCP listener (node/p2p/listener.py), like ``trio.serve_listeners``, on
    EMFILE/ENFILE/ENOMEM/ENOBUFS sleeps 100 ms and tries again: the right
    behaviour (the listener never dies of it). But both log each retry at
    ERROR with a traceback, ten a second while the condition lasts. This
    filter keeps the first line of each second (at WARNING, no traceback,
    with how many were folded into it) and counts them all for node_status.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._last_logged = -math.inf
        self._folded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        now = time.monotonic()
        if now - self._last_logged < 1.0:
            self._folded += 1
            return False
        errno_name = ""
        if record.exc_info and isinstance(record.exc_info[1], OSError):
            errno_name = os.strerror(record.exc_info[1].errno or 0)
        record.msg = "accept failed (%s); the listener backs off 100 ms and keeps accepting (%d more since the last report)"
        record.args = (errno_name or "out of resources", self._folded)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self._last_logged, self._folded = now, 0
        return True


ACCEPT_OVERLOAD = AcceptOverloadLog()
for _accepting in ("trio.serve_listeners", "metanode.p2p.listener"):
    logging.getLogger(_accepting).addFilter(ACCEPT_OVERLOAD)


class CancelledRegistrationLog(logging.Filter):
    """Drops upstream's traceback for a connection whose registration we cancelled.

    The admission closes a handshake it evicts or that missed its deadline by
    cancelling its scope; when that lands while upstream's ``add_conn`` waits
    for the muxer, upstream logs ``[ADDCONN_FAIL]`` with a full traceback at
    WARNING. It is the admission working (counted in node_status under
    ``budget.evicted`` and ``handshake_timeouts``), not a fault. Any other
    ``add_conn`` failure still gets through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("[ADDCONN_FAIL]"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, trio.Cancelled) for arg in args)


logging.getLogger("libp2p.network.swarm").addFilter(CancelledRegistrationLog())


class IdentifyReplyLog(logging.Filter):
    """One line, not a traceback, when an identify reply cannot be sent.

    Upstream logs ``Error sending identify response`` at ERROR with the
    formatted traceback as an argument. It happens whenever a peer closes its
    connection right after the handshake (a vanishing stranger under attack:
    "Broken pipe"); the peer and the error are worth a line, the traceback
    of our write path is not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Error sending identify response") and isinstance(record.args, tuple) \
                and len(record.args) == 4:
            record.msg = "could not send the identify reply to %s: %s (%s)"
            record.args = record.args[:3]
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("libp2p.identity.identify").addFilter(IdentifyReplyLog())


class _CountingRawConnection(RawConnection):
    """A raw connection that tells its pending handshake when the dialer speaks."""

    handshake: PendingHandshake | None = None

    async def read(self, n: int | None = None) -> bytes:
        data = await super().read(n)
        if self.handshake is not None:
            self.handshake.received += len(data)
        return data


def _protocol_of(stream: Any) -> str | None:
    try:
        protocol = stream.get_protocol()
    except Exception:
        return None
    return None if protocol is None else str(protocol)


def _busy(stream: Any, idle_protocols: frozenset[str]) -> bool:
    """Whether ``stream`` shows its peer doing something: a stream the peer
    opened, on a protocol other than keepalive. Streams we opened to it
    (identify, consensus gossip trying its luck) say nothing of the peer."""
    muxed = getattr(stream, "muxed_stream", None)
    if getattr(muxed, "is_initiator", False):
        return False
    return _protocol_of(stream) not in idle_protocols


async def _first_byte(read_write_closer: Any) -> None:
    """Wait until the dialer has sent something (it speaks first: its
    multistream-select header). A silent connection then costs the node a
    task and a wait, not upstream's negotiation machinery: under a silent
    flood that machinery was most of a validator's loop (py-spy, wave A of
    test_adversary), and honest handshakes waited behind it."""
    sock = getattr(getattr(read_write_closer, "stream", None), "socket", None)
    if sock is not None:
        await trio.lowlevel.wait_readable(sock)


def _remote_ip(read_write_closer: Any) -> str:
    try:
        remote = read_write_closer.get_remote_address()
    except Exception:
        remote = None
    return str(remote[0]) if remote else "unknown"


class HardenedSwarm(Swarm):
    """A Swarm that admits connections on a budget and whose inbound handler
    lives exactly as long as its connection.

    Upstream keeps every accepted connection's handler task (and its
    inbound-limiter slot) alive until the whole swarm stops, so a daemon
    stops accepting after ``max_connections - min_connections`` inbound
    connections in its lifetime and leaks a task per connection. Upstream
    also counts a silent TCP connection like an authenticated one and gives
    it the whole upgrade timeout: :class:`ConnectionAdmission` (set by
    node/p2p/host.py's build_host) replaces that inbound limiter.
    """

    admission: ConnectionAdmission

    async def _handle_inbound_connection(self, read_write_closer: Any, maddr: Any) -> None:
        handshake = self.admission.admit_pending(_remote_ip(read_write_closer))
        if handshake is None:
            # Closed at once: a refused stranger costs a descriptor for one accept.
            await _close_quietly(read_write_closer)
            return
        token = _CURRENT_HANDSHAKE.set(handshake)
        try:
            await self._do_handle_inbound_connection(read_write_closer, maddr, handshake)
        finally:
            handshake.finish()
            _CURRENT_HANDSHAKE.reset(token)

    async def _do_handle_inbound_connection(self, read_write_closer: Any, maddr: Any, failure_event: Any) -> None:
        handshake = failure_event if isinstance(failure_event, PendingHandshake) else None
        remote_maddr = self._build_remote_multiaddr(read_write_closer)
        if remote_maddr is not None and not await self.connection_gate.is_allowed(remote_maddr):
            await _close_quietly(read_write_closer)
            return
        raw_conn = _CountingRawConnection(read_write_closer, False)
        raw_conn.handshake = handshake
        muxed_conn = None
        with handshake.scope if handshake is not None else trio.CancelScope():
            try:
                await _first_byte(read_write_closer)
                muxed_conn = await self.upgrade_inbound_raw_conn(raw_conn, maddr)
            except Exception:
                # Handshake failures (garbage, plaintext dialers, timeouts,
                # refusals) are expected from hostile or confused peers: drop this one only.
                pass
        if muxed_conn is None:
            if handshake is not None and handshake.scope.cancelled_caught and not handshake.evicted:
                self.admission.handshake_timeouts += 1
            await _close_quietly(raw_conn)
            return
        # The swarm's connections are SwarmConns (typed upstream as INetConn, which has no event_closed).
        swarm_conn = next(
            (c for c in self.connections.get(muxed_conn.peer_id, [])
             if isinstance(c, SwarmConn) and c.muxed_conn is muxed_conn),
            None,
        )
        if swarm_conn is None:  # rejected at registration (limits)
            await _close_quietly(muxed_conn)
            return
        await swarm_conn.event_closed.wait()

    async def add_conn(self, muxed_conn: Any, direction: str = "unknown") -> Any:
        handshake = _CURRENT_HANDSHAKE.get()
        if handshake is not None:
            handshake.finish()  # authenticated: no longer pending, no handshake deadline
        already = any(c.muxed_conn is muxed_conn for c in self.connections.get(muxed_conn.peer_id, []))
        admission = getattr(self, "admission", None)
        if admission is not None and not already:
            try:
                await admission.admit(self, muxed_conn, handshake.ip if handshake is not None else "")
            except BudgetExceeded as refusal:
                log.debug("connection refused: %s (peer %s)", refusal, muxed_conn.peer_id)
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await _close_quietly(muxed_conn)
                raise SwarmException(f"connection refused: {refusal}") from None
        # Upstream's muxer negotiation constructs Yamux directly, ignoring the
        # configured class, so the subclass is applied here, before start.
        if type(muxed_conn) is Yamux:
            BpciYamux.adopt(muxed_conn)  # and its Noise session becomes a FastNoiseSession
        try:
            conn = await super().add_conn(muxed_conn, direction)
        except BaseException:
            if admission is not None and not already:
                admission.release(muxed_conn)
            raise
        if type(conn) is SwarmConn:
            conn.__class__ = BpciSwarmConn
        return conn

    def remove_conn(self, swarm_conn: Any) -> None:
        super().remove_conn(swarm_conn)
        admission = getattr(self, "admission", None)
        if admission is not None and not getattr(swarm_conn, "_shared_muxed_conn", False):
            admission.release(swarm_conn.muxed_conn)

    def _schedule_auto_connect(self) -> None:
        """Never dial peers on our behalf: node/p2p/peers.py decides whom to dial."""


class NoAutoConnector:
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


class BpciSwarmConn(SwarmConn):
    """SwarmConn whose cleanup yields with a checkpoint instead of sleeping 100 ms.

    Upstream sleeps 0.1 s on every connection close "to force a context
    switch"; a checkpoint is a context switch. Short-lived RPC clients paid
    it on every call.
    """

    async def _cleanup(self) -> None:
        self.swarm.remove_conn(self)
        if not getattr(self, "_shared_muxed_conn", False):
            try:
                if not self.muxed_conn.is_closed:
                    await self.muxed_conn.close()
            except Exception as exc:
                log.debug("error closing muxed connection: %s", exc)
        for stream in self.streams.copy():
            try:
                await stream.reset()
            except Exception as exc:
                log.debug("error resetting stream: %s", exc)
        await trio.lowlevel.checkpoint()
        await self._notify_disconnected()

    async def _add_stream(self, muxed_stream: Any) -> Any:
        net_stream = await super()._add_stream(muxed_stream)
        # NetStream takes its trio.Lock around every read and write: a task
        # switch each time, for a state check that never waits in practice.
        net_stream._state_lock = Baton()  # type: ignore[assignment]  # the same async-with interface
        return net_stream

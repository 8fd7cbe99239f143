"""Which connections a host keeps: :class:`ConnectionAdmission`, on the books
of a :class:`ResourceBudget`, within a node's :class:`ConnectionLimits`.

It judges a connection twice: at accept, while its Noise + yamux handshake
is pending (:class:`PendingHandshake`), and once it is authenticated.
node/p2p/swarm.py's HardenedSwarm calls it at both points.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.network.swarm import Swarm

from node.p2p.budget import CONNECTIONS, PENDING, BudgetExceeded, Reservation, ResourceBudget
from node.p2p.log_filters import ACCEPT_OVERLOAD


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
            await close_quietly(conn)

    def report(self) -> dict[str, Any]:
        """Books and eviction counts, for node_status and metrics."""
        return {
            **self.budget.report(),
            "handshake_timeout_s": self.limits.handshake_timeout,
            "evicted": {"pending": self.evicted_pending, "idle_strangers": self.evicted_idle},
            "handshake_timeouts": self.handshake_timeouts,
            "accept_overloads": ACCEPT_OVERLOAD.count,
        }


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


async def close_quietly(closable: Any) -> None:
    """Close a connection (raw, muxed or swarm) that may already be half gone: errors are ignored."""
    try:
        await closable.close()
    except Exception:
        pass

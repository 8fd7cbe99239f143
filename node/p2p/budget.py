"""Resource budgets for the p2p host, in the manner of go-libp2p's resource manager.

Every resource a stranger can make the daemon hold (a connection still in
its handshake, an authenticated connection, a stream) is counted in nested
*scopes*: the whole node (``system``), one source IP (``ip``), one peer
(``peer``) and one connection (``conn``). A reservation names the scopes it
belongs to and is granted only if every one of them stays within its limit,
all or nothing; releasing it gives every count back. Nothing here does I/O or
knows about libp2p: node/p2p/admission.py decides *when* to reserve, this module
only keeps the books, so the books can be tested exactly.

Usage (what other parts of the host call)::

    budget = ResourceBudget()
    budget.set_limit("system", STREAMS, 4096)
    budget.set_limit("peer", STREAMS, 256)
    try:
        reservation = budget.reserve(STREAMS, peer=peer_id, conn=conn_id)
    except BudgetExceeded as exc:   # exc.scope, exc.limit, exc.in_use say which limit
        ...refuse, answering with str(exc)...
    else:
        try:
            ...serve the stream...
        finally:
            reservation.release()   # idempotent

Reserved capacity: a ``system`` limit may keep ``reserved`` units that only a
*privileged* reservation may use (validators and persistent peers, as
CometBFT keeps slots for persistent peers): strangers together never hold
more than ``limit - reserved``, so they can never take the last slots.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Resources the host counts. Anything else may be counted too: a resource is
# just a name with limits.
CONNECTIONS = "connections"  # authenticated (Noise + yamux) connections, both directions
PENDING = "pending_connections"  # inbound connections still in their handshake
STREAMS = "streams"  # open streams (node/p2p/rpc.py and friends)

SCOPE_KINDS = ("system", "ip", "peer", "conn")
_SYSTEM_KEY = ""


class BudgetExceeded(Exception):
    """A reservation would take a scope past its limit; says which one."""

    def __init__(self, resource: str, scope: str, key: str, limit: int, in_use: int) -> None:
        self.resource, self.scope, self.key, self.limit, self.in_use = resource, scope, key, limit, in_use
        where = scope if scope == "system" else f"{scope} {key}"
        super().__init__(f"{resource} limit of {where} reached ({in_use} of {limit} in use)")


@dataclass(frozen=True)
class Limit:
    """A scope kind's limit on one resource; ``reserved`` applies to ``system`` only."""

    limit: int
    reserved: int = 0


@dataclass
class Reservation:
    """Units of one resource held in a set of scopes until :meth:`release`."""

    budget: ResourceBudget
    resource: str
    amount: int
    scopes: tuple[tuple[str, str], ...]  # (kind, key), system first
    privileged: bool
    released: bool = False

    def release(self) -> None:
        """Give the units back (a second call does nothing)."""
        if not self.released:
            self.released = True
            self.budget._give_back(self)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class _Scope:
    used: Counter[str] = field(default_factory=Counter)
    used_unprivileged: Counter[str] = field(default_factory=Counter)

    def empty(self) -> bool:
        return not +self.used


class ResourceBudget:
    """The books: limits per (scope kind, resource) and what each scope holds.

    Scopes other than ``system`` are created on first use and dropped when
    they hold nothing, so a stream of distinct IPs or peers costs no memory
    once they are gone."""

    def __init__(self) -> None:
        self._limits: dict[tuple[str, str], Limit] = {}
        self._scopes: dict[tuple[str, str], _Scope] = {("system", _SYSTEM_KEY): _Scope()}
        self.refused: Counter[tuple[str, str]] = Counter()  # (resource, scope kind) -> refusals
        self.granted: Counter[str] = Counter()  # resource -> reservations granted

    # -- limits ----------------------------------------------------------------
    def set_limit(self, scope: str, resource: str, limit: int | None, *, reserved: int = 0) -> None:
        """Limit ``resource`` in every scope of kind ``scope`` (None: no limit)."""
        if scope not in SCOPE_KINDS:
            raise ValueError(f"scope kind must be one of {SCOPE_KINDS}, got {scope!r}")
        if limit is None:
            self._limits.pop((scope, resource), None)
            return
        if limit < 0 or not 0 <= reserved <= limit:
            raise ValueError(f"need 0 <= reserved ({reserved}) <= limit ({limit})")
        if reserved and scope != "system":
            raise ValueError("reserved capacity exists only in the system scope")
        self._limits[(scope, resource)] = Limit(limit, reserved)

    def limit(self, scope: str, resource: str) -> Limit | None:
        return self._limits.get((scope, resource))

    # -- reserve / release -----------------------------------------------------
    def check(self, resource: str, amount: int = 1, *, ip: str | None = None, peer: str | None = None,
              conn: str | None = None, privileged: bool = False) -> BudgetExceeded | None:
        """The limit a reservation would break, or None if it would be granted."""
        for kind, key in self._chain(ip=ip, peer=peer, conn=conn):
            limit = self._limits.get((kind, resource))
            if limit is None:
                continue
            scope = self._scopes.get((kind, key))
            used = scope.used[resource] if scope else 0
            if used + amount > limit.limit:
                return BudgetExceeded(resource, kind, key, limit.limit, used)
            if limit.reserved and not privileged:
                open_to_all = limit.limit - limit.reserved
                unprivileged = scope.used_unprivileged[resource] if scope else 0
                if unprivileged + amount > open_to_all:
                    return BudgetExceeded(resource, kind, key, open_to_all, unprivileged)
        return None

    def reserve(self, resource: str, amount: int = 1, *, ip: str | None = None, peer: str | None = None,
                conn: str | None = None, privileged: bool = False) -> Reservation:
        """Hold ``amount`` of ``resource`` in the system scope and each named scope.

        Raises :class:`BudgetExceeded` (and counts the refusal) if any of them
        would pass its limit; then nothing is held."""
        if amount < 0:
            raise ValueError("amount must not be negative")
        refusal = self.check(resource, amount, ip=ip, peer=peer, conn=conn, privileged=privileged)
        if refusal is not None:
            self.refused[(resource, refusal.scope)] += 1
            raise refusal
        chain = tuple(self._chain(ip=ip, peer=peer, conn=conn))
        for scope_id in chain:
            scope = self._scopes.setdefault(scope_id, _Scope())
            scope.used[resource] += amount
            if not privileged:
                scope.used_unprivileged[resource] += amount
        self.granted[resource] += 1
        return Reservation(self, resource, amount, chain, privileged)

    def _give_back(self, reservation: Reservation) -> None:
        for scope_id in reservation.scopes:
            scope = self._scopes.get(scope_id)
            if scope is None:
                continue
            scope.used[reservation.resource] -= reservation.amount
            if not reservation.privileged:
                scope.used_unprivileged[reservation.resource] -= reservation.amount
            if scope_id[0] != "system" and scope.empty():
                del self._scopes[scope_id]

    @staticmethod
    def _chain(*, ip: str | None, peer: str | None, conn: str | None) -> Iterator[tuple[str, str]]:
        yield ("system", _SYSTEM_KEY)
        if ip is not None:
            yield ("ip", ip)
        if peer is not None:
            yield ("peer", peer)
        if conn is not None:
            yield ("conn", conn)

    # -- reports ---------------------------------------------------------------
    def in_use(self, resource: str, *, scope: str = "system", key: str = _SYSTEM_KEY) -> int:
        found = self._scopes.get((scope, key))
        return found.used[resource] if found else 0

    def busiest(self, resource: str, scope: str) -> tuple[str, int] | None:
        """The scope of kind ``scope`` holding the most of ``resource`` (key, amount)."""
        best: tuple[str, int] | None = None
        for (kind, key), held in self._scopes.items():
            if kind == scope and held.used[resource] > (best[1] if best else 0):
                best = (key, held.used[resource])
        return best

    def report(self) -> dict[str, Any]:
        """Per resource: system use and limits, limits of the narrower scopes,
        the busiest of them, and refusals by scope (for node_status and metrics)."""
        resources = sorted({r for _, r in self._limits} | set(self.granted))
        out: dict[str, Any] = {}
        for resource in resources:
            system = self._limits.get(("system", resource))
            entry: dict[str, Any] = {
                "in_use": self.in_use(resource),
                "limit": system.limit if system else None,
            }
            if system and system.reserved:
                entry["reserved"] = system.reserved
                entry["in_use_unprivileged"] = self._scopes[("system", _SYSTEM_KEY)].used_unprivileged[resource]
            for kind in SCOPE_KINDS[1:]:
                narrower = self._limits.get((kind, resource))
                if narrower is not None:
                    entry[f"limit_per_{kind}"] = narrower.limit
                    top = self.busiest(resource, kind)
                    entry[f"busiest_{kind}"] = {"key": top[0], "in_use": top[1]} if top else None
            entry["refused"] = {kind: n for (res, kind), n in sorted(self.refused.items()) if res == resource and n}
            out[resource] = entry
        return out

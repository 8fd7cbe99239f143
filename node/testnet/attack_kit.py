"""What every attack of node/testnet/adversary.py shares: its report, its target, its hold.

An attack opens a bounded number of connections or streams against one node
address (a :class:`Target`), holds them until a deadline or a stop event
(:class:`Hold`), closes everything it opened, and returns an
:class:`AttackReport` of what it saw. Attackers connect from
:func:`attack_sources` (127.0.1.x) so that per-IP limits can tell them from
the honest client on 127.0.0.1.
"""

from __future__ import annotations

import errno
import resource
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.p2p.client import parse_node_addr

#: How long one connect (TCP, or TCP + Noise + yamux) may take before the
#: attacker counts it as "timed out" (the node neither accepted nor refused).
CONNECT_TIMEOUT_S = 5.0
#: Concurrent handshakes the attacker runs at once: its own CPU is shared
#: with the node on a small machine, and a stalled attacker measures nothing.
HANDSHAKE_CONCURRENCY = 32


# -- what an attack saw -----------------------------------------------------------------------
@dataclass
class AttackReport:
    """What one attack observed. Every count is of the attacker's own attempts.

    ``outcomes`` counts what happened to each connection or stream while it
    was held (``held``: still open when the attack ended; ``eof``: the node
    closed it; ``reset``: the node reset it; ``answer <code>``: the node
    answered with a JSON-RPC error of that code, ``answer ok`` with a
    result); ``errors`` counts exceptions the attacker met, by type.
    """

    attack: str
    attempted: int = 0
    opened: int = 0
    refused: int = 0
    timed_out: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    closed_after_s: list[float] = field(default_factory=list)  # open-to-closed-by-node times
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def closed_by_node(self) -> int:
        """Connections or streams the node ended (closed, reset or answered with
        an error) while the attacker still held them."""
        return len(self.closed_after_s)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (counters as plain dicts, close times as quantiles)."""
        doc = asdict(self)
        doc["outcomes"] = dict(self.outcomes)
        doc["errors"] = dict(self.errors)
        doc["closed_by_node"] = self.closed_by_node
        times = sorted(self.closed_after_s)
        doc.pop("closed_after_s")
        doc["closed_after_s_median"] = statistics.median(times) if times else None
        doc["closed_after_s_max"] = times[-1] if times else None
        return doc


@dataclass(frozen=True)
class Target:
    """One node: its multiaddr, TCP endpoint and peer id."""

    address: str
    host: str
    port: int
    peer_info: Any  # libp2p PeerInfo

    @classmethod
    def parse(cls, address: str) -> Target:
        maddr = parse_node_addr(address)
        names = [p.name for p in maddr.protocols()]
        host = maddr.value_for_protocol("ip4") if "ip4" in names else maddr.value_for_protocol("ip6")
        return cls(address, host, int(maddr.value_for_protocol("tcp")), info_from_p2p_addr(maddr))


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the new soft limit.

    The attacker holds thousands of sockets; without this it would run out
    of descriptors long before the node does, and measure itself.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def failure_kind(exc: BaseException) -> str:
    """The innermost cause of ``exc``, named by type (and errno when it has one):
    libp2p wraps a refused connect three layers deep."""
    seen = 0
    while seen < 10:
        inner = exc.__cause__ or exc.__context__
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            inner = exc.exceptions[0]
        if inner is None:
            break
        exc, seen = inner, seen + 1
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}({errno.errorcode.get(exc.errno, exc.errno)})"
    return type(exc).__name__


def attack_sources(count: int = 32) -> list[str]:
    """Loopback source addresses for the attacker: 127.0.1.1, 127.0.1.2, ...

    Linux routes all of 127.0.0.0/8 to the loopback interface, so connections
    from these addresses reach a node listening on 127.0.0.1 as if from
    ``count`` different hosts (a small botnet). The honest client keeps
    127.0.0.1, as a real client keeps its own address: per-IP limits can
    tell the two apart, and the node's total limits must hold against the
    sum of the attacker's addresses.
    """
    return [f"127.0.{1 + i // 254}.{1 + i % 254}" for i in range(count)]


DEFAULT_SOURCES = tuple(attack_sources())


class Hold:
    """The shared end of a hold: a deadline, or ``stop`` set, whichever first."""

    def __init__(self, hold_s: float, stop: trio.Event | None) -> None:
        self.deadline = trio.current_time() + hold_s
        self.stop = stop if stop is not None else trio.Event()

    async def wait(self) -> None:
        with trio.move_on_at(self.deadline):
            await self.stop.wait()

    @property
    def over(self) -> bool:
        return self.stop.is_set() or trio.current_time() >= self.deadline


async def cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def aclose_quietly(closable: Any) -> None:
    try:
        with trio.move_on_after(2):
            await closable.aclose()
    except Exception:
        pass


async def reset_quietly(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:
        pass

"""Attacks that hold connections: silent TCP, and authenticated libp2p connections.

Issue 13's cases 1 and 2: a node must bound the connections a stranger can
hold, whether it never completes a handshake (:func:`silent_tcp`) or
completes it with a fresh identity and then does nothing
(:func:`authenticated_connections`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from node.testnet.attack_hosts import attacker_session
from node.testnet.attack_kit import (
    CONNECT_TIMEOUT_S,
    DEFAULT_SOURCES,
    HANDSHAKE_CONCURRENCY,
    AttackReport,
    Hold,
    Target,
    aclose_quietly,
    cancel_when_set,
    failure_kind,
    raise_fd_limit,
)


# -- 1. silent TCP connections ----------------------------------------------------------------
async def silent_tcp(address: str, count: int, *, hold_s: float, stop: trio.Event | None = None, reopen: bool = True,
                     sources: Sequence[str] = DEFAULT_SOURCES, connect_timeout: float = CONNECT_TIMEOUT_S) -> AttackReport:
    """Hold ``count`` TCP connections to the node's p2p port and send nothing.

    Each of the ``count`` slots connects, holds its connection until the
    hold ends or the node closes it, and (``reopen``) connects again at
    once, as a persistent attacker would: the node's handshake deadline
    frees a slot only for the attacker to take it back. What the node does
    with each connection (keeps, closes, resets, never accepts) is counted.
    """
    raise_fd_limit()
    target = Target.parse(address)
    report = AttackReport("silent_tcp")
    report.extra.update(slots=count, sources=len(sources), held_at_end=0)
    started = trio.current_time()
    hold = Hold(hold_s, stop)

    async def hold_one(source: str) -> bool:
        """One connection; True when the attacker should connect again."""
        report.attempted += 1
        try:
            with trio.fail_after(connect_timeout):
                stream = await trio.open_tcp_stream(target.host, target.port, local_address=source or None)
        except trio.TooSlowError:
            report.timed_out += 1
            return True
        except OSError as exc:
            reason = failure_kind(exc)
            report.refused += "ECONNREFUSED" in reason
            report.errors[f"connect: {reason}"] += 1
            await trio.sleep(0.05)  # a refused attacker retries, but not in a hot loop
            return True
        report.opened += 1
        opened_at = trio.current_time()
        outcome = "held"
        try:
            with trio.move_on_at(hold.deadline):
                async with trio.open_nursery() as watch:
                    watch.start_soon(cancel_when_set, hold.stop, watch.cancel_scope)
                    try:
                        while data := await stream.receive_some(65536):
                            report.extra["bytes_from_node"] = report.extra.get("bytes_from_node", 0) + len(data)
                        outcome = "eof"
                    except (trio.BrokenResourceError, OSError):
                        outcome = "reset"
                    watch.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await aclose_quietly(stream)
        report.outcomes[outcome] += 1
        if outcome == "held":
            report.extra["held_at_end"] += 1
            return False
        report.closed_after_s.append(trio.current_time() - opened_at)
        return True

    async def slot(index: int) -> None:
        source = sources[index % len(sources)] if sources else ""
        while await hold_one(source) and reopen and not hold.over:
            pass

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(slot, index)
            await trio.sleep(0)  # let each connect start: a burst, not one giant gather
    report.seconds = trio.current_time() - started
    return report


async def wait_closed(conn: Any, hold: Hold) -> bool:
    """Wait until ``conn`` closes (True) or the hold ends (False)."""
    if conn is None or getattr(conn, "is_closed", False):
        return True
    with trio.move_on_at(hold.deadline):
        async with trio.open_nursery() as inner:
            inner.start_soon(cancel_when_set, hold.stop, inner.cancel_scope)
            await conn.event_closed.wait()
            inner.cancel_scope.cancel()
            return True
    return False


# -- 2. authenticated connections -------------------------------------------------------------
async def authenticated_connections(address: str, count: int, *, hold_s: float, stop: trio.Event | None = None,
                                    reopen: bool = True, sources: Sequence[str] = DEFAULT_SOURCES,
                                    connect_timeout: float = CONNECT_TIMEOUT_S) -> AttackReport:
    """Hold ``count`` Noise-authenticated libp2p connections, each from a fresh
    identity, answering the node's pings and otherwise doing nothing. A slot
    whose connection the node refuses or closes connects again (``reopen``)
    with another fresh identity until the hold ends."""
    raise_fd_limit()
    target = Target.parse(address)
    report = AttackReport("authenticated_connections")
    report.extra.update(slots=count, sources=len(sources), held_at_end=0)
    started = trio.current_time()
    hold = Hold(hold_s, stop)
    limiter = trio.CapacityLimiter(HANDSHAKE_CONCURRENCY)

    async def slot(index: int) -> None:
        source = sources[index % len(sources)] if sources else ""
        while not hold.over:
            async with attacker_session(target, source, report, limiter, connect_timeout) as attacker:
                if attacker is None:
                    await trio.sleep(0.1)  # refused: try again, not in a hot loop
                else:
                    opened_at = trio.current_time()
                    if await wait_closed(attacker.connection, hold):
                        report.outcomes["closed"] += 1
                        report.closed_after_s.append(trio.current_time() - opened_at)
                    else:
                        report.outcomes["held"] += 1
                        report.extra["held_at_end"] += 1
            if not reopen:
                return

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(slot, index)
    report.seconds = trio.current_time() - started
    return report

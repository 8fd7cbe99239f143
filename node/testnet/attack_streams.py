"""Attacks that hold RPC streams: idle streams and slowloris (issue 13, cases 3 and 4).

Many streams on few connections, each sending nothing or half a frame: the
node must bound the streams a connection holds and time out a frame that
never completes. :func:`watch_stream` (also used by attack_rpc.py) counts
how the node ended each stream.
"""

from __future__ import annotations

import json
import math
from typing import Any

import trio
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from node.p2p.framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameError, encode_uvarint
from node.testnet.attack_hosts import Attacker, connected_attackers
from node.testnet.attack_kit import (
    CONNECT_TIMEOUT_S,
    AttackReport,
    Hold,
    Target,
    cancel_when_set,
    failure_kind,
    reset_quietly,
)


def classify_frame(frame: bytes) -> str:
    try:
        message = json.loads(frame)
    except ValueError:
        return "answer unparseable"
    items = message if isinstance(message, list) else [message]
    codes = sorted({str(i["error"].get("code")) for i in items if isinstance(i, dict) and isinstance(i.get("error"), dict)})
    return f"answer {','.join(codes)}" if codes else "answer ok"


async def watch_stream(stream: Any, hold: Hold, report: AttackReport, max_frame: int) -> None:
    """Read what the node sends on ``stream`` until the hold ends; count the
    first thing that ends it (a complete frame, EOF, reset)."""
    opened_at = trio.current_time()
    decoder = FrameDecoder(max_frame)
    outcome = "held"
    with trio.move_on_at(hold.deadline):
        async with trio.open_nursery() as inner:
            inner.start_soon(cancel_when_set, hold.stop, inner.cancel_scope)
            try:
                while True:
                    chunk = await stream.read(65536)
                    if not chunk:
                        outcome = "eof"
                        break
                    frames = decoder.feed(chunk)
                    if frames:
                        outcome = classify_frame(frames[0])
                        break
            except StreamEOF:
                outcome = "eof"
            except StreamReset:
                outcome = "reset"
            except FrameError:
                outcome = "answer bad framing"
            except Exception as exc:
                outcome = f"error {failure_kind(exc)}"
            inner.cancel_scope.cancel()
    report.outcomes[outcome] += 1
    if outcome != "held":
        report.closed_after_s.append(trio.current_time() - opened_at)


async def hold_streams(address: str, count: int, *, per_connection: int, hold_s: float, first_bytes: bytes = b"",
                       stop: trio.Event | None = None, name: str = "idle_streams",
                       max_frame: int = DEFAULT_MAX_FRAME, connect_timeout: float = CONNECT_TIMEOUT_S) -> AttackReport:
    """Open ``count`` RPC streams, ``per_connection`` on each connection (one
    fresh identity per connection), send ``first_bytes`` on each (nothing: an
    idle stream; half a frame: slowloris) and then nothing; hold them.

    Counts how many streams opened, and whether the node answered (an error
    frame), closed or reset each one before the hold ended.
    """
    target = Target.parse(address)
    connections = max(1, math.ceil(count / per_connection))
    report = AttackReport(name, attempted=count)
    report.extra["connections"] = connections
    started = trio.current_time()
    conn_report = AttackReport("connections")
    async with connected_attackers(target, connections, conn_report, connect_timeout=connect_timeout) as attackers:
        report.extra["connections_opened"] = conn_report.opened
        report.errors.update(conn_report.errors)
        hold = Hold(hold_s, stop)
        opened_streams: list[Any] = []
        limiter = trio.CapacityLimiter(64)  # stream negotiations in flight per attack

        async def one(attacker: Attacker) -> None:
            try:
                async with limiter:
                    if hold.over:
                        return
                    with trio.fail_after(connect_timeout):
                        stream = await attacker.open_stream()
                        if first_bytes:
                            await stream.write(first_bytes)
            except trio.TooSlowError:
                report.timed_out += 1
                return
            except Exception as exc:
                report.refused += 1
                report.errors[f"open: {failure_kind(exc)}"] += 1
                return
            report.opened += 1
            opened_streams.append(stream)
            try:
                await watch_stream(stream, hold, report, max_frame)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await reset_quietly(stream)

        async with trio.open_nursery() as nursery:
            for i in range(count):
                if attackers:
                    nursery.start_soon(one, attackers[i % len(attackers)])
            for attacker in attackers:
                attacker.allow_many_streams()
        report.extra["streams_per_connection_opened"] = report.opened / max(1, len(attackers))
    report.attempted = count if attackers else 0
    report.seconds = trio.current_time() - started
    return report


async def idle_streams(address: str, count: int, *, per_connection: int = 1000, hold_s: float,
                       stop: trio.Event | None = None) -> AttackReport:
    """Streams that open and send nothing (issue 13, case 4)."""
    return await hold_streams(address, count, per_connection=per_connection, hold_s=hold_s, stop=stop, name="idle_streams")


def half_frame(claimed: int = 1000) -> bytes:
    """A frame header claiming ``claimed`` bytes, then a tenth of them: the node
    waits for the rest, which never comes."""
    body = b'{"jsonrpc":"2.0","method":"node_status","id":1}'.ljust(claimed, b" ")
    return encode_uvarint(claimed) + body[: claimed // 10]


async def slowloris(address: str, count: int, *, per_connection: int = 100, hold_s: float,
                    stop: trio.Event | None = None) -> AttackReport:
    """Streams that send half a frame and then fall silent."""
    return await hold_streams(address, count, per_connection=per_connection, hold_s=hold_s, stop=stop,
                              first_bytes=half_frame(), name="slowloris")

"""Attacks through what is said on an RPC stream: garbage, batch floods, vanishing subscribers.

Issue 13's cases 5 to 7: bad frames must be refused without harm to the
connection's other streams, a batch must count as its calls against the
rate limit, and a subscriber that vanishes mid-notification must not stop
the node.
"""

from __future__ import annotations

import json
import random

import trio
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from node.p2p.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame, encode_uvarint
from node.testnet.attack_hosts import Attacker, connected_attackers
from node.testnet.attack_kit import (
    CONNECT_TIMEOUT_S,
    DEFAULT_SOURCES,
    AttackReport,
    Hold,
    Target,
    aclose_quietly,
    failure_kind,
    reset_quietly,
)
from node.testnet.attack_streams import half_frame, watch_stream

# -- 5. garbage and oversize frames -----------------------------------------------------------
GARBAGE_KINDS = ("not_json", "not_a_request", "bad_varint", "oversize", "truncated", "pre_handshake")


def _garbage(kind: str, rng: random.Random, max_frame: int) -> bytes:
    if kind == "not_json":
        return encode_frame(rng.randbytes(200), max_frame)
    if kind == "not_a_request":
        return encode_frame(b'[1, "two", {"three": 3}, null]', max_frame)
    if kind == "bad_varint":
        return b"\xff" * 8
    if kind == "truncated":
        return half_frame(500)
    raise ValueError(kind)


async def garbage_frames(address: str, count: int, *, max_frame: int = DEFAULT_MAX_FRAME, seed: int = 13,
                         answer_timeout: float = 10.0, stop: trio.Event | None = None) -> AttackReport:
    """Send ``count`` bad inputs, cycling through :data:`GARBAGE_KINDS`, each on
    a fresh RPC stream of one authenticated connection (``pre_handshake``:
    random bytes on a fresh TCP connection instead). ``oversize`` is a frame
    whose length prefix claims ``max_frame + 1`` bytes, followed by as much of
    that payload as the node will take. ``truncated`` sends half a frame and
    closes its side. Outcomes are counted as ``<kind>: <outcome>``.
    """
    target = Target.parse(address)
    rng = random.Random(seed)
    report = AttackReport("garbage_frames", attempted=count)
    started = trio.current_time()
    conn_report = AttackReport("connections")
    async with connected_attackers(target, 1, conn_report, connect_timeout=CONNECT_TIMEOUT_S) as attackers:
        report.errors.update(conn_report.errors)
        for i in range(count):
            if stop is not None and stop.is_set():
                break
            kind = GARBAGE_KINDS[i % len(GARBAGE_KINDS)]
            if kind == "pre_handshake":
                outcome = await _garbage_tcp(target, rng, answer_timeout)
            elif not attackers:
                outcome = "no connection"
            else:
                outcome = await _garbage_stream(attackers[0], kind, rng, max_frame, answer_timeout)
            report.outcomes[f"{kind}: {outcome}"] += 1
            report.opened += outcome != "no connection"
        report.extra["connection_survived"] = bool(attackers) and attackers[0].connection is not None \
            and not getattr(attackers[0].connection, "is_closed", True)
    report.seconds = trio.current_time() - started
    return report


async def _garbage_stream(attacker: Attacker, kind: str, rng: random.Random, max_frame: int, timeout: float) -> str:
    try:
        with trio.fail_after(timeout):
            stream = await attacker.open_stream()
    except Exception as exc:
        return f"open failed {failure_kind(exc)}"
    hold = Hold(timeout, None)
    report = AttackReport(kind)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_stream, stream, hold, report, max_frame)
            try:
                if kind == "oversize":
                    await stream.write(encode_uvarint(max_frame + 1))
                    left, chunk = max_frame + 1, rng.randbytes(64 * 1024)
                    while left > 0 and not report.outcomes:
                        await stream.write(chunk[: min(left, len(chunk))])
                        left -= len(chunk)
                else:
                    await stream.write(_garbage(kind, rng, max_frame))
                    if kind == "truncated":
                        await stream.close()  # our side ends mid-frame
            except Exception:
                pass  # the node reset the stream under our write: its answer is counted by the watcher
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await reset_quietly(stream)
    (outcome,) = report.outcomes or {"no answer": 1}
    return "no answer" if outcome == "held" else outcome


async def _garbage_tcp(target: Target, rng: random.Random, timeout: float) -> str:
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(target.host, target.port, local_address=DEFAULT_SOURCES[0])
    except Exception as exc:
        return f"connect failed {failure_kind(exc)}"
    try:
        with trio.move_on_after(timeout):
            try:
                await stream.send_all(rng.randbytes(4096))
                while await stream.receive_some(65536):
                    pass
                return "eof"
            except (trio.BrokenResourceError, OSError):
                return "reset"
        return "held"
    finally:
        await aclose_quietly(stream)


# -- 6. batch floods --------------------------------------------------------------------------
async def batch_flood(address: str, frames: int, *, batch_size: int = 100, method: str = "chain_head",
                      answer_timeout: float = 20.0, stop: trio.Event | None = None) -> AttackReport:
    """Send ``frames`` JSON-RPC batches of ``batch_size`` calls, pipelined on one
    stream of one fresh identity; count every call's answer (``ok`` or its
    error code) and the calls never answered. A limiter that counts frames
    rather than calls lets ``frames * batch_size`` calls through."""
    target = Target.parse(address)
    report = AttackReport("batch_flood", attempted=frames * batch_size)
    report.extra["frames"] = frames
    started = trio.current_time()
    conn_report = AttackReport("connections")
    async with connected_attackers(target, 1, conn_report, connect_timeout=CONNECT_TIMEOUT_S) as attackers:
        report.errors.update(conn_report.errors)
        if not attackers:
            report.outcomes["no connection"] += 1
            return report
        try:
            stream = await attackers[0].open_stream()
        except Exception as exc:
            report.errors[f"open: {failure_kind(exc)}"] += 1
            return report
        report.opened = 1
        answered = 0
        decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        ids = iter(range(1, frames * batch_size + 1))

        async def write_all() -> None:
            for _ in range(frames):
                if stop is not None and stop.is_set():
                    return
                batch = [{"jsonrpc": "2.0", "method": method, "id": next(ids)} for _ in range(batch_size)]
                await stream.write(encode_frame(json.dumps(batch).encode()))

        try:
            with trio.move_on_after(answer_timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write_all)
                    while answered < frames * batch_size:
                        chunk = await stream.read(65536)
                        if not chunk:
                            report.extra["ended"] = "eof"
                            break
                        for frame in decoder.feed(chunk):
                            message = json.loads(frame)
                            for item in message if isinstance(message, list) else [message]:
                                answered += 1
                                error = item.get("error") if isinstance(item, dict) else None
                                report.outcomes[f"error {error.get('code')}" if isinstance(error, dict) else "ok"] += 1
                    nursery.cancel_scope.cancel()
        except StreamReset:
            report.extra["ended"] = "reset"
        except StreamEOF:
            report.extra["ended"] = "eof"
        except Exception as exc:
            report.errors[failure_kind(exc)] += 1
        report.extra["unanswered_calls"] = frames * batch_size - answered
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await reset_quietly(stream)
    report.seconds = trio.current_time() - started
    return report


# -- 7. vanishing subscribers -----------------------------------------------------------------
async def vanishing_subscribers(address: str, count: int, *, block_period_s: float = 0.5, notify_timeout: float = 10.0,
                                stop: trio.Event | None = None, seed: int = 13) -> AttackReport:
    """``count`` subscribers, each on its own fresh-identity connection:
    ``chain_subscribe``, wait for the first ``chain_newBlock``, wait a random
    part of a block period (so the next notification is about to be written),
    then vanish: half reset the stream, half drop the whole connection.
    The node must go on (issue 13, case 5: a StreamReset on that write
    stopped a daemon)."""
    target = Target.parse(address)
    rng = random.Random(seed)
    report = AttackReport("vanishing_subscribers", attempted=count)
    started = trio.current_time()
    conn_report = AttackReport("connections")
    async with connected_attackers(target, count, conn_report, connect_timeout=CONNECT_TIMEOUT_S) as attackers:
        report.errors.update(conn_report.errors)
        report.refused = conn_report.refused + conn_report.timed_out

        async def one(index: int, attacker: Attacker) -> None:
            if stop is not None and stop.is_set():
                return
            try:
                with trio.fail_after(notify_timeout):
                    stream = await attacker.open_stream()
                    request = {"jsonrpc": "2.0", "method": "chain_subscribe", "id": 1}
                    await stream.write(encode_frame(json.dumps(request).encode()))
                    decoder, seen = FrameDecoder(DEFAULT_MAX_FRAME), 0
                    while seen < 2:  # the subscription's answer, then one block notification
                        chunk = await stream.read(65536)
                        if not chunk:
                            raise StreamEOF("closed before a notification")
                        seen += len(decoder.feed(chunk))
            except Exception as exc:
                report.errors[f"subscribe: {failure_kind(exc)}"] += 1
                return
            report.opened += 1
            await trio.sleep(rng.uniform(0.6, 1.0) * block_period_s)
            if index % 2 == 0:
                await reset_quietly(stream)
                report.outcomes["vanished: stream reset"] += 1
            else:
                try:
                    await attacker.host.disconnect(target.peer_info.peer_id)
                except Exception as exc:
                    report.errors[f"disconnect: {failure_kind(exc)}"] += 1
                report.outcomes["vanished: connection dropped"] += 1

        async with trio.open_nursery() as nursery:
            for index, attacker in enumerate(attackers):
                nursery.start_soon(one, index, attacker)
    report.seconds = trio.current_time() - started
    return report

"""A bounded attacker for one node, and the gauges to watch the node with.

Issue 13 asks for a node that treats every stranger as hostile. This module
is the stranger: each primitive below opens a bounded number of
connections or streams against one node address, holds them for a given
time (or until ``stop`` is set), closes everything it opened, and returns an
:class:`AttackReport` of what it saw (accepted, refused, closed by the node,
answers by error code). The process-level test (tests/test_adversary.py) and
the benchmark (bench/adversary.py) share it, so the attack measured is the
attack tested.

Loopback only, by construction of its callers: every primitive takes the
address of a node of a local testnet. Nothing here patches the node; the
attacks are bytes on real sockets, as a hostile client would send them.

The gauges (:func:`sample_process`, :func:`chain_height`) read the node from
outside: /proc for descriptors, RSS and threads, JSON-RPC for the height.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import resource
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.base.keys import Identity
from node.p2p.client import call_node, parse_node_addr
from node.p2p.framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameError, encode_frame, encode_uvarint
from node.p2p.host import build_host, running_host
from node.p2p.peers import PING_PROTOCOL, answer_pings
from node.p2p.rpc import RPC_PROTOCOL

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


def _kind(exc: BaseException) -> str:
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


class _Hold:
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
    hold = _Hold(hold_s, stop)

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
            reason = _kind(exc)
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
                    watch.start_soon(_cancel_when_set, hold.stop, watch.cancel_scope)
                    try:
                        while data := await stream.receive_some(65536):
                            report.extra["bytes_from_node"] = report.extra.get("bytes_from_node", 0) + len(data)
                        outcome = "eof"
                    except (trio.BrokenResourceError, OSError):
                        outcome = "reset"
                    watch.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await _aclose_quietly(stream)
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


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _aclose_quietly(closable: Any) -> None:
    try:
        with trio.move_on_after(2):
            await closable.aclose()
    except Exception:
        pass


# -- libp2p attackers: one fresh identity per connection --------------------------------------
class _Attacker:
    """One libp2p host with a fresh identity, connected (or not) to the target."""

    def __init__(self, target: Target, source: str = "") -> None:
        self.target = target
        self.source = source
        self.host = build_host(Identity.generate(), max_connections=4)
        # A real client answers the node's keepalive pings, so the attack is not
        # dropped for being dead: it is dropped only if the node's limits drop it.
        self.host.set_stream_handler(PING_PROTOCOL, answer_pings)

    @property
    def connection(self) -> Any:
        conns = self.host.get_network().connections.get(self.target.peer_info.peer_id, [])
        return conns[0] if conns else None

    async def connect(self, timeout: float) -> None:
        """Dial (from ``source`` when given: libp2p's own source-bound dial) and
        run Noise + yamux; raises what the dial raised."""
        peer = self.target.peer_info
        with trio.fail_after(timeout):
            if self.source:
                await self.host.get_network().dial_addr(peer.addrs[0], peer.peer_id, source=(self.source, 0))
            else:
                await self.host.connect(peer)

    async def open_stream(self, protocol: str = RPC_PROTOCOL) -> Any:
        return await self.host.new_stream(self.target.peer_info.peer_id, [TProtocol(protocol)])

    def allow_many_streams(self) -> None:
        """Lift the *attacker's own* yamux cap of 256 outbound streams per
        connection: a hostile client is not bound by our client library."""
        muxed = getattr(self.connection, "muxed_conn", None)
        if muxed is not None and hasattr(muxed, "stream_backlog_semaphore"):
            muxed.stream_backlog_limit = 1_000_000
            muxed.stream_backlog_semaphore = trio.Semaphore(1_000_000)


@asynccontextmanager
async def _session(target: Target, source: str, report: AttackReport, limiter: trio.CapacityLimiter,
                   connect_timeout: float) -> AsyncIterator[_Attacker | None]:
    """A fresh-identity host connected to the target (None when the node did not
    take the connection; counted in ``report``); closed on exit, bounded."""
    attacker = _Attacker(target, source)
    async with running_host(attacker.host, []):
        report.attempted += 1
        connected = False
        try:
            async with limiter:
                await attacker.connect(connect_timeout)
            connected = True
            report.opened += 1
        except trio.TooSlowError:
            report.timed_out += 1
        except Exception as exc:
            report.refused += 1
            report.errors[f"connect: {_kind(exc)}"] += 1
        yield attacker if connected else None


@asynccontextmanager
async def _attackers(target: Target, count: int, report: AttackReport, *, sources: Sequence[str] = DEFAULT_SOURCES,
                     connect_timeout: float = CONNECT_TIMEOUT_S) -> AsyncIterator[list[_Attacker]]:
    """``count`` fresh-identity hosts, each connected to the target (those that
    could be); all closed on exit. Connect outcomes go into ``report``."""
    raise_fd_limit()
    connected: list[_Attacker] = []
    limiter = trio.CapacityLimiter(HANDSHAKE_CONCURRENCY)
    release = trio.Event()

    async def run_one(index: int, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        source = sources[index % len(sources)] if sources else ""
        async with _session(target, source, report, limiter, connect_timeout) as attacker:
            if attacker is not None:
                connected.append(attacker)
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starting:
            for index in range(count):
                starting.start_soon(nursery.start, run_one, index)
        try:
            yield connected
        finally:
            release.set()  # each host closes through running_host (bounded)


async def _wait_closed(conn: Any, hold: _Hold) -> bool:
    """Wait until ``conn`` closes (True) or the hold ends (False)."""
    if conn is None or getattr(conn, "is_closed", False):
        return True
    with trio.move_on_at(hold.deadline):
        async with trio.open_nursery() as inner:
            inner.start_soon(_cancel_when_set, hold.stop, inner.cancel_scope)
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
    hold = _Hold(hold_s, stop)
    limiter = trio.CapacityLimiter(HANDSHAKE_CONCURRENCY)

    async def slot(index: int) -> None:
        source = sources[index % len(sources)] if sources else ""
        while not hold.over:
            async with _session(target, source, report, limiter, connect_timeout) as attacker:
                if attacker is None:
                    await trio.sleep(0.1)  # refused: try again, not in a hot loop
                else:
                    opened_at = trio.current_time()
                    if await _wait_closed(attacker.connection, hold):
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


# -- 3 and 4. idle and slowloris streams ------------------------------------------------------
def _classify_frame(frame: bytes) -> str:
    try:
        message = json.loads(frame)
    except ValueError:
        return "answer unparseable"
    items = message if isinstance(message, list) else [message]
    codes = sorted({str(i["error"].get("code")) for i in items if isinstance(i, dict) and isinstance(i.get("error"), dict)})
    return f"answer {','.join(codes)}" if codes else "answer ok"


async def _watch_stream(stream: Any, hold: _Hold, report: AttackReport, max_frame: int) -> None:
    """Read what the node sends on ``stream`` until the hold ends; count the
    first thing that ends it (a complete frame, EOF, reset)."""
    opened_at = trio.current_time()
    decoder = FrameDecoder(max_frame)
    outcome = "held"
    with trio.move_on_at(hold.deadline):
        async with trio.open_nursery() as inner:
            inner.start_soon(_cancel_when_set, hold.stop, inner.cancel_scope)
            try:
                while True:
                    chunk = await stream.read(65536)
                    if not chunk:
                        outcome = "eof"
                        break
                    frames = decoder.feed(chunk)
                    if frames:
                        outcome = _classify_frame(frames[0])
                        break
            except StreamEOF:
                outcome = "eof"
            except StreamReset:
                outcome = "reset"
            except FrameError:
                outcome = "answer bad framing"
            except Exception as exc:
                outcome = f"error {_kind(exc)}"
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
    async with _attackers(target, connections, conn_report, connect_timeout=connect_timeout) as attackers:
        report.extra["connections_opened"] = conn_report.opened
        report.errors.update(conn_report.errors)
        hold = _Hold(hold_s, stop)
        opened_streams: list[Any] = []
        limiter = trio.CapacityLimiter(64)  # stream negotiations in flight per attack

        async def one(attacker: _Attacker) -> None:
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
                report.errors[f"open: {_kind(exc)}"] += 1
                return
            report.opened += 1
            opened_streams.append(stream)
            try:
                await _watch_stream(stream, hold, report, max_frame)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await _reset_quietly(stream)

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


async def _reset_quietly(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:
        pass


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
    async with _attackers(target, 1, conn_report, connect_timeout=CONNECT_TIMEOUT_S) as attackers:
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


async def _garbage_stream(attacker: _Attacker, kind: str, rng: random.Random, max_frame: int, timeout: float) -> str:
    try:
        with trio.fail_after(timeout):
            stream = await attacker.open_stream()
    except Exception as exc:
        return f"open failed {_kind(exc)}"
    hold = _Hold(timeout, None)
    report = AttackReport(kind)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_stream, stream, hold, report, max_frame)
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
            await _reset_quietly(stream)
    (outcome,) = report.outcomes or {"no answer": 1}
    return "no answer" if outcome == "held" else outcome


async def _garbage_tcp(target: Target, rng: random.Random, timeout: float) -> str:
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(target.host, target.port, local_address=DEFAULT_SOURCES[0])
    except Exception as exc:
        return f"connect failed {_kind(exc)}"
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
        await _aclose_quietly(stream)


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
    async with _attackers(target, 1, conn_report, connect_timeout=CONNECT_TIMEOUT_S) as attackers:
        report.errors.update(conn_report.errors)
        if not attackers:
            report.outcomes["no connection"] += 1
            return report
        try:
            stream = await attackers[0].open_stream()
        except Exception as exc:
            report.errors[f"open: {_kind(exc)}"] += 1
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
            report.errors[_kind(exc)] += 1
        report.extra["unanswered_calls"] = frames * batch_size - answered
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await _reset_quietly(stream)
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
    async with _attackers(target, count, conn_report, connect_timeout=CONNECT_TIMEOUT_S) as attackers:
        report.errors.update(conn_report.errors)
        report.refused = conn_report.refused + conn_report.timed_out

        async def one(index: int, attacker: _Attacker) -> None:
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
                report.errors[f"subscribe: {_kind(exc)}"] += 1
                return
            report.opened += 1
            await trio.sleep(rng.uniform(0.6, 1.0) * block_period_s)
            if index % 2 == 0:
                await _reset_quietly(stream)
                report.outcomes["vanished: stream reset"] += 1
            else:
                try:
                    await attacker.host.disconnect(target.peer_info.peer_id)
                except Exception as exc:
                    report.errors[f"disconnect: {_kind(exc)}"] += 1
                report.outcomes["vanished: connection dropped"] += 1

        async with trio.open_nursery() as nursery:
            for index, attacker in enumerate(attackers):
                nursery.start_soon(one, index, attacker)
    report.seconds = trio.current_time() - started
    return report


# -- the gauges -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessSample:
    """One look at a node's process from outside (/proc)."""

    pid: int
    alive: bool
    fds: int = 0
    rss_kb: int = 0
    threads: int = 0


def sample_process(pid: int) -> ProcessSample:
    """Descriptors, resident memory and threads of ``pid``; ``alive`` False
    (and zeros) when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        if status.get("State", "").strip().startswith("Z"):
            return ProcessSample(pid, False)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return ProcessSample(pid, False)
    return ProcessSample(pid, True, fds=fds, rss_kb=int(status["VmRSS"].split()[0]),
                         threads=int(status["Threads"].strip()))


async def chain_height(address: str, *, timeout: float = 5.0) -> int:
    """The node's committed height, over JSON-RPC."""
    head = await call_node(address, "chain_head", timeout=timeout)
    return int(head["height"])


async def timed_call(address: str, method: str = "node_status", *, timeout: float = 2.0) -> float:
    """One honest call on a fresh connection, as ``metanode rpc`` makes it;
    returns its latency in seconds (raises what the call raised)."""
    started = trio.current_time()
    await call_node(address, method, timeout=timeout)
    return trio.current_time() - started


# -- a registry the bench and the test share --------------------------------------------------
AttackFn = Callable[[str, trio.Event], Awaitable[AttackReport]]


@dataclass(frozen=True)
class Scale:
    """How hard each attack pushes. :data:`ISSUE_SCALE` is issue 13's
    acceptance load; benches shrink it for smoke runs."""

    silent_tcp: int = 2000
    authenticated: int = 300
    idle_streams: int = 3000
    idle_per_connection: int = 1000
    slowloris: int = 300
    slowloris_per_connection: int = 100
    garbage: int = 60
    batch_frames: int = 40
    subscribers: int = 40
    max_frame: int = DEFAULT_MAX_FRAME


ISSUE_SCALE = Scale()


def attacks(scale: Scale, hold_s: float) -> dict[str, AttackFn]:
    """Every attack at ``scale``, each held ``hold_s`` (or until its stop event)."""
    return {
        "silent_tcp": lambda a, s: silent_tcp(a, scale.silent_tcp, hold_s=hold_s, stop=s),
        "authenticated": lambda a, s: authenticated_connections(a, scale.authenticated, hold_s=hold_s, stop=s),
        "idle_streams": lambda a, s: idle_streams(a, scale.idle_streams, per_connection=scale.idle_per_connection,
                                                  hold_s=hold_s, stop=s),
        "slowloris": lambda a, s: slowloris(a, scale.slowloris, per_connection=scale.slowloris_per_connection,
                                            hold_s=hold_s, stop=s),
        "garbage": lambda a, s: garbage_frames(a, scale.garbage, max_frame=scale.max_frame, stop=s),
        "batch_flood": lambda a, s: batch_flood(a, scale.batch_frames, stop=s),
        "vanishing_subscribers": lambda a, s: vanishing_subscribers(a, scale.subscribers, stop=s),
    }


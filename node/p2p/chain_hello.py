"""The chain handshake: two nodes on different genesis files refuse to peer, saying what differs.

Every block, vote and transaction is signed over its chain id and genesis
hash, so a node on another genesis can never corrupt our chain; but without
this handshake it would stay connected, gossip at us and sync from us,
every message refused one by one, and the operator would see only "invalid
message" counters. Here each side says which chain it runs as soon as a
connection is up, and a peer that answers with another genesis is told
nothing more: one warning naming the peer and the keys that differ, the
connection closed, and none of its consensus streams let in.

The protocol (``/metanode/chain-hello/1.0.0``, docs/genesis.md "The chain
handshake" gives it byte by byte): when a connection is up, each side opens
one stream and writes one frame, its :class:`ChainIdentity`; the other side
answers on that stream with one frame, its own, and both close it. Either
frame is enough for the side that reads it to decide. Peers that do not
speak the protocol (the CLI's light dialer, a node without a genesis) are
not refused: they answer the protocol negotiation with "na", and only a
peer that *answers with a different identity* is refused. A peer that
speaks the protocol but says nothing within :data:`HELLO_TIMEOUT_S` is not
refused either (it is not misconfigured, it is slow or hostile; signatures
still keep its messages out of our chain).

Budget: one frame of at most :data:`MAX_HELLO_BYTES` each way, one stream
per connection each way, every step under :data:`HELLO_TIMEOUT_S`; the
verdicts are kept per connection in a weak map (they go with the
connection), and the "already warned" memory is an LRU of
:data:`WARNED_PEERS` peers. A refused persistent peer is redialled by
node/p2p/peers.py with its capped backoff (a connection that dies at once
counts as a flap), so it is not redialled in a hot loop, and the warning is
not repeated on each redial.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
import trio
from libp2p.custom_types import TProtocol
from libp2p.protocol_muxer.exceptions import MultiselectClientError

from node.base.codec import CodecError, decode, encode
from node.p2p.framing import FramedStream, FrameError
from node.p2p.notifee import ChannelNotifee

CHAIN_HELLO_PROTOCOL = TProtocol("/metanode/chain-hello/1.0.0")
HELLO_TAG = "metanode/chain-hello/v1"
MAX_HELLO_BYTES = 16 * 1024
MAX_SUMMARY_ENTRIES = 256
MAX_SUMMARY_KEY = 128
HELLO_TIMEOUT_S = 5.0
WARNED_PEERS = 1024
MAX_DIFFERENCES_SHOWN = 8

log = structlog.get_logger("metanode.chain_hello")

Leaf = int | str | list[Any]  # a scalar, or [item count, SHA-256 of the CBOR of the list or bytes]


class HelloError(ValueError):
    """A chain hello frame that does not follow the format."""


def summarize(value: Mapping[str, Any], prefix: str = "") -> dict[str, Leaf]:
    """The genesis value as a flat map the handshake can carry and compare:
    nested maps become dotted keys (``rules.max_attempts``), integers and
    text stay as they are, and lists and byte strings (validators, admitted
    keys) become ``[count, SHA-256 of their deterministic CBOR]``, so the
    frame stays small however many keys a genesis names."""
    flat: dict[str, Leaf] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            flat.update(summarize(item, f"{name}."))
        elif isinstance(item, (list, tuple, bytes, bytearray)):
            flat[name] = [len(item), hashlib.sha256(encode(list(item) if isinstance(item, tuple) else item)).digest()]
        elif isinstance(item, (int, str)) and not isinstance(item, bool):
            flat[name] = item
        else:
            raise TypeError(f"genesis value {name}: cannot summarize a {type(item).__name__}")
    return flat


@dataclass(frozen=True)
class ChainIdentity:
    """Which chain a node runs: its chain id, genesis hash and a summary of its genesis value."""

    chain_id: str
    genesis_hash: bytes
    summary: Mapping[str, Leaf]

    @classmethod
    def of(cls, chain_id: str, genesis_hash: bytes, genesis_value: Mapping[str, Any]) -> ChainIdentity:
        """The identity of a genesis from its value (every optional table spelled out, so the
        differences name values rather than absences: ``Genesis.full_value()``)."""
        return cls(chain_id, genesis_hash, summarize(genesis_value))

    def encode(self) -> bytes:
        """The frame payload: ``[HELLO_TAG, chain_id, genesis_hash, summary]`` in deterministic CBOR."""
        return encode([HELLO_TAG, self.chain_id, self.genesis_hash, dict(self.summary)])

    @classmethod
    def decode(cls, data: bytes) -> ChainIdentity:
        """Parse a peer's frame; HelloError names what is wrong."""
        try:
            value = decode(data, max_size=MAX_HELLO_BYTES)
        except CodecError as exc:
            raise HelloError(f"not deterministic CBOR: {exc}") from None
        if not (isinstance(value, list) and len(value) == 4 and value[0] == HELLO_TAG):
            raise HelloError(f"expected [{HELLO_TAG!r}, chain_id, genesis_hash, summary]")
        _, chain_id, genesis_hash, summary = value
        if not isinstance(chain_id, str) or not 1 <= len(chain_id) <= 64:
            raise HelloError("chain_id: expected 1-64 characters of text")
        if not isinstance(genesis_hash, bytes) or len(genesis_hash) != 32:
            raise HelloError("genesis_hash: expected 32 bytes")
        if not isinstance(summary, dict) or len(summary) > MAX_SUMMARY_ENTRIES:
            raise HelloError(f"summary: expected a map of at most {MAX_SUMMARY_ENTRIES} entries")
        for key, leaf in summary.items():
            if not 1 <= len(key) <= MAX_SUMMARY_KEY or not _is_leaf(leaf):
                raise HelloError(f"summary[{key[:40]!r}]: expected an integer, text or [count, 32-byte hash]")
        return cls(chain_id, genesis_hash, summary)


def _is_leaf(leaf: Any) -> bool:
    if isinstance(leaf, bool):
        return False
    if isinstance(leaf, int):
        return True
    if isinstance(leaf, str):
        return len(leaf) <= MAX_SUMMARY_KEY
    return (isinstance(leaf, list) and len(leaf) == 2 and isinstance(leaf[0], int) and not isinstance(leaf[0], bool)
            and leaf[0] >= 0 and isinstance(leaf[1], bytes) and len(leaf[1]) == 32)


def differences(theirs: ChainIdentity, ours: ChainIdentity) -> list[str]:
    """What differs between a peer's genesis and ours, one phrase per key, theirs first:
    ``rules.max_attempts 5 != 3``, ``validators differ (5 keys, ours 4)``."""
    found: list[str] = []
    for key in sorted(set(theirs.summary) | set(ours.summary)):
        mine, other = ours.summary.get(key), theirs.summary.get(key)
        if mine == other:
            continue
        if other is None:
            found.append(f"{key} missing (ours {_show(mine)})")
        elif mine is None:
            found.append(f"{key} {_show(other)} (we have no {key})")
        elif isinstance(mine, list) and isinstance(other, list):
            found.append(f"{key} differ ({other[0]} keys, ours {mine[0]})" if other[0] != mine[0] else f"{key} differ")
        else:
            found.append(f"{key} {_show(other)} != {_show(mine)}")
    return found


def _show(leaf: Leaf | None) -> str:
    if isinstance(leaf, list):
        return f"{leaf[0]} entries"
    return repr(leaf) if isinstance(leaf, str) else str(leaf)


def mismatch_message(peer: str, theirs: ChainIdentity, ours: ChainIdentity) -> str:
    """The one line an operator reads: which peer, which genesis, and what differs."""
    found = differences(theirs, ours)
    shown = ", ".join(found[:MAX_DIFFERENCES_SHOWN])
    if len(found) > MAX_DIFFERENCES_SHOWN:
        shown += f", and {len(found) - MAX_DIFFERENCES_SHOWN} more"
    return (f"peer {peer} runs genesis {theirs.genesis_hash.hex()[:16]}... of chain {theirs.chain_id!r}, not ours "
            f"{ours.genesis_hash.hex()[:16]}... of chain {ours.chain_id!r}: "
            + (shown or "no summarized key differs (another version's genesis?)"))


AGREED, REFUSED, UNCHECKED, PENDING = "agreed", "refused", "unchecked", "pending"


class _Verdict:
    """What we know of one connection's chain: pending until a hello was read or the exchange gave up."""

    __slots__ = ("state", "decided", "closing", "greeting")

    def __init__(self) -> None:
        self.state = PENDING
        self.decided = trio.Event()
        self.closing = False
        self.greeting = False  # our hello on this connection has been started

    def decide(self, state: str) -> None:
        if self.state in (PENDING, UNCHECKED) and state != PENDING:
            self.state = state
        self.decided.set()


class ChainHello:
    """Runs the chain handshake on every connection of ``host`` and keeps a
    refused peer's ``gated_protocols`` streams (consensus, transactions, sync) out.

    Install before the host listens (its handler goes in the identify record);
    :meth:`run` watches connections for the daemon's life."""

    def __init__(self, host: Any, identity: ChainIdentity, *, gated_protocols: Iterable[str],
                 timeout: float = HELLO_TIMEOUT_S) -> None:
        self.host = host
        self.identity = identity
        self.frame = identity.encode()
        if len(self.frame) > MAX_HELLO_BYTES:
            raise ValueError(f"chain hello of {len(self.frame)} bytes exceeds {MAX_HELLO_BYTES}")
        self.gated = frozenset(str(p) for p in gated_protocols)
        self.timeout = timeout
        self._verdicts: weakref.WeakKeyDictionary[Any, _Verdict] = weakref.WeakKeyDictionary()
        self._warned: OrderedDict[str, bytes] = OrderedDict()  # peer -> the genesis hash we warned about
        self._greet_requests: trio.MemorySendChannel[Any] | None = None
        self.refused = 0  # connections closed for another genesis
        self.refused_streams = 0  # gated streams kept out
        self.last_refusal: str | None = None
        host.set_stream_handler(CHAIN_HELLO_PROTOCOL, self._answer)
        host.stream_gate = self.admits

    # -- the gate --------------------------------------------------------------------
    async def admits(self, stream: Any, protocol: str) -> bool:
        """Whether ``stream`` may reach its handler: streams of the gated protocols
        wait (at most the timeout) for their connection's verdict, and a
        refused peer's are kept out; every other stream passes at once."""
        if protocol not in self.gated:
            return True
        muxed = getattr(stream, "muxed_conn", None)
        if muxed is None:
            return True
        verdict = self._verdict(muxed)
        if not verdict.decided.is_set():
            self._greet_soon(muxed)
            with trio.move_on_after(self.timeout):
                await verdict.decided.wait()
        if verdict.state == REFUSED:
            self.refused_streams += 1
            return False
        return True

    def verdict_of(self, muxed_conn: Any) -> str:
        """``agreed``, ``refused``, ``unchecked`` (the peer does not speak the handshake) or ``pending``."""
        verdict = self._verdicts.get(muxed_conn)
        return PENDING if verdict is None else verdict.state

    def _verdict(self, muxed_conn: Any) -> _Verdict:
        verdict = self._verdicts.get(muxed_conn)
        if verdict is None:
            verdict = self._verdicts[muxed_conn] = _Verdict()
        return verdict

    # -- the exchange ----------------------------------------------------------------
    # We greet at once the connections we dialed (our peers), and an inbound one
    # only when its peer first opens a gated stream: greeting every inbound
    # connection would let a stranger's flood of connections make us open a
    # stream and wait on each (clients and probes never open gated streams).
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Greet connections until cancelled: outbound ones as they come up,
        inbound ones when :meth:`admits` asks for it."""
        send, receive = trio.open_memory_channel[Any](math.inf)
        self._greet_requests = send
        notifee = _Connected(send)
        network = self.host.get_network()
        network.register_notifee(notifee)
        try:
            async with trio.open_nursery() as nursery:
                for conns in list(network.connections.values()):  # already up before we watched
                    for conn in conns:
                        self._start_greet(nursery, conn, requested=False)
                task_status.started()
                async for item in receive:
                    if isinstance(item, _GreetRequest):
                        conn = self._conn_of(item.muxed)
                        if conn is not None:
                            self._start_greet(nursery, conn, requested=True)
                    else:
                        self._start_greet(nursery, item, requested=False)
        finally:
            self._greet_requests = None
            network.remove_notifee(notifee)

    def _start_greet(self, nursery: trio.Nursery, conn: Any, *, requested: bool) -> None:
        muxed = conn.muxed_conn
        if not requested and not getattr(muxed, "is_initiator_value", False):
            return  # inbound: greeted if and when its peer opens a gated stream
        verdict = self._verdict(muxed)
        if verdict.greeting:
            return
        verdict.greeting = True
        nursery.start_soon(self._greet, conn)

    def _greet_soon(self, muxed: Any) -> None:
        """Ask :meth:`run` to greet ``muxed``'s connection (a gated stream waits for it)."""
        if self._greet_requests is not None and not self._verdict(muxed).greeting:
            try:
                self._greet_requests.send_nowait(_GreetRequest(muxed))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    def _conn_of(self, muxed: Any) -> Any:
        for conn in self.host.get_network().connections.get(muxed.peer_id, []) or []:
            if conn.muxed_conn is muxed:
                return conn
        return None

    async def _greet(self, conn: Any) -> None:
        """Say which chain we run over a stream of our own; judge the answer."""
        muxed = conn.muxed_conn
        verdict = self._verdict(muxed)
        framed: FramedStream | None = None
        try:
            with trio.fail_after(self.timeout):
                framed = FramedStream(await self.host.new_stream(muxed.peer_id, [CHAIN_HELLO_PROTOCOL]), MAX_HELLO_BYTES)
                await framed.write_frame(self.frame)
                answer = await framed.read_frame()
            if answer is None:
                raise HelloError("stream closed without an answer")
            await self._judge(conn, muxed, ChainIdentity.decode(answer))
        except Exception as exc:  # not a refusal: the peer does not speak it, is slow, or broke it
            if isinstance(exc.__cause__, MultiselectClientError):
                log.debug("peer does not speak the chain handshake", peer=muxed.peer_id.to_base58())
            elif not conn.is_closed:
                log.debug("chain handshake failed; peer not checked", peer=muxed.peer_id.to_base58(),
                          reason=f"{type(exc).__name__}: {exc}"[:200])
            verdict.decide(UNCHECKED)
        finally:
            if framed is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await framed.close()

    async def _answer(self, stream: Any) -> None:
        """A peer's hello on its stream: answer with ours, then judge theirs."""
        framed = FramedStream(stream, MAX_HELLO_BYTES)
        theirs: ChainIdentity | None = None
        with trio.move_on_after(self.timeout):
            try:
                hello = await framed.read_frame()
                if hello is None:
                    return
                theirs = ChainIdentity.decode(hello)
                # Decide before answering: once our answer is out, the peer may judge
                # us and close, and a gated stream waiting on this connection must
                # see the refusal, not the failure of our own greeting.
                muxed = getattr(stream, "muxed_conn", None)
                if muxed is not None:
                    self._verdict(muxed).decide(AGREED if self._same_chain(theirs) else REFUSED)
                await framed.write_frame(self.frame)
            except (FrameError, HelloError) as exc:
                log.debug("bad chain hello", reason=str(exc)[:200])
                await framed.reset()
                return
            except Exception:  # the stream broke: the peer left (refused, it is still closed below)
                if theirs is None:
                    return
            finally:
                await framed.close()
            conn = getattr(stream, "swarm_conn", None)
            if conn is not None and theirs is not None:
                await self._judge(conn, stream.muxed_conn, theirs)

    async def _judge(self, conn: Any, muxed: Any, theirs: ChainIdentity) -> None:
        verdict = self._verdict(muxed)
        if self._same_chain(theirs):
            verdict.decide(AGREED)
            return
        verdict.decide(REFUSED)
        if verdict.closing:
            return
        verdict.closing = True
        self.refused += 1
        peer = muxed.peer_id.to_base58()
        message = mismatch_message(peer, theirs, self.identity)
        self.last_refusal = message
        if self._warned.get(peer) != theirs.genesis_hash:
            self._warned[peer] = theirs.genesis_hash
            while len(self._warned) > WARNED_PEERS:
                self._warned.popitem(last=False)
            log.warning("peer runs another genesis; connection closed", peer=peer, detail=message)
        else:
            self._warned.move_to_end(peer)
            log.debug("peer runs another genesis; connection closed", peer=peer)
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await conn.close()
            except Exception:  # noqa: BLE001 - already closing; nothing more to do
                pass

    def _same_chain(self, theirs: ChainIdentity) -> bool:
        return theirs.genesis_hash == self.identity.genesis_hash and theirs.chain_id == self.identity.chain_id

    def report(self) -> dict[str, Any]:
        """Counters for node_status: connections refused, streams kept out, the last refusal."""
        return {"refused_connections": self.refused, "refused_streams": self.refused_streams,
                "last_refusal": self.last_refusal}


@dataclass(frozen=True)
class _GreetRequest:
    """An inbound connection whose peer opened a gated stream: greet it now."""

    muxed: Any


class _Connected(ChannelNotifee[Any]):
    """Forwards each new connection to :meth:`ChainHello.run`."""

    async def connected(self, network: Any, conn: Any) -> None:
        self.push(conn)

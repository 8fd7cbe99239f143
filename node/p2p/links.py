"""Outbound gossip links: one stream and one bounded queue per (peer, protocol).

A protocol that pushes messages to many peers (consensus, transaction
gossip) must never wait on its slowest peer. Each link has its own task and
queue; when a queue is full the message is dropped and counted (consensus
and gossip recover from drops; a blocked actor would not). Peers that do
not speak a protocol (RPC clients, say) are remembered and skipped until
they reconnect.

Every frame a link writes is a deterministic-CBOR array of byte strings:
whatever queued up while the previous frame was being written goes out
together. Per-frame cost (a yamux frame, a Noise message, several task
switches) dominates small messages in py-libp2p, so coalescing is what lets
gossip keep up under load. :func:`read_batch` is the receiving side.

A protocol may also *linger* (``linger_s``): its link waits that long after
the first queued message before writing, so that a burst arriving one
message per scheduling step (a JSON-RPC batch of transactions is served
with a schedule point per call) leaves as one frame, not one frame each.
Transaction gossip lingers a few milliseconds; consensus messages do not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import structlog
import trio
from libp2p.protocol_muxer.exceptions import MultiselectClientError

from node.base.codec import CodecError, decode, encode
from node.p2p.framing import DEFAULT_MAX_FRAME, FramedStream, FrameError

log = structlog.get_logger("metanode.links")

OPEN_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0


class PeerLinks:
    """Send frames to peers over long-lived streams, never blocking the caller."""

    def __init__(self, host: Any, nursery: trio.Nursery, *, queue_size: int = 512, max_frame: int = DEFAULT_MAX_FRAME,
                 linger_s: dict[str, float] | None = None) -> None:
        self.host = host
        self.nursery = nursery
        self.queue_size = queue_size
        self.max_frame = max_frame
        self.linger_s = dict(linger_s or {})  # protocol -> seconds a link waits to gather a frame
        if any(not 0 <= v <= 1 for v in self.linger_s.values()):
            raise ValueError("gossip linger must be between 0 and 1 second")
        self._links: dict[tuple[str, str], tuple[int, trio.MemorySendChannel[bytes]]] = {}
        self._next_link_id = 0
        self._unsupported: dict[tuple[str, str], Any] = {}  # -> the connection that refused
        self.counters: Counter[str] = Counter()

    def connected_peers(self) -> list[Any]:
        network = self.host.get_network()
        return [peer for peer, conns in network.connections.items() if any(not c.is_closed for c in conns)]

    def speaks(self, peer: Any, protocol: str) -> bool:
        """False when the peer's identify record lists its protocols without this one."""
        try:
            advertised = self.host.get_peerstore().get_protocols(peer)
        except Exception:
            return True  # not identified yet: try, and learn from the answer
        return not advertised or protocol in advertised

    def send(self, peer: Any, protocol: str, payload: bytes) -> bool:
        """Queue ``payload`` for ``peer``; False if it was dropped."""
        return self.send_many(peer, protocol, (payload,)) == 1

    def send_many(self, peer: Any, protocol: str, payloads: Sequence[bytes]) -> int:
        """Queue each of ``payloads`` for ``peer``, in order; how many were queued
        (the rest dropped: the peer does not speak the protocol, or its queue is full)."""
        if not payloads or not self.speaks(peer, protocol):
            return 0
        key = (peer.to_base58(), protocol)
        refused_on = self._unsupported.get(key)
        if refused_on is not None:
            if not refused_on.is_closed:
                return 0
            del self._unsupported[key]  # a new connection: ask again
        link = self._links.get(key)
        if link is None:
            self._next_link_id += 1
            channel, receive = trio.open_memory_channel[bytes](self.queue_size)
            link = self._links[key] = (self._next_link_id, channel)
            self.nursery.start_soon(self._run_link, peer, protocol, receive, key, self._next_link_id)
        channel = link[1]
        for queued, payload in enumerate(payloads):
            try:
                channel.send_nowait(payload)
            except trio.WouldBlock:
                self.counters[f"dropped_full:{protocol}"] += len(payloads) - queued
                return queued
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._links.pop(key, None)
                return queued
        return len(payloads)

    def broadcast(self, protocol: str, payload: bytes, *, exclude: Any = None) -> int:
        return self.broadcast_many(protocol, (payload,), exclude=exclude)

    def broadcast_many(self, protocol: str, payloads: Sequence[bytes], *, exclude: Any = None) -> int:
        """Queue ``payloads`` for every connected peer but ``exclude``; how many sends were queued.
        One look at the peers for all of them (a received gossip frame is relayed this way)."""
        if not payloads:
            return 0
        sent = 0
        for peer in self.connected_peers():
            if exclude is not None and peer == exclude:
                continue
            sent += self.send_many(peer, protocol, payloads)
        return sent

    async def _run_link(self, peer: Any, protocol: str, receive: trio.MemoryReceiveChannel[bytes], key: tuple[str, str], link_id: int) -> None:
        framed: FramedStream | None = None
        try:
            with trio.fail_after(OPEN_TIMEOUT_S):
                stream = await self.host.new_stream(peer, [protocol])
            framed = FramedStream(stream, self.max_frame)
            budget = self.max_frame // 2
            linger = self.linger_s.get(protocol, 0.0)
            async for payload in receive:
                if linger:
                    await trio.sleep(linger)
                batch, size = [payload], len(payload)
                while size < budget:
                    try:
                        extra = receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    batch.append(extra)
                    size += len(extra)
                with trio.fail_after(WRITE_TIMEOUT_S):
                    await framed.write_frame(encode(batch))
                self.counters[f"sent:{protocol}"] += len(batch)
                self.counters[f"frames:{protocol}"] += 1
        except Exception as exc:
            if framed is None and isinstance(exc.__cause__, MultiselectClientError):
                # The peer answered "na": it does not speak this protocol
                # (an RPC client, say). Ask again only on a new connection.
                conns = self.host.get_network().get_connections(peer)
                if conns:
                    self._unsupported[key] = conns[0]
            self.counters[f"link_failed:{protocol}"] += 1
            log.debug("gossip link closed", peer=key[0], protocol=protocol, reason=str(exc)[:200])
        finally:
            if self._links.get(key, (None,))[0] == link_id:
                del self._links[key]
            receive.close()
            if framed is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await framed.close()


def read_batch(frame: bytes, *, max_size: int) -> list[bytes]:
    """The messages of one gossip frame (a CBOR array of byte strings).
    Raises FrameError for anything else, so the caller resets the stream."""
    try:
        batch = decode(frame, max_size=max_size)
    except CodecError as exc:
        raise FrameError(f"gossip frame is not canonical CBOR: {exc}") from None
    if not isinstance(batch, list) or not batch or not all(isinstance(item, bytes) for item in batch):
        raise FrameError("gossip frame must be a non-empty array of byte strings")
    return batch

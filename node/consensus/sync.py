"""Block sync: ``/metanode/sync/1.0.0``, both ends.

A request is one CBOR frame ``{"from": int, "limit": int}``; the answer is
up to ``limit`` (at most :data:`SYNC_BATCH`) finalised blocks from height
``from``, one encoded block per frame, then the stream closes
(docs/wire.md, "Block sync").

Why a module of its own: sync is the one part of the consensus shell that
talks to peers outside the actor. Its tasks run beside the actor task and
never touch the IBFT core; fetched blocks reach the core only through the
delivery callback the service gives (which posts them to the actor's
inbox), and the service asks for sync through :meth:`BlockSync.request`
when the core says validators are ahead. What it shares with the service
is therefore narrow: the host, the chain store (to answer), the peer links,
a way to read the height being decided and a way to deliver a block.
:class:`node.consensus.service.ConsensusService` owns one instance.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any

import structlog
import trio
from libp2p.peer.id import ID

from node.base.codec import CodecError, decode, encode
from node.base.keys import peer_id_from_public_key
from node.consensus.block import Block
from node.consensus.outputs import NeedSync
from node.consensus.store import ChainStore
from node.p2p.framing import FramedStream, FrameError
from node.p2p.links import PeerLinks

SYNC_PROTOCOL = "/metanode/sync/1.0.0"
SYNC_BATCH = 64  # blocks per request (a larger limit is lowered to this)
SYNC_TIMEOUT_S = 10.0  # for one request and its whole answer, on either end
SYNC_REQUEST_MAX = 256  # bytes of a request frame
STARTUP_PEER_WAIT_S = 3.0  # how long a starting node waits for a first peer to sync from

log = structlog.get_logger("metanode.consensus")


class BlockSync:
    """Serves finalised blocks to peers and fetches them from peers.

    ``height()`` is the height the core is deciding (the first block we lack);
    ``deliver(block)`` hands a fetched block to the actor. :meth:`attach` gives
    the peer links and the nursery once the service runs.
    """

    def __init__(self, *, host: Any, store: ChainStore, max_frame: int,
                 height: Callable[[], int], deliver: Callable[[Block], None]) -> None:
        self.host = host
        self.store = store
        self.max_frame = max_frame
        self.height = height
        self.deliver = deliver
        self.links: PeerLinks | None = None
        self._nursery: trio.Nursery | None = None
        # Sticky: once any peer has answered a request, the head we reach is a
        # peer's and not only ours (the signing gate needs to know).
        self.peer_answered = False
        self._syncing = False

    def attach(self, links: PeerLinks, nursery: trio.Nursery) -> None:
        """The service runs: its peer links, and the nursery sync tasks run in."""
        self.links = links
        self._nursery = nursery

    def _sync_peers(self) -> Iterator[ID]:
        """The peers connected now that speak sync, each checked when its turn comes."""
        assert self.links is not None, "BlockSync used before attach()"
        for peer in list(self.links.connected_peers()):
            if self.links.speaks(peer, SYNC_PROTOCOL):
                yield peer

    # -- server ----------------------------------------------------------------------
    async def serve(self, stream: Any) -> None:
        """Answer one sync request on ``stream`` from the chain store."""
        framed = FramedStream(stream, self.max_frame)
        try:
            with trio.fail_after(SYNC_TIMEOUT_S):
                request = decode(await framed.read_frame() or b"", max_size=SYNC_REQUEST_MAX)
                if not isinstance(request, dict) or set(request) != {"from", "limit"} or not all(
                    isinstance(request[k], int) and not isinstance(request[k], bool) for k in request
                ):
                    raise CodecError('sync request must be {"from": int, "limit": int}')
                start, limit = request["from"], max(1, min(request["limit"], SYNC_BATCH))
                if start >= 1:
                    for stored in self.store.blocks_range(start, limit, max_bytes=self.max_frame * 4):
                        await framed.write_frame(stored.block)
            await framed.close()
        except (CodecError, FrameError):
            await framed.reset()
        except Exception:
            pass

    # -- client --------------------------------------------------------------------------
    async def catch_up(self, feed: Callable[[Block], None]) -> None:
        """Before the core starts: wait briefly for a peer, then fetch everything
        each peer has beyond our height, feeding blocks straight to ``feed`` (the
        actor is not running yet). A restarted validator must not propose or vote
        for heights the network has finalised."""
        assert self.links is not None, "BlockSync used before attach()"
        with trio.move_on_after(STARTUP_PEER_WAIT_S):
            while not self.links.connected_peers():
                await trio.sleep(0.05)
        for peer in self._sync_peers():
            while True:
                fetched = await self.fetch_batch(peer, self.height(), feed=feed)
                if not fetched:
                    break

    async def sweep(self) -> bool:
        """Fetch from every connected peer in turn, from the current height on.
        True if some peer has ever answered (:attr:`peer_answered`) and there was
        a peer to ask this time."""
        answered = False
        for peer in self._sync_peers():
            await self.fetch_from(peer, self.height())
            answered = answered or self.peer_answered
        return answered

    async def copies(self, start: int, *, heights: int, validators: Collection[bytes],
                     wait_s: float = STARTUP_PEER_WAIT_S) -> list[list[Block]]:
        """Each peer's own copy of its blocks from ``start`` (at most ``heights``
        and a batch more: its head may be past ours), for the signing gate: a peer's copy carries the seals of the quorum it
        collected, so copies from several peers show more of who sealed.

        Asks the connected peers among ``validators`` (public keys: each
        holds the seals it collected itself), all at once, after waiting up to
        ``wait_s`` for every one of them to connect; if none is connected, any
        peer that speaks sync (a full node's copy is some validator's). Returns
        the non-empty copies; the blocks are decoded, not verified."""
        assert self.links is not None, "BlockSync used before attach()"
        wanted = {peer_id_from_public_key(key) for key in validators}
        with trio.move_on_after(wait_s):
            while not wanted <= {p.to_base58() for p in self.links.connected_peers()}:
                await trio.sleep(0.05)
        peers = list(self._sync_peers())
        peers = [p for p in peers if p.to_base58() in wanted] or peers
        found: list[list[Block]] = [[] for _ in peers]
        most = heights + SYNC_BATCH

        async def read(index: int, peer: ID) -> None:
            height = start
            while height < start + most:
                fetched = await self.fetch_batch(peer, height, feed=found[index].append)
                if not fetched:
                    return
                height += fetched

        async with trio.open_nursery() as nursery:
            for index, peer in enumerate(peers):
                nursery.start_soon(read, index, peer)
        return [blocks[:most] for blocks in found if blocks]

    def request(self, need: NeedSync) -> None:
        """The core asked for blocks: fetch them in the background, one sync at a time."""
        if self._syncing:
            return
        assert self._nursery is not None, "BlockSync used before attach()"
        self._syncing = True
        self._nursery.start_soon(self._sync_task, need)

    async def _sync_task(self, need: NeedSync) -> None:
        """The peers the core named first (those known to be ahead), then any
        other that speaks sync, until one takes us past ``need.height``."""
        try:
            assert self.links is not None
            connected = {p.to_base58(): p for p in self.links.connected_peers()}
            preferred = [connected[pid] for pid in (peer_id_from_public_key(k) for k in need.peers) if pid in connected]
            peers = preferred + [p for p in connected.values() if p not in preferred and self.links.speaks(p, SYNC_PROTOCOL)]
            height = need.height
            for peer in peers:
                height = await self.fetch_from(peer, height)
                if height > need.height:
                    break
        finally:
            self._syncing = False

    async def fetch_from(self, peer: ID, height: int) -> int:
        """Fetch blocks from ``height`` on from ``peer`` batch by batch until it has
        no more, delivering each to the actor; returns the height reached."""
        while True:
            blocks: list[Block] = []
            fetched = await self.fetch_batch(peer, height, feed=blocks.append)
            for block in blocks:
                self.deliver(block)
            if not fetched:
                return height
            height += fetched

    async def fetch_batch(self, peer: ID, start: int, *, feed: Callable[[Block], None]) -> int:
        """Ask ``peer`` for blocks from ``start``; feed each decoded block. Returns how many came."""
        count = 0
        try:
            with trio.fail_after(SYNC_TIMEOUT_S):
                framed = FramedStream(await self.host.new_stream(peer, [SYNC_PROTOCOL]), self.max_frame)
                await framed.write_frame(encode({"from": start, "limit": SYNC_BATCH}))
                while (frame := await framed.read_frame()) is not None:
                    block = Block.decode(frame, max_size=self.max_frame)
                    if block.height != start + count:
                        break  # not what we asked for: stop trusting this answer
                    feed(block)
                    count += 1
                await framed.close()
            self.peer_answered = True  # the head we reach is a peer's, not only ours
        except Exception as exc:  # a bad or absent peer: try another
            log.debug("sync from peer failed", peer=peer.to_base58(), reason=str(exc)[:200])
        return count

"""The console's live feed: one ``chain_subscribe`` per server, fanned out to every page.

The pages never poll. The hub holds one subscription on its own connection
to the node (re-opened, with backoff, when it drops) and turns what arrives
into server-sent events for every browser connected to ``/api/events``:

- ``block``: each new block's summary as ``chain_newBlock`` carries it
  (height, hash, round, commit_round, timestamp_ms, tx_count, proposer);
- ``job``: ``{"id", "state", "previous", "height"}`` when one of the
  tenant's jobs changes state. On each new block the hub asks the node once
  (``analytics_list``) for the tenant's newest jobs: one call per block,
  whatever the number of pages open;
- ``upload``: ``{"upload", "stage", "bytes", "total"}`` while a dataset the
  user dropped on a page is received, then sent to the node.

Each client has a bounded queue; one that does not keep up (its queue full)
is dropped, never waited for: the next page load reconnects it.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
import trio

from node.base.retry import Backoff
from node.console.node import NodeSession

log = structlog.get_logger("metanode.console")

CLIENT_QUEUE = 256  # events waiting for one browser; a fuller queue drops that browser
MAX_CLIENTS = 32
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies and the browser from closing a quiet stream
JOBS_WATCHED = 100  # the newest jobs of the tenant checked on each block
RESUBSCRIBE = Backoff(0.5, factor=2.0, cap=10.0)
FINAL_STATES = ("verified", "disputed", "failed", "cancelled")


def sse_frame(event: str, data: Any) -> bytes:
    """One server-sent event (``event:`` line, one ``data:`` line of JSON, blank line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


KEEPALIVE_FRAME = b": keepalive\n\n"


class EventClient:
    """One browser's stream: its queue of frames, closed when it is dropped."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](CLIENT_QUEUE)
        self.dropped = False


class EventHub:
    """Fans events out to :class:`EventClient` queues; runs the subscription and the job watch."""

    def __init__(self, node: NodeSession) -> None:
        self.node = node
        self.clients: set[EventClient] = set()
        self.last_block: dict[str, Any] | None = None
        self.job_states: dict[str, str] | None = None  # None until the first look
        self.dropped_clients = 0
        self.subscriptions = 0  # subscriptions opened (1 + reconnects)
        self._new_block = trio.Event()

    # -- clients ------------------------------------------------------------------------------
    def join(self) -> EventClient | None:
        """A new browser's queue (None when :data:`MAX_CLIENTS` are connected),
        with the newest block already in it, so a page shows the head at once."""
        if len(self.clients) >= MAX_CLIENTS:
            return None
        client = EventClient()
        if self.last_block is not None:
            client.send.send_nowait(sse_frame("block", self.last_block))
        self.clients.add(client)
        return client

    def leave(self, client: EventClient) -> None:
        self.clients.discard(client)
        client.send.close()

    def publish(self, event: str, data: Any) -> None:
        frame = sse_frame(event, data)
        for client in list(self.clients):
            try:
                client.send.send_nowait(frame)
            except trio.WouldBlock:
                client.dropped = True
                self.dropped_clients += 1
                self.leave(client)
            except trio.ClosedResourceError:
                self.clients.discard(client)

    # -- the node ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Subscribe and watch until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._subscription)
            nursery.start_soon(self._watch_jobs)

    async def _subscription(self) -> None:
        from node.p2p.client import connect_to_node

        failures = 0
        while True:
            try:
                async with connect_to_node(self.node.facts.address, identity=self.node.identity) as rpc:
                    await rpc.call("chain_subscribe")
                    self.subscriptions += 1
                    failures = 0
                    async for message in rpc.notifications:
                        if message.get("method") != "chain_newBlock":
                            continue
                        block = (message.get("params") or {}).get("block")
                        if isinstance(block, dict):
                            self._on_block(block)
            except Exception as exc:  # the connection failed, or the node refused: try again
                log.info("console: chain subscription ended; subscribing again", error=str(exc)[:200])
            await trio.sleep(RESUBSCRIBE.delay(failures))
            failures += 1

    def _on_block(self, block: dict[str, Any]) -> None:
        self.last_block = block
        self.publish("block", block)
        self._new_block.set()

    async def _watch_jobs(self) -> None:
        """Once per new block (blocks that arrive while a look is under way make one
        more look, not one each): the tenant's newest jobs, and a ``job`` event for
        each whose state differs from the last look."""
        while True:
            await self._new_block.wait()
            self._new_block = trio.Event()
            height = int((self.last_block or {}).get("height") or 0)
            try:
                await self.check_jobs(height)
            except Exception as exc:  # the node is away for now: the next block tries again
                log.info("console: checking jobs failed", error=str(exc)[:200])

    async def check_jobs(self, height: int) -> None:
        answer = await self.node.call("analytics_list", {"limit": JOBS_WATCHED})
        jobs = {str(j["id"]): str(j["state"]) for j in answer.get("jobs", [])}
        previous = self.job_states
        self.job_states = jobs
        if previous is None:
            return  # the first look sets the baseline: pages load the current states themselves
        for job_id, state in jobs.items():
            if previous.get(job_id) != state:
                self.publish("job", {"id": job_id, "state": state, "previous": previous.get(job_id), "height": height})

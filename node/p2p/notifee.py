"""One base for our libp2p network notifees: every event a no-op, and a
non-blocking push into a trio channel for the events a subclass forwards.

A notifee runs inside the swarm's own tasks, so it must never block or raise:
a full or closed channel drops the event (the receiver re-reads the swarm's
connections when it needs the whole picture)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import trio
from libp2p.abc import INotifee

T = TypeVar("T")


class ChannelNotifee(INotifee, Generic[T]):
    """Ignores every network event; subclasses forward the ones they want with :meth:`push`."""

    def __init__(self, send: trio.MemorySendChannel[T]) -> None:
        self._send = send

    def push(self, item: T) -> None:
        try:
            self._send.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def connected(self, network: Any, conn: Any) -> None:
        pass

    async def disconnected(self, network: Any, conn: Any) -> None:
        pass

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass

"""Bounded buffer for consensus messages from heights the core has not reached.

A validator a little ahead of us sends messages for the next height before we
have finalised this one; keeping them avoids a round change. Memory stays
bounded whatever peers send: per sender, at most ``per_sender`` messages and
``bytes_per_sender`` bytes (proposals and prepared round changes carry
blocks), so n validators can never hold more than n times that.
"""

from __future__ import annotations

from collections import Counter

from node.consensus.messages import Message


class FutureBuffer:
    """Messages for future heights, bounded per sender."""

    def __init__(self, per_sender: int, bytes_per_sender: int) -> None:
        self.per_sender = per_sender
        self.bytes_per_sender = bytes_per_sender
        self._by_height: dict[int, list[Message]] = {}
        self._count: Counter[bytes] = Counter()
        self._bytes: Counter[bytes] = Counter()

    def add(self, message: Message) -> bool:
        """Keep ``message`` if its sender is within budget; False if dropped."""
        sender = message.signed.sender
        size = len(message.encode())
        if self._count[sender] >= self.per_sender or self._bytes[sender] + size > self.bytes_per_sender:
            return False
        self._count[sender] += 1
        self._bytes[sender] += size
        self._by_height.setdefault(message.signed.height, []).append(message)
        return True

    def take(self, height: int) -> list[Message]:
        """Remove and return the messages for ``height``, dropping lower heights."""
        for old in [h for h in self._by_height if h < height]:
            for message in self._by_height.pop(old):
                self._release(message)
        messages = self._by_height.pop(height, [])
        for message in messages:
            self._release(message)
        return messages

    def _release(self, message: Message) -> None:
        sender = message.signed.sender
        self._count[sender] -= 1
        self._bytes[sender] -= len(message.encode())

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_height.values())

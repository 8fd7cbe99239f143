"""Token buckets for RPC calls (pure: the caller supplies the time).

A call is what costs, not a frame: a JSON-RPC batch of n calls spends n
tokens, so batching buys a client fewer frames, never more work from the
node. :class:`CallLimiter` holds one bucket per peer and one for the whole
node; a call passes only when both can pay, so many peers (or one peer
behind many throwaway identities) cannot together take more than the node's
total.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

TOTAL = "total"  # the scope of the node-wide bucket
PEER = "peer"  # the scope of a caller's own bucket


class TokenBuckets:
    """``rate`` tokens per second up to ``burst``, one bucket per key.

    Bounded: at most ``max_keys`` buckets, the least recently used evicted,
    so a stream of new peer ids cannot grow memory without bound.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 4096) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def available(self, key: str, now: float) -> float:
        """Tokens ``key`` could spend at ``now`` (nothing is spent)."""
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - last) * self.rate)

    def wait_for(self, key: str, now: float, cost: float = 1.0) -> float:
        """Seconds until ``key`` can pay ``cost`` (0 when it can now; nothing is spent)."""
        missing = cost - self.available(key, now)
        return 0.0 if missing <= 0 else missing / self.rate

    def spend(self, key: str, now: float, cost: float = 1.0) -> None:
        """Take ``cost`` tokens (the caller has checked :meth:`wait_for`)."""
        tokens = self.available(key, now) - cost
        self._buckets.pop(key, None)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens. Returns 0 if allowed, else seconds to wait."""
        wait = self.wait_for(key, now, cost)
        if not wait:
            self.spend(key, now, cost)
        return wait


@dataclass(frozen=True)
class Refusal:
    """Why a call was refused: which bucket (``peer`` or ``total``) and when to retry."""

    scope: str
    retry_after_s: float  # seconds until that bucket holds the call's tokens, rounded up to the millisecond


class CallLimiter:
    """Per-peer buckets plus one node-wide bucket; a call spends from both or neither."""

    def __init__(self, rate: float, burst: float, *, rate_total: float | None = None, burst_total: float | None = None,
                 max_keys: int = 4096) -> None:
        self.per_peer = TokenBuckets(rate, burst, max_keys)
        self.total = TokenBuckets(rate_total, burst_total if burst_total is not None else max(1.0, 2 * rate_total), 1) \
            if rate_total is not None else None

    def admit(self, peer: str, now: float, cost: float = 1.0) -> Refusal | None:
        """Spend ``cost`` tokens for ``peer`` and return None, or spend
        nothing and say which limit refused and how long to wait."""
        waits = [(self.per_peer.wait_for(peer, now, cost), PEER)]
        if self.total is not None:
            waits.append((self.total.wait_for(TOTAL, now, cost), TOTAL))
        wait, scope = max(waits)
        if wait:
            return Refusal(scope, math.ceil(wait * 1000) / 1000)
        self.per_peer.spend(peer, now, cost)
        if self.total is not None:
            self.total.spend(TOTAL, now, cost)
        return None

    def take(self, peer: str, now: float, cost: float = 1.0) -> float:
        """As :meth:`admit`, as a number: 0 if allowed, else seconds to wait
        (the HTTP gateway's interface: it answers 429 with Retry-After)."""
        refusal = self.admit(peer, now, cost)
        return 0.0 if refusal is None else refusal.retry_after_s

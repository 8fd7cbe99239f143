"""Per-peer token buckets (pure: the caller supplies the time)."""

from __future__ import annotations

from collections import OrderedDict


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

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens. Returns 0 if allowed, else seconds to wait."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

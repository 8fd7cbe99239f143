"""Retrying a call that fails for a while: the one retry loop of the code base.

A node that is not registered yet, a receipt not on chain yet, a result whose
holders are briefly unreachable, a persistent peer that is down: each is a
call tried again after a pause until it succeeds, a budget (attempts or a
deadline) is spent, or it fails in a way that waiting will not fix. Those
three decisions are the arguments of :func:`retry`; the pause is a
:class:`Backoff` (fixed, or exponential with a cap and optional jitter).

Time is trio's clock (``trio.current_time``, ``trio.sleep``), so a deadline
is on the same clock as the caller's ``trio.fail_after`` and tests run it
under ``trio.testing.MockClock`` without waiting. Every caller is async; there
is no sync variant.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """The pause before each retry: ``first`` seconds, multiplied by ``factor`` after
    each failure, never more than ``cap``; with ``jitter`` (lo, hi), scaled by a
    random factor in that range, so many clients restarted together spread out."""

    first: float
    factor: float = 1.0
    cap: float = math.inf
    jitter: tuple[float, float] | None = None

    def delay(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (0-based)."""
        delay = min(self.cap, self.first * self.factor ** min(retry, 62))  # bounded exponent: no overflow after a long outage
        if self.jitter is not None:
            delay *= random.uniform(*self.jitter)
        return delay


async def retry(call: Callable[[], Awaitable[T]], *, backoff: Backoff,
                retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
                when: Callable[[Any], bool] | None = None, attempts: int | None = None, deadline: float | None = None,
                on_retry: Callable[[int, float, BaseException], None] | None = None) -> T:
    """Await ``call()`` until it returns, and return what it returned.

    An exception that is an instance of ``retry_on`` and for which ``when``
    (if given) is true is retried after ``backoff``'s delay; any other
    propagates at once. The last failure propagates unchanged (not a
    timeout) once ``attempts`` calls have failed, or when a call fails at or
    after ``deadline`` (trio's clock; a call that started before it is still
    made, as a budget of time rather than a timeout). Neither: retried until
    it succeeds or the caller is cancelled. ``on_retry(failures, delay,
    error)`` sees each failure that will be retried, before the pause."""
    failures = 0
    while True:
        try:
            return await call()
        except retry_on as exc:
            if when is not None and not when(exc):
                raise
            failures += 1
            if (attempts is not None and failures >= attempts) or (deadline is not None and trio.current_time() >= deadline):
                raise
            delay = backoff.delay(failures - 1)
            if on_retry is not None:
                on_retry(failures, delay, exc)
        await trio.sleep(delay)

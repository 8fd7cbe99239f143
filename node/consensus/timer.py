"""Wall-clock time for the consensus shell: the clock and the round timer.

The IBFT core reads no clock: every input carries ``now_ms``, and the core
says when it next needs a tick (``next_deadline_ms``). Turning those
deadlines into tick events is the one timing job the shell has; it lives
here, apart from the actor (node/consensus/service.py), because it is the
only place where trio's monotonic sleeping clock meets the wall clock that
block timestamps and deadlines are written in, and the subtlety of that
meeting (a sleep may end early) deserves a unit of its own with its own
test (tests/consensus/test_wall_clock_timer.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio


def now_ms() -> int:
    """Wall-clock milliseconds: block timestamps are compared across validators."""
    return time.time_ns() // 1_000_000


class WallClockTimer:
    """Calls ``fire`` once the wall clock (``now``, ms) reaches the latest deadline set.

    trio sleeps on its monotonic clock while deadlines are wall-clock ms, so
    a sleep may end a hair early: it then sleeps again rather than firing a
    tick the core would ignore (the core never re-emits an unchanged
    deadline, so that tick would be the last one: a stall).
    """

    def __init__(self, now: Callable[[], int], fire: Callable[[], None]) -> None:
        self.now = now
        self.fire = fire
        self.deadline: int | None = None
        self._changed = trio.Event()

    def set(self, deadline_ms: int) -> None:
        self.deadline = deadline_ms
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        while True:
            deadline, changed = self.deadline, self._changed
            if deadline is None:
                await changed.wait()
                continue
            delay = (deadline - self.now()) / 1000
            if delay > 0:
                with trio.move_on_after(delay):
                    await changed.wait()
                continue
            if self.deadline == deadline:
                self.deadline = None
                self.fire()

"""The consensus timer fires only once the wall clock has reached the deadline."""

from __future__ import annotations

import trio
import trio.testing

from node.consensus.service import WallClockTimer


def test_fires_at_the_deadline_even_when_the_wall_clock_runs_slower_than_the_sleep_clock():
    fired_at: list[int] = []

    async def main() -> None:
        # The wall clock advances 1% slower than trio's (as under NTP
        # slewing): a sleep of (deadline - now) ends before the wall clock
        # reaches the deadline.
        now = lambda: int(trio.current_time() * 990)  # noqa: E731
        timer = WallClockTimer(now, lambda: fired_at.append(now()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            for deadline in (now() + 50, now() + 500, now() + 1234):
                timer.set(deadline)
                with trio.fail_after(10):
                    while len(fired_at) < 1:
                        await trio.sleep(0.001)
                assert fired_at.pop() >= deadline
            timer.set(now() + 100)
            timer.set(now() + 300)  # a newer deadline replaces the older one
            await trio.sleep(0.2)
            assert fired_at == []
            await trio.sleep(0.2)
            assert len(fired_at) == 1
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

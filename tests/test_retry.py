"""node.base.retry under trio's MockClock (autojump): budgets, pauses and which errors retry, without waiting."""

from __future__ import annotations

import pytest
import trio

from node.base.retry import Backoff, retry


class Flaky(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


class Calls:
    """An async callable that fails with each of ``errors`` in turn, then returns ``value``; it records when it was called."""

    def __init__(self, errors: list[BaseException], value: str = "done") -> None:
        self.errors, self.value, self.times = list(errors), value, []  # type: ignore[var-annotated]

    async def __call__(self) -> str:
        self.times.append(trio.current_time())
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def test_backoff_delays():
    assert [Backoff(0.5).delay(n) for n in range(4)] == [0.5] * 4
    assert [Backoff(1.0, factor=2.0, cap=5.0).delay(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert Backoff(0.5, factor=2.0, cap=30.0).delay(10_000) == 30.0  # no overflow after a long outage
    assert Backoff(0.5, factor=2.0).delay(10_000) == 0.5 * 2.0**62  # uncapped: bounded exponent, still finite
    jittered = [Backoff(4.0, jitter=(0.5, 1.0)).delay(0) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in jittered) and len(set(jittered)) > 1


async def test_success_after_failures_returns_the_value_and_reports_each_retry(autojump_clock):
    call = Calls([Flaky(1), Flaky(1)])
    seen: list[tuple[int, float, str]] = []
    start = trio.current_time()
    assert await retry(call, backoff=Backoff(1.0, factor=2.0), retry_on=Flaky,
                       on_retry=lambda n, delay, exc: seen.append((n, delay, str(exc)))) == "done"
    assert [t - start for t in call.times] == [0.0, 1.0, 3.0]
    assert seen == [(1, 1.0, "code 1"), (2, 2.0, "code 1")]


async def test_attempts_budget_raises_the_last_error(autojump_clock):
    errors = [Flaky(1), Flaky(2), Flaky(3), Flaky(4)]
    call = Calls(list(errors))
    with pytest.raises(Flaky) as caught:
        await retry(call, backoff=Backoff(0.5), retry_on=Flaky, attempts=3)
    assert caught.value is errors[2] and len(call.times) == 3


async def test_deadline_budget_is_checked_after_each_failure(autojump_clock):
    """As the hand-written loops did: a failure at or past the deadline propagates;
    a pause may overrun it by one call."""
    start = trio.current_time()
    call = Calls([Flaky(1)] * 100)
    with pytest.raises(Flaky):
        await retry(call, backoff=Backoff(0.4), retry_on=Flaky, deadline=start + 1.0)
    assert [round(t - start, 6) for t in call.times] == [0.0, 0.4, 0.8, 1.2]


async def test_errors_that_do_not_retry_propagate_at_once(autojump_clock):
    start = trio.current_time()
    call = Calls([Flaky(1), Flaky(9)])
    with pytest.raises(Flaky, match="code 9"):
        await retry(call, backoff=Backoff(1.0), retry_on=Flaky, when=lambda exc: exc.code == 1)
    assert [t - start for t in call.times] == [0.0, 1.0]
    other = Calls([KeyError("x")])
    with pytest.raises(KeyError):
        await retry(other, backoff=Backoff(1.0), retry_on=Flaky)
    assert len(other.times) == 1 and trio.current_time() == start + 1.0


async def test_without_a_budget_it_retries_until_cancelled(autojump_clock):
    start = trio.current_time()
    call = Calls([Flaky(1)] * 10_000)
    with trio.move_on_after(60) as scope:
        await retry(call, backoff=Backoff(1.0, factor=2.0, cap=8.0), retry_on=Flaky)
    assert scope.cancelled_caught
    assert [t - start for t in call.times] == [0, 1, 3, 7, 15, 23, 31, 39, 47, 55]  # doubling, then every 8 s


async def test_cancellation_is_never_retried(autojump_clock):
    async def cancelled() -> None:
        raise trio.Cancelled._create()  # type: ignore[attr-defined]

    with pytest.raises(trio.Cancelled):
        await retry(cancelled, backoff=Backoff(1.0), retry_on=Exception)

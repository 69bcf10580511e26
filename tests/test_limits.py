"""Rate limiter arithmetic, with an explicit clock: no loop, no sleeping."""

from __future__ import annotations

import random

import pytest

from flux_async._core.limits import Backoff, RateLimiter


def test_reservations_are_spaced_at_the_rate() -> None:
    limiter = RateLimiter(5.0)
    waits = [limiter.reserve(100.0) for _ in range(6)]
    assert waits == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_no_rate_means_no_wait() -> None:
    limiter = RateLimiter(None)
    assert [limiter.reserve(1.0) for _ in range(100)] == [0.0] * 100


def test_a_429_pauses_everyone_and_halves_the_rate() -> None:
    limiter = RateLimiter(10.0)
    limiter.reserve(0.0)
    assert limiter.penalty(2.0, now=0.0) == 2.0
    assert limiter.current_rate == 5.0
    assert limiter.reserve(0.5) == pytest.approx(1.5)  # waits out the pause
    assert limiter.reserve(0.5) == pytest.approx(1.7)  # then 1/5 s apart


def test_the_rate_recovers_linearly_and_never_overshoots() -> None:
    limiter = RateLimiter(10.0)
    limiter.penalty(0.0, now=0.0)
    assert limiter.current_rate == 5.0
    limiter.reserve(limiter.RECOVERY_SECONDS / 4)
    assert limiter.current_rate == pytest.approx(7.5)
    limiter.reserve(1000.0)
    assert limiter.current_rate == 10.0


def test_the_rate_never_falls_below_its_floor() -> None:
    limiter = RateLimiter(10.0)
    for _ in range(20):
        limiter.penalty(0.0, now=0.0)
    assert limiter.current_rate == pytest.approx(10.0 * RateLimiter.MIN_SHARE)


def test_backoff_is_the_vendors_1_2_4_8_16_plus_jitter() -> None:
    backoff = Backoff(rng=random.Random(7))  # the defaults: the vendor's advice
    for attempt, step in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (9, 16)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        # Never sooner than advised; the jitter only adds, at most a quarter of the step.
        assert step <= min(delays)
        assert max(delays) <= step * 1.25
        assert max(delays) - min(delays) > step * 0.1  # and it does spread retries out


def test_without_retry_after_the_pause_is_the_backoff() -> None:
    limiter = RateLimiter(5.0, backoff=Backoff(rng=random.Random(1)))
    first = limiter.penalty(None, now=0.0)
    second = limiter.penalty(None, now=0.0)
    assert 1.0 <= first <= 1.25
    assert 2.0 <= second <= 2.5
    limiter.succeeded()
    assert limiter.penalty(None, now=0.0) <= 1.25


def test_echoes_of_one_overload_do_not_compound() -> None:
    limiter = RateLimiter(10.0, backoff=Backoff(rng=random.Random(2)))
    ticket = 0  # five requests let through before any 429: all hold epoch 0
    first = limiter.penalty(None, now=0.0, ticket=ticket)
    for _ in range(4):
        limiter.penalty(None, now=0.0, ticket=ticket)
    assert limiter.current_rate == 5.0  # halved once, not five times
    assert 1.0 <= first <= 1.25
    # A fresh overload after the pause is a new strike.
    second = limiter.penalty(None, now=5.0, ticket=1)
    assert limiter.current_rate == 2.5
    assert 2.0 <= second <= 2.5


def test_retry_after_is_capped() -> None:
    limiter = RateLimiter(1.0)
    assert limiter.penalty(10_000.0, now=0.0) == RateLimiter.MAX_PAUSE


def test_a_burst_goes_back_to_back_then_the_rate_holds() -> None:
    limiter = RateLimiter(10.0, burst=3)
    waits = [limiter.reserve(0.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])
    # In any one-second window: at most burst + rate requests.
    limiter = RateLimiter(10.0, burst=3)
    starts = [t + limiter.reserve(t) for t in [0.0] * 40]
    assert max(sum(1 for s in starts if w <= s < w + 1.0) for w in starts) <= 3 + 10


def test_no_burst_right_after_a_pause() -> None:
    limiter = RateLimiter(10.0, burst=10)
    limiter.penalty(1.0, now=0.0)  # rate halves to 5/s
    waits = [limiter.reserve(0.0) for _ in range(3)]
    assert waits == pytest.approx([1.0, 1.2, 1.4])


def test_acquire_nowait_takes_only_free_turns() -> None:
    limiter = RateLimiter(10.0, burst=2)
    assert limiter.acquire_nowait(0.0) == 0
    assert limiter.acquire_nowait(0.0) == 0  # the burst
    assert limiter.acquire_nowait(0.0) is None  # the next turn is 0.1 s away...
    assert limiter.reserve(0.0) == pytest.approx(0.1)  # ...and was not reserved by the refusal
    limiter.penalty(1.0, now=0.0)
    assert limiter.acquire_nowait(0.5) is None  # paused
    assert limiter.acquire_nowait(2.0) == 1  # a new epoch after the penalty


def test_deadline_after_refuses_a_negative_or_nan_timeout() -> None:
    from flux_async import ValidationError
    from flux_async._core.limits import deadline_after

    for bad in (-1.0, float("nan")):
        with pytest.raises(ValidationError) as info:
            deadline_after(bad)
        assert info.value.field == "timeout"
    assert deadline_after(None) is None

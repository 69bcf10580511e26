"""Client-side rate limits that slow the whole client down when the service says 429.

``RateLimiter`` (the in-process ``RateGate`` of ``coordination``) spaces
requests of one kind (submissions, task queries) at most ``rate`` per second.
It hands out start times rather than tokens (the "generic cell rate" scheme):
each caller reserves the next free instant, so callers are served first come
first served, in O(1), with no lock and no background task.

On a 429 (``penalize``, or ``penalty`` without the await) every caller of that
kind pauses (``Retry-After`` when the service gave one, else exponential backoff
with jitter) and the rate is halved; it then grows back linearly while no
further 429 comes (additive increase, multiplicative decrease, as TCP does).

Times come from the event loop's clock (``anyio.current_time()`` on asyncio; read
from the loop directly on the hot paths, ``now()``, at a quarter of the cost);
``Backoff`` is pure arithmetic, tested without a loop.
"""

from __future__ import annotations

import asyncio
import math
import random

import anyio
import attrs

from .errors import ValidationError

__all__ = ["Backoff", "RateLimiter", "deadline_after", "now", "remaining"]


def now() -> float:
    """The loop's clock, as ``anyio.current_time()`` is on asyncio, without its lookup."""
    return asyncio.get_running_loop().time()


def deadline_after(timeout: float | None) -> float | None:
    """The loop time ``timeout`` seconds from now (``None``: no deadline)."""
    if timeout is None:
        return None
    if timeout < 0 or math.isnan(timeout):
        raise ValidationError("timeout", "must be a number of seconds >= 0, or None")
    return now() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), for anyio's ``*_after``."""
    return None if deadline is None else max(0.0, deadline - now())


@attrs.define
class Backoff:
    """Exponential delays plus jitter: base, 2*base, 4*base... capped, then a random extra.

    ``delay(n)`` for the n-th consecutive failure (n >= 1). With the defaults
    that is the vendor's advice, 1, 2, 4, 8, 16 s plus jitter: the step is a
    floor (a retry never comes sooner than advised) and up to ``jitter`` of it is
    added at random, so many clients backing off together spread out.
    """

    base: float = 1.0
    cap: float = 16.0
    jitter: float = 0.25
    rng: random.Random = attrs.field(factory=random.Random, repr=False)

    def delay(self, attempt: int) -> float:
        step = min(self.cap, self.base * 2.0 ** max(0, attempt - 1))
        return step + self.rng.uniform(0, step * self.jitter)


class RateLimiter:
    """At most ``rate`` requests per second, slowed down by ``penalize`` on a 429.

    ``burst`` requests may go back to back after a quiet spell (then the rate
    holds again): in any one-second window at most ``burst + rate`` go out.
    ``rate=None`` means no limit (``acquire`` returns at once unless penalised).
    """

    # After a 429 the rate is halved, never below this share of the configured one.
    MIN_SHARE = 0.1
    # Seconds without a 429 for the rate to climb back from the floor to the full rate.
    RECOVERY_SECONDS = 10.0
    # No Retry-After is honoured beyond this: every wait stays bounded.
    MAX_PAUSE = 120.0

    def __init__(
        self, rate: float | None, *, burst: int = 1, backoff: Backoff | None = None
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive or None")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._current = rate
        self._next_free = 0.0  # earliest start time the next caller may have
        self._paused_until = 0.0
        self._strikes = 0  # consecutive 429s, for the backoff exponent
        self._last_change = 0.0
        self._epoch = 0  # bumped by every 429, so callers already waiting look again
        self._backoff = backoff or Backoff()

    @property
    def current_rate(self) -> float | None:
        return self._current

    def _recover(self, now: float) -> None:
        """Grow the rate back linearly since the last change (AIMD's additive half)."""
        if self.rate is None or self._current is None or self._current >= self.rate:
            return
        if now <= self._last_change:
            return  # still inside a pause: nothing has been learnt yet
        gained = self.rate * (now - self._last_change) / self.RECOVERY_SECONDS
        self._current = min(self.rate, self._current + gained)
        self._last_change = now

    def _slack(self) -> float:
        """How far ahead of the steady pace a burst may run, in seconds."""
        return 0.0 if self._current is None else (self.burst - 1) / self._current

    def reserve(self, now: float) -> float:
        """Reserve a start time for one request; returns the seconds to wait for it."""
        self._recover(now)
        start = max(now, self._paused_until)
        if self._current is not None:
            # _next_free is the steady-pace time of the next request; a burst may
            # run up to _slack() ahead of it.
            start = max(start, self._next_free - self._slack())
            self._next_free = max(self._next_free, start) + 1.0 / self._current
        return start - now

    def acquire_nowait(self, now: float) -> int | None:
        """Take a turn that is free right now (returns its ticket), else None.

        Nothing is reserved when it returns None: the caller then ``acquire()``s.
        """
        self._recover(now)
        start = max(now, self._paused_until)
        if self._current is not None:
            start = max(start, self._next_free - self._slack())
        if start > now:
            return None
        self.reserve(now)
        return self._epoch

    async def acquire(self) -> int:
        """Wait for this caller's turn; returns a ticket to hand back to ``penalize``.

        A 429 that arrives while callers wait for turns reserved before it sends
        them back in line behind the pause, instead of letting them fire into it.
        Cancelling the wait gives up the turn.
        """
        while True:
            epoch = self._epoch
            delay = self.reserve(anyio.current_time())
            if delay > 0:
                await anyio.sleep(delay)
            if epoch == self._epoch:
                return epoch

    async def penalize(self, retry_after: float | None, now: float, ticket: int) -> float:
        """``penalty`` as the ``RateGate`` seam asks for it (in-process: no I/O)."""
        return self.penalty(retry_after, now, ticket)

    def penalty(self, retry_after: float | None, now: float, ticket: int | None = None) -> float:
        """Record a 429: pause every caller and halve the rate. Returns the pause.

        ``ticket`` is what ``acquire`` returned for the refused request. When a
        penalty came after that request was let through, this 429 is an echo of
        the same overload (requests already on the wire): it may lengthen the
        pause but does not halve the rate or grow the backoff again.
        """
        echo = ticket is not None and ticket != self._epoch
        if retry_after is not None:
            pause = min(retry_after, self.MAX_PAUSE)
        elif echo:
            pause = max(0.0, self._paused_until - now)
        else:
            pause = self._backoff.delay(self._strikes + 1)
        self._paused_until = max(self._paused_until, now + pause)
        if echo:
            return pause
        self._strikes += 1
        self._epoch += 1
        if self.rate is not None and self._current is not None:
            self._current = max(self.rate * self.MIN_SHARE, self._current / 2)
            self._last_change = max(self._last_change, now + pause)
        # After the pause, requests resume at the steady pace: no burst into a
        # service that just said "too many".
        self._next_free = self._paused_until + self._slack()
        return pause

    def succeeded(self) -> None:
        """A request of this kind went through: the backoff exponent starts over."""
        self._strikes = 0

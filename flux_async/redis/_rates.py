"""A fleet-wide rate gate for one kind of request (submissions or task queries).

The same scheme as the in-process ``RateLimiter`` (each caller reserves the next
free start time; bursts; a 429 pauses the kind, halves the rate, which then climbs
back linearly over ``RECOVERY_SECONDS``; echoes of one overload count once), with
its state in a Redis hash and every step one Lua script: one round trip per turn.
The times are Redis's, so processes whose clocks are skewed agree on turns.

A counted 429 is published on the coordinator's bus: callers of every process that
sleep towards a turn reserved before it wake up and reserve again behind the pause,
instead of firing into it.
"""

from __future__ import annotations

import math
from typing import Literal

import anyio

from .._core.limits import Backoff, RateLimiter
from ._scripts import RATE_ACQUIRE, RATE_PENALIZE, RATE_SUCCEEDED
from ._shared import Shared

__all__ = ["RedisRateGate"]

Kind = Literal["submit", "query"]


class RedisRateGate:
    """At most ``rate`` requests of ``kind`` per second across the fleet, plus ``burst``.

    ``acquire_nowait`` always answers None: a shared turn needs a round trip (a
    locally cached grant would let each process burst on its own), so the caller
    goes to ``acquire``. ``rate=None``: no limit, but a 429 still pauses the kind.
    """

    RECOVERY_SECONDS = RateLimiter.RECOVERY_SECONDS
    MIN_SHARE = RateLimiter.MIN_SHARE
    MAX_PAUSE = RateLimiter.MAX_PAUSE

    def __init__(
        self,
        coordinator: Shared,
        kind: Kind,
        rate: float | None,
        burst: int,
        backoff: Backoff,
    ) -> None:
        if kind not in ("submit", "query"):
            raise ValueError("kind must be 'submit' or 'query'")
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate must be positive or None")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.kind = kind
        self.rate = rate
        self.burst = burst
        self._coord = coordinator
        self._backoff = backoff
        self._name = f"rate:{kind}"
        self._penalized = anyio.Event()
        self._penalty_epoch: int | None = None
        self._strikes = False  # a 429 was seen since the last success

    def __repr__(self) -> str:
        return f"<RedisRateGate {self.kind} rate={self.rate} burst={self.burst}>"

    def acquire_nowait(self, now: float) -> int | None:
        return None

    async def acquire(self) -> int:
        """Wait for a turn; returns its ticket (for ``penalize``).

        ``CoordinationError`` when Redis cannot be asked. Cancelling gives up the
        turn (it is not handed to anyone else: the pace just stays as reserved).
        """
        coord = self._coord
        await coord.start()
        while True:
            penalized = self._penalized
            delay, epoch = await coord.call(
                RATE_ACQUIRE, [self._coord.key(self._name)],
                [self.rate or 0, self.burst, self.RECOVERY_SECONDS],
            )
            ticket = int(epoch)
            deadline = anyio.current_time() + float(delay)
            while True:
                left = deadline - anyio.current_time()
                if left <= 0:
                    return ticket
                if not penalized.is_set():
                    with anyio.move_on_after(left):
                        await penalized.wait()
                    if not penalized.is_set():
                        return ticket
                if self._penalty_epoch != ticket:
                    break  # a 429 after this turn was reserved: line up behind its pause
                penalized = self._penalized  # that penalty came before: keep waiting

    async def penalize(self, retry_after: float | None, now: float, ticket: int) -> float:
        """A 429 answered the request of ``ticket``: pause the kind fleet-wide.

        ``now`` is ignored (the time is Redis's). Returns the pause in seconds.
        """
        coord = self._coord
        await coord.start()
        backoff = self._backoff
        if retry_after is not None and not (retry_after >= 0 and math.isfinite(retry_after)):
            retry_after = None
        pause, epoch = await coord.call(
            RATE_PENALIZE, [self._coord.key(self._name)],
            [
                self.rate or 0, self.burst, ticket,
                "" if retry_after is None else repr(float(retry_after)),
                backoff.base, backoff.cap, backoff.jitter, backoff.rng.random(),
                self.MAX_PAUSE, self.MIN_SHARE, coord.bus_channel, self.kind,
            ],
        )
        self.on_penalty(int(epoch))
        return float(pause)

    def on_penalty(self, epoch: int) -> None:
        """A 429 was counted (here or elsewhere): sleeping callers look again."""
        self._strikes = True
        self._penalty_epoch = epoch
        penalized, self._penalized = self._penalized, anyio.Event()
        penalized.set()

    def succeeded(self) -> None:
        """A request went through: the backoff exponent starts over (in the background)."""
        if self._strikes:
            self._strikes = False
            self._coord.chore(self._reset_strikes)

    async def _reset_strikes(self) -> None:
        await self._coord.call(RATE_SUCCEEDED, [self._coord.key(self._name)], [])

"""May this be tried again? Every answer to that, and the one loop that applies them.

Each kind of request has its table (``Policy``): the failure's class decides,
the first row it is an instance of wins, anything unlisted is ``NEVER``.

========================  ==========================================================
SUBMISSION (paid)         never pay twice: only what provably created nothing is
                          ``SAFE``; what may have created a task is ``UNCERTAIN``
QUERY (task lookups)      free and idempotent: transport failures, 5xx and 429 again
DOWNLOAD (image GETs)     idempotent: transport failures, HTTP 429 and 5xx again
UPLOAD (not billed)       connect, broken connection, 5xx, 429 again; not a timeout
                          (a second try on a link too slow for the file only doubles
                          the wait), nor an answer that is not the protocol
========================  ==========================================================

A submission's decisions, one by one:

- it provably did not create a task (the connection was never made, or the
  service answered 429): ``SAFE``, re-send after the pause or backoff;
- the service said, in its own error body, that nothing will be billed: a
  ``504`` with code ``timeout`` (``UpstreamTimeoutError``: the upstream model
  timed out and the task did not complete). Its billing rules charge per image
  of a task that *succeeds*, and name upstream timeouts as not billed; so even
  if a task record exists it cannot be charged, and a re-send cannot pay twice:
  ``SAFE``;
- nobody can tell (a reset or timeout after sending, a 5xx, a garbled answer,
  a 504 that is a gateway's page rather than the vendor's ``timeout``):
  ``UNCERTAIN``, not re-sent unless the user opted in with ``resend_uncertain``
  (the caller then raises ``SubmissionUncertainError``);
- the service refused it, or the URL cannot be used at all: ``NEVER``.

In every table a URL that cannot be used, or a redirect gone wrong, is
``NEVER``: the same request goes the same way every time.

``attempts(policy, ...)`` is the one loop (the shape of stamina's
``retry_context``)::

    async for attempt in attempts(QUERY, attempts=5, backoff=backoff, gate=limiter):
        with attempt:
            return await fetch()

One counting rule: the n-th failure the loop waits out itself waits
``backoff.delay(n)``. A 429 on a request that took a turn of a rate gate
(``RateLimiter``) pauses the gate instead (every caller of that kind waits),
and the next turn waits the pause out; those 429s may have their own budget
(``rate_limited_attempts``). Nothing waits past ``deadline``: when the next
delay would end after it, the last failure is raised at once. Every try again
is logged on the ``flux_async`` logger in one shape: what, attempt n of m, why,
and what comes next.

Plain functions here have no I/O; the loop only sleeps (anyio) and takes turns.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal, Protocol, TypeVar

import anyio
import attrs

from .errors import (
    ConnectError,
    DownloadError,
    NetworkError,
    ProtocolError,
    RateLimitError,
    RedirectError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    UnusableURLError,
    UpstreamTimeoutError,
)
from .limits import Backoff, RateLimiter, remaining

__all__ = [
    "DOWNLOAD",
    "QUERY",
    "SUBMISSION",
    "UPLOAD",
    "Attempt",
    "Attempts",
    "Gate",
    "Policy",
    "Resend",
    "again_next_round",
    "attempts",
    "call",
    "describe",
]

log = logging.getLogger("flux_async")

T = TypeVar("T")


class Resend(enum.Enum):
    """What a failure allows."""

    SAFE = "nothing was created (or nothing is billed): try again"
    UNCERTAIN = "a task may exist: re-send only if the user accepts paying twice"
    NEVER = "refused, or the same every time: raise"


def _is_http_retryable(error: BaseException) -> bool:
    """An image server's 429 or 5xx (``DownloadError`` carries the status)."""
    status = getattr(error, "status", None)
    return isinstance(error, DownloadError) and status is not None and (
        status == 429 or status >= 500
    )


Match = type[BaseException] | Callable[[BaseException], bool]


@attrs.frozen
class Policy:
    """One "try again?" table: ``(class or predicate, Resend)`` rows, first match wins.

    ``what`` names the request in log lines, ``again`` what a new try does
    (``"re-sending"``), ``level`` is their logging level. ``on_429`` says who
    waits out a 429: ``"gate"`` (the rate gate's pause, taken by the next turn)
    or ``"sleep"`` (``Retry-After`` when given, else the backoff).
    """

    what: str
    again: str
    rows: tuple[tuple[Match, Resend], ...]
    level: int = logging.INFO
    on_429: Literal["gate", "sleep"] = "sleep"

    def verdict(self, error: BaseException) -> Resend:
        """Whether a request that failed with ``error`` may be sent again."""
        for match, resend in self.rows:
            hit = isinstance(error, match) if isinstance(match, type) else match(error)
            if hit:
                return resend
        return Resend.NEVER


# The same on every try: first in every table.
_FUTILE: tuple[tuple[Match, Resend], ...] = (
    (UnusableURLError, Resend.NEVER),
    (RedirectError, Resend.NEVER),
)

SUBMISSION = Policy(
    "submission",
    "re-sending",
    (
        *_FUTILE,
        (ConnectError, Resend.SAFE),
        (RateLimitError, Resend.SAFE),
        # Before ServerError, its base: the vendor's "not billed" outranks "a 5xx".
        (UpstreamTimeoutError, Resend.SAFE),
        (NetworkError, Resend.UNCERTAIN),
        (RequestTimeoutError, Resend.UNCERTAIN),
        (ProtocolError, Resend.UNCERTAIN),
        (ServerError, Resend.UNCERTAIN),
    ),
    level=logging.WARNING,  # money is at stake: always visible
    on_429="gate",
)

QUERY = Policy(
    "task query",
    "asking again",
    (
        *_FUTILE,
        (RateLimitError, Resend.SAFE),
        (TransportError, Resend.SAFE),
        (ServerError, Resend.SAFE),
    ),
    on_429="gate",
)

DOWNLOAD = Policy(
    "download",
    "fetching again",
    (
        *_FUTILE,
        (TransportError, Resend.SAFE),
        (_is_http_retryable, Resend.SAFE),
    ),
)

UPLOAD = Policy(
    "upload",
    "uploading again",
    (
        *_FUTILE,
        (ConnectError, Resend.SAFE),
        (NetworkError, Resend.SAFE),  # the worst a duplicate costs is a second stored copy
        (ServerError, Resend.SAFE),
        (RateLimitError, Resend.SAFE),
    ),
)


class Gate(Protocol):
    """What the loop needs of a rate gate (``RateLimiter``, or a shared one)."""

    def acquire_nowait(self, now: float) -> int | None: ...

    async def acquire(self) -> int: ...

    def penalize(
        self, retry_after: float | None, now: float, ticket: int
    ) -> float | Awaitable[float]: ...

    def succeeded(self) -> None: ...


def describe(what: str, why: BaseException, then: str, *, attempt: int = 0, of: int = 0) -> str:
    """The one shape of a retry's log line: what, attempt n of m, why, what next."""
    counted = f" (attempt {attempt} of {of})" if attempt else ""
    return f"{what} failed{counted}: {type(why).__name__}: {why}; {then}"


async def _penalize(gate: Gate, error: RateLimitError, ticket: int) -> float:
    pause = gate.penalize(error.retry_after, anyio.current_time(), ticket)
    if inspect.isawaitable(pause):
        pause = await pause
    return pause


async def again_next_round(policy: Policy, error: BaseException, gate: Gate, ticket: int) -> bool:
    """For a request a later round will make anyway (the poller's): ask again then?

    A 429 pauses ``gate``; the decision is logged in the loop's shape.
    """
    if policy.verdict(error) is not Resend.SAFE:
        return False
    if isinstance(error, RateLimitError) and policy.on_429 == "gate":
        pause = await _penalize(gate, error, ticket)
        log.warning(describe(policy.what, error, f"pausing every {policy.what} {pause:.1f}s"))
    else:
        log.log(policy.level, describe(policy.what, error, f"{policy.again} next round"))
    return True


class Attempt:
    """One try: ``with attempt:`` around it reports how it went to the loop."""

    __slots__ = ("_loop", "number", "ticket")

    def __init__(self, loop: Attempts, number: int, ticket: int | None) -> None:
        self._loop = loop
        self.number = number  # 1 for the first try
        self.ticket = ticket  # the gate's ticket of this try, when the loop took a turn

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._loop._ended(self, exc)


class Attempts:
    """Tries ``policy``'s request while its table allows, the budgets last and time is left.

    ``attempts`` tries in all (counting 429s, unless ``rate_limited_attempts``
    gives 429s on a gated policy their own budget). ``gate``: take one of its
    turns before each try, and pause it on a 429. ``deadline``: loop time after
    which nothing is waited for (the body's own duration is the caller's to
    bound). ``resend_uncertain``: ``UNCERTAIN`` counts as ``SAFE``. The last
    failure is raised as it is; the caller decides what an ``UNCERTAIN`` one
    becomes.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        attempts: int,
        backoff: Backoff,
        deadline: float | None = None,
        gate: Gate | None = None,
        rate_limited_attempts: int | None = None,
        resend_uncertain: bool = False,
    ) -> None:
        self.policy = policy
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._deadline = deadline
        self._gate = gate
        self._rate_limited_attempts = rate_limited_attempts
        self._resend_uncertain = resend_uncertain
        self._tries = 0
        self._failures = 0  # counted against ``attempts``: the backoff's n
        self._rate_limited = 0  # gated 429s, when they have their own budget
        self._done = False
        # What the last failure asks of the next ``__anext__``.
        self._last: BaseException | None = None
        self._delay = 0.0
        self._penalty: tuple[RateLimitError, int] | None = None
        self._count: dict[str, int] = {}

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> Attempt:
        if self._done:
            raise StopAsyncIteration
        error, self._last = self._last, None
        if error is not None:
            await self._wait(error)
        ticket = await self._turn(error)
        self._tries += 1
        return Attempt(self, self._tries, ticket)

    async def _wait(self, error: BaseException) -> None:
        what, level = self.policy.what, self.policy.level
        penalty, self._penalty = self._penalty, None
        if penalty is not None:
            assert self._gate is not None
            pause = await _penalize(self._gate, *penalty)
            log.warning(describe(what, error, f"pausing every {what} {pause:.1f}s", **self._count))
        elif isinstance(error, RateLimitError) and self.policy.on_429 == "gate":
            # The request paused its gate itself; the next turn waits it out.
            log.warning(describe(
                what, error, f"{self.policy.again} when the gate allows", **self._count))
        else:
            log.log(level, describe(
                what, error, f"{self.policy.again} in {self._delay:.1f}s", **self._count))
            await anyio.sleep(self._delay)

    async def _turn(self, error: BaseException | None) -> int | None:
        gate = self._gate
        if gate is None:
            return None
        ticket = gate.acquire_nowait(anyio.current_time())
        if ticket is not None:
            return ticket
        with anyio.move_on_after(remaining(self._deadline)):
            return await gate.acquire()
        if error is not None:
            raise error
        raise RequestTimeoutError(f"{self.policy.what}: no turn came before the deadline")

    def _ended(self, attempt: Attempt, exc: BaseException | None) -> bool:
        """How ``attempt`` ended; True swallows ``exc`` so that the loop tries again."""
        if exc is None:
            self._done = True
            if self._gate is not None:
                self._gate.succeeded()
            return False
        if not isinstance(exc, Exception):
            return False  # cancellation, KeyboardInterrupt: never retried
        resend = self.policy.verdict(exc)
        if resend is Resend.NEVER or (resend is Resend.UNCERTAIN and not self._resend_uncertain):
            return False
        gated = isinstance(exc, RateLimitError) and self.policy.on_429 == "gate"
        if gated and self._rate_limited_attempts is not None:
            self._rate_limited += 1
            used, budget = self._rate_limited, self._rate_limited_attempts
        else:
            self._failures += 1
            used, budget = self._failures, self._attempts
        if used >= budget:
            return False
        if gated:
            if self._gate is not None and attempt.ticket is not None:
                assert isinstance(exc, RateLimitError)
                self._penalty = (exc, attempt.ticket)
        else:
            if isinstance(exc, RateLimitError) and exc.retry_after is not None:
                self._delay = min(exc.retry_after, RateLimiter.MAX_PAUSE)
            else:
                self._delay = self._backoff.delay(self._failures)
            left = remaining(self._deadline)
            if left is not None and self._delay >= left:
                return False  # no try could start in time: the last failure stands
        self._count = {"attempt": used, "of": budget}
        self._last = exc
        return True


async def call(
    policy: Policy,
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    backoff: Backoff,
    deadline: float | None = None,
    gate: Gate | None = None,
    rate_limited_attempts: int | None = None,
    resend_uncertain: bool = False,
) -> T:
    """``await fn()``, tried again as ``policy`` allows (the loop above, in one call)."""
    async for attempt in Attempts(
        policy, attempts=attempts, backoff=backoff, deadline=deadline, gate=gate,
        rate_limited_attempts=rate_limited_attempts, resend_uncertain=resend_uncertain,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


#: ``async for attempt in attempts(policy, ...): with attempt: ...``
attempts = Attempts

"""Every "try again?" table as plain calls, and the one attempts loop with a fake request."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable

import anyio
import pytest

from flux_async import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    DownloadError,
    ForbiddenError,
    ImageTooLargeError,
    InsufficientBalanceError,
    NetworkError,
    NotAnImageError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    UpstreamTimeoutError,
    ValidationError,
)
from flux_async._core.errors import RedirectError, UnusableURLError
from flux_async._core.limits import Backoff, RateLimiter
from flux_async._core.retry import (
    DOWNLOAD,
    QUERY,
    SUBMISSION,
    UPLOAD,
    Policy,
    Resend,
    again_next_round,
    attempts,
    call,
    describe,
)

S, U, N = Resend.SAFE, Resend.UNCERTAIN, Resend.NEVER

ERRORS: dict[str, BaseException] = {
    "connect": ConnectError("refused"),
    "unusable url": UnusableURLError("ftp://x: not an http(s) URL"),
    "redirect loop": RedirectError("too many redirects"),
    "reset": NetworkError("reset after sending"),
    "timeout": RequestTimeoutError("no answer"),
    "garbled": ProtocolError("truncated JSON"),
    "429": RateLimitError("slow down", status=429, code="too_many_requests"),
    "500": ServerError("api_error", status=500, code="api_error"),
    "gateway 504": ServerError("gateway page", status=504),
    "504 timeout": UpstreamTimeoutError("timed out", status=504, code="timeout"),
    "400": BadRequestError("bad", status=400),
    "401": AuthenticationError("who", status=401),
    "403 used_up": InsufficientBalanceError("poor", status=403, code="used_up"),
    "403 forbidden": ForbiddenError("refused", status=403, code="forbidden"),
    "404": NotFoundError("Task not found", status=404),
    "bad input": ValidationError("prompt", "empty"),
    "a bug": RuntimeError("a bug"),
    "GET 429": DownloadError("x answered HTTP 429", url="x", status=429),
    "GET 503": DownloadError("x answered HTTP 503", url="x", status=503),
    "GET 404": DownloadError("x answered HTTP 404", url="x", status=404),
    "not an image": NotAnImageError("x", "text/html", status=200),
    "too large": ImageTooLargeError("x", 10, status=200),
    "disk full": DownloadError("could not save x", url="x"),
}

# error -> (submission, query, download, upload)
TABLE: dict[str, tuple[Resend, Resend, Resend, Resend]] = {
    "connect": (S, S, S, S),
    "unusable url": (N, N, N, N),
    "redirect loop": (N, N, N, N),
    "reset": (U, S, S, S),
    "timeout": (U, S, S, N),
    "garbled": (U, S, S, N),
    "429": (S, S, N, S),
    "500": (U, S, N, S),
    "gateway 504": (U, S, N, S),
    "504 timeout": (S, S, N, S),
    "400": (N, N, N, N),
    "401": (N, N, N, N),
    "403 used_up": (N, N, N, N),
    "403 forbidden": (N, N, N, N),
    "404": (N, N, N, N),
    "bad input": (N, N, N, N),
    "a bug": (N, N, N, N),
    "GET 429": (N, N, S, N),
    "GET 503": (N, N, S, N),
    "GET 404": (N, N, N, N),
    "not an image": (N, N, N, N),
    "too large": (N, N, N, N),
    "disk full": (N, N, N, N),
}


def test_the_table_covers_every_error() -> None:
    assert TABLE.keys() == ERRORS.keys()


@pytest.mark.parametrize("name", list(TABLE))
def test_every_table(name: str) -> None:
    error = ERRORS[name]
    got = tuple(p.verdict(error) for p in (SUBMISSION, QUERY, DOWNLOAD, UPLOAD))
    assert got == TABLE[name]


def test_the_submission_table_is_the_submission_verdict() -> None:
    from flux_async._engine.submission import verdict

    for error in ERRORS.values():
        assert verdict(error) is SUBMISSION.verdict(error)


# --- the loop ---------------------------------------------------------------------------

FAST = Backoff(base=0.001, cap=0.001, jitter=0.0)


class Flaky:
    """Fails with the given errors in turn, then answers ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class FakeGate:
    """A rate gate that records what the loop does with it."""

    def __init__(self, *, async_penalize: bool = False, free: bool = True) -> None:
        self.turns = 0
        self.penalties: list[tuple[float | None, int]] = []
        self.successes = 0
        self.async_penalize = async_penalize
        self.free = free

    def acquire_nowait(self, now: float) -> int | None:
        if not self.free:
            return None
        self.turns += 1
        return self.turns

    async def acquire(self) -> int:
        await anyio.sleep(3600)  # never comes: only the deadline ends the wait
        raise AssertionError("unreachable")

    def penalize(
        self, retry_after: float | None, now: float, ticket: int
    ) -> float | Awaitable[float]:
        self.penalties.append((retry_after, ticket))
        if not self.async_penalize:
            return 2.0

        async def later() -> float:
            return 2.0

        return later()

    def succeeded(self) -> None:
        self.successes += 1


@pytest.mark.anyio
async def test_tries_until_it_works_and_logs_each_retry_in_one_shape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flux_async")
    fn = Flaky(ConnectError("refused"), ServerError("boom", status=502))
    assert await call(UPLOAD, fn, attempts=3, backoff=FAST) == "ok"
    assert fn.calls == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "upload failed (attempt 1 of 3): ConnectError: refused; uploading again in 0.0s",
        "upload failed (attempt 2 of 3): ServerError: HTTP 502: boom; uploading again in 0.0s",
    ]


@pytest.mark.anyio
async def test_the_last_failure_is_raised_as_it_is_after_the_budget() -> None:
    fn = Flaky(*(ConnectError(f"refused {i}") for i in range(5)))
    with pytest.raises(ConnectError, match="refused 2"):
        await call(QUERY, fn, attempts=3, backoff=FAST)
    assert fn.calls == 3


@pytest.mark.anyio
async def test_never_is_raised_at_once() -> None:
    for error in (BadRequestError("bad", status=400), UnusableURLError("ftp://"),
                  RuntimeError("a bug")):
        fn = Flaky(error)
        with pytest.raises(type(error)):
            await call(QUERY, fn, attempts=5, backoff=FAST)
        assert fn.calls == 1


@pytest.mark.anyio
async def test_uncertain_is_tried_again_only_when_the_user_accepts_it() -> None:
    fn = Flaky(NetworkError("reset"))
    with pytest.raises(NetworkError):
        await call(SUBMISSION, fn, attempts=5, backoff=FAST)
    assert fn.calls == 1
    fn = Flaky(NetworkError("reset"))
    assert await call(SUBMISSION, fn, attempts=5, backoff=FAST, resend_uncertain=True) == "ok"
    assert fn.calls == 2


@pytest.mark.anyio
async def test_the_backoff_counts_failures_and_stops_at_the_deadline() -> None:
    delays: list[int] = []

    class Counting(Backoff):
        def delay(self, attempt: int) -> float:
            delays.append(attempt)
            return 0.0 if attempt < 3 else 60.0

    fn = Flaky(*(ConnectError(str(i)) for i in range(10)))
    started = anyio.current_time()
    with pytest.raises(ConnectError, match=r"^2$"):
        await call(QUERY, fn, attempts=10, backoff=Counting(),
                   deadline=anyio.current_time() + 5.0)
    # 1 and 2 waited 0 s; the third delay (60 s) ends after the deadline: given up at once.
    assert delays == [1, 2, 3]
    assert fn.calls == 3
    assert anyio.current_time() - started < 2.0


@pytest.mark.anyio
async def test_a_429_without_a_gate_waits_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flux_async")
    fn = Flaky(RateLimitError("slow", status=429, retry_after=0.05))
    started = anyio.current_time()
    assert await call(UPLOAD, fn, attempts=2, backoff=Backoff(base=30.0)) == "ok"
    assert 0.05 <= anyio.current_time() - started < 5.0
    assert "uploading again in 0.1s" in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize("async_penalize", [False, True])
async def test_a_429_on_a_gated_request_pauses_the_gate_with_that_tries_ticket(
    async_penalize: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flux_async")
    gate = FakeGate(async_penalize=async_penalize)
    fn = Flaky(RateLimitError("slow", status=429), ConnectError("refused"))
    seen: list[int | None] = []
    async for attempt in attempts(QUERY, attempts=3, backoff=FAST, gate=gate):
        with attempt:
            seen.append(attempt.ticket)
            await fn()
    assert seen == [1, 2, 3]  # a turn of the gate before every try
    assert gate.penalties == [(None, 1)]  # the 429 of try 1, with its ticket
    assert gate.successes == 1
    assert ("task query failed (attempt 1 of 3): RateLimitError: HTTP 429: slow; "
            "pausing every task query 2.0s") in caplog.text


@pytest.mark.anyio
async def test_gated_429s_may_have_their_own_budget() -> None:
    # The submission shape: the gate was paused by the request itself (no ticket
    # here), 429s have a budget of their own, other failures theirs.
    errors: list[BaseException] = [RateLimitError("slow", status=429) for _ in range(4)]
    fn = Flaky(*errors, ConnectError("refused"), ConnectError("refused"))
    assert await call(SUBMISSION, fn, attempts=3, backoff=FAST, rate_limited_attempts=10) == "ok"
    assert fn.calls == 7
    fn = Flaky(*(RateLimitError(f"slow {i}", status=429) for i in range(5)))
    with pytest.raises(RateLimitError, match="slow 2"):
        await call(SUBMISSION, fn, attempts=99, backoff=FAST, rate_limited_attempts=3)
    assert fn.calls == 3


@pytest.mark.anyio
async def test_no_turn_before_the_deadline_raises_the_last_failure() -> None:
    gate = FakeGate(free=False)
    with anyio.fail_after(5):
        with pytest.raises(RequestTimeoutError, match="no turn"):
            await call(QUERY, Flaky(), attempts=3, backoff=FAST, gate=gate,
                       deadline=anyio.current_time() + 0.05)


@pytest.mark.anyio
async def test_cancellation_is_never_retried() -> None:
    fn_calls = 0

    async def hangs() -> None:
        nonlocal fn_calls
        fn_calls += 1
        await anyio.sleep(3600)

    with anyio.move_on_after(0.05):
        await call(QUERY, hangs, attempts=5, backoff=FAST)
    assert fn_calls == 1


@pytest.mark.anyio
async def test_the_pollers_round_helper() -> None:
    gate = FakeGate()
    limiter_error = RateLimitError("slow", status=429, retry_after=1.5)
    assert await again_next_round(QUERY, limiter_error, gate, ticket=7)
    assert gate.penalties == [(1.5, 7)]
    assert await again_next_round(QUERY, ServerError("boom", status=500), gate, ticket=8)
    assert not await again_next_round(QUERY, ForbiddenError("no", status=403), gate, ticket=9)
    assert len(gate.penalties) == 1


@pytest.mark.anyio
async def test_a_real_rate_limiter_is_a_gate() -> None:
    limiter = RateLimiter(None, backoff=Backoff(base=0.01, cap=0.01, rng=random.Random(1)))
    fn = Flaky(RateLimitError("slow", status=429))
    assert await call(QUERY, fn, attempts=2, backoff=FAST, gate=limiter) == "ok"
    assert fn.calls == 2


def test_describe_is_the_one_shape() -> None:
    error = ConnectError("refused")
    assert describe("download", error, "fetching again in 1.0s", attempt=2, of=5) == (
        "download failed (attempt 2 of 5): ConnectError: refused; fetching again in 1.0s")
    assert describe("task query", error, "asking again next round") == (
        "task query failed: ConnectError: refused; asking again next round")


def test_a_policy_is_data() -> None:
    custom = Policy("thing", "again", ((KeyError, Resend.SAFE),))
    assert custom.verdict(KeyError("x")) is Resend.SAFE
    assert custom.verdict(ValueError("x")) is Resend.NEVER

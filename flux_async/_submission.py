"""Paid submissions, and the one rule for re-sending them: never pay twice.

``/flux/images`` costs money per image. After a failed submission the only
question is whether the service may have created a task:

- it provably did not (the connection was never made, or it answered 429):
  re-send, after the pause or backoff;
- the service said, in its own error body, that nothing will be billed: a
  ``504`` with code ``timeout`` (``UpstreamTimeoutError``: the upstream model
  timed out and the task did not complete). Its billing rules charge per image
  of a task that *succeeds*, and name upstream timeouts as not billed; so even
  if a task record exists it cannot be charged, and a re-send cannot pay twice.
  Re-send, like a connect error (after the backoff, within ``max_retries``);
- nobody can tell (a reset or timeout after sending, a 5xx, a garbled answer,
  a 504 that is a gateway's page rather than the vendor's ``timeout``): do not
  re-send, raise ``SubmissionUncertainError``, unless the user opted in with
  ``resend_uncertain``;
- the service refused it (any other error): raise it, nothing to retry.

``verdict`` is that table as a plain function; ``Submitter`` applies it with the
rate limiter and the deadline.

A paid POST on the wire is never cut by its caller's cancellation, whatever
cancelled it (an anyio scope, ``task.cancel()``, ``asyncio.wait_for``): it runs
in a task the client owns, and the caller only waits for its answer. A caller
that leaves early hands the submission over (``Handover``): when the answer
comes, the task it created is adopted by the client instead of being lost.
The waits before the POST (rate limit, backoff) are the caller's own and end
with it: nothing was sent then.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import anyio
import attrs

from ._coordination import RateGate
from ._done import Done
from ._errors import (
    ClientClosedError,
    ConnectError,
    NetworkError,
    ProtocolError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    SubmissionUncertainError,
    TaskTimeoutError,
    UpstreamTimeoutError,
)
from ._limits import Backoff, remaining
from ._models import ImageRequest
from ._protocol import IMAGES_PATH, Submission, read_submission, submit_body

__all__ = ["MAX_RATE_LIMIT_RETRIES", "Handover", "Resend", "Submitter", "verdict"]

log = logging.getLogger("flux_async")

# 429s are re-sent while the deadline allows, but never more than this many times.
MAX_RATE_LIMIT_RETRIES = 30

Post = Callable[[str, Mapping[str, Any]], Awaitable[Any]]
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


@attrs.define
class Handover:
    """Where a submission goes if its caller leaves while the paid POST is out.

    ``adopt`` gets the submission when the answer comes (the task exists and must
    be followed); ``drop`` is called when the answer says no task can be followed
    (a refusal, or a failure after which its fate is unknown: logged). Either is
    called once, and only if ``left`` became true; otherwise the caller got the
    answer itself.
    """

    adopt: Callable[[Submission], None]
    drop: Callable[[], None]
    left: bool = False


class _Wire:
    """One paid POST on the wire and its outcome, once it came."""

    __slots__ = ("done", "left", "outcome")

    def __init__(self) -> None:
        self.done = Done()
        self.left = False
        self.outcome: Submission | BaseException | None = None


class Resend(enum.Enum):
    """What a failed submission allows."""

    SAFE = "nothing was created: re-send"
    UNCERTAIN = "a task may exist: re-send only if the user accepts paying twice"
    NEVER = "the service refused it: raise"


# Checked in order; the first class the error is an instance of decides.
_TABLE: tuple[tuple[type[BaseException], Resend], ...] = (
    (ConnectError, Resend.SAFE),
    (RateLimitError, Resend.SAFE),
    # Before ServerError, its base: the vendor's "not billed" outranks "a 5xx".
    (UpstreamTimeoutError, Resend.SAFE),
    (NetworkError, Resend.UNCERTAIN),
    (RequestTimeoutError, Resend.UNCERTAIN),
    (ProtocolError, Resend.UNCERTAIN),
    (ServerError, Resend.UNCERTAIN),
)


def verdict(error: BaseException) -> Resend:
    """Whether a submission that failed with ``error`` may be sent again."""
    for cls, resend in _TABLE:
        if isinstance(error, cls):
            return resend
    return Resend.NEVER


class Submitter:
    """Sends submissions under the submission rate limit, re-sending per ``verdict``."""

    def __init__(
        self,
        post: Post,
        limiter: RateGate,
        backoff: Backoff,
        *,
        spawn: Spawn,
        max_retries: int,
        resend_uncertain: bool,
    ) -> None:
        self._post = post
        self._spawn = spawn
        self.limiter = limiter
        self._backoff = backoff
        self.max_retries = max_retries
        self.resend_uncertain = resend_uncertain
        self.on_wire = 0  # paid POSTs sent and not yet answered
        self._drained: anyio.Event | None = None
        self.closing = False  # set by the client: no new POST may start

    async def drained(self) -> None:
        """Return once no paid POST is on the wire (each is bounded by its timeout)."""
        while self.on_wire:
            self._drained = anyio.Event()
            await self._drained.wait()

    async def _carry(self, wire: _Wire, body: Mapping[str, Any], ticket: int,
                     request: ImageRequest, handover: Handover) -> None:
        """The POST itself, in a task of the client's: its caller cannot cut it."""
        if wire.left:  # the caller left before the POST started: nothing is sent
            handover.drop()
            return
        self.on_wire += 1
        try:
            wire.outcome = read_submission(await self._post(IMAGES_PATH, body))
            self.limiter.succeeded()
        except RateLimitError as exc:
            pause = await self.limiter.penalize(exc.retry_after, anyio.current_time(), ticket)
            log.warning("submission rate-limited (HTTP 429); pausing submissions %.1fs", pause)
            wire.outcome = exc
        except Exception as exc:
            wire.outcome = exc
        except BaseException:  # the client's task group cut it (aclose ran out of time)
            wire.outcome = SubmissionUncertainError(
                "the client closed before the submission's answer came; a task may exist",
                request=request,
            )
            raise
        finally:
            # The caller (or the handover) first: it is woken before aclose() is.
            if wire.left:
                self._orphaned(wire, handover)
            else:
                wire.done.set()
            self.on_wire -= 1
            if not self.on_wire and self._drained is not None:
                self._drained.set()

    @staticmethod
    def _orphaned(wire: _Wire, handover: Handover) -> None:
        """The answer came and its caller had left: hand the outcome over."""
        outcome = wire.outcome
        try:
            if isinstance(outcome, Submission):
                handover.adopt(outcome)
                return
            handover.drop()
        except Exception:  # a bug there must not take the client's task group down
            log.exception("handing over an abandoned submission failed")
            return
        if isinstance(outcome, SubmissionUncertainError) or (
            outcome is not None and verdict(outcome) is Resend.UNCERTAIN
        ):
            log.warning("a submission whose caller had left failed after it was sent (%s); "
                        "a task may exist, but the service gave no id", outcome)

    async def _once(
        self, request: ImageRequest, callback_url: str | None, deadline: float | None,
        timeout: float | None, handover: Handover,
    ) -> Submission:
        ticket = self.limiter.acquire_nowait(anyio.current_time())
        if ticket is None:
            with anyio.move_on_after(remaining(deadline)) as scope:
                ticket = await self.limiter.acquire()
            if scope.cancelled_caught or ticket is None:
                raise TaskTimeoutError(None, timeout)
        if self.closing:
            raise ClientClosedError("the FluxClient was closed before the request was sent")
        wire = _Wire()
        body = submit_body(request, callback_url=callback_url)
        self._spawn(lambda: self._carry(wire, body, ticket, request, handover))
        try:
            await wire.done.wait()
        except BaseException:
            # Cancelled (by anything) while the POST is out: it goes on, and its
            # answer goes to the handover instead of being lost with this caller.
            wire.left = handover.left = True
            if wire.done.is_set():  # answered, but this caller never resumed to take it
                self._orphaned(wire, handover)
            raise
        if isinstance(wire.outcome, BaseException):
            raise wire.outcome
        assert wire.outcome is not None
        return wire.outcome

    async def submit(
        self, request: ImageRequest, callback_url: str | None, *, deadline: float | None,
        timeout: float | None, handover: Handover,
    ) -> Submission:
        """Send one paid submission; re-send it only as ``verdict`` allows.

        If the caller is cancelled while a POST is out, ``handover.left`` is true
        when the cancellation propagates, and ``handover`` gets the outcome later.
        """
        failures = rate_limited = 0
        while True:
            try:
                submission = await self._once(request, callback_url, deadline, timeout, handover)
            except Exception as exc:
                resend = verdict(exc)
                if resend is Resend.NEVER:
                    raise
                if isinstance(exc, RateLimitError):
                    # The pause is already on the limiter, which the next try waits out.
                    rate_limited += 1
                    if rate_limited > MAX_RATE_LIMIT_RETRIES:
                        raise
                    continue
                failures += 1
                allowed = resend is Resend.SAFE or self.resend_uncertain
                if failures >= self.max_retries or not allowed:
                    if resend is Resend.SAFE:
                        raise
                    raise SubmissionUncertainError(
                        f"the submission may or may not have created a task ({exc}); "
                        "it was not re-sent, to avoid paying twice",
                        request=request,
                        trace_id=getattr(exc, "trace_id", None),
                    ) from exc
                delay = self._backoff.delay(failures)
                log.warning("submission failed (%s); re-sending in %.1fs", exc, delay)
                await anyio.sleep(delay)
            else:
                return submission

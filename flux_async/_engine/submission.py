"""Paid submissions, re-sent only by the one rule: never pay twice.

``/flux/images`` costs money per image. Whether a failed submission may be
sent again is ``retry.SUBMISSION`` (the table and its reasons, including why
a ``504 timeout`` is re-sent and a gateway's 504 is not, are in ``retry``);
``verdict`` is that table as a plain function. ``Submitter`` applies it with
the submission rate limiter and the caller's deadline, through ``retry``'s
one attempts loop.

A paid POST on the wire is never cut by its caller's cancellation, whatever
cancelled it (an anyio scope, ``task.cancel()``, ``asyncio.wait_for``): it runs
in a task the client owns, and the caller only waits for its answer. A caller
that leaves early hands the submission over (``Handover``): when the answer
comes, the task it created is adopted by the client instead of being lost.
The waits before the POST (rate limit, backoff) are the caller's own and end
with it: nothing was sent then.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import anyio
import attrs

from .._core.errors import (
    ClientClosedError,
    JournalError,
    RateLimitError,
    SubmissionUncertainError,
    TaskTimeoutError,
)
from .._core.limits import Backoff, now, remaining
from .._core.models import ImageRequest
from .._core.protocol import IMAGES_PATH, Submission, read_submission, submit_body
from .._core.retry import SUBMISSION, Resend, attempts
from .coordination import RateGate
from .journal import Intent
from .primitives import Done

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


def verdict(error: BaseException) -> Resend:
    """Whether a submission that failed with ``error`` may be sent again."""
    return SUBMISSION.verdict(error)


async def _record(intent: Intent, outcome: Submission | BaseException | None) -> None:
    """Tell the journal how a POST ended (awaited for a task id: it must be durable)."""
    if isinstance(outcome, Submission):
        try:
            await intent.answered(outcome)
        except JournalError as exc:
            # The task exists and is followed here all the same; only its record is missing.
            log.error("task %s was created, but the journal could not record it (%s): it "
                      "is followed by this process only", outcome.task_id, exc)
    elif outcome is not None:
        intent.failed(may_exist=verdict(outcome) is Resend.UNCERTAIN)


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
                     request: ImageRequest, handover: Handover, intent: Intent | None) -> None:
        """The POST itself, in a task of the client's: its caller cannot cut it."""
        if wire.left:  # the caller left before the POST started: nothing is sent
            if intent is not None:
                intent.failed(may_exist=False)
            handover.drop()
            return
        self.on_wire += 1
        recorded = False
        try:
            try:
                wire.outcome = read_submission(await self._post(IMAGES_PATH, body))
                self.limiter.succeeded()
            except RateLimitError as exc:
                # Here, not in the caller's loop: the caller may have left, and the
                # next submissions must pause all the same. The loop logs it.
                wire.outcome = exc
                await self.limiter.penalize(exc.retry_after, anyio.current_time(), ticket)
            except Exception as exc:
                wire.outcome = exc
            if intent is not None:
                # Before anyone hears of the task: its id is durable first (shielded:
                # a commit takes milliseconds, and a cut one would leave a task unrecorded).
                recorded = True
                with anyio.CancelScope(shield=True):
                    await _record(intent, wire.outcome)
        except BaseException:  # the client's task group cut it (aclose ran out of time)
            if wire.outcome is None:
                wire.outcome = SubmissionUncertainError(
                    "the client closed before the submission's answer came; a task may exist",
                    request=request,
                )
            outcome = wire.outcome
            if intent is not None and not recorded and isinstance(outcome, BaseException):
                intent.failed(may_exist=isinstance(outcome, SubmissionUncertainError)
                              or verdict(outcome) is Resend.UNCERTAIN)
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
        timeout: float | None, handover: Handover, intent: Intent | None,
    ) -> Submission:
        ticket = self.limiter.acquire_nowait(now())
        if ticket is None:
            with anyio.move_on_after(remaining(deadline)) as scope:
                ticket = await self.limiter.acquire()
            if scope.cancelled_caught or ticket is None:
                raise TaskTimeoutError(None, timeout)
        if self.closing:
            raise ClientClosedError("the FluxClient was closed before the request was sent")
        if intent is not None:
            await intent.sending()  # the intent is durable before the POST goes out
        wire = _Wire()
        body = submit_body(request, callback_url=callback_url)
        try:
            self._spawn(lambda: self._carry(wire, body, ticket, request, handover, intent))
        except BaseException:
            if intent is not None:  # closing: nothing went out
                intent.failed(may_exist=False)
            raise
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
        timeout: float | None, handover: Handover, intent: Intent | None = None,
    ) -> Submission:
        """Send one paid submission; re-send it only as ``verdict`` allows.

        If the caller is cancelled while a POST is out, ``handover.left`` is true
        when the cancellation propagates, and ``handover`` gets the outcome later.
        """
        try:
            async for attempt in attempts(
                SUBMISSION, attempts=self.max_retries, backoff=self._backoff,
                deadline=deadline, resend_uncertain=self.resend_uncertain,
                # 429s wait on the limiter's pause, within their own budget.
                rate_limited_attempts=MAX_RATE_LIMIT_RETRIES + 1,
            ):
                with attempt:
                    return await self._once(request, callback_url, deadline, timeout, handover,
                                            intent)
        except Exception as exc:
            if verdict(exc) is Resend.UNCERTAIN:
                raise SubmissionUncertainError(
                    f"the submission may or may not have created a task ({exc}); "
                    "it was not re-sent, to avoid paying twice",
                    request=request,
                    trace_id=getattr(exc, "trace_id", None),
                    idempotency_key=request.idempotency_key,
                ) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

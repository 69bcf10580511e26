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
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from ._errors import (
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
from ._limits import Backoff, RateLimiter, remaining
from ._models import ImageRequest
from ._protocol import IMAGES_PATH, Submission, read_submission, submit_body

__all__ = ["MAX_RATE_LIMIT_RETRIES", "Resend", "Submitter", "verdict"]

log = logging.getLogger("flux_async")

# 429s are re-sent while the deadline allows, but never more than this many times.
MAX_RATE_LIMIT_RETRIES = 30

Post = Callable[[str, Mapping[str, Any]], Awaitable[Any]]


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
        limiter: RateLimiter,
        backoff: Backoff,
        *,
        max_retries: int,
        resend_uncertain: bool,
    ) -> None:
        self._post = post
        self.limiter = limiter
        self._backoff = backoff
        self.max_retries = max_retries
        self.resend_uncertain = resend_uncertain

    async def _once(
        self, request: ImageRequest, callback_url: str | None, deadline: float | None,
        timeout: float | None,
    ) -> Submission:
        ticket = self.limiter.acquire_nowait(anyio.current_time())
        if ticket is None:
            with anyio.move_on_after(remaining(deadline)) as scope:
                ticket = await self.limiter.acquire()
            if scope.cancelled_caught:
                raise TaskTimeoutError(None, timeout)
        try:
            # Shielded: a paid request cancelled on the wire may still create a task
            # whose id nobody would learn. It is bounded by the request timeout; the
            # caller's cancellation takes effect right after, with the id known.
            with anyio.CancelScope(shield=True):
                body = submit_body(request, callback_url=callback_url)
                data = await self._post(IMAGES_PATH, body)
        except RateLimitError as exc:
            pause = self.limiter.penalize(exc.retry_after, anyio.current_time(), ticket)
            log.warning("submission rate-limited (HTTP 429); pausing submissions %.1fs", pause)
            raise
        return read_submission(data)

    async def submit(
        self, request: ImageRequest, callback_url: str | None, *, deadline: float | None,
        timeout: float | None,
    ) -> Submission:
        """Send one paid submission; re-send it only as ``verdict`` allows."""
        failures = rate_limited = 0
        while True:
            try:
                submission = await self._once(request, callback_url, deadline, timeout)
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
                self.limiter.succeeded()
                return submission

"""Tasks adopted from elsewhere (a process that died), followed here to their end.

A shared coordinator finds the tasks of processes that stopped renewing their
lease and hands their ids to one live client (``FluxClient.adopt``); a journal
hands over, when a client opens it, the tasks its earlier process paid for and
did not see end. Nothing is submitted again: each id is followed like
``wait(id)`` would, kept until it ends, and its outcome goes to the client's
``on_recovered`` hook as a ``Recovered``, or to a WARNING log record when there
is no hook (the id is never lost silently). A submission whose fate is unknown
(its process died with the POST on the wire) is reported the same way, at once,
with no task id and a ``SubmissionUncertainError``.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import attrs

from .._core.errors import ClientClosedError, FluxError, SubmissionUncertainError
from .._core.models import ImageResult
from .followed import Watch

__all__ = ["Recovered", "RecoveredHook", "Recovering", "hand_over", "report_unknown"]

log = logging.getLogger("flux_async")


@attrs.frozen
class Recovered:
    """How a task adopted from elsewhere ended: its ``result``, or the ``error`` that ended it.

    ``task_id`` is None for a submission of unknown fate (``error`` is then a
    ``SubmissionUncertainError``: a task may exist, nobody knows its id; it was
    not sent again). ``idempotency_key`` is the request's key, when it had one.
    """

    task_id: str | None
    result: ImageResult | None = None
    error: FluxError | None = None
    idempotency_key: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


#: Takes each adopted task's outcome; may be async.
RecoveredHook = Callable[[Recovered], Awaitable[None] | None]
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class Recovering(Watch):
    """The watch on one adopted task: hands its outcome to the hook."""

    __slots__ = ("hook", "key", "spawn", "task_id")

    def __init__(self, task_id: str, hook: RecoveredHook | None, spawn: Spawn,
                 key: str | None = None) -> None:
        super().__init__(None, None)
        self.task_id = task_id
        self.hook = hook
        self.spawn = spawn
        self.key = key

    def notify(self, result: ImageResult | None, error: FluxError | None) -> None:
        if isinstance(error, ClientClosedError):
            return  # still running: closing names it with the other adopted tasks
        recovered = Recovered(self.task_id, result, error, self.key)
        if self.hook is None:
            log.warning("adopted task %s%s ended (%s) and no on_recovered hook takes it: %s",
                        self.task_id, _keyed(self.key),
                        "succeeded" if recovered.ok else "failed",
                        result.urls if result is not None else error)
            return
        hand_over(recovered, self.hook, self.spawn)


def report_unknown(key: str | None, request: Mapping[str, Any], created_at: float,
                   hook: RecoveredHook | None, spawn: Spawn) -> None:
    """A submission of unknown fate from an earlier process: to the hook, or a WARNING."""
    error = SubmissionUncertainError(
        f"a submission{_keyed(key)} was on the wire when its process ended "
        f"(sent at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(created_at))} UTC): it may "
        "or may not have created a task; it is not sent again", request=request,
        idempotency_key=key)
    if hook is None:
        log.warning("%s; no on_recovered hook takes it (prompt %r)", error,
                    str(request.get("prompt", ""))[:80])
        return
    hand_over(Recovered(None, None, error, key), hook, spawn)


def hand_over(recovered: Recovered, hook: RecoveredHook, spawn: Spawn) -> None:
    """Call ``hook`` with ``recovered`` in a task of the client's (it may be async)."""

    async def call() -> None:
        try:
            outcome = hook(recovered)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("the on_recovered hook failed for %s",
                          recovered.task_id or f"key {recovered.idempotency_key!r}")

    spawn(call)


def _keyed(key: str | None) -> str:
    return "" if key is None else f" (idempotency key {key!r})"

"""Tasks adopted from elsewhere (a process that died), followed here to their end.

A shared coordinator finds the tasks of processes that stopped renewing their
lease and hands their ids to one live client (``FluxClient.adopt``). Nothing is
submitted again: each id is followed like ``wait(id)`` would, kept until it
ends, and its outcome goes to the client's ``on_recovered`` hook as a
``Recovered``, or to a WARNING log record when there is no hook (the id is
never lost silently).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import attrs

from .._core.errors import ClientClosedError, FluxError
from .._core.models import ImageResult
from .followed import Watch

__all__ = ["Recovered", "RecoveredHook", "Recovering"]

log = logging.getLogger("flux_async")


@attrs.frozen
class Recovered:
    """How a task adopted from elsewhere ended: its ``result``, or the ``error`` that ended it."""

    task_id: str
    result: ImageResult | None = None
    error: FluxError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


#: Takes each adopted task's outcome; may be async.
RecoveredHook = Callable[[Recovered], Awaitable[None] | None]
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class Recovering(Watch):
    """The watch on one adopted task: hands its outcome to the hook."""

    __slots__ = ("hook", "spawn", "task_id")

    def __init__(self, task_id: str, hook: RecoveredHook | None, spawn: Spawn) -> None:
        super().__init__(None, None)
        self.task_id = task_id
        self.hook = hook
        self.spawn = spawn

    def notify(self, result: ImageResult | None, error: FluxError | None) -> None:
        if isinstance(error, ClientClosedError):
            return  # still running: closing names it with the other adopted tasks
        recovered = Recovered(self.task_id, result, error)
        hook = self.hook
        if hook is None:
            log.warning("adopted task %s ended (%s) and no on_recovered hook takes it: %s",
                        self.task_id, "succeeded" if recovered.ok else "failed",
                        result.urls if result is not None else error)
            return

        async def call() -> None:
            try:
                outcome = hook(recovered)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("the on_recovered hook failed for task %s", self.task_id)

        self.spawn(call)

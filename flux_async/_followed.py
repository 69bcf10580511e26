"""A followed task's record (``Followed``), its stages, and the one rule for its outcome.

The stages change only through ``_tracker.advance`` and the table in
``_tracker``'s docstring; this module holds the data.
"""

from __future__ import annotations

import enum

from ._deadlines import Watch
from ._errors import FluxError, TaskFailedError
from ._models import ImageRequest, ImageResult, Task

__all__ = ["Followed", "Stage", "outcome_of", "task_outcome"]


class Stage(enum.Enum):
    QUEUED = "waiting for a generation slot"
    SENDING = "holding a slot; the paid submission is on its way"
    FOLLOWED = "the service gave a task id; followed until it ends"
    DONE = "its outcome is known"
    DROPPED = "no longer followed, without an outcome"


class Followed:
    """One followed task (or a submission on its way to becoming one).

    ``kept``: followed even with no watcher (``submit()``, adopted). ``request``
    and ``nonce``: what this client submitted and the callback token's nonce
    issued with it (None when only waited on); callbacks are checked against
    both. ``missing``, ``not_before``, ``confirming``, ``callbacks``: the
    poller's notes. ``outcome``: the final ``Task``, or the error that ended it.
    """

    __slots__ = (
        "adopted",
        "callbacks",
        "confirming",
        "kept",
        "missing",
        "nonce",
        "not_before",
        "outcome",
        "request",
        "shared",
        "since",
        "slot",
        "stage",
        "task_id",
        "watches",
    )

    def __init__(self, task_id: str, stage: Stage, request: ImageRequest | None = None) -> None:
        self.task_id = task_id  # "" until the service gives one
        self.stage = stage
        self.request = request
        self.nonce: str | None = None
        self.since = 0.0  # when the id became known: the not-found grace starts here
        self.slot = False
        self.kept = False
        self.adopted = False
        self.callbacks = False
        self.shared = False  # asked about in a fleet's shared rounds
        self.confirming = False
        self.missing = 0
        self.not_before = 0.0
        self.outcome: Task | FluxError | None = None
        self.watches: list[Watch] | None = None

    def __repr__(self) -> str:
        return f"<Followed {self.task_id or '(no id yet)'} {self.stage.name}>"


def outcome_of(followed: Followed) -> tuple[ImageResult | None, FluxError | None]:
    """A finished task's result, or the error its waiters get (one rule for every waiter)."""
    outcome = followed.outcome
    if isinstance(outcome, FluxError):
        return None, outcome
    assert outcome is not None
    return task_outcome(outcome)


def task_outcome(task: Task) -> tuple[ImageResult | None, FluxError | None]:
    """A finished ``Task``'s result, or the ``TaskFailedError`` it stands for."""
    if task.result is not None:
        return task.result, None
    error = task.error
    return None, TaskFailedError(
        task.id, code=error.code if error else None,
        message=error.message if error else "the task failed", trace_id=task.trace_id,
    )

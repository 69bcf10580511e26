"""A followed task (``Followed``), its stages, who waits for it, and its outcome's rule.

The stages change only through ``tracker.advance`` and the table in
``tracker``'s docstring; this module holds the data. A ``Watch`` is one party
waiting for one followed task until its own deadline (``deadlines`` keeps them
in one heap).
"""

from __future__ import annotations

import enum

from .._core.errors import FluxError, TaskFailedError
from .._core.models import ImageRequest, ImageResult, Task

__all__ = ["Followed", "Stage", "Watch", "outcome_of", "task_outcome"]


class Stage(enum.Enum):
    QUEUED = "waiting for a generation slot"
    SENDING = "holding a slot; the paid submission is on its way"
    FOLLOWED = "the service gave a task id; followed until it ends"
    DONE = "its outcome is known"
    DROPPED = "no longer followed, without an outcome"


class Watch:
    """One party waiting for one followed task, until ``deadline`` (None: none).

    ``notify`` is called at most once: with the outcome, or with
    ``TaskTimeoutError`` when the deadline passes first; never after the watch
    was withdrawn. ``live`` is true from ``Tracker.watch`` until then.
    """

    __slots__ = ("deadline", "followed", "live", "timeout")

    def __init__(self, deadline: float | None, timeout: float | None) -> None:
        self.deadline = deadline
        self.timeout = timeout
        self.followed: Followed | None = None
        self.live = False

    def __lt__(self, other: Watch) -> bool:  # the heap's order; only watches with one
        return (self.deadline or 0.0) < (other.deadline or 0.0)

    def notify(self, result: ImageResult | None, error: FluxError | None) -> None:
        raise NotImplementedError


class Followed:
    """One followed task (or a submission on its way to becoming one).

    ``kept``: followed even with no watcher (``submit()``, adopted). ``request``
    and ``nonce``: what this client submitted and the callback token's nonce
    issued with it (None when only waited on); callbacks are checked against
    both. ``missing``, ``not_before``, ``confirming``, ``callbacks``: the
    poller's notes. ``outcome``: the final ``Task``, or the error that ended it.
    ``observed``: what the client's telemetry notes of it (``telemetry``), or None.
    """

    __slots__ = (
        "adopted",
        "callbacks",
        "confirming",
        "entry",
        "kept",
        "missing",
        "nonce",
        "not_before",
        "observed",
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
        self.entry: str | None = None  # its journal entry, whose outcome is recorded
        self.observed: object | None = None

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

"""Where a task stands, decided from a ``/flux/tasks`` task object.

The service has no single status field (see docs/protocol.md): a task is running,
succeeded or failed depending on ``response``, ``finished_at`` and sometimes a
``status``/``state`` word. All of those rules live in ``RULES`` below, in the
order they are tried; nothing else in the package decides a task's state.

Everything here is a plain function over plain data, tested without a loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

import attrs

from .models import TaskStatus

__all__ = ["RULES", "Facts", "classify", "facts_of"]

FAILED_WORDS = frozenset(
    {"failed", "failure", "error", "errored", "cancelled", "canceled", "rejected", "timeout"}
)
SUCCEEDED_WORDS = frozenset({"succeeded", "success", "succeed", "completed", "complete", "done"})
RUNNING_WORDS = frozenset(
    {"pending", "queued", "queue", "processing", "running", "started", "submitted", "waiting"}
)


@attrs.frozen
class Facts:
    """The few things the rules look at, pulled out of one task object."""

    word: str | None  # a status/state word, lower-cased, if the object has one
    success: bool | None  # response.success when it is a bool
    has_error: bool  # response.error is an object
    has_images: bool  # response.data is a non-empty list
    finished: bool  # the task ended: finished_at or elapsed has a value (null is none)


def _word(task: Mapping[str, Any], response: Mapping[str, Any]) -> str | None:
    # The vendor's ``state`` is the empty string while pending: that says nothing
    # the structure does not, so it counts as no word (see RULES).
    for place in (task, response):
        for key in ("status", "state"):
            value = place.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip().lower()
    return None


def _has_value(value: object) -> bool:
    # ``finished_at: null`` (and ``elapsed: null``) is how a running task says "not yet".
    return value is not None and value != "" and value is not False


def _is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    # Wire objects are dicts: checked first, as the ABC's check costs ten times more.
    return type(value) is dict or isinstance(value, Mapping)


_NOTHING: Mapping[str, Any] = {}


def facts_of(task: Mapping[str, Any], *, ended: bool = False) -> Facts:
    """Read the facts the rules need; any shape is accepted, none raises.

    ``ended`` says the object is known to be final without a timestamp to show
    for it (a callback's body: the service posts it when the task ends).

    Every answer of every poll round comes through here (most of them pending),
    so the reads are spelt out rather than looped over.
    """
    response = task.get("response")
    if not _is_mapping(response):
        # Missing, null or something odd: the task has not answered yet.
        response = _NOTHING
    success = response.get("success")
    data = response.get("data")
    return Facts(
        word=_word(task, response),
        success=success if isinstance(success, bool) else None,
        has_error=_is_mapping(response.get("error")),
        has_images=isinstance(data, list) and len(data) > 0,
        finished=ended
        or _has_value(task.get("finished_at"))
        or _has_value(task.get("elapsed"))
        or _has_value(response.get("finished_at"))
        or _has_value(response.get("elapsed")),
    )


Rule = tuple[str, Callable[[Facts], bool], TaskStatus]

# First match wins. A status word (``status``, or the vendor's top-level ``state``)
# outranks the structure when present: services that send one mean it. The empty
# ``state`` of a pending task is no word at all, so the structure decides: a task
# whose images are there is read as succeeded even if ``state`` lags behind, since
# missing them would lose a paid result.
#
# A bare ``success: false`` (no error object, no finished_at/elapsed, no word) is
# read as still running. The vendor's own clients disagree here (its SDK keeps
# polling, its MCP server calls it failed); the costs decide. Read as running when
# it was final, the wait ends at its deadline with a ``TaskTimeoutError`` naming
# the task, and nothing is charged (failed tasks are not billed). Read as failed
# when it was a passing hiccup, the task may still succeed and be billed while the
# caller was told it failed, and its images are lost. Polling on loses time, the
# other choice can lose money.
RULES: tuple[Rule, ...] = (
    ("failure word", lambda f: f.word in FAILED_WORDS, TaskStatus.FAILED),
    ("success word with images", lambda f: f.word in SUCCEEDED_WORDS and f.has_images,
     TaskStatus.SUCCEEDED),
    ("success word without images", lambda f: f.word in SUCCEEDED_WORDS, TaskStatus.FAILED),
    ("running word", lambda f: f.word in RUNNING_WORDS, TaskStatus.PENDING),
    # An error object is final with or without ``success: false`` beside it (the
    # vendor's error bodies come both ways); ``success: false`` alone only once ended.
    ("error object", lambda f: (f.has_error and f.success is not True)
     or (f.success is False and f.finished), TaskStatus.FAILED),
    ("images", lambda f: f.success is not False and f.has_images, TaskStatus.SUCCEEDED),
    ("finished without images", lambda f: f.finished, TaskStatus.FAILED),
    ("nothing final yet", lambda f: True, TaskStatus.PENDING),
)


def classify(task: Mapping[str, Any], *, ended: bool = False) -> TaskStatus:
    """The status of one task object, by the first rule in ``RULES`` that matches."""
    facts = facts_of(task, ended=ended)
    for _name, matches, status in RULES:
        if matches(facts):
            return status
    raise AssertionError("the last rule matches everything")  # pragma: no cover


def failure_reason(task: Mapping[str, Any]) -> tuple[str | None, str]:
    """``(code, message)`` for a failed task, in the service's words where it gave any."""
    response = task.get("response")
    error = response.get("error") if isinstance(response, Mapping) else None
    if isinstance(error, Mapping):
        code = error.get("code")
        message = error.get("message")
        return (
            code if isinstance(code, str) else None,
            message if isinstance(message, str) and message else "the task failed",
        )
    word = facts_of(task).word
    if word in FAILED_WORDS:
        return word, f"the service reports the task {word}"
    return None, "the task finished without images"

"""What a journal remembers of one paid submission, as plain values (no I/O).

A journal answers one question for every store (SQLite, Redis, memory): which
submissions have we paid for, and what became of them? Each is an ``Entry``,
which moves through these states (no other move is made):

============  =====================================================================
QUEUED        a keyed request claimed its key; nothing sent yet (on a crash: gone,
              the key is free again: nothing was paid)
SENDING       the paid POST may be on the wire; its fate is unknown until the
              answer is recorded
RUNNING       the service gave a task id; followed until it ends
SUCCEEDED     ended with images (the result body is kept)
FAILED        ended with an error (the task's own, or not found after the grace)
UNKNOWN       SENDING when its process died, or the answer never came: a task may
              exist. Never re-sent silently; a callback that names it (by its
              token's nonce) makes it RUNNING; ``release_key`` lets the caller pay
              again on purpose
============  =====================================================================

A key is tied to one request: its ``fingerprint`` (a hash of the request's wire
fields, the key itself left out). The same key with another fingerprint is an
``IdempotencyConflictError`` before anything is sent.
"""

from __future__ import annotations

import enum
import hashlib
import json
import random
import time
from collections.abc import Mapping
from typing import Any, Final

import attrs

from .errors import (
    FluxError,
    IdempotencyConflictError,
    NotFoundError,
    TaskFailedError,
    for_task,
)
from .models import ImageRequest, ImageResult, Task
from .protocol import read_result_body
from .wire import unstructure_request

__all__ = [
    "KEEPS_KEY",
    "LIVE",
    "Entry",
    "EntryState",
    "Opened",
    "check_same_request",
    "fingerprint",
    "lost_body",
    "new_entry_id",
    "outcome_body",
    "outcome_of_body",
]


class EntryState(enum.Enum):
    QUEUED = "queued"
    SENDING = "sending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def ended(self) -> bool:
        return self in (EntryState.SUCCEEDED, EntryState.FAILED)


# Marks a recorded failure as "not found after the grace", not the task's own.
_LOST = "flux_async_lost"

#: States whose entry a live process is still working on.
LIVE: Final = frozenset({EntryState.QUEUED, EntryState.SENDING, EntryState.RUNNING})
#: States whose entry keeps its key past the retention: work under way, and a
#: submission of unknown fate (only the caller frees that key: ``release_key``).
KEEPS_KEY: Final = LIVE | {EntryState.UNKNOWN}


@attrs.frozen
class Entry:
    """One paid submission (or a keyed request about to be one), as a journal holds it.

    ``request`` holds the wire fields (for recovery and reports); ``nonce`` the
    callback token's nonce issued with it (a late callback finds the entry by it);
    ``outcome`` the final result body (``outcome_body``) once it ended; ``owner``
    the journal handle (one client) that works on it; times are wall-clock seconds.
    """

    entry_id: str
    fingerprint: str
    request: Mapping[str, Any]
    state: EntryState
    key: str | None = None
    task_id: str | None = None
    nonce: str | None = None
    outcome: Mapping[str, Any] | None = None
    owner: str = ""
    created_at: float = 0.0


@attrs.frozen
class Opened:
    """What a journal handed over when it was opened (entries of handles that ended).

    ``running``: tasks to follow now (they may still be billed); ``unknown``:
    submissions that may have created a task nobody knows the id of.
    """

    running: tuple[Entry, ...] = ()
    unknown: tuple[Entry, ...] = ()


def new_entry_id() -> str:
    # The time first: new entries sort after the others, so a journal's writes stay in
    # the last pages of its tree instead of touching pages all over it. Then 64 random
    # bits (no system call: ``random`` reseeds in a forked child, so processes forked
    # from one parent draw apart).
    return f"{time.time_ns():016x}{random.getrandbits(64):016x}"


def fingerprint(request: ImageRequest | Mapping[str, Any], *,
                image_digest: str | None = None) -> str:
    """A hash of what ``request`` asks the service to do (its key left out).

    ``request`` may be its wire fields already (``unstructure_request``).
    ``image_digest``: for an edit of a local image, the image's own digest stands
    for its upload URL, which changes with every upload of the same bytes.
    """
    fields = dict(request) if isinstance(request, Mapping) else unstructure_request(request)
    if image_digest is not None:
        fields["image_url"] = f"sha256:{image_digest}"
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_same_request(key: str, known: str, given: str) -> None:
    """``IdempotencyConflictError`` unless the key's recorded request is this one."""
    if known != given:
        raise IdempotencyConflictError(
            key, "was used for another request (another prompt, model, size, count or "
            "image): a key names one request; use a new key for a new request")


def outcome_body(task: Task) -> dict[str, Any]:
    """A finished task as a final result body (the shape a callback posts)."""
    body: dict[str, Any] = {"task_id": task.id, "trace_id": task.trace_id}
    if task.result is not None:
        body["success"] = True
        body["data"] = [dict(image.raw) if image.raw else
                        {"image_url": image.url, "prompt": image.prompt}
                        for image in task.result.images]
    else:
        error = task.error
        body["success"] = False
        body["error"] = {"code": error.code if error else None,
                         "message": error.message if error else "the task failed"}
    return body


def lost_body(task_id: str, error: FluxError) -> dict[str, Any]:
    """The final body recorded for a task the service never knew (not found after the grace)."""
    return {"task_id": task_id, "trace_id": getattr(error, "trace_id", None), "success": False,
            "error": {"code": getattr(error, "code", None) or "not_found",
                      "message": getattr(error, "message", None) or str(error)},
            _LOST: True}


def outcome_of_body(body: Mapping[str, Any]) -> tuple[ImageResult | None, FluxError | None]:
    """The result, or the error, a recorded final body stands for."""
    task = read_result_body(body)
    if body.get(_LOST) and task.error is not None:
        lost = NotFoundError(task.error.message, status=404, code=task.error.code,
                             trace_id=task.trace_id)
        return None, for_task(lost, task.id)
    if task.result is not None:
        return task.result, None
    error = task.error
    return None, TaskFailedError(task.id, code=error.code if error else None,
                                 message=error.message if error else "the task failed",
                                 trace_id=task.trace_id)

"""What the commands print: one-line errors, JSON documents, tasks for people.

Results go to standard output (file paths, JSON); messages go to standard error,
so ``flux-async generate ... --json | jq`` always reads clean JSON.
"""

from __future__ import annotations

import errno
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flux_async import (
    APIError,
    AuthenticationError,
    DownloadError,
    FluxError,
    ForbiddenError,
    Image,
    ImageResult,
    InsufficientBalanceError,
    JournalError,
    NotFoundError,
    RateLimitError,
    SubmissionUncertainError,
    Task,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
    UpstreamTimeoutError,
    ValidationError,
)

__all__ = [
    "HALTS",
    "PROG",
    "disk_full",
    "download_failure",
    "error",
    "image_json",
    "print_json",
    "reason_of",
    "result_json",
    "show_task",
    "strerror",
    "task_json",
    "warn",
]

PROG = "flux-async"


def error(message: str) -> None:
    """``flux-async: error: ...`` on standard error, like argparse's own errors."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), flush=True)


# Failures that every later line would meet too: the batch stops feeding lines.
HALTS = frozenset({"auth", "balance", "disabled", "disk_full", "manifest", "journal"})
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is "no space left" on the local disk."""
    seen: BaseException | None = exc
    for _ in range(5):  # a DownloadError raised from the OSError, and so on
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def reason_of(exc: BaseException) -> str:
    """A short machine-friendly word for why a line failed (the summary groups by it).

    ``auth``, ``balance`` and ``disabled`` concern the API key, not the line (see
    ``HALTS``). ``forbidden`` (403: the content was refused, or no access) and
    ``upstream_timeout`` (504: the model timed out, not billed) concern one line only.
    """
    if disk_full(exc):
        return "disk_full"
    if isinstance(exc, JournalError):  # nothing more can be paid for safely
        return "journal"
    if isinstance(exc, ForbiddenError):
        return "forbidden"
    if isinstance(exc, UpstreamTimeoutError):
        return "upstream_timeout"
    if isinstance(exc, APIError) and exc.code == "disabled":
        return "disabled"
    table: list[tuple[type[BaseException], str]] = [
        (TaskFailedError, "task_failed"),
        (TaskTimeoutError, "timeout"),
        (SubmissionUncertainError, "submission_uncertain"),
        (DownloadError, "download"),
        (ValidationError, "invalid_request"),
        (AuthenticationError, "auth"),
        (InsufficientBalanceError, "balance"),
        (NotFoundError, "not_found"),
        (RateLimitError, "rate_limited"),
        (APIError, "api_error"),
        (TransportError, "network"),
        (FluxError, "error"),
    ]
    for kind, reason in table:
        if isinstance(exc, kind):
            return reason
    return "error"


def download_failure(exc: BaseException) -> FluxError | OSError | None:
    """The error a failed download means, or None for anything else (a bug: re-raised).

    Some versions of the library let an OSError out of their clean-up, inside
    exception groups, when the disk is full; a full disk wins over other errors.
    """
    leaves: list[BaseException] = []
    stack = [exc]
    while stack:
        item = stack.pop()
        inner = getattr(item, "exceptions", None)
        if isinstance(inner, tuple):
            stack.extend(inner)
        else:
            leaves.append(item)
    known = [e for e in leaves if isinstance(e, (FluxError, OSError))]
    if not known or len(known) < len(leaves):
        return None
    return next((e for e in known if reason_of(e) == "disk_full"), known[0])


def strerror(exc: BaseException) -> str:
    """The OSError's words behind ``exc`` ("No space left on device"), else ``exc``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__
    return str(exc)


def image_json(image: Image) -> dict[str, Any]:
    return {"url": image.url, "prompt": image.prompt, "seed": image.seed}


def result_json(result: ImageResult, files: Sequence[Path] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task_id": result.task_id,
        "trace_id": result.trace_id,
        "images": [image_json(i) for i in result.images],
    }
    if files is not None:
        out["files"] = [str(f) for f in files]
    return out


def task_json(task: Task, files: Sequence[Path] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": task.id,
        "status": task.status.value,
        "created_at": task.created_at,
        "finished_at": task.finished_at,
        "trace_id": task.trace_id,
        "images": [image_json(i) for i in task.result.images] if task.result else [],
        "error": (
            {"code": task.error.code, "message": task.error.message} if task.error else None
        ),
    }
    if files is not None:
        out["files"] = [str(f) for f in files]
    return out


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def show_task(task: Task, files: Sequence[Path] | None = None) -> None:
    """A task for people: status line, times, then one image URL (or file) a line."""
    print(f"{task.id}  {task.status.value}")
    print(f"  created {_when(task.created_at)}  finished {_when(task.finished_at)}")
    if task.error is not None:
        code = f" ({task.error.code})" if task.error.code else ""
        print(f"  error: {task.error.message}{code}")
    if task.result is not None:
        for image in task.result.images:
            print(f"  {image.url}")
    for path in files or ():
        print(f"  -> {path}")

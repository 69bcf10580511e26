"""The Flux protocol without I/O: what to send, and what an answer means.

Every function takes and returns plain data (dicts, bytes, models), so the whole
protocol is tested with function calls. The aiohttp edge (``link``) moves
the bytes; the client decides when to call what.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .errors import APIError, ProtocolError, error_for_response
from .models import ImageRequest, ImageResult, Task, TaskErrorInfo, TaskStatus
from .state import classify, failure_reason
from .wire import structure_images, unstructure_request

__all__ = [
    "DEFAULT_BASE_URL",
    "IMAGES_PATH",
    "TASKS_PATH",
    "Submission",
    "decode_answer",
    "error_from_answer",
    "parse_retry_after",
    "read_batch",
    "read_result_body",
    "read_submission",
    "read_task",
    "Headers",
    "request_headers",
    "retrieve_batch_body",
    "retrieve_body",
    "submit_body",
    "task_of",
]

DEFAULT_BASE_URL = "https://api.acedata.cloud"
IMAGES_PATH = "/flux/images"
TASKS_PATH = "/flux/tasks"


class Headers(dict[str, str]):
    """Request headers whose repr hides the authorization value."""

    def __repr__(self) -> str:
        shown = {k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in self.items()}
        return f"Headers({shown!r})"


def request_headers(api_key: str) -> Headers:
    """The headers of every call. They hold the key, hidden from ``repr``."""
    return Headers(
        {
            "authorization": f"Bearer {api_key}",
            "accept": "application/json",
            "content-type": "application/json",
        }
    )


def submit_body(request: ImageRequest, *, callback_url: str | None = None) -> dict[str, Any]:
    """A ``/flux/images`` body that answers at once with a task id."""
    body = unstructure_request(request)
    body["async"] = True
    if callback_url is not None:
        body["callback_url"] = callback_url
    return body


def retrieve_body(task_id: str) -> dict[str, Any]:
    return {"action": "retrieve", "id": task_id}


def retrieve_batch_body(task_ids: Sequence[str]) -> dict[str, Any]:
    return {"action": "retrieve_batch", "ids": list(task_ids)}


# --- answers ---------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def _snippet(body: bytes) -> str:
    """A short, printable excerpt of a body that was not the protocol's JSON."""
    text = body[:300].decode("utf-8", "replace")
    text = re.sub(r"<[^>]*>", " ", text)  # a gateway's HTML page: keep the words
    text = " ".join(text.split())
    return text[:160] or "(empty body)"


def error_from_answer(
    status: int, headers: Mapping[str, str], body: bytes, *, now: float
) -> APIError:
    """The typed error for a non-2xx answer, JSON or not."""
    retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, Mapping):
        error = data.get("error")
        trace_id = data.get("trace_id")
        trace_id = trace_id if isinstance(trace_id, str) else None
        if isinstance(error, Mapping):
            code = error.get("code")
            message = error.get("message")
            return error_for_response(
                status,
                code=code if isinstance(code, str) else None,
                message=message if isinstance(message, str) and message else "no message",
                trace_id=trace_id,
                retry_after=retry_after,
            )
        return error_for_response(
            status, code=None, message=_snippet(body), trace_id=trace_id, retry_after=retry_after
        )
    return error_for_response(
        status,
        code=None,
        message=f"not a JSON answer: {_snippet(body)}",
        trace_id=None,
        retry_after=retry_after,
    )


def decode_answer(status: int, headers: Mapping[str, str], body: bytes, *, now: float) -> Any:
    """The JSON of a 2xx answer; the typed error of anything else."""
    if not 200 <= status < 300:
        raise error_from_answer(status, headers, body, now=now)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ProtocolError(
            f"HTTP {status} answer is not valid JSON: {_snippet(body)}", status=status
        ) from exc


@attrs.frozen
class Submission:
    """What ``/flux/images`` said to a submission: a task id, maybe already a result."""

    task_id: str
    trace_id: str | None
    result: ImageResult | None = None


def task_of(submission: Submission) -> Task:
    """The task a submission's answer describes (finished when it carried the result)."""
    if submission.result is not None:
        return Task(submission.task_id, TaskStatus.SUCCEEDED, trace_id=submission.trace_id,
                    result=submission.result, raw=submission.result.raw)
    return Task(submission.task_id, TaskStatus.PENDING, trace_id=submission.trace_id)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def read_submission(data: Any) -> Submission:
    """Read a submission's answer; both documented async shapes are accepted."""
    if not isinstance(data, Mapping):
        raise ProtocolError("a submission's answer is not a JSON object")
    task_id = _text(data.get("task_id"))
    trace_id = _text(data.get("trace_id"))
    error = data.get("error")
    if task_id is None:
        if isinstance(error, Mapping):
            raise error_for_response(
                200,
                code=_text(error.get("code")),
                message=_text(error.get("message")) or "the service refused the request",
                trace_id=trace_id,
            )
        raise ProtocolError("a submission's answer has no task_id")
    result = None
    images = data.get("data")
    if isinstance(images, list) and images:
        result = ImageResult(task_id, trace_id, structure_images(images), raw=data)
    return Submission(task_id, trace_id, result)


def task_id_of(task: Mapping[str, Any]) -> str | None:
    """A task object's id; some shapes carry it only inside ``response``."""
    task_id = _text(task.get("id")) or _text(task.get("task_id"))
    if task_id is None:
        response = task.get("response")
        if isinstance(response, Mapping):
            task_id = _text(response.get("task_id"))
    return task_id


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def read_task(task: Any, *, ended: bool = False, status: TaskStatus | None = None) -> Task:
    """A ``/flux/tasks`` task object as a ``Task``; any documented shape is accepted.

    ``ended``: the object is known to be final though it carries no timestamp
    (a result body); ``Task.finished_at`` stays what the wire said, a number or None.
    ``status``: ``classify(task)``, when the caller has it already (the poller's hot
    path classifies every answer, and builds a ``Task`` only for the finished ones).
    """
    if not isinstance(task, Mapping):
        raise ProtocolError("a task is not a JSON object")
    task_id = task_id_of(task)
    if task_id is None:
        raise ProtocolError("a task object has no id")
    if status is None:
        status = classify(task, ended=ended)
    response = task.get("response")
    response = response if isinstance(response, Mapping) else {}
    trace_id = _text(task.get("trace_id")) or _text(response.get("trace_id"))
    result = error = None
    if status is TaskStatus.SUCCEEDED:
        images = structure_images(response.get("data"))
        result = ImageResult(task_id, trace_id, images, raw=response)
    elif status is TaskStatus.FAILED:
        code, message = failure_reason(task)
        error = TaskErrorInfo(code, message)
    return Task(
        id=task_id,
        status=status,
        created_at=_number(task.get("created_at")),
        finished_at=_number(task.get("finished_at")),
        trace_id=trace_id,
        result=result,
        error=error,
        raw=task,
    )


def read_result_body(body: Any) -> Task:
    """A final result body (a callback's POST, a held-open answer) as a ``Task``.

    It has the shape of a task's ``response``, so it is read by the same rules;
    arriving at all means the task ended. It carries no timestamp, so the
    ``Task``'s ``finished_at`` is None.
    """
    if not isinstance(body, Mapping):
        raise ProtocolError("a result body is not a JSON object")
    task_id = _text(body.get("task_id"))
    if task_id is None:
        raise ProtocolError("a result body has no task_id")
    return read_task(
        {"id": task_id, "trace_id": body.get("trace_id"), "response": body}, ended=True
    )


def read_batch(data: Any) -> list[Mapping[str, Any]]:
    """The task objects of a ``retrieve_batch`` answer (order and completeness not assumed)."""
    items = data.get("items") if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        raise ProtocolError("a retrieve_batch answer has no items list")
    return [item for item in items if isinstance(item, Mapping)]

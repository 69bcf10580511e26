"""The values flux_async hands in and out: requests, images, results, tasks.

All frozen attrs classes. Requests validate themselves on construction so bad
input fails before a request (and money) is spent, with a ``ValidationError``
naming the field. Wire names (``image_url`` for an image's URL and so on) live in
``_wire``, not here: these are the names Python code reads.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ._errors import FluxError, ValidationError

__all__ = [
    "EditRequest",
    "GenerateRequest",
    "Image",
    "ImageRequest",
    "ImageResult",
    "Outcome",
    "Task",
    "TaskStatus",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# "1024x1024" or an aspect ratio "16:9"; both numbers positive.
_SIZE = re.compile(r"^[1-9][0-9]{0,5}[x:][1-9][0-9]{0,5}$")


def _check_prompt(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(attribute.name, "must be a non-empty string")


def _check_optional_text(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValidationError(attribute.name, "must be a non-empty string when given")


def _check_size(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not _SIZE.match(value):
        raise ValidationError(
            attribute.name, f"must look like '1024x1024' or '16:9', got {value!r}"
        )


def _check_count(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    # bool is an int subclass; True is not a count.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationError(attribute.name, f"must be a positive integer, got {value!r}")


def check_http_url(field: str, value: object) -> None:
    """Raise ``ValidationError`` unless ``value`` is an absolute http(s) URL."""
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/?#]+\S*$", value):
        raise ValidationError(field, f"must be an absolute http(s) URL, got {value!r}")


def _check_image_url(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_http_url(attribute.name, value)


@attrs.frozen
class GenerateRequest:
    """Text to image: ``prompt`` with optional ``model``, ``size`` and ``count``.

    Unknown model names are passed through (new ones appear upstream).
    """

    prompt: str = attrs.field(validator=_check_prompt)
    model: str | None = attrs.field(default=None, validator=_check_optional_text)
    size: str | None = attrs.field(default=None, validator=_check_size)
    count: int | None = attrs.field(default=None, validator=_check_count)

    action = "generate"


@attrs.frozen
class EditRequest:
    """Edit the image at ``image_url`` as ``prompt`` says."""

    prompt: str = attrs.field(validator=_check_prompt)
    image_url: str = attrs.field(validator=_check_image_url)
    model: str | None = attrs.field(default=None, validator=_check_optional_text)
    size: str | None = attrs.field(default=None, validator=_check_size)

    action = "edit"


ImageRequest = GenerateRequest | EditRequest


@attrs.frozen
class Image:
    """One generated image. ``raw`` holds every field the wire carried."""

    url: str
    prompt: str | None = None
    seed: int | str | None = None
    timings: Any = None
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False, repr=False)


@attrs.frozen
class ImageResult:
    """A resolved generation: its task, trace id and images."""

    task_id: str
    trace_id: str | None
    images: tuple[Image, ...]
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False, repr=False)

    @property
    def urls(self) -> list[str]:
        return [image.url for image in self.images]


class TaskStatus(enum.Enum):
    """Where a task stands. The wire has no single field for it: see ``_state``."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self is not TaskStatus.PENDING


@attrs.frozen
class TaskErrorInfo:
    """Why a task failed, in the service's words."""

    code: str | None
    message: str


@attrs.frozen
class Task:
    """A task as ``/flux/tasks`` (or a submission) reports it.

    ``result`` is set when it succeeded, ``error`` when it failed; ``raw`` is the
    whole wire object, for fields this model does not name.
    """

    id: str
    status: TaskStatus
    created_at: float | None = None
    finished_at: float | None = None
    trace_id: str | None = None
    result: ImageResult | None = None
    error: TaskErrorInfo | None = None
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False, repr=False)


@attrs.frozen
class Outcome:
    """What ``FluxClient.map`` yields per request: its result or its error, never both.

    ``index`` is the request's position in the input; ``task_id`` is set once the
    service gave one (also on most errors, so the task can be waited on again).
    """

    index: int
    request: ImageRequest
    result: ImageResult | None = None
    error: FluxError | None = None
    task_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

"""The values flux_async hands in and out: requests, images, results, tasks.

All frozen attrs classes. Requests validate themselves on construction so bad
input fails before a request (and money) is spent, with a ``ValidationError``
naming the field; that includes a ``size`` its model cannot take, by the table
``SIZE_RULES`` below. Wire names (``image_url`` for an image's URL and so on)
live in ``wire``, not here: these are the names Python code reads.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import attrs

from .errors import FluxError, ValidationError

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_MODEL",
    "MAX_KEY_LENGTH",
    "MAX_PROMPT_CHARS",
    "SIZE_RULES",
    "EditRequest",
    "GenerateRequest",
    "Image",
    "ImageRequest",
    "ImageResult",
    "Outcome",
    "SizeRule",
    "Task",
    "TaskStatus",
    "check_http_url",
    "http_url_problem",
    "size_problem",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# --- sizes per model ----------------------------------------------------------------

ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")


@attrs.frozen
class SizeRule:
    """The sizes one model takes: ``WxH`` within bounds, or one of a few aspect ratios."""

    min_side: int | None = None  # WxH: each side at least this...
    max_side: int | None = None  # ...at most this (None: no documented maximum)...
    multiple: int = 1  # ...and a multiple of this
    ratios: tuple[str, ...] = ()  # set: an aspect ratio, one of these, and nothing else

    def __str__(self) -> str:
        if self.ratios:
            return f"an aspect ratio, one of {' '.join(self.ratios)}"
        bounds = f"{self.min_side}-{self.max_side}" if self.max_side else f">= {self.min_side}"
        return f"WxH with each side {bounds} and a multiple of {self.multiple}"

    def takes(self, size: str) -> bool:
        if self.ratios:
            return size in self.ratios
        width, x, height = size.partition("x")
        if not (x and width.isdigit() and height.isdigit()):
            return False
        low, high = self.min_side or 1, self.max_side or float("inf")
        return all(low <= side <= high and side % self.multiple == 0
                   for side in (int(width), int(height)))


_FLUX_1 = SizeRule(min_side=256, max_side=1440, multiple=32)
_FLUX_2 = SizeRule(min_side=64, multiple=32)
_RATIO = SizeRule(ratios=ASPECT_RATIOS)

# The vendor's documented models and the sizes each takes. A model not listed here
# passes with the shape check alone: new models appear upstream before this table
# learns them, and the service judges those itself (a 400, which costs nothing).
SIZE_RULES: Mapping[str, SizeRule] = MappingProxyType({
    # model                 size it takes
    "flux-dev":             _FLUX_1,   # WxH, each side 256-1440, a multiple of 32
    "flux-pro":             _FLUX_1,
    "flux-pro-1.1":         _FLUX_1,
    "flux-2-flex":          _FLUX_2,   # WxH, each side >= 64, a multiple of 32
    "flux-2-pro":           _FLUX_2,
    "flux-2-max":           _FLUX_2,
    "flux-2-klein":         _FLUX_2,
    "flux-pro-1.1-ultra":   _RATIO,    # an aspect ratio only: 1:1 16:9 21:9 ...
    "flux-kontext-pro":     _RATIO,    # (kontext models also do the edits)
    "flux-kontext-max":     _RATIO,
})

# What the service generates with when a request names no model. Its rule applies
# then too: the service would refuse the size anyway (a 400 after a round trip),
# and a caller who means another model names it. Edits get no default rule: which
# model the service edits with when none is named is not documented.
DEFAULT_MODEL = "flux-dev"

# The shape every size has, whatever the model: "1024x1024" or "16:9".
_SIZE = re.compile(r"^[1-9][0-9]{0,5}[x:][1-9][0-9]{0,5}$")


def size_problem(model: str | None, size: str, *, action: str = "generate") -> str | None:
    """Why ``model`` cannot take ``size`` (a sentence), or None when it can or is unknown."""
    if model is None and action == "generate":
        model = DEFAULT_MODEL
    rule = SIZE_RULES.get(model) if model is not None else None
    if rule is None or rule.takes(size):
        return None
    return f"{model} takes {rule}, got {size!r}"


#: The longest prompt a request takes, in characters (code points). The vendor
#: documents no limit, so this is the client's own, generous on purpose: FLUX.1's
#: text encoder reads 512 tokens (some 2,000 characters of English), and the most
#: detailed structured prompts for newer models run to a few thousand characters;
#: those fit many times over. What it stops is a pasted document or a binary file
#: sent (and perhaps billed) as a prompt. The local server enforces the same.
MAX_PROMPT_CHARS = 32_000

# What every model name looks like ("flux-dev", "flux-pro-1.1-ultra", "flux-2-klein"):
# letters, digits, dots, dashes and underscores, starting with a letter or a digit.
# A name outside it (a path, spaces, control characters) is no model's and refused
# here; a well-formed name the table does not know goes to the service, which knows
# its new models before this table does.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_prompt(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(attribute.name, "must be a non-empty string")
    if len(value) > MAX_PROMPT_CHARS:
        # Never quoted: it is long, and it is the user's text.
        raise ValidationError(
            attribute.name,
            f"is {len(value):,} characters long; at most {MAX_PROMPT_CHARS:,} are accepted",
        )


def _check_model(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(attribute.name, "must be a non-empty string when given")
    if not _MODEL_NAME.fullmatch(value):
        raise ValidationError(
            attribute.name,
            f"{value!r:.80} is not a model name (letters, digits, '.', '-' and '_', "
            "at most 64, such as 'flux-dev')",
        )


def _check_size(request: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    # Runs after every field is set (attrs validates once all are assigned), and
    # after ``model``'s own check, which comes first in both request classes.
    if value is None:
        return
    if not isinstance(value, str) or not _SIZE.match(value):
        raise ValidationError(
            attribute.name, f"must look like '1024x1024' or '16:9', got {value!r}"
        )
    problem = size_problem(request.model, value, action=request.action)
    if problem is not None:
        raise ValidationError(attribute.name, problem)


def _check_count(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    # bool is an int subclass; True is not a count.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationError(attribute.name, f"must be a positive integer, got {value!r}")


def http_url_problem(value: object) -> str | None:
    """Why ``value`` is not an absolute http(s) URL with a host, or None if it is one."""
    if not isinstance(value, str):
        return f"must be an absolute http(s) URL string, got {type(value).__name__}"
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        return "must be an absolute http(s) URL without spaces or control characters"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return f"must be an absolute http(s) URL, got {value!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an absolute http(s) URL with a host, got {value!r}"
    return None


def check_http_url(field: str, value: object) -> None:
    """Raise ``ValidationError`` unless ``value`` is an absolute http(s) URL."""
    problem = http_url_problem(value)
    if problem is not None:
        raise ValidationError(field, problem)


#: The longest idempotency key (as payment providers allow).
MAX_KEY_LENGTH = 255


def _check_key(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if (not isinstance(value, str) or not value.strip() or len(value) > MAX_KEY_LENGTH
            or not value.isprintable()):
        raise ValidationError(attribute.name, "must be a non-empty printable string of at "
                              f"most {MAX_KEY_LENGTH} characters when given")


def _check_image_url(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_http_url(attribute.name, value)


@attrs.frozen
class GenerateRequest:
    """Text to image: ``prompt`` with optional ``model``, ``size`` and ``count``.

    ``prompt`` is at most ``MAX_PROMPT_CHARS`` (32,000) characters. ``size`` must
    suit the model (``SIZE_RULES``; without a model, the service's default
    ``flux-dev``). Unknown model names are passed through with only the size's
    shape checked (new ones appear upstream), but a name no model could have
    (``../x``, spaces, control characters) is refused.

    ``idempotency_key``: names this request, so that sending it again (a retry, a
    double click, a restarted job) pays once; it is not sent to the service (see
    ``FluxClient``'s journal).
    """

    prompt: str = attrs.field(validator=_check_prompt)
    model: str | None = attrs.field(default=None, validator=_check_model)
    size: str | None = attrs.field(default=None, validator=_check_size)
    count: int | None = attrs.field(default=None, validator=_check_count)
    idempotency_key: str | None = attrs.field(default=None, kw_only=True, validator=_check_key)

    action = "generate"


@attrs.frozen
class EditRequest:
    """Edit the image at ``image_url`` as ``prompt`` says.

    The documented edit models are ``flux-kontext-pro`` and ``flux-kontext-max``,
    which take an aspect ratio as ``size``. ``idempotency_key`` as for
    ``GenerateRequest``.
    """

    prompt: str = attrs.field(validator=_check_prompt)
    image_url: str = attrs.field(validator=_check_image_url)
    model: str | None = attrs.field(default=None, validator=_check_model)
    size: str | None = attrs.field(default=None, validator=_check_size)
    idempotency_key: str | None = attrs.field(default=None, kw_only=True, validator=_check_key)

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
    """Where a task stands. The wire has no single field for it: see ``state``."""

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

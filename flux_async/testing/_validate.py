"""Validation of request bodies, mirroring what the vendor rejects with 400 bad_request.

Kept apart from the handlers so the rules read as one list. Each check returns either
the parsed request or a message that names the offending field, because a client's
error handling (and a test's assertion) keys on which field was wrong.

``MODELS`` is the one table of what each model takes: the vendor refuses a model it
does not list ("model is invalid.") and a size its model cannot take.

``MAX_PROMPT_CHARS``: the vendor documents no prompt limit; this server enforces
the one flux_async documents (32,000 characters), so that a client sending more
is caught here, whatever its own check says. The value is written here on its
own, not imported: this server reads the protocol apart from the client.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_MODEL",
    "MAX_BATCH",
    "MAX_COUNT",
    "MAX_PROMPT_CHARS",
    "MODELS",
    "SizeRule",
    "Submission",
    "check_ids",
    "check_size",
    "check_submission",
    "is_http_url",
]

#: Most images one generation may ask for.
MAX_COUNT = 10
#: Most ids one ``retrieve_batch`` may ask for.
MAX_BATCH = 100
#: The longest prompt taken, in characters (Unicode code points, as JSON decodes them).
MAX_PROMPT_CHARS = 32_000
#: ``edit`` is the current word; an older guide wrote ``edits``, still accepted.
ACTIONS = frozenset({"generate", "edit", "edits"})
#: The aspect ratios of the models that take a ratio instead of pixels.
ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")


@frozen
class SizeRule:
    """The sizes one model takes: ``WxH`` pixels in bounds and steps, or a ratio."""

    ratio: bool = False  # True: only one of ASPECT_RATIOS
    min_side: int = 0
    max_side: int | None = None
    step: int = 32


_CLASSIC = SizeRule(min_side=256, max_side=1440)
_FLUX2 = SizeRule(min_side=64)
_RATIO_ONLY = SizeRule(ratio=True)

#: Every model the service knows, and the sizes it takes.
MODELS: dict[str, SizeRule] = {
    "flux-dev": _CLASSIC,
    "flux-pro": _CLASSIC,
    "flux-pro-1.1": _CLASSIC,
    "flux-pro-1.1-ultra": _RATIO_ONLY,
    "flux-kontext-pro": _RATIO_ONLY,
    "flux-kontext-max": _RATIO_ONLY,
    "flux-2-flex": _FLUX2,
    "flux-2-pro": _FLUX2,
    "flux-2-max": _FLUX2,
    "flux-2-klein": _FLUX2,
}
DEFAULT_MODEL = "flux-dev"

_PIXELS = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")
_RATIO = re.compile(r"^([1-9][0-9]{0,2}):([1-9][0-9]{0,2})$")


@frozen
class Submission:
    """The parts of a valid ``/flux/images`` body the server acts on."""

    action: str
    prompt: str
    count: int
    callback_url: str | None
    is_async: bool


def is_http_url(value: object) -> bool:
    """True for an absolute http(s) URL string with a host."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _is_count(value: object) -> bool:
    # JSON numbers only; bool is an int subclass in Python but not a count.
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_COUNT


def check_size(model: str, size: str) -> str | None:
    """Why ``model`` cannot take ``size`` (already of a valid form), or None."""
    rule = MODELS[model]
    pixels = _PIXELS.match(size)
    if rule.ratio:
        if size not in ASPECT_RATIOS:
            return f"size {size!r} is invalid for {model}: use one of {', '.join(ASPECT_RATIOS)}"
        return None
    if pixels is None:
        return f"size {size!r} is invalid for {model}: use WxH pixels such as '1024x1024'"
    top = f" to {rule.max_side}" if rule.max_side is not None else " or more"
    for side in (int(pixels[1]), int(pixels[2])):
        too_big = rule.max_side is not None and side > rule.max_side
        if side < rule.min_side or too_big or side % rule.step:
            return (
                f"size {size!r} is invalid for {model}: each side must be "
                f"{rule.min_side}{top} and a multiple of {rule.step}"
            )
    return None


def check_submission(body: Any) -> Submission | str:
    """Parse a ``/flux/images`` body, or answer why it is invalid.

    Optional fields sent as JSON ``null`` count as absent; unknown fields are
    accepted. The model must be one of ``MODELS`` (default ``flux-dev``) and the
    size one it takes.
    """
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    action = body.get("action")
    if action not in ACTIONS:
        return "action must be one of 'generate', 'edit', 'edits'"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt must be a non-empty string"
    if len(prompt) > MAX_PROMPT_CHARS:
        return f"prompt is too long: {len(prompt)} characters, at most {MAX_PROMPT_CHARS}"
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        return "model must be a string"
    if model is not None and model not in MODELS:
        return "model is invalid."
    image_url = body.get("image_url")
    if action != "generate" and image_url is None:
        return "image_url is required for edit"
    if image_url is not None and not is_http_url(image_url):
        return "image_url must be an http(s) URL"
    count = body.get("count")
    if count is not None and not _is_count(count):
        return f"count must be an integer from 1 to {MAX_COUNT}"
    size = body.get("size")
    if size is not None and not (
        isinstance(size, str) and (_PIXELS.match(size) or _RATIO.match(size))
    ):
        return "size must look like '1024x1024' or an aspect ratio like '16:9'"
    if size is not None:
        refused = check_size(model or DEFAULT_MODEL, size)
        if refused is not None:
            return refused
    callback_url = body.get("callback_url")
    if callback_url is not None and not is_http_url(callback_url):
        return "callback_url must be an http(s) URL"
    is_async = body.get("async")
    if is_async is not None and not isinstance(is_async, bool):
        return "async must be a boolean"
    return Submission(
        action=action,
        prompt=prompt,
        count=1 if action != "generate" else (count or 1),
        callback_url=callback_url,
        is_async=bool(is_async),
    )


def check_ids(body: dict[str, Any]) -> list[str] | str:
    """The ``ids`` of a ``retrieve_batch`` body, de-duplicated, or why they are invalid."""
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return "ids must be a list of task id strings"
    if len(ids) > MAX_BATCH:
        return f"ids may hold at most {MAX_BATCH} task ids, got {len(ids)}"
    return list(dict.fromkeys(ids))

"""Validation of request bodies, mirroring what the vendor rejects with 400 bad_request.

Kept apart from the handlers so the rules read as one list. Each check returns either
the parsed request or a message that names the offending field, because a client's
error handling (and a test's assertion) keys on which field was wrong.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen

__all__ = ["MAX_BATCH", "MAX_COUNT", "Submission", "check_ids", "check_submission", "is_http_url"]

#: Most images one generation may ask for.
MAX_COUNT = 10
#: Most ids one ``retrieve_batch`` may ask for.
MAX_BATCH = 100
ACTIONS = frozenset({"generate", "edit", "edits"})

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


def check_submission(body: Any) -> Submission | str:
    """Parse a ``/flux/images`` body, or answer why it is invalid.

    Optional fields sent as JSON ``null`` count as absent. Unknown fields and unknown
    model names are accepted, as upstream keeps adding them.
    """
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    action = body.get("action")
    if action not in ACTIONS:
        return "action must be one of 'generate', 'edit', 'edits'"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt must be a non-empty string"
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        return "model must be a string"
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

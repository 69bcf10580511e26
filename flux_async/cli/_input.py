"""Reading a batch file: one prompt a line, or JSONL with one request a line.

The format is decided once per file, not per line, so a prompt that happens to
start with ``{`` in a text file stays a prompt: a file is JSONL when its name ends
in ``.jsonl``/``.ndjson``, or (for other names and standard input) when its first
non-blank line starts with ``{``. In text files, blank lines and lines starting
with ``#`` are skipped. Each entry keeps its 1-based line number in the file: the
manifest is keyed by it, and error messages quote it.

A bad line never stops the others: it becomes an entry with ``error`` set.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from flux_async import EditRequest, GenerateRequest, ImageRequest, ValidationError

from ._images import LocalFile, load_local, stand_in_url

__all__ = ["FIELDS", "Defaults", "Entry", "InputError", "parse_lines", "read_source"]

FIELDS = ("prompt", "model", "size", "count", "action", "image", "image_url", "name")
_ACTIONS = {"generate": "generate", "edit": "edit", "edits": "edit"}


class InputError(Exception):
    """The batch file cannot be read at all (a usage error, exit status 2)."""


@attrs.frozen
class Defaults:
    """Request fields given on the command line, used where a line gives none."""

    model: str | None = None
    size: str | None = None
    count: int | None = None


@attrs.frozen
class Entry:
    """One input line: its request, or why it has none."""

    line: int
    request: ImageRequest | None = None
    name: str | None = None
    error: str | None = None
    image: LocalFile | None = None  # a local image, uploaded when the line is submitted

    @property
    def key(self) -> str | None:
        """A fingerprint of the request, so a resumed run notices a line that changed."""
        if self.request is None:
            return None
        fields = request_fields(self.request)
        if self.image is not None:
            # The file's content, not its upload's URL, which is new every time.
            fields["image_url"] = f"sha256:{self.image.sha256}"
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def prefix(self) -> str:
        """The stem of this line's image files: stable across runs, readable by people."""
        words = self.name or (self.request.prompt if self.request else "")
        slug = _slug(words)
        return f"{self.line:05d}-{slug}" if slug else f"{self.line:05d}"


def request_fields(request: ImageRequest) -> dict[str, Any]:
    """The request as the manifest stores it (the fields the user chose)."""
    fields = attrs.asdict(request)
    fields["action"] = request.action
    return {k: v for k, v in fields.items() if v is not None}


def _slug(text: str, limit: int = 40) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(words) <= limit:
        return words
    cut = words[: limit + 1].rfind("-")  # end on a whole word when there is one
    return words[: cut if cut > limit // 2 else limit].rstrip("-")


def read_source(source: str) -> tuple[str, bool]:
    """The text of ``source`` (``-`` is standard input) and whether it is JSONL by name."""
    if source == "-":
        try:
            return sys.stdin.read(), False
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read standard input: {exc}") from None
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise InputError(f"cannot read {source}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror or exc}") from None
    return text, source.lower().endswith((".jsonl", ".ndjson"))


def parse_lines(
    text: str, *, jsonl: bool | None, defaults: Defaults, base: Path | None = None
) -> list[Entry]:
    """Every request line of ``text``; ``jsonl=None`` guesses the format (see above).

    ``base`` is the directory that relative ``image`` paths start from (default: the
    current directory).
    """
    base = base if base is not None else Path.cwd()
    lines = text.splitlines()
    if jsonl is None:
        first = next((raw.strip() for raw in lines if raw.strip()), "")
        jsonl = first.startswith("{")
    entries = []
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not stripped or (not jsonl and stripped.startswith("#")):
            continue
        if jsonl:
            entries.append(_json_entry(number, stripped, defaults, base))
        else:
            entries.append(_entry(number, {"prompt": stripped}, defaults, base))
    return entries


def _json_entry(number: int, raw: str, defaults: Defaults, base: Path) -> Entry:
    try:
        fields = json.loads(raw)
    except ValueError as exc:
        return Entry(number, error=f"invalid JSON ({exc})")
    except RecursionError:  # a line of thousands of nested brackets
        return Entry(number, error="invalid JSON (nested too deeply)")
    if not isinstance(fields, dict):
        return Entry(number, error="expected a JSON object with a 'prompt' field")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        return Entry(
            number,
            error=f"unknown field {unknown[0]!r} (known fields: {', '.join(FIELDS)})",
        )
    return _entry(number, fields, defaults, base)


def _entry(number: int, fields: Mapping[str, Any], defaults: Defaults, base: Path) -> Entry:
    name = fields.get("name")
    if name is not None and not isinstance(name, str):
        return Entry(number, error="name: must be a string")
    image_url = fields.get("image_url")
    image = fields.get("image")
    if image is not None:
        if image_url is not None:
            return Entry(number, error="image: give image or image_url, not both")
        if not isinstance(image, str) or not image.strip():
            return Entry(number, error="image: must be a file path or an http(s) URL")
        if image.startswith(("http://", "https://")):
            image_url, image = image, None
    action = fields.get("action") or (
        "edit" if image_url is not None or image is not None else "generate"
    )
    if action not in _ACTIONS:
        return Entry(number, error=f"action: must be 'generate' or 'edit', got {action!r}")
    prompt: Any = fields.get("prompt")
    model = fields.get("model", defaults.model)
    size = fields.get("size", defaults.size)
    request: ImageRequest
    local: LocalFile | None = None
    try:
        if _ACTIONS[action] == "edit":
            if image_url is None and image is None:
                return Entry(number, error="image_url: required for an edit (or image, a file)")
            if fields.get("count") is not None:
                return Entry(number, error="count: an edit makes one image; drop 'count'")
            if image is not None:
                local = load_local(image, base)
                image_url = stand_in_url(local)
            assert image_url is not None
            request = EditRequest(prompt, image_url=image_url, model=model, size=size)
        else:
            if image_url is not None or image is not None:
                field = "image" if image is not None else "image_url"
                return Entry(number, error=f"{field}: only for edits (action 'edit')")
            count = fields.get("count", defaults.count)
            request = GenerateRequest(prompt, model=model, size=size, count=count)
    except ValidationError as exc:
        return Entry(number, error=str(exc))
    return Entry(number, request=request, name=name, image=local)

"""Local images in batch lines: checked when the file is read, uploaded when submitted.

A JSONL line's ``image`` is an http(s) URL (used as ``image_url``) or a file path,
relative to the batch file's directory. The file is read and checked with the
rest of the line, so a missing, unreadable, over-25-MB or non-image file makes
that line ``invalid`` before anything is sent. It is uploaded only when its line
is about to be submitted (a line done in an earlier run uploads nothing), and
the line's request gets the uploaded URL then.

Until that moment the request carries a stand-in URL on the reserved ``.invalid``
domain naming the file's SHA-256: it is never sent, and if it ever were, no host
could answer it. A line's manifest key uses the file's SHA-256 instead of the
URL, which is new on every upload: a resumed run still knows the line, and an
edited file makes it a new line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio.to_thread
import attrs

from flux_async import EditRequest, FluxClient, LocalImage, ValidationError

__all__ = ["LocalFile", "load_local", "stand_in_url", "uploaded"]


@attrs.frozen
class LocalFile:
    """A batch line's image file: where it is and what it held when checked."""

    path: Path
    sha256: str


def load_local(text: str, base: Path) -> LocalFile:
    """Check the file ``text`` names (relative to ``base``); ``ValidationError`` if bad."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    image = LocalImage.load(path)
    return LocalFile(path, hashlib.sha256(image.data).hexdigest())


def stand_in_url(local: LocalFile) -> str:
    return f"https://upload.invalid/sha256/{local.sha256}"


async def uploaded(client: FluxClient, request: EditRequest, local: LocalFile) -> EditRequest:
    """``request`` with the URL of ``local`` uploaded now."""
    image = await anyio.to_thread.run_sync(LocalImage.load, local.path)
    if hashlib.sha256(image.data).hexdigest() != local.sha256:
        raise ValidationError("image", f"{local.path} changed while the batch ran; run it again")
    return attrs.evolve(request, image_url=await client.upload(image))

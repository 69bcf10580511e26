"""Uploading a local image for ``edit``: the plain half, then the one that sends it.

``edit`` needs an image the service can fetch by URL; users have a file. The
vendor's storage page documents ``POST /files/upload`` (multipart, at most
25 MB, the URL it answers valid for 7 days) while its SDK posts the multipart
field ``file`` to another host's ``/api/v1/files/``. The two disagree, so where
uploads go is a setting (``FluxClient(upload_url=...)``); the field is ``file``
in both.

Here: reading and checking the image (a path or bytes) before anything is sent,
the multipart body, and reading the answer. Those functions are plain and are
tested with plain calls; ``Uploader``, at the end, moves the bytes.

What is refused, each as a ``ValidationError`` naming the field (``image``): a
missing or unreadable file, a directory or other non-file, an empty file, more
than ``MAX_UPLOAD_BYTES``, and content that is not a PNG, JPEG, WebP or GIF
image by its first bytes (the file's name is not trusted: ``cat.png`` may be an
HTML page saved by a browser).

The answer's shape is not documented precisely: a JSON object carrying the URL
under ``url``, ``file_url``, ``image_url`` or ``data.url`` is accepted;
anything else is a ``ProtocolError``.

Sending (``Uploader``): the image is read off the event loop, POSTed, and what
may pass is tried again. Uploads are not billed, so their "try again?" table
(``retry.UPLOAD``) is looser than a submission's: a connect error, a broken
connection (the worst a duplicate costs is a second stored copy), a 5xx or a 429
(after ``Retry-After`` when given, else the client's backoff) is tried again,
``max_retries`` tries in all. Not
retried: a timeout (on a link too slow for the file, a second try would only
double the wait), a 4xx and an answer that is not the protocol.

The request timeout grows with the body (``http.Timeouts.upload``):
``request_timeout`` plus one second per ``MIN_UPLOAD_RATE`` bytes, so a 25 MB
file on a slow uplink is not cut off at 60 s while a stalled one still ends.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs

from .._core.errors import ProtocolError, ValidationError, error_for_response
from .._core.formats import IMAGE_FORMATS, sniff_image
from .._core.limits import Backoff
from .._core.protocol import decode_answer
from .._core.retry import UPLOAD, attempts
from .http import MIN_UPLOAD_RATE, Timeouts
from .link import Transport

__all__ = [
    "DEFAULT_UPLOAD_URL",
    "MAX_UPLOAD_BYTES",
    "MIN_UPLOAD_RATE",
    "UPLOAD_FIELD",
    "UPLOAD_PATH",
    "Form",
    "ImageSource",
    "LocalImage",
    "Uploader",
    "build_form",
    "is_remote",
    "read_upload_answer",
    "sniff_image",
    "upload_url_for",
]

#: The most bytes one upload may carry (the vendor's documented 25 MB).
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
UPLOAD_PATH = "/files/upload"
DEFAULT_UPLOAD_URL = "https://api.acedata.cloud" + UPLOAD_PATH
#: The multipart field the file travels in.
UPLOAD_FIELD = "file"

# The same rule as an EditRequest's image_url.
_HTTP_URL = re.compile(r"^https?://[^\s/?#]+\S*$")
# "ftp://...", "file:///...": a URL, just not one the service can fetch. A Windows
# path ("C:\\cat.png") has no "//" after its colon and stays a path.
_OTHER_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def is_remote(value: object) -> bool:
    """True for an absolute http(s) URL: passed to the service as it is, not uploaded."""
    return isinstance(value, str) and _HTTP_URL.match(value) is not None


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def _checked(data: bytes, field: str, what: str) -> tuple[str, str]:
    if not data:
        raise ValidationError(field, f"{what} is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValidationError(
            field, f"{what} is over {_megabytes(MAX_UPLOAD_BYTES)}, the most an upload takes"
        )
    kind = sniff_image(data)
    if kind is None:
        raise ValidationError(
            field, f"{what} is not a {IMAGE_FORMATS} image (judged by its content)"
        )
    return kind


def _read_file(path: Path, field: str) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ValidationError(field, f"no such file: {path}") from None
    except OSError as exc:
        raise ValidationError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise ValidationError(field, f"{path} is a directory, not an image file")
    if not path.is_file():
        raise ValidationError(field, f"{path} is not a regular file")
    if info.st_size > MAX_UPLOAD_BYTES:
        raise ValidationError(
            field,
            f"{path} is {_megabytes(info.st_size)}, over the "
            f"{_megabytes(MAX_UPLOAD_BYTES)} an upload takes",
        )
    try:
        with path.open("rb") as handle:
            # One byte more than allowed: a file that grew since stat() is still caught.
            return handle.read(MAX_UPLOAD_BYTES + 1)
    except OSError as exc:
        raise ValidationError(field, f"cannot read {path}: {exc.strerror or exc}") from None


def _safe_name(name: str, ext: str) -> str:
    """A file name fit for a multipart header: no quotes, no line breaks, ASCII."""
    stem = _UNSAFE_NAME.sub("_", Path(name).stem).strip("._-")[:64]
    return f"{stem or 'image'}{ext}"


@attrs.frozen
class LocalImage:
    """An image read from a file (or given as bytes) and checked, ready to upload.

    ``LocalImage.load(source)`` reads and checks; ``data`` stays out of ``repr``.
    """

    data: bytes = attrs.field(repr=False)
    content_type: str
    filename: str

    @property
    def size(self) -> int:
        return len(self.data)

    @classmethod
    def load(cls, source: ImageSource, *, field: str = "image") -> LocalImage:
        """Read and check ``source``: a path (``str`` or ``os.PathLike``) or the bytes.

        Raises ``ValidationError`` naming ``field`` for a missing or unreadable
        file, a directory, an empty or over-25-MB file, content that is not an
        image, or a URL (URLs are not read: ``is_remote`` tells them apart).
        """
        if isinstance(source, LocalImage):
            return source
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            content_type, ext = _checked(data, field, "the image")
            return cls(data, content_type, f"image{ext}")
        if isinstance(source, str):
            if is_remote(source):
                raise ValidationError(field, "is a URL: pass it on, there is nothing to upload")
            scheme = _OTHER_URL.match(source)
            if scheme is not None:
                raise ValidationError(
                    field, f"{scheme.group(1)}:// URLs are not supported: give an http(s) "
                    "URL or a local file"
                )
            if not source.strip():
                raise ValidationError(field, "must be a URL, a file path or the image's bytes")
        elif not isinstance(source, os.PathLike):
            raise ValidationError(
                field, "must be a URL, a file path or the image's bytes, "
                f"not {type(source).__name__}"
            )
        path = Path(os.fspath(source)).expanduser()
        data = _read_file(path, field)
        content_type, ext = _checked(data, field, str(path))
        return cls(data, content_type, _safe_name(path.name, ext))


# What ``upload()`` and ``edit(image=...)`` take besides a URL.
ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | LocalImage


def upload_url_for(upload_url: str | None, base_url: str) -> str:
    """Where uploads go: ``upload_url`` when given, else ``{base_url}/files/upload``.

    With the default base URL that is ``DEFAULT_UPLOAD_URL``; with a local
    server's, the local server's own upload endpoint.
    """
    if upload_url is not None:
        return upload_url
    return base_url.rstrip("/") + UPLOAD_PATH


@attrs.frozen
class Form:
    """A ``multipart/form-data`` body and its content type (which names the boundary)."""

    body: bytes = attrs.field(repr=False)
    content_type: str


def build_form(image: LocalImage, *, boundary: str | None = None) -> Form:
    """The multipart body carrying ``image`` in the field ``file``."""
    if boundary is None:
        boundary = f"flux-async-{secrets.token_hex(16)}"
        while boundary.encode() in image.data:  # pragma: no cover - 2**-128
            boundary = f"flux-async-{secrets.token_hex(16)}"
    elif boundary.encode() in image.data:
        raise ValueError("the boundary occurs in the data")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{UPLOAD_FIELD}"; filename="{image.filename}"\r\n'
        f"Content-Type: {image.content_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return Form(head + image.data + tail, f"multipart/form-data; boundary={boundary}")


def _url(value: object) -> str | None:
    return value if isinstance(value, str) and is_remote(value) else None


def read_upload_answer(data: Any) -> str:
    """The hosted URL in a 2xx upload answer (``url``, ``file_url``, ``image_url``, ``data.url``).

    An ``error`` object without a URL raises its typed ``APIError``; anything
    else without a usable http(s) URL is a ``ProtocolError``.
    """
    if not isinstance(data, Mapping):
        raise ProtocolError("an upload's answer is not a JSON object")
    for key in ("url", "file_url", "image_url"):
        url = _url(data.get(key))
        if url is not None:
            return url
    inner = data.get("data")
    if isinstance(inner, Mapping):
        url = _url(inner.get("url"))
        if url is not None:
            return url
    error = data.get("error")
    if isinstance(error, Mapping):
        code, message, trace_id = error.get("code"), error.get("message"), data.get("trace_id")
        raise error_for_response(
            200,
            code=code if isinstance(code, str) else None,
            message=message if isinstance(message, str) and message else "the upload failed",
            trace_id=trace_id if isinstance(trace_id, str) else None,
        )
    raise ProtocolError(
        "an upload's answer carries no http(s) URL under url, file_url, image_url or data.url"
    )


log = logging.getLogger("flux_async")


#: Uploads whose digest a client remembers (an idempotency key's edit is known by them).
REMEMBERED_UPLOADS = 4096


class Uploader:
    """Uploads images to ``url`` over the client's transport.

    It remembers the SHA-256 of the bytes behind each URL it got (the latest
    ``REMEMBERED_UPLOADS``): a keyed edit of an uploaded image is then known by
    its bytes, not by its URL, which is new with every upload of the same file.
    """

    def __init__(
        self, url: str, *, attempts: int, backoff: Backoff, request_timeout: float
    ) -> None:
        self.url = url
        self._attempts = attempts
        self._backoff = backoff
        self._timeouts = Timeouts(request_timeout)
        self._digests: collections.OrderedDict[str, str] = collections.OrderedDict()

    def digest_of(self, url: str) -> str | None:
        """The SHA-256 of the image this uploader uploaded to ``url``, if it did."""
        return self._digests.get(url)

    def _remember(self, url: str, image: LocalImage) -> None:
        self._digests[url] = hashlib.sha256(image.data).hexdigest()
        self._digests.move_to_end(url)
        if len(self._digests) > REMEMBERED_UPLOADS:
            self._digests.popitem(last=False)

    def __repr__(self) -> str:
        return f"<Uploader {self.url}>"

    async def upload(self, transport: Transport, source: ImageSource, *, field: str) -> str:
        """Upload ``source`` (checked first; nothing is sent if it is refused); the URL."""
        if isinstance(source, LocalImage):
            image = source
        else:
            # Reading up to 25 MB from a disk must not stall every other request.
            image = await anyio.to_thread.run_sync(lambda: LocalImage.load(source, field=field))
        form = build_form(image)
        timeout = self._timeouts.upload(len(form.body))
        log.debug("uploading %s (%d bytes, %s) to %s",
                  image.filename, image.size, image.content_type, self.url)
        async for attempt in attempts(UPLOAD, attempts=self._attempts, backoff=self._backoff):
            with attempt:
                reply = await transport.post_form(
                    self.url, form.body, form.content_type, timeout=timeout
                )
                data = decode_answer(reply.status, reply.headers, reply.body, now=time.time())
                url = read_upload_answer(data)
                self._remember(url, image)
                return url
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

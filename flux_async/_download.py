"""Image downloads: stream each body to a temporary file beside its target, then rename.

The aiohttp GET lives here and its exceptions stop here: callers see
``DownloadError`` (and its ``NotAnImageError``/``ImageTooLargeError``), or a
``ValidationError`` for input refused before any request. What makes a download
safe to run inside a server:

* Atomic files. Bytes go to ``.flux-*.part`` in the target directory (same file
  system, so the final rename is atomic), are fsynced, then linked or renamed to
  the final name. Any failure, and cancellation, removes the temporary file: a
  final name only ever holds a complete image.
* Names come from the task id (or ``prefix``, or the URL's basename), reduced to
  ``[A-Za-z0-9._-]``, without ``..`` or a leading dot, bounded in length, and
  end in ``-{index}{ext}``: a URL cannot steer a file out of the directory and the
  images of one task never collide. ``ext`` comes from the content type.
* The body is capped (by ``Content-Length`` and again while streaming) and must be
  ``image/*``: a CDN's HTML error page is refused, not saved as ``.png``.
* GETs are idempotent, so 5xx, 429 and broken connections are retried with the
  client's backoff; a retry starts the file over.

No API key is sent: image URLs are fetched without the client's headers.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import re
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

import aiohttp
import anyio
import attrs

from ._errors import DownloadError, ImageTooLargeError, NotAnImageError, ValidationError
from ._limits import Backoff
from ._models import Image, ImageResult, check_http_url

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DownloadTarget",
    "Fetcher",
    "download_images",
    "fetch_bytes",
    "safe_stem",
]

DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
# Long enough for a task id plus a prefix, short enough for every file system's 255.
MAX_STEM = 96

DownloadTarget = ImageResult | Image | Iterable[Image]

_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Names Windows refuses whatever the extension: a file must never be called NUL.png.
_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{n}" for p in ("com", "lpt") for n in range(10)}


@attrs.frozen
class Fetcher:
    """What a download needs from the client: its session, timeouts and retry policy."""

    session: aiohttp.ClientSession
    timeout: aiohttp.ClientTimeout
    attempts: int
    backoff: Backoff


class _Retry(Exception):
    """An attempt failed in a way the next attempt may not (5xx, 429, reset)."""

    def __init__(self, error: DownloadError) -> None:
        super().__init__(str(error))
        self.error = error


# --- names ---------------------------------------------------------------------------


def safe_stem(text: str) -> str:
    """``text`` reduced to a harmless file-name stem (never empty, never ``..``)."""
    stem = _UNSAFE.sub("_", text)
    stem = re.sub(r"\.{2,}", ".", stem).strip("._-")
    stem = stem[:MAX_STEM].rstrip("._-")
    if not stem or stem.split(".")[0].lower() in _RESERVED:
        stem = f"image_{stem}" if stem else "image"
    return stem


def _url_stem(url: str) -> str:
    # The last path segment without its extension; separators of any OS split it,
    # percent-escapes (%2F..%2F) are decoded first so they cannot smuggle one in.
    path = unquote(urlsplit(url).path)
    base = re.split(r"[/\\]", path)[-1]
    head, dot, _ = base.rpartition(".")
    return safe_stem(head if dot and head else base)


def _extension(content_type: str) -> str:
    known = _EXTENSIONS.get(content_type)
    if known is not None:
        return known
    guessed = mimetypes.guess_extension(content_type, strict=False)
    return guessed if guessed and re.fullmatch(r"\.[a-z0-9]{1,8}", guessed) else ".img"


def _plan(target: DownloadTarget, prefix: str | None) -> list[tuple[str, str]]:
    """(url, name without extension) for each image, in order."""
    if isinstance(target, ImageResult):
        images: tuple[Image, ...] = target.images
        common: str | None = target.task_id
    elif isinstance(target, Image):
        images, common = (target,), None
    else:
        images, common = tuple(target), None
        for image in images:
            if not isinstance(image, Image):
                raise TypeError("download() takes an ImageResult, an Image or Images")
    if prefix is not None:
        common = prefix
    plan = []
    for index, image in enumerate(images):
        check_http_url("url", image.url)
        stem = safe_stem(common) if common is not None else _url_stem(image.url)
        plan.append((image.url, f"{stem}-{index}"))
    return plan


# --- one GET -------------------------------------------------------------------------


class _Sink:
    """Where the bytes of one attempt go: memory, or a temporary file."""

    def start(self, url: str, content_type: str) -> None:
        raise NotImplementedError

    def write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


class _Memory(_Sink):
    def __init__(self) -> None:
        self.data = bytearray()

    def start(self, url: str, content_type: str) -> None:
        self.data.clear()

    def write(self, chunk: bytes) -> None:
        self.data += chunk

    def discard(self) -> None:
        self.data.clear()


class _Part(_Sink):
    """A temporary file in the target directory, removed unless committed."""

    def __init__(self, directory: Path, name: str, overwrite: bool) -> None:
        self.directory = directory
        self.name = name
        self.overwrite = overwrite
        self.final: Path | None = None
        self.path: Path | None = None
        self._file: IO[bytes] | None = None

    def start(self, url: str, content_type: str) -> None:
        self.discard()  # a retry starts over
        self.final = self.directory / (self.name + _extension(content_type))
        if not self.overwrite and self.final.exists():
            raise FileExistsError(f"{self.final} exists (pass overwrite=True to replace it)")
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=".flux-", suffix=".part")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)

    def discard(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()
        path, self.path = self.path, None
        if path is not None:
            with suppress(FileNotFoundError):
                path.unlink()

    async def commit(self) -> Path:
        assert self._file is not None
        assert self.path is not None
        assert self.final is not None
        self._file.flush()
        # Durable before visible: a crash must not leave an empty file under the final name.
        await anyio.to_thread.run_sync(os.fsync, self._file.fileno())
        self._file.close()
        self._file = None
        if self.overwrite:
            os.replace(self.path, self.final)
        else:
            try:
                # link() fails if the name was taken meanwhile: no silent clobbering.
                os.link(self.path, self.final)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links
                if self.final.exists():
                    raise FileExistsError(f"{self.final} exists") from None
                os.replace(self.path, self.final)
        self.discard()
        return self.final


async def _attempt(fetcher: Fetcher, url: str, max_bytes: int, sink: _Sink) -> None:
    try:
        async with fetcher.session.get(url, timeout=fetcher.timeout) as response:
            status = response.status
            if status == 429 or status >= 500:
                raise _Retry(DownloadError(f"{url} answered HTTP {status}", url=url,
                                           status=status))
            if status != 200:
                raise DownloadError(f"{url} answered HTTP {status}", url=url, status=status)
            content_type = response.content_type.lower()
            if not content_type.startswith("image/"):
                raise NotAnImageError(url, content_type, status=status)
            length = response.content_length
            if length is not None and length > max_bytes:
                raise ImageTooLargeError(url, max_bytes, status=status)
            sink.start(url, content_type)
            received = 0
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                received += len(chunk)
                if received > max_bytes:
                    raise ImageTooLargeError(url, max_bytes, status=status)
                sink.write(chunk)
    except (aiohttp.InvalidURL, aiohttp.TooManyRedirects) as exc:
        raise DownloadError(f"cannot fetch {url}: {type(exc).__name__}", url=url) from exc
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
        # Refused, reset, cut off, timed out: a GET is safe to send again.
        error = DownloadError(f"fetching {url} failed: {type(exc).__name__}", url=url)
        error.__cause__ = exc
        raise _Retry(error) from exc


async def _fetch(fetcher: Fetcher, url: str, max_bytes: int, sink: _Sink) -> None:
    """One download into ``sink``, retried; on failure the sink is left discarded."""
    check_http_url("url", url)
    try:
        for attempt in range(1, fetcher.attempts + 1):
            try:
                await _attempt(fetcher, url, max_bytes, sink)
                return
            except _Retry as retry:
                sink.discard()
                if attempt >= fetcher.attempts:
                    raise retry.error from retry.error.__cause__
                await anyio.sleep(fetcher.backoff.delay(attempt))
    except BaseException:
        # Also on cancellation: nothing partial survives.
        sink.discard()
        raise


# --- entry points --------------------------------------------------------------------


def _check_limits(concurrency: int, max_bytes: int) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValidationError("concurrency", "must be a positive integer")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValidationError("max_bytes", "must be a positive integer")


async def fetch_bytes(fetcher: Fetcher, url: str, max_bytes: int) -> bytes:
    """The body of an image URL, in memory."""
    _check_limits(1, max_bytes)
    sink = _Memory()
    await _fetch(fetcher, url, max_bytes, sink)
    return bytes(sink.data)


async def download_images(
    fetcher: Fetcher,
    target: DownloadTarget,
    directory: str | os.PathLike[str],
    *,
    prefix: str | None,
    concurrency: int,
    max_bytes: int,
    overwrite: bool,
) -> list[Path]:
    """Save every image of ``target`` under ``directory``; paths in the images' order.

    The first failure cancels the downloads still running (their temporary files
    are removed) and is raised; files already complete stay.
    """
    _check_limits(concurrency, max_bytes)
    plan = _plan(target, prefix)
    folder = Path(directory)
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    paths: list[Path | None] = [None] * len(plan)
    limit = anyio.Semaphore(concurrency)
    failure: list[BaseException] = []

    async def one(index: int, url: str, name: str) -> None:
        part = _Part(folder, name, overwrite)
        try:
            async with limit:
                await _fetch(fetcher, url, max_bytes, part)
                paths[index] = await part.commit()
        except Exception as exc:  # raised alone below, not inside an ExceptionGroup
            failure.append(exc)
            group.cancel_scope.cancel()
        finally:
            part.discard()

    async with anyio.create_task_group() as group:
        for index, (url, name) in enumerate(plan):
            group.start_soon(one, index, url, name)
    if failure:
        raise failure[0]
    return [path for path in paths if path is not None]

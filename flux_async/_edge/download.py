"""Image downloads: stream each body to a temporary file beside its target, then rename.

The GET goes out, and its failures are translated, through ``http`` (the one
aiohttp edge); callers see ``DownloadError`` (and its ``NotAnImageError``/
``ImageTooLargeError``/``DownloadTimeoutError``/``BlockedAddressError``/
``DownloadRedirectError``), or a ``ValidationError`` for input refused before
any request (a target that is not images, a directory that cannot be created).
What makes a download safe to run inside a server:

* The download guard (``guard``, on unless the client's ``download_guard`` is
  off): no connection to loopback, private, link-local, metadata... addresses,
  checked after DNS, for the URL and for every redirect's target
  (``BlockedAddressError``, nothing sent there).
* Redirects are followed here, one hop at a time, not by aiohttp: each target
  is checked before it is requested. One that leaves http(s) (``file:``...),
  a loop, more than ``MAX_REDIRECTS`` hops or a redirect without a Location
  raise ``DownloadRedirectError`` at once (never retried).
* Atomic files. Bytes go to ``.flux-*.part`` in the target directory (same file
  system, so the final rename is atomic), are fsynced, then linked or renamed to
  the final name. Any failure, and cancellation, removes the temporary file: a
  final name only ever holds a complete image.
* Names come from the task id (or ``prefix``, or the URL's basename), reduced to
  ``[A-Za-z0-9._-]``, without ``..`` or a leading dot, bounded in length, and
  end in ``-{index}{ext}``: a URL cannot steer a file out of the directory and the
  images of one task never collide. ``ext`` comes from the body's format.
* The body is capped (by ``Content-Length`` and again while streaming) and must
  be an image twice over: labelled ``image/*``, and a PNG, JPEG, WebP or GIF by
  its first bytes (``_core.formats``), whatever the label says. A CDN's HTML
  page is refused (``NotAnImageError``) before a file is even opened.
* GETs are idempotent, so 5xx, 429 and broken connections are retried with the
  client's backoff (``retry.DOWNLOAD``, in the one attempts loop); a retry
  starts the file over.
* Each image has an overall deadline (``timeout``, retries included): a body
  trickling in a byte at a time never stalls the read timeout, so only a
  deadline bounds it. Past it: ``DownloadTimeoutError``, nothing kept.
* A file system that refuses the bytes (disk full, quota) gives a
  ``DownloadError`` "could not save", with the ``OSError`` as its cause; the
  temporary file is removed even when closing it fails again.

No API key is sent: image URLs are fetched without the client's headers.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
import anyio
import attrs

from .._core.addresses import DownloadGuard
from .._core.errors import (
    BlockedAddressError,
    DownloadError,
    DownloadRedirectError,
    DownloadTimeoutError,
    ImageTooLargeError,
    NotAnImageError,
    TransportError,
    ValidationError,
)
from .._core.formats import SNIFF_BYTES, sniff_image
from .._core.limits import Backoff
from .._core.models import Image, ImageResult, check_http_url, http_url_problem
from .._core.retry import DOWNLOAD, attempts
from . import http
from .guard import AddressRefused, check_literal
from .sinks import Memory, Part, Sink

__all__ = [
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "DEFAULT_MAX_IMAGE_BYTES",
    "MAX_REDIRECTS",
    "DownloadTarget",
    "DownloadTimeoutError",
    "Fetcher",
    "download_images",
    "fetch_bytes",
    "safe_stem",
]

DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
#: Seconds one image may take, retries included: minutes for 50 MB on a slow link.
DEFAULT_DOWNLOAD_TIMEOUT = 120.0
CHUNK_BYTES = 64 * 1024
# Long enough for a task id plus a prefix, short enough for every file system's 255.
MAX_STEM = 96
#: Redirects followed for one image (aiohttp's own default): a CDN needs one or two.
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

DownloadTarget = ImageResult | Image | Iterable[Image]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Names Windows refuses whatever the extension: a file must never be called NUL.png.
_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{n}" for p in ("com", "lpt") for n in range(10)}


@attrs.frozen
class Fetcher:
    """What a download needs from the client: its session, ``Timeouts.download``, tries,
    and the download guard (with it on, ``session`` is a ``guard.GuardedSession``'s)."""

    session: aiohttp.ClientSession
    timeout: aiohttp.ClientTimeout
    attempts: int
    backoff: Backoff
    guard: DownloadGuard


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


def _plan(target: DownloadTarget, prefix: str | None) -> list[tuple[str, str]]:
    """(url, name without extension) for each image, in order; bad input refused."""
    if isinstance(target, ImageResult):
        images: tuple[Image, ...] = target.images
        common: str | None = target.task_id
    elif isinstance(target, Image):
        images, common = (target,), None
    elif isinstance(target, Iterable) and not isinstance(target, (str, bytes, Mapping)):
        images, common = tuple(target), None
        for index, image in enumerate(images):
            if not isinstance(image, Image):
                raise ValidationError(
                    f"target[{index}]", f"must be an Image, got {type(image).__name__}"
                )
    else:
        raise ValidationError(
            "target",
            f"must be an ImageResult, an Image or Images, got {type(target).__name__}",
        )
    if prefix is not None:
        if not isinstance(prefix, str):
            raise ValidationError("prefix", f"must be a string, got {type(prefix).__name__}")
        common = prefix
    plan = []
    for index, image in enumerate(images):
        check_http_url("url", image.url)
        stem = safe_stem(common) if common is not None else _url_stem(image.url)
        plan.append((image.url, f"{stem}-{index}"))
    return plan


# --- one GET -------------------------------------------------------------------------


async def _attempt(fetcher: Fetcher, url: str, max_bytes: int, sink: Sink) -> None:
    """One GET of ``url`` into ``sink``, its redirects followed and checked hop by hop."""
    target = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            if fetcher.guard.enabled:
                check_literal(fetcher.guard, target)  # an address host: not even connected
            async with http.request(fetcher.session, "GET", target, timeout=fetcher.timeout,
                                    allow_redirects=False) as response:
                if response.status in _REDIRECTS:
                    target = _next_hop(url, target, response)
                    continue  # leaving the block releases this answer first
                await _receive(response, url, max_bytes, sink)
                return
        except AddressRefused as refused:
            raise BlockedAddressError(
                url, target=target, host=refused.host, address=refused.address,
                port=refused.port, reason=refused.reason,
            ) from None
    raise DownloadRedirectError(f"{url}: more than {MAX_REDIRECTS} redirects", url=url)


def _next_hop(url: str, current: str, response: aiohttp.ClientResponse) -> str:
    """Where a redirect leads, if it may be followed; else ``DownloadRedirectError``."""
    status = response.status
    location = response.headers.get("Location")
    if not location:
        raise DownloadRedirectError(
            f"{url} answered HTTP {status} without a Location", url=url, status=status)
    target = urljoin(current, location.strip()).partition("#")[0]
    if http_url_problem(target) is not None:
        # file:, ftp:, data:... or garbage: no retry can make it an image URL.
        shown = http.shown(target)
        raise DownloadRedirectError(
            f"{url} redirected to {shown[:200]!r}, not a usable http(s) URL; not followed",
            url=url, status=status,
        )
    return target


async def _receive(
    response: aiohttp.ClientResponse, url: str, max_bytes: int, sink: Sink
) -> None:
    """The body of a final answer into ``sink``, once it is known to be an image."""
    status = response.status
    if status != 200:
        # 429 and 5xx may pass (``retry.DOWNLOAD``); other statuses will not.
        raise DownloadError(f"{url} answered HTTP {status}", url=url, status=status)
    label = response.content_type.lower()
    if not label.startswith("image/"):
        raise NotAnImageError(url, label, status=status)
    length = response.content_length
    if length is not None and length > max_bytes:
        raise ImageTooLargeError(url, max_bytes, status=status)
    chunks = http.Chunks(response, url, CHUNK_BYTES)
    # The label is a claim; the first bytes decide (however few each piece holds).
    head = bytearray()
    async for chunk in chunks:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break
    kind = sniff_image(bytes(head))
    if kind is None:
        raise NotAnImageError(url, label, status=status, by_content=True)
    received = len(head)
    if received > max_bytes:
        raise ImageTooLargeError(url, max_bytes, status=status)
    sink.start(url, kind[1])
    sink.write(bytes(head))
    async for chunk in chunks:  # on from where the head ended
        received += len(chunk)
        if received > max_bytes:
            raise ImageTooLargeError(url, max_bytes, status=status)
        sink.write(chunk)


async def _fetch(
    fetcher: Fetcher, url: str, max_bytes: int, sink: Sink, timeout: float | None
) -> None:
    """One download into ``sink``, retried, within ``timeout`` seconds overall.

    On failure the sink is left discarded.
    """
    check_http_url("url", url)
    try:
        with anyio.move_on_after(timeout):
            try:
                async for attempt in attempts(
                    DOWNLOAD, attempts=fetcher.attempts, backoff=fetcher.backoff
                ):
                    with attempt:
                        try:
                            await _attempt(fetcher, url, max_bytes, sink)
                        except BaseException:
                            sink.discard()  # a retry starts the file over
                            raise
                        return
            except TransportError as exc:
                if isinstance(exc, DownloadError):  # DownloadRedirectError: both already
                    raise
                # Callers of a download see DownloadErrors; the cause stays attached.
                raise DownloadError(f"fetching {url} failed: {exc}", url=url) from exc
        assert timeout is not None  # only the deadline leaves the loop without an answer
        raise DownloadTimeoutError(url, timeout)
    except BaseException:
        # Also on cancellation: nothing partial survives.
        sink.discard()
        raise


# --- entry points --------------------------------------------------------------------


def _check_limits(concurrency: int, max_bytes: int, timeout: float | None) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValidationError("concurrency", "must be a positive integer")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValidationError("max_bytes", "must be a positive integer")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValidationError("timeout", "must be a number of seconds > 0, or None for none")


async def fetch_bytes(
    fetcher: Fetcher,
    url: str,
    max_bytes: int,
    *,
    timeout: float | None = DEFAULT_DOWNLOAD_TIMEOUT,
) -> bytes:
    """The body of an image URL, in memory, within ``timeout`` seconds."""
    _check_limits(1, max_bytes, timeout)
    sink = Memory()
    await _fetch(fetcher, url, max_bytes, sink, timeout)
    return bytes(sink.data)


async def _make_directory(directory: object) -> Path:
    try:
        folder = Path(directory)  # type: ignore[arg-type]
    except TypeError:
        raise ValidationError(
            "directory", f"must be a path, got {type(directory).__name__}"
        ) from None
    try:
        await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # under a regular file, no permission, ...
        raise ValidationError(
            "directory", f"{folder} cannot be created: {exc.strerror or exc}"
        ) from exc
    return folder


async def download_images(
    fetcher: Fetcher,
    target: DownloadTarget,
    directory: str | os.PathLike[str],
    *,
    prefix: str | None,
    concurrency: int,
    max_bytes: int,
    overwrite: bool,
    timeout: float | None = DEFAULT_DOWNLOAD_TIMEOUT,
) -> list[Path]:
    """Save every image of ``target`` under ``directory``; paths in the images' order.

    Each image has ``timeout`` seconds (retries included, from when its turn
    comes). The first failure cancels the downloads still running (their
    temporary files are removed) and is raised; files already complete stay.
    """
    _check_limits(concurrency, max_bytes, timeout)
    plan = _plan(target, prefix)
    folder = await _make_directory(directory)
    paths: list[Path | None] = [None] * len(plan)
    limit = anyio.Semaphore(concurrency)
    failure: list[BaseException] = []

    async def one(index: int, url: str, name: str) -> None:
        part = Part(folder, name, overwrite)
        try:
            async with limit:
                await _fetch(fetcher, url, max_bytes, part, timeout)
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

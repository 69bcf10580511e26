"""``FluxClient``'s file methods, and ``edit``'s image argument.

``FileMethods`` is a base class of ``FluxClient`` (its public methods, kept apart
to keep each module short): uploading a local image, downloading results, all
through the client's link and retry settings.

``edit_request`` turns ``edit``'s image argument into an ``EditRequest``: an
http(s) URL is passed on, a local image uploaded first, and the edit's own checks
run before an upload is spent on a request that would be refused anyway.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Awaitable, Callable

from .._core.errors import ValidationError
from .._core.limits import Backoff
from .._core.models import EditRequest, Image
from .._edge.download import (
    DEFAULT_DOWNLOAD_TIMEOUT,
    DEFAULT_MAX_IMAGE_BYTES,
    DownloadTarget,
    download_images,
    fetch_bytes,
)
from .._edge.link import Link
from .._edge.uploads import ImageSource, Uploader, is_remote

__all__ = ["FileMethods", "edit_request", "upload_checked"]

Upload = Callable[[ImageSource, str], Awaitable[str]]


async def upload_checked(image: ImageSource, field: str, upload: Upload) -> str:
    """Upload a local ``image`` (``field`` names it in errors); a URL is refused."""
    if is_remote(image):
        raise ValidationError(field, "is already a URL: nothing to upload")
    return await upload(image, field)


async def edit_request(
    prompt: str,
    image: str | ImageSource | None,
    image_url: str | ImageSource | None,
    model: str | None,
    size: str | None,
    upload: Upload,
    idempotency_key: str | None = None,
) -> EditRequest:
    """The ``EditRequest`` of ``edit``; a local image is uploaded once all else is valid."""
    if image is not None and image_url is not None:
        raise ValidationError("image", "give image or image_url, not both")
    field, source = ("image", image) if image is not None else ("image_url", image_url)
    if source is None:
        raise ValidationError("image", "required: an http(s) URL, a file path or bytes")
    if isinstance(source, str) and is_remote(source):
        return EditRequest(prompt, image_url=source, model=model, size=size,
                           idempotency_key=idempotency_key)
    # The edit's own checks, before an upload is spent on a bad request (the URL
    # is a stand-in: the real one exists only after the upload).
    EditRequest(prompt, image_url="https://upload.invalid/", model=model, size=size,
                idempotency_key=idempotency_key)
    url = await upload_checked(source, field, upload)
    return EditRequest(prompt, image_url=url, model=model, size=size,
                       idempotency_key=idempotency_key)


class FileMethods:
    """``upload``, ``download`` and ``fetch_image`` (see ``FluxClient``)."""

    max_retries: int
    _link: Link
    _uploader: Uploader
    _backoff: Backoff

    async def _start(self) -> None:
        raise NotImplementedError

    async def download(
        self,
        target: DownloadTarget,
        directory: str | os.PathLike[str],
        *,
        prefix: str | None = None,
        concurrency: int = 4,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        overwrite: bool = False,
        timeout: float | None = DEFAULT_DOWNLOAD_TIMEOUT,
    ) -> list[pathlib.Path]:
        """Save images to files under ``directory`` (created if missing); return the paths.

        ``target`` is an ``ImageResult``, an ``Image`` or Images. Files are named
        ``{prefix or task id or URL stem}-{index}{ext}``, reduced to safe
        characters, ``ext`` from the image's format. ``concurrency`` downloads run
        at once; each is streamed to a temporary file and renamed when complete, so
        a failed or cancelled download leaves nothing. Raises ``NotAnImageError``
        (not labelled ``image/*``, or a body that is no PNG, JPEG, WebP or GIF),
        ``ImageTooLargeError`` (over ``max_bytes``), ``BlockedAddressError`` (the
        download guard refused an address: see ``download_guard``),
        ``DownloadRedirectError`` (a redirect out of http(s), a loop), another
        ``DownloadError`` (an HTTP error, or failures that outlasted the retries),
        ``FileExistsError`` unless ``overwrite``. The first failure cancels the rest;
        files already complete stay. ``timeout`` bounds each image, retries
        included (``DownloadTimeoutError``; ``None``: no bound).
        """
        await self._start()
        return await download_images(
            self._link.fetcher(self.max_retries, self._backoff), target, directory,
            prefix=prefix, concurrency=concurrency, max_bytes=max_bytes, overwrite=overwrite,
            timeout=timeout,
        )

    async def fetch_image(
        self,
        image: Image | str,
        *,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        timeout: float | None = DEFAULT_DOWNLOAD_TIMEOUT,
    ) -> bytes:
        """An image's bytes in memory; the same checks, retries and deadline as ``download``."""
        url = image.url if isinstance(image, Image) else image
        await self._start()
        return await fetch_bytes(self._link.fetcher(self.max_retries, self._backoff), url,
                                 max_bytes, timeout=timeout)

    async def upload(self, image: ImageSource) -> str:
        """Upload a local image; return the URL the service hosts it at (valid 7 days).

        ``image`` is a path (``str`` or ``os.PathLike``) or the image's bytes. It
        is read and checked before anything is sent: a missing, unreadable or
        empty file, a directory, more than 25 MB, or content that is not a PNG,
        JPEG, WebP or GIF image raise ``ValidationError`` (field ``image``).
        Uploads are not billed: a connect error, a broken connection, a 5xx or a
        429 is tried again (``max_retries`` in all); the answer's errors raise
        the same ``APIError`` subclasses as every other call.
        """
        return await upload_checked(image, "image", self._upload)

    async def _upload(self, image: ImageSource, field: str) -> str:
        await self._start()
        return await self._uploader.upload(self._link.open(), image, field=field)

"""Sending an upload: read the image off the event loop, POST it, retry what may pass.

Uploads are not billed, so the re-send policy is looser than a submission's: an
upload is tried up to ``max_retries`` times after a connect error, a broken
connection (the worst a duplicate costs is a second stored copy), a 5xx or a 429
(after ``Retry-After`` when given, else the client's backoff). Not retried: a
timeout (on a link too slow for the file, a second try would only double the
wait), a 4xx and an answer that is not the protocol.

The request timeout grows with the body: ``request_timeout`` plus one second per
``MIN_UPLOAD_RATE`` bytes, so a 25 MB file on a slow uplink is not cut off at 60 s
while a stalled one still ends.
"""

from __future__ import annotations

import logging
import time

import aiohttp
import anyio
import anyio.to_thread

from ._errors import ConnectError, NetworkError, RateLimitError, ServerError
from ._limits import Backoff
from ._protocol import decode_answer
from ._transport import Transport
from ._upload import ImageSource, LocalImage, build_form, read_upload_answer

__all__ = ["MIN_UPLOAD_RATE", "Uploader"]

log = logging.getLogger("flux_async")

#: Bytes per second an upload is allowed to be as slow as before it times out.
MIN_UPLOAD_RATE = 64 * 1024


class Uploader:
    """Uploads images to ``url`` over the client's transport."""

    def __init__(
        self, url: str, *, attempts: int, backoff: Backoff, request_timeout: float
    ) -> None:
        self.url = url
        self._attempts = attempts
        self._backoff = backoff
        self._request_timeout = request_timeout

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
        timeout = aiohttp.ClientTimeout(
            total=self._request_timeout + len(form.body) / MIN_UPLOAD_RATE,
            sock_connect=min(10.0, self._request_timeout),
        )
        log.debug("uploading %s (%d bytes, %s) to %s",
                  image.filename, image.size, image.content_type, self.url)
        for attempt in range(1, self._attempts + 1):
            last = attempt == self._attempts
            try:
                reply = await transport.post_form(
                    self.url, form.body, form.content_type, timeout=timeout
                )
                data = decode_answer(reply.status, reply.headers, reply.body, now=time.time())
                return read_upload_answer(data)
            except RateLimitError as exc:
                if last:
                    raise
                wait = exc.retry_after
                await anyio.sleep(wait if wait is not None else self._backoff.delay(attempt))
            except (ConnectError, NetworkError, ServerError) as exc:
                if last:
                    raise
                log.debug("upload attempt %d failed (%s); trying again", attempt, exc)
                await anyio.sleep(self._backoff.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

"""Sending an upload: read the image off the event loop, POST it, retry what may pass.

Uploads are not billed, so their "try again?" table (``_retry.UPLOAD``) is looser
than a submission's: a connect error, a broken connection (the worst a duplicate
costs is a second stored copy), a 5xx or a 429 (after ``Retry-After`` when given,
else the client's backoff) is tried again, ``max_retries`` tries in all. Not
retried: a timeout (on a link too slow for the file, a second try would only
double the wait), a 4xx and an answer that is not the protocol.

The request timeout grows with the body (``_http.Timeouts.upload``):
``request_timeout`` plus one second per ``MIN_UPLOAD_RATE`` bytes, so a 25 MB
file on a slow uplink is not cut off at 60 s while a stalled one still ends.
"""

from __future__ import annotations

import logging
import time

import anyio
import anyio.to_thread

from ._http import MIN_UPLOAD_RATE, Timeouts
from ._limits import Backoff
from ._protocol import decode_answer
from ._retry import UPLOAD, attempts
from ._transport import Transport
from ._upload import ImageSource, LocalImage, build_form, read_upload_answer

__all__ = ["MIN_UPLOAD_RATE", "Uploader"]

log = logging.getLogger("flux_async")


class Uploader:
    """Uploads images to ``url`` over the client's transport."""

    def __init__(
        self, url: str, *, attempts: int, backoff: Backoff, request_timeout: float
    ) -> None:
        self.url = url
        self._attempts = attempts
        self._backoff = backoff
        self._timeouts = Timeouts(request_timeout)

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
                return read_upload_answer(data)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

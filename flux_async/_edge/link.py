"""The client's link to the API: its session, and the POSTs that go over it.

``Link`` is one client's session (opened on first use, since a session belongs to
the running loop; closed with the client unless it was the caller's) and its
``Transport``. ``Link.post`` sends one API request and decodes its answer (with
``protocol.decode_answer``); ``fetcher`` is what downloads need: with the
download guard on, a session of their own whose connector checks every address
(``guard.GuardedSession``, opened at the first download, closed with the link),
never the API's session, which may be the caller's.

``Transport`` sends the request and translates its failures through ``http``, the
one aiohttp edge (``ConnectError`` means nothing reached the service; every other
transport error means the request may have gone out). An answer is read to its
end, however many pieces it arrives in (a real link delivers TCP segments, not
whole bodies), and never past ``MAX_ANSWER_BYTES``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs

from .._core.addresses import DownloadGuard
from .._core.errors import ConfigurationError
from .._core.limits import Backoff
from .._core.protocol import decode_answer, request_headers
from . import http
from .download import Fetcher
from .guard import GuardedSession
from .http import MAX_ANSWER_BYTES

__all__ = ["MAX_ANSWER_BYTES", "Link", "Reply", "Transport", "check_session"]


def check_session(session: object) -> None:
    if session is not None and not isinstance(session, http.Session):
        raise ConfigurationError(
            f"must be an aiohttp.ClientSession, got {type(session).__name__}", field="session"
        )


class Link:
    """One client's session and transport; nothing here shows the key."""

    def __init__(self, base_url: str, api_key: str, session: http.Session | None,
                 *, request_timeout: float, guard: DownloadGuard | None = None) -> None:
        check_session(session)
        # The key lives only inside these headers, which nothing prints.
        self._headers = request_headers(api_key)
        self._base_url = base_url
        self.timeouts = http.Timeouts(request_timeout)
        self._session = session
        self._owns_session = session is None
        self.transport: Transport | None = None
        self._guard = guard if guard is not None else DownloadGuard()
        self._downloads: GuardedSession | None = None

    def __repr__(self) -> str:
        return f"<Link {self._base_url}>"

    def open(self) -> Transport:
        if self.transport is None:
            if self._session is None:
                self._session = http.open_session()
            self.transport = Transport(self._session, self._base_url, self._headers,
                                       timeout=self.timeouts.api)
        return self.transport

    async def close(self) -> None:
        downloads, self._downloads = self._downloads, None
        if downloads is not None:
            await downloads.close()
        if self._owns_session and self._session is not None:
            await self._session.close()

    async def post(self, path: str, payload: Mapping[str, Any]) -> Any:
        """One API request; its decoded answer, or the typed error it stands for."""
        reply = await self.open().post(path, payload)
        return decode_answer(reply.status, reply.headers, reply.body, now=time.time())

    def fetcher(self, attempts: int, backoff: Backoff) -> Fetcher:
        self.open()
        session = self._session
        if self._guard.enabled:
            if self._downloads is None:
                self._downloads = GuardedSession(self._guard)
            session = self._downloads.session
        assert session is not None
        return Fetcher(session, self.timeouts.download, attempts, backoff, self._guard)


@attrs.frozen
class Reply:
    """One HTTP answer, read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport:
    """POSTs to the API over one ``aiohttp.ClientSession``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        headers: Mapping[str, str],
        *,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = headers
        self._timeout = timeout

    def __repr__(self) -> str:
        # The headers hold the API key: never show them.
        return f"<Transport {self._base_url}>"

    async def post(self, path: str, payload: Mapping[str, Any]) -> Reply:
        """POST ``payload`` as JSON to ``path`` under the base URL."""
        data = json.dumps(payload, separators=(",", ":")).encode()
        return await self._send(self._base_url + path, data, self._headers, self._timeout)

    async def post_form(
        self, url: str, body: bytes, content_type: str, *, timeout: aiohttp.ClientTimeout
    ) -> Reply:
        """POST a prepared (multipart) body to a full URL with the API's headers.

        For uploads, whose host may differ from the API's.
        """
        headers = {**self._headers, "content-type": content_type}
        return await self._send(url, body, headers, timeout)

    async def _send(
        self,
        url: str,
        data: bytes,
        headers: Mapping[str, str],
        timeout: aiohttp.ClientTimeout,
    ) -> Reply:
        async with http.request(
            self._session, "POST", url, data=data, headers=headers, timeout=timeout
        ) as response:
            body = await http.read_whole(response, url)
            return Reply(response.status, response.headers, body)

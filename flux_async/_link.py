"""The client's link to the API: its aiohttp session (owned or borrowed) and timeouts.

Opened on first use (a session belongs to the running loop), closed with the
client unless the session was the caller's. ``post`` sends one API request and
decodes its answer; ``fetcher`` is what downloads need.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from ._download import Fetcher
from ._errors import ConfigurationError
from ._limits import Backoff
from ._protocol import decode_answer, request_headers
from ._transport import Transport

__all__ = ["Link", "check_session"]


def check_session(session: object) -> None:
    if session is not None and not isinstance(session, aiohttp.ClientSession):
        raise ConfigurationError(
            f"must be an aiohttp.ClientSession, got {type(session).__name__}", field="session"
        )


class Link:
    """One client's session, transport and timeouts; nothing here shows the key."""

    def __init__(self, base_url: str, api_key: str, session: aiohttp.ClientSession | None,
                 *, request_timeout: float) -> None:
        check_session(session)
        # The key lives only inside these headers, which nothing prints.
        self._headers = request_headers(api_key)
        self._base_url = base_url
        self.request_timeout = request_timeout
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout, sock_connect=min(10.0, request_timeout))
        self._session = session
        self._owns_session = session is None
        self.transport: Transport | None = None

    def __repr__(self) -> str:
        return f"<Link {self._base_url}>"

    def open(self) -> Transport:
        if self.transport is None:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            self.transport = Transport(self._session, self._base_url, self._headers,
                                       timeout=self._timeout)
        return self.transport

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()

    async def post(self, path: str, payload: Mapping[str, Any]) -> Any:
        """One API request; its decoded answer, or the typed error it stands for."""
        reply = await self.open().post(path, payload)
        return decode_answer(reply.status, reply.headers, reply.body, now=time.time())

    def fetcher(self, attempts: int, backoff: Backoff) -> Fetcher:
        self.open()
        assert self._session is not None
        read = self.request_timeout
        # No total: a large image on a slow link may take long; a stalled read may not.
        timeout = aiohttp.ClientTimeout(sock_connect=min(10.0, read), sock_read=read)
        return Fetcher(self._session, timeout, attempts, backoff)

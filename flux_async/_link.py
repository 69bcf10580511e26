"""The client's link to the API: its session (owned or borrowed) and its transport.

Opened on first use (a session belongs to the running loop), closed with the
client unless the session was the caller's. The session, its timeouts and the
exception map are ``_http``'s; ``post`` sends one API request and decodes its
answer; ``fetcher`` is what downloads need.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from . import _http
from ._download import Fetcher
from ._errors import ConfigurationError
from ._limits import Backoff
from ._protocol import decode_answer, request_headers
from ._transport import Transport

__all__ = ["Link", "check_session"]


def check_session(session: object) -> None:
    if session is not None and not isinstance(session, _http.Session):
        raise ConfigurationError(
            f"must be an aiohttp.ClientSession, got {type(session).__name__}", field="session"
        )


class Link:
    """One client's session and transport; nothing here shows the key."""

    def __init__(self, base_url: str, api_key: str, session: _http.Session | None,
                 *, request_timeout: float) -> None:
        check_session(session)
        # The key lives only inside these headers, which nothing prints.
        self._headers = request_headers(api_key)
        self._base_url = base_url
        self.timeouts = _http.Timeouts(request_timeout)
        self._session = session
        self._owns_session = session is None
        self.transport: Transport | None = None

    def __repr__(self) -> str:
        return f"<Link {self._base_url}>"

    def open(self) -> Transport:
        if self.transport is None:
            if self._session is None:
                self._session = _http.open_session()
            self.transport = Transport(self._session, self._base_url, self._headers,
                                       timeout=self.timeouts.api)
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
        return Fetcher(self._session, self.timeouts.download, attempts, backoff)

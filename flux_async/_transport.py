"""The API's POSTs: send one, hand back status, headers and body bytes.

The request goes out, and its failures are translated, through ``_http``, the
one aiohttp edge (``ConnectError`` means nothing reached the service; every
other transport error means the request may have gone out). An answer is read
to its end, however many pieces it arrives in (a real link delivers TCP
segments, not whole bodies), and never past ``MAX_ANSWER_BYTES``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs

from . import _http
from ._http import MAX_ANSWER_BYTES

__all__ = ["MAX_ANSWER_BYTES", "Reply", "Transport"]


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
        async with _http.request(
            self._session, "POST", url, data=data, headers=headers, timeout=timeout
        ) as response:
            body = await _http.read_whole(response, url)
            return Reply(response.status, response.headers, body)

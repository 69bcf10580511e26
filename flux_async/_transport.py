"""The aiohttp edge: send one POST, hand back status, headers and body bytes.

This is the only module that touches aiohttp's client. Its exceptions are
translated here, once, into flux_async's transport errors, keeping the one
distinction retries depend on: ``ConnectError`` means nothing reached the
service (a refused connection, or a URL that could not be used at all), every
other failure means the request may have gone out.

An answer is read to its end, however many pieces it arrives in (a real link
delivers TCP segments, not whole bodies), and never past ``MAX_ANSWER_BYTES``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import attrs

from ._errors import ConnectError, NetworkError, ProtocolError, RequestTimeoutError

__all__ = ["Reply", "Transport", "read_whole"]

# An API answer is a few KB; a batch of 100 tasks some tens of KB. Anything far
# larger is not the protocol and is not read into memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_NOTHING = "nothing was sent"


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
        if not _is_http(url):
            raise ConnectError(f"cannot send to {_shown(url)}: not an http(s) URL; {_NOTHING}")
        if "@" in urlsplit(url).netloc:
            # The key goes in the authorization header; aiohttp refuses both at once.
            raise ConnectError(
                f"cannot send to {_shown(url)}: a URL with user:password; {_NOTHING}"
            )
        try:
            async with self._session.post(
                url, data=data, headers=headers, timeout=timeout
            ) as response:
                body = await read_whole(response)
                return Reply(response.status, response.headers, body)
        except aiohttp.InvalidUrlRedirectClientError as exc:
            # A redirect to a bad URL: the first request did go out.
            raise NetworkError(f"{_shown(url)} redirected to an invalid URL") from exc
        except aiohttp.InvalidURL as exc:
            # Refused before connecting (aiohttp's check is stricter than ours).
            raise ConnectError(f"cannot send to {_shown(url)}: invalid URL; {_NOTHING}") from exc
        except aiohttp.ClientConnectorError as exc:
            # DNS, refused, unreachable: the request never left.
            raise ConnectError(f"cannot connect to {_shown(url)}: {exc.os_error}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectError(f"connecting to {_shown(url)} timed out") from exc
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            raise RequestTimeoutError(f"no answer from {_shown(url)} in time") from exc
        except aiohttp.ClientPayloadError as exc:
            raise ProtocolError(f"answer from {_shown(url)} was cut off: {exc}") from exc
        except aiohttp.ClientError as exc:
            # Disconnects, resets, malformed HTTP: the request may have been received.
            raise NetworkError(
                f"connection to {_shown(url)} failed: {type(exc).__name__}"
            ) from exc
        except OSError as exc:
            raise NetworkError(
                f"connection to {_shown(url)} failed: {exc.strerror or exc}"
            ) from exc
        except ValueError as exc:
            # aiohttp refusing to build the request (its answers' errors are
            # ClientErrors, caught above). The text may quote the URL: not repeated.
            raise ConnectError(
                f"cannot send to {_shown(url)}: the request could not be built "
                f"({type(exc).__name__}); {_NOTHING}"
            ) from exc


async def read_whole(response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The whole body of ``response``, refused once it is known to exceed ``limit``.

    ``content.read(n)`` answers what has arrived so far, which through a real link
    is the first segment or two; this reads until the end of the body.
    """
    length = response.content_length
    if length is not None and length > limit:
        raise ProtocolError(f"answer of {length} bytes is too large", status=response.status)
    body = bytearray()
    async for piece in response.content.iter_any():
        body += piece
        if len(body) > limit:
            raise ProtocolError(
                f"answer is too large (over {limit} bytes)", status=response.status
            )
    return bytes(body)


def _is_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _shown(url: str) -> str:
    """``url`` for messages: without a user or password part, query or fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rpartition("@")[2]
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))

"""The aiohttp edge: the session, every timeout, and the one exception map.

Every request flux_async sends goes through here: the API's JSON POSTs
(``link``), the upload POST (``uploads``) and the image GETs, streamed
(``download``). aiohttp's exceptions are translated once, by ``translate``,
into flux_async's transport errors, keeping the one distinction retries depend
on: ``ConnectError`` means nothing reached the server (a refused connection,
or a URL that could not be used at all); every other failure means the request
may have gone out.

Two failures are the same on every try, and say so by their class so that no
retry table waits out a backoff on them: ``UnusableURLError`` (a
``ConnectError``: the URL cannot be sent to; nothing was sent) and
``RedirectError`` (a ``NetworkError``: a redirect loop or a redirect to a URL
that cannot be used, ``file:`` included; the first request did go out).
Downloads follow their redirects themselves (``request(allow_redirects=False)``)
to check every hop; see ``download``.

Only the network's own operations are translated: opening a request
(``request``), reading an answer whole (``read_whole``) and the pieces of a
stream (``Chunks``). What a caller does between reads (writing to a file that
fills a disk, raising its own refusals) passes through untouched.

Timeouts: ``Timeouts`` derives every ``aiohttp.ClientTimeout`` from the one
``request_timeout`` setting. An API call has a total; an image GET has none (a
large image on a slow link may take long) but a read timeout, and the download
code bounds each image by its own deadline; an upload's total grows with its
body.

asyncio versus anyio: flux_async schedules, sleeps, bounds and cancels with
anyio (on its asyncio backend), so that cancellation is structured. asyncio is
named here for one reason: aiohttp reports its own timeouts as
``asyncio.TimeoutError``, which on Python 3.10 is not the builtin
``TimeoutError``; catching it by that name covers both versions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import attrs

from .._core.errors import (
    ConnectError,
    NetworkError,
    ProtocolError,
    RedirectError,
    RequestTimeoutError,
    UnusableURLError,
)

__all__ = [
    "MAX_ANSWER_BYTES",
    "MIN_UPLOAD_RATE",
    "Chunks",
    "RedirectError",
    "Session",
    "Timeouts",
    "UnusableURLError",
    "open_session",
    "read_whole",
    "request",
    "shown",
    "translate",
]

# An API answer is a few KB; a batch of 50 tasks some tens of KB. Anything far
# larger is not the protocol and is not read into memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: Bytes per second an upload is allowed to be as slow as before it times out.
MIN_UPLOAD_RATE = 64 * 1024
# Connecting takes a round trip or two: a host that has not answered in this
# long will not, whatever the request's own allowance.
MAX_CONNECT_SECONDS = 10.0
_NOTHING = "nothing was sent"


if TYPE_CHECKING:
    from .._core.settings import ClientSettings


#: The session type a caller may lend the client (``FluxClient(session=...)``).
Session = aiohttp.ClientSession


def open_session() -> aiohttp.ClientSession:
    """The session a client owns when the caller gave none (closed by the client)."""
    return aiohttp.ClientSession()


@attrs.frozen
class Timeouts:
    """Every ``aiohttp.ClientTimeout``, from the client's ``request_timeout`` (seconds)."""

    request_timeout: float

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> Timeouts:
        return cls(settings.request_timeout)

    @property
    def connect(self) -> float:
        return min(MAX_CONNECT_SECONDS, self.request_timeout)

    @property
    def api(self) -> aiohttp.ClientTimeout:
        """An API call: the whole exchange within ``request_timeout``."""
        return aiohttp.ClientTimeout(total=self.request_timeout, sock_connect=self.connect)

    @property
    def download(self) -> aiohttp.ClientTimeout:
        """An image GET: no total (the per-image deadline bounds it), no stalled read."""
        return aiohttp.ClientTimeout(sock_connect=self.connect, sock_read=self.request_timeout)

    def upload(self, body_bytes: int) -> aiohttp.ClientTimeout:
        """An upload: ``request_timeout`` plus a second per ``MIN_UPLOAD_RATE`` bytes."""
        return aiohttp.ClientTimeout(
            total=self.request_timeout + body_bytes / MIN_UPLOAD_RATE, sock_connect=self.connect
        )


def shown(url: str) -> str:
    """``url`` for messages: without a user or password part, query or fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rpartition("@")[2]
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def translate(exc: BaseException, url: str) -> Exception | None:
    """The flux_async error for a failure of the network under ``url``, else None.

    None means ``exc`` is not the network's (a cancellation, a caller's own
    error): it is left to propagate as it is.
    """
    where = shown(url)
    if isinstance(exc, aiohttp.NonHttpUrlRedirectClientError):
        # Before InvalidURL and ClientError: a redirect to file:// is no connection failure.
        return RedirectError(
            f"{where} redirected to a URL that is not http(s); the first request went out")
    if isinstance(exc, (aiohttp.RedirectClientError, aiohttp.TooManyRedirects)):
        return RedirectError(f"{where}: {type(exc).__name__}; the first request went out")
    if isinstance(exc, aiohttp.InvalidURL):
        # Refused before connecting (aiohttp's check is stricter than ours).
        return UnusableURLError(f"cannot send to {where}: invalid URL; {_NOTHING}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        # DNS, refused, unreachable: the request never left.
        return ConnectError(f"cannot connect to {where}: {exc.os_error}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectError(f"connecting to {where} timed out")
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return RequestTimeoutError(f"no answer from {where} in time")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ProtocolError(f"answer from {where} was cut off: {exc}")
    if isinstance(exc, aiohttp.ClientError):
        # Disconnects, resets, malformed HTTP: the request may have been received.
        return NetworkError(f"connection to {where} failed: {type(exc).__name__}")
    if isinstance(exc, OSError):
        return NetworkError(f"connection to {where} failed: {exc.strerror or exc}")
    return None


def _refusal(url: str, headers: Mapping[str, str] | None) -> UnusableURLError | None:
    """Why ``url`` cannot be sent to at all, checked before aiohttp sees it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return UnusableURLError(f"cannot send to {shown(url)}: not an http(s) URL; {_NOTHING}")
    if "@" in parts.netloc and headers and any(k.lower() == "authorization" for k in headers):
        # The key goes in the authorization header; aiohttp refuses both at once.
        return UnusableURLError(
            f"cannot send to {shown(url)}: a URL with user:password; {_NOTHING}"
        )
    return None


class request:  # lower case: used like aiohttp's own ``session.request``
    """``async with request(session, "GET", url, ...) as response``, translated.

    Opening the request and releasing it raise flux_async's errors; whatever the
    block itself raises passes through unchanged.
    """

    __slots__ = ("_call", "_url")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        timeout: aiohttp.ClientTimeout,
        allow_redirects: bool = True,
    ) -> None:
        self._url = url
        refusal = _refusal(url, headers)
        if refusal is not None:
            raise refusal
        # Nothing is built or sent until ``__aenter__``.
        self._call = session.request(method, url, headers=headers, data=data, timeout=timeout,
                                     allow_redirects=allow_redirects)

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            return await self._call.__aenter__()
        except Exception as exc:
            mapped = translate(exc, self._url)
            if mapped is None and isinstance(exc, ValueError):
                # aiohttp refusing to build the request (its answers' errors are
                # ClientErrors). The text may quote the URL: not repeated.
                mapped = UnusableURLError(
                    f"cannot send to {shown(self._url)}: the request could not be built "
                    f"({type(exc).__name__}); {_NOTHING}"
                )
            if mapped is None:
                raise
            raise mapped from exc

    async def __aexit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._call.__aexit__(typ, exc, tb)
        except Exception as error:
            mapped = None if error is exc else translate(error, self._url)
            if mapped is None:
                raise
            raise mapped from error


async def read_whole(
    response: aiohttp.ClientResponse, url: str, limit: int = MAX_ANSWER_BYTES
) -> bytes:
    """The whole body of ``response``, refused once it is known to exceed ``limit``.

    ``content.read(n)`` answers what has arrived so far, which through a real link
    is the first segment or two; this reads until the end of the body.
    """
    length = response.content_length
    if length is not None and length > limit:
        raise ProtocolError(f"answer of {length} bytes is too large", status=response.status)
    body = bytearray()
    async for piece in Chunks(response, url):
        body += piece
        if len(body) > limit:
            raise ProtocolError(
                f"answer is too large (over {limit} bytes)", status=response.status
            )
    return bytes(body)


class Chunks:
    """The body of ``response`` as it arrives, at most ``size`` bytes a piece, translated."""

    __slots__ = ("_pieces", "_url")

    def __init__(self, response: aiohttp.ClientResponse, url: str, size: int = 0) -> None:
        content = response.content
        self._pieces = content.iter_chunked(size) if size else content.iter_any()
        self._url = url

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._pieces.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as exc:
            mapped = translate(exc, self._url)
            if mapped is None:
                raise
            raise mapped from exc

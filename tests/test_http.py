"""The one aiohttp edge: timeouts, the exception map, and requests and streams over real sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
import pytest
from aiohttp import web

from flux_async import (
    ConnectError,
    NetworkError,
    ProtocolError,
    RequestTimeoutError,
    TransportError,
)
from flux_async._edge.http import (
    MIN_UPLOAD_RATE,
    Chunks,
    RedirectError,
    Timeouts,
    UnusableURLError,
    open_session,
    read_whole,
    request,
    shown,
    translate,
)

from .conftest import serve

# --- plain calls ------------------------------------------------------------------------


def test_every_timeout_comes_from_request_timeout() -> None:
    t = Timeouts(60.0)
    assert (t.api.total, t.api.sock_connect) == (60.0, 10.0)
    assert (t.download.total, t.download.sock_read, t.download.sock_connect) == (None, 60.0, 10.0)
    upload = t.upload(25 * MIN_UPLOAD_RATE)
    assert (upload.total, upload.sock_connect) == (85.0, 10.0)
    assert Timeouts(3.0).api.sock_connect == 3.0  # never longer than the whole


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (aiohttp.InvalidURL("ftp://x"), UnusableURLError),
        (aiohttp.TooManyRedirects(None, ()), RedirectError),  # type: ignore[arg-type]
        (aiohttp.NonHttpUrlRedirectClientError("file:///etc/passwd"), RedirectError),
        (aiohttp.ConnectionTimeoutError(), ConnectError),
        (aiohttp.SocketTimeoutError(), RequestTimeoutError),
        (asyncio.TimeoutError(), RequestTimeoutError),
        (aiohttp.ClientPayloadError("cut"), ProtocolError),
        (aiohttp.ServerDisconnectedError(), NetworkError),
        (aiohttp.ClientOSError(104, "reset"), NetworkError),
        (ConnectionResetError(104, "reset"), NetworkError),
    ],
)
def test_the_exception_map(exc: BaseException, expected: type[TransportError]) -> None:
    mapped = translate(exc, "http://user:pw@example.com/a?b=c")
    assert type(mapped) is expected
    assert "pw" not in str(mapped)
    # Only ConnectError says nothing was sent; a redirect or a timeout never does.
    assert isinstance(mapped, ConnectError) == (expected in (ConnectError, UnusableURLError))


@pytest.mark.parametrize("exc", [ValueError("mine"), KeyError("k"), asyncio.CancelledError()])
def test_what_is_not_the_networks_is_left_alone(exc: BaseException) -> None:
    assert translate(exc, "http://x") is None


def test_a_shown_url_has_no_secrets() -> None:
    assert shown("https://u:p@host:8/path?key=1#f") == "https://host:8/path"


# --- over real sockets -------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def odd_app() -> AsyncIterator[str]:
    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 100)
        assert request.transport is not None
        request.transport.close()  # 900 bytes short
        return response

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def leaves(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "file:///etc/passwd"})

    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await anyio.sleep(30)
        return response

    async def auth(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Authorization", "none"))

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"y" * 300_000)

    app = web.Application()
    for path, handler in (("/cut", cut), ("/loop", loop), ("/stalls", stalls),
                          ("/auth", auth), ("/big", big), ("/leaves", leaves)):
        app.router.add_get(path, handler)
    async with serve(app) as base:
        yield base


T = Timeouts(5.0)


@pytest.mark.anyio
async def test_a_refused_connection_is_a_connect_error() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/x"
    async with open_session() as session:
        with pytest.raises(ConnectError, match="cannot connect") as caught:
            async with request(session, "GET", url, timeout=T.api):
                raise AssertionError("no answer can come")
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorError)


@pytest.mark.anyio
async def test_a_body_cut_short_is_a_protocol_error_not_a_connect_error() -> None:
    async with odd_app() as base, open_session() as session:
        async with request(session, "GET", base + "/cut", timeout=T.download) as response:
            with pytest.raises(ProtocolError, match="cut off"):
                async for _ in Chunks(response, base + "/cut", 64):
                    pass


@pytest.mark.anyio
async def test_a_stalled_read_is_a_request_timeout() -> None:
    async with odd_app() as base, open_session() as session:
        timeout = aiohttp.ClientTimeout(sock_read=0.2)
        with pytest.raises(RequestTimeoutError):
            async with request(session, "GET", base + "/stalls", timeout=timeout) as response:
                await read_whole(response, base + "/stalls")


@pytest.mark.anyio
async def test_a_redirect_loop_is_a_redirect_error() -> None:
    async with odd_app() as base, open_session() as session:
        with pytest.raises(RedirectError):
            async with request(session, "GET", base + "/loop", timeout=T.api):
                raise AssertionError("no answer can come")


@pytest.mark.anyio
async def test_a_redirect_out_of_http_is_a_redirect_error_not_a_broken_connection() -> None:
    # A RedirectError is never retried (retry._FUTILE); a NetworkError of its own
    # would be, for seconds, by every table.
    async with odd_app() as base, open_session() as session:
        with pytest.raises(RedirectError, match="not http"):
            async with request(session, "GET", base + "/leaves", timeout=T.api):
                raise AssertionError("no answer can come")


@pytest.mark.anyio
async def test_errors_raised_in_the_block_pass_through_untouched() -> None:
    # A full disk while streaming is the caller's failure, not the network's.
    async with odd_app() as base, open_session() as session:
        async def save() -> None:
            async with request(session, "GET", base + "/big", timeout=T.download) as response:
                async for _ in Chunks(response, base + "/big", 1024):
                    raise FileExistsError("taken")

        with pytest.raises(FileExistsError):
            await save()
        with pytest.raises(ProtocolError, match="too large"):
            async with request(session, "GET", base + "/big", timeout=T.download) as response:
                await read_whole(response, base + "/big", limit=100_000)


@pytest.mark.anyio
async def test_urls_that_cannot_be_used_send_nothing() -> None:
    async with odd_app() as base, open_session() as session:
        for url in ("ftp://example.com/x", "http://", "mailto:a@b"):
            with pytest.raises(UnusableURLError, match="nothing was sent"):
                request(session, "GET", url, timeout=T.api)
        with_user = base.replace("http://", "http://u:pw@") + "/auth"
        # With the API key's header, user:password cannot go too (aiohttp refuses both)...
        with pytest.raises(UnusableURLError, match="user:password") as caught:
            request(session, "GET", with_user, headers={"Authorization": "Bearer k"},
                    timeout=T.api)
        assert "pw" not in str(caught.value)
        # ... without it (an image URL) it is the URL's own basic auth.
        async with request(session, "GET", with_user, timeout=T.api) as response:
            assert (await read_whole(response, with_user)).startswith(b"Basic ")

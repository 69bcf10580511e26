"""flux_async.asgi.CallbackApp: the plain ASGI receiver, under a real uvicorn.

Mounted behind a path-dispatch of the test's own (as a Django or Quart user
would), with and without a lifespan; the frameworks' own tests are
test_litestar_service and test_django_service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import SimpleNamespace
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from flux_async import FluxClient, GenerateRequest, TaskFailedError
from flux_async.asgi import STATE_KEY, TOKEN_PARAM, CallbackApp, scope_client
from flux_async.testing import LocalFluxServer, ServerSettings

from .conftest import eventually
from .serving import (
    CALLBACK_PATH,
    ROOT,
    base_url,
    bound_socket,
    recording_proxy,
    uvicorn_serving,
)
from .test_callbacks import FORGERIES, SECRET, _body, forge, queries

pytestmark = pytest.mark.anyio

Attach = Literal["given", "lifespan state", "none"]


class Dispatch:
    """A user's path-dispatch: ``CALLBACK_PATH`` to ``app``, anything else 404.

    With ``client`` and ``attach == "lifespan state"`` it runs the lifespan,
    opening the client and keeping it in ``scope["state"]``. It also notes, for
    the tests, every ASGI message the receiver read (``read``: their types,
    ``body_bytes``) and any exception that left the receiver (``errors``).
    """

    def __init__(self, app: CallbackApp, client: FluxClient, attach: Attach) -> None:
        self.app, self.client, self.attach = app, client, attach
        self.read: Counter[str] = Counter()
        self.body_bytes = 0
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["path"] == CALLBACK_PATH:

            async def noted() -> Any:
                message = await receive()
                self.read[message["type"]] += 1
                self.body_bytes += len(message.get("body", b""))
                return message

            try:
                await self.app(scope, noted, send)
            except BaseException as exc:
                self.errors.append(exc)
                raise
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async def _lifespan(self, scope: Any, receive: Any, send: Any) -> None:
        assert self.attach == "lifespan state"
        await receive()
        async with self.client as client:
            scope["state"][STATE_KEY] = client
            await send({"type": "lifespan.startup.complete"})
            await receive()
        await send({"type": "lifespan.shutdown.complete"})


@asynccontextmanager
async def plain_service(
    server: LocalFluxServer, attach: Attach = "given", *, query: str = "", **settings: Any
) -> AsyncIterator[SimpleNamespace]:
    """A ``CallbackApp`` behind ``Dispatch`` under uvicorn; ``ns.urls``: callback URLs.

    ``given``: the client is passed to the app and opened by the test, no lifespan
    at all (as under Django's own handler or Daphne); ``lifespan state``: the app
    finds it in the lifespan state; ``none``: no client anywhere.
    """
    sock = bound_socket()
    base = base_url(sock)
    async with recording_proxy(server) as (proxy, urls), AsyncExitStack() as stack:
        client = FluxClient(
            server.token, base_url=proxy, poll_interval=0.05, submit_rate=None,
            query_rate=None, callback_url=base + CALLBACK_PATH + query,
            callback_poll_interval=60.0, callback_secret=SECRET, max_concurrency=100,
        )
        if attach == "given":
            await stack.enter_async_context(client)
        app = CallbackApp(client if attach == "given" else None, **settings)
        dispatch = Dispatch(app, client, attach)
        lifespan: Literal["on", "off"] = "on" if attach == "lifespan state" else "off"
        async with uvicorn_serving(dispatch, sock, lifespan=lifespan):
            yield SimpleNamespace(base=base, urls=urls, client=client, app=app,
                                  dispatch=dispatch)
    assert client.closed or attach == "none"
    assert dispatch.errors == []


@pytest.mark.parametrize("attach", ["given", "lifespan state"])
async def test_callbacks_resolve_waits_without_any_task_query(attach: Attach) -> None:
    settings = ServerSettings(generation_time=(0.05, 0.3), failure_rate=0.2, seed=41)
    async with LocalFluxServer(settings) as server:
        async with plain_service(server, attach, query="?tenant=7") as service:
            outcomes = await asyncio.gather(
                *(service.client.generate(f"cat {i}") for i in range(40)),
                return_exceptions=True,
            )
    assert all(not isinstance(o, BaseException) or isinstance(o, TaskFailedError)
               for o in outcomes)
    failures = sum(isinstance(o, TaskFailedError) for o in outcomes)
    assert failures
    # Successes cost no query; each failure is confirmed by one query of its task.
    assert server.stats.requests["retrieve"] == failures
    assert server.stats.requests["retrieve_batch"] == 0
    assert server.stats.callbacks_sent == 40
    counts = service.app.counts
    assert counts["resolved"] + counts["held"] + counts["confirming"] == 40
    assert counts["rejected"] == 0
    # The token was found among the URL's own parameters.
    assert all(parse_qs(urlsplit(u).query)["tenant"] == ["7"] for u in service.urls.values())


@pytest.mark.parametrize("kind", list(FORGERIES))
async def test_a_forged_callback_changes_nothing(kind: str) -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=42)) as server:
        async with plain_service(server) as service:
            await forge(kind, server, service.client, service.app, service.urls)


async def test_only_posts_are_taken() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=43)) as server:
        async with plain_service(server) as service:
            await service.client.submit(GenerateRequest("a cat"))
            url = service.urls["a cat"]
            async with aiohttp.ClientSession() as http:
                for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
                    async with http.request(method, url, json=_body("x", "a cat")) as response:
                        assert response.status == 405, method
                        assert response.headers["Allow"] == "POST"
                        if method != "HEAD":
                            assert (await response.json())["ok"] is False
            assert service.client.in_flight == 1
    assert sum(service.app.counts.values()) == 0
    assert sum(service.dispatch.read.values()) == 0  # not a byte of those bodies read


async def _exchange(base: str, head: str, body_parts: list[bytes]) -> tuple[int, bytes]:
    """Send ``head`` and ``body_parts`` on a raw connection; read the answer's status line.

    Parts are sent until the answer comes (the rest never is): how a huge upload
    meets a receiver that answered without reading it.
    """
    host, port = urlsplit(base).hostname, urlsplit(base).port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode("latin-1"))
        answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        for part in body_parts:
            if answer.done():
                break
            writer.write(part)
            await writer.drain()
        with_headers = await asyncio.wait_for(answer, 10)
        status = int(with_headers.split(b" ", 2)[1])
        return status, with_headers
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):  # the server may close first,
            await writer.wait_closed()  # having not read the body


async def test_a_huge_body_is_refused_without_being_read() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=44)) as server:
        async with plain_service(server, max_body=1000) as service:
            await service.client.submit(GenerateRequest("a cat"))
            target = urlsplit(service.urls["a cat"])
            head = (f"POST {target.path}?{target.query} HTTP/1.1\r\nHost: x\r\n"
                    "Content-Type: application/json\r\n")
            # Declared: answered by the Content-Length alone, no body read at all.
            status, _ = await _exchange(service.base, head + "Content-Length: 1000000000\r\n\r\n",
                                        [b"{" * 4096])
            assert status == 413
            assert service.dispatch.read["http.request"] == 0
            # Streamed (chunked, no length): reading stops just past the cap.
            chunk = b"1000\r\n" + b" " * 4096 + b"\r\n"
            status, _ = await _exchange(service.base, head + "Transfer-Encoding: chunked\r\n\r\n",
                                        [chunk] * 25_000)  # 100 MB, were it all sent
            assert status == 413
            assert 1000 < service.dispatch.body_bytes <= 1000 + 4 * 65536
            assert service.app.counts == Counter(rejected=2)
            assert service.client.in_flight == 1


async def test_a_poster_hanging_up_mid_body_changes_nothing() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=45)) as server:
        async with plain_service(server) as service:
            task = await service.client.submit(GenerateRequest("a cat"))
            target = urlsplit(service.urls["a cat"])
            whole = f'{{"success": true, "task_id": "{task.id}", "data": []}}'.encode()
            host, port = urlsplit(service.base).hostname, urlsplit(service.base).port
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"POST {target.path}?{target.query} HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: {len(whole)}\r\n\r\n".encode() + whole[:-5])
            await writer.drain()
            await eventually(lambda: service.dispatch.read["http.request"] == 1)
            writer.close()  # hung up: the last bytes never come
            await writer.wait_closed()
            await eventually(lambda: service.app.counts["disconnected"] == 1)
            assert await reader.read() == b""  # no answer was written
            assert service.client.in_flight == 1  # nothing judged, nothing settled
            # The receiver is unharmed: the genuine callback still resolves the task.
            await server.finish_all()
            result = await service.client.wait(task, timeout=10)
    assert result.task_id == task.id
    assert service.app.counts == Counter(disconnected=1, resolved=1)
    assert queries(server) == 0


async def test_no_client_anywhere_answers_503_until_one_is_set() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=46)) as server:
        async with plain_service(server, "none") as service:
            async with service.client as client:
                task = await client.submit(GenerateRequest("a cat"))
                url, body = service.urls["a cat"], _body(task.id, "a cat")
                async with aiohttp.ClientSession() as http:
                    async with http.post(url, json=body) as response:
                        assert response.status == 503
                        assert response.headers["Content-Type"] == "application/json"
                        assert (await response.json())["reason"] == (
                            "no FluxClient is attached to this app yet")
                    service.app.client = client  # e.g. from a framework's startup hook
                    async with http.post(url, json=body) as response:
                        assert response.status == 200  # judged now: it carries the token
                    result = await client.wait(task, timeout=0)
    assert result.urls == ["http://evil.example/x.png"]  # a token opens its own task only
    assert service.app.counts == Counter(resolved=1)


async def test_served_alone_it_answers_the_lifespan() -> None:
    # uvicorn's lifespan="on" refuses to start an app that does not answer it.
    async with LocalFluxServer(ServerSettings(generation_time=(0.05, 0.1), seed=47)) as server:
        sock = bound_socket()
        url = base_url(sock) + "/any/path"
        async with FluxClient(server.token, base_url=server.url, poll_interval=0.05,
                              callback_url=url, callback_poll_interval=60.0) as client:
            app = CallbackApp(client)
            async with uvicorn_serving(app, sock, lifespan="on"):
                result = await client.generate("a cat")
                async with aiohttp.ClientSession() as http:
                    async with http.post(url + f"?{TOKEN_PARAM}=forged", json={}) as response:
                        assert response.status == 403
    assert app.counts == Counter(resolved=1, rejected=1)
    assert result.urls == [server.image_url(f"{result.task_id}-0.png")]
    assert queries(server) == 0


async def test_a_websocket_is_refused_and_odd_scopes_raise() -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = CallbackApp()
    await app({"type": "websocket", "path": "/"}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]  # before accept: a 403
    with pytest.raises(ValueError, match="serves HTTP, not 'mystery'"):
        await app({"type": "mystery"}, receive, send)


def test_the_client_is_found_in_the_lifespan_state_then_the_app_state() -> None:
    first = FluxClient("k", callback_url="http://127.0.0.1:9/cb")
    second = FluxClient("k", callback_url="http://127.0.0.1:9/cb")
    app_with_state = SimpleNamespace(state=SimpleNamespace(flux_client=second))
    assert scope_client({"type": "http"}) is None
    assert scope_client({"state": {}, "app": object()}) is None
    assert scope_client({"state": {STATE_KEY: first}, "app": app_with_state}) is first
    assert scope_client({"state": {}, "app": app_with_state}) is second
    with pytest.raises(TypeError, match="flux_client is a str, not a FluxClient"):
        scope_client({"state": {STATE_KEY: "a client"}})


def test_the_token_is_the_first_flux_token_parameter() -> None:
    from flux_async.asgi._app import _token

    assert _token({"query_string": b"a=1&flux_token=n.m&flux_token=x"}) == "n.m"
    assert _token({"query_string": b"flux_token="}) == ""
    assert _token({"query_string": b"a=1"}) is None
    assert _token({}) is None


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_plain_app_needs_no_starlette() -> None:
    done = _run("import sys\n"
                "import flux_async.asgi as asgi\n"
                "assert 'starlette' not in sys.modules, 'starlette was imported'\n"
                "sys.modules['starlette'] = None  # as if not installed\n"
                "from flux_async.asgi import CallbackApp, TokenLogFilter, scope_client\n"
                "CallbackApp()\n"
                "try:\n"
                "    from flux_async.asgi import callback_route\n"
                "except ImportError as exc:\n"
                "    print(exc)\n")
    assert done.returncode == 0, done.stderr
    assert "callback_route needs Starlette (pip install 'flux-async[asgi]')" in done.stdout


def test_the_starlette_names_are_still_there() -> None:
    import flux_async.asgi as asgi

    assert {"callback_route", "callback_router", "get_flux_client"} <= set(dir(asgi))
    assert asgi.CallbackRoute.__module__ == "flux_async.asgi._starlette"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        asgi.nothing_here  # noqa: B018

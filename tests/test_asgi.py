"""flux_async.asgi: callbacks into Starlette and FastAPI apps served by a real uvicorn."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import aiohttp
import anyio
import httpx
import pytest
import uvicorn
from aiohttp import web
from fastapi import Depends, FastAPI
from starlette.applications import Starlette

from flux_async import FluxClient, GenerateRequest, Task, TaskFailedError
from flux_async.asgi import (
    TOKEN_PARAM,
    TokenLogFilter,
    callback_route,
    callback_router,
    get_flux_client,
)
from flux_async.testing import LocalFluxServer, ServerSettings

from .conftest import eventually, serve
from .test_callbacks import FORGERIES, SECRET, _body, _hook, _token, forge, queries

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
CALLBACK_PATH = "/flux/callback"


@asynccontextmanager
async def recording_proxy(server: LocalFluxServer) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A pass-through to ``server`` that notes each submission's callback URL by prompt.

    The app under test may run in another process: this is how a test learns the
    tokens it handed out, to forge posts with them.
    """
    urls: dict[str, str] = {}

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == "/flux/images":
            sent = json.loads(body)
            if "callback_url" in sent:
                urls[sent["prompt"]] = sent["callback_url"]
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "accept")}
        async with session.request(request.method, server.url + request.path_qs,
                                   data=body, headers=headers) as answer:
            return web.Response(status=answer.status, body=await answer.read(),
                                headers={"Content-Type": answer.headers["Content-Type"]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    async with aiohttp.ClientSession() as session, serve(app) as base:
        yield base, urls


def bound_socket() -> socket.socket:
    # The callback URL must be known before the app starts: bind its socket first.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def uvicorn_serving(app: Any, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``app`` with uvicorn on ``sock`` in this event loop, lifespan included."""
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or serving.done())
        assert server.started, "uvicorn did not start"
        yield
    finally:
        server.should_exit = True
        await serving


@asynccontextmanager
async def asgi_service(
    server: LocalFluxServer, attach: str = "lifespan", **route_settings: Any
) -> AsyncIterator[SimpleNamespace]:
    """An app with the callback route, its client opened by the lifespan.

    ``attach``: how the route finds the client: ``lifespan`` (state), ``app.state``,
    ``given`` (passed to the route), ``fastapi`` (lifespan state, APIRouter).
    """
    sock = bound_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with recording_proxy(server) as (proxy, urls):
        ns = SimpleNamespace(base=base, urls=urls, client=FluxClient(
            server.token, base_url=proxy, poll_interval=0.05, submit_rate=None,
            query_rate=None, callback_url=base + CALLBACK_PATH, callback_poll_interval=60.0,
            callback_secret=SECRET, max_concurrency=100,
        ))

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
            async with ns.client as client:
                if attach == "app.state":
                    app.state.flux_client = client
                    yield {}
                else:
                    yield {"flux_client": client}

        app: Any
        if attach == "fastapi":
            app = FastAPI(lifespan=lifespan)
            router = callback_router(CALLBACK_PATH, **route_settings)
            app.include_router(router)
            ns.receiver = router.routes[0].receiver  # type: ignore[attr-defined]
        else:
            given = ns.client if attach == "given" else None
            route = callback_route(CALLBACK_PATH, given, **route_settings)
            app = Starlette(routes=[route], lifespan=lifespan)
            ns.receiver = route.receiver
        async with uvicorn_serving(app, sock):
            yield ns
    assert ns.client.closed  # the lifespan's end closed it


@pytest.mark.parametrize("attach", ["lifespan", "app.state", "given", "fastapi"])
async def test_callbacks_resolve_waits_without_any_task_query(attach: str) -> None:
    settings = ServerSettings(generation_time=(0.05, 0.3), failure_rate=0.2, seed=31)
    async with LocalFluxServer(settings) as server:
        async with asgi_service(server, attach) as service:
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
    counts = service.receiver.counts
    assert counts["resolved"] + counts["held"] + counts["confirming"] == 40
    assert counts["rejected"] == 0


@pytest.mark.parametrize("kind", list(FORGERIES))
async def test_a_forged_callback_changes_nothing(kind: str) -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=32)) as server:
        async with asgi_service(server) as service:
            await forge(kind, server, service.client, service.receiver, service.urls)


@pytest.mark.parametrize(
    ("hook", "status"), [("sync", 200), ("async", 200), ("broken", 500), ("none", 404)]
)
async def test_callbacks_without_a_waiter(hook: str, status: int) -> None:
    """A task submitted by a predecessor (same secret): the hook gets it, or 404."""
    seen: list[Task] = []
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=33)) as server:
        async with asgi_service(server, on_unclaimed=_hook(hook, seen)) as service:
            settings = {k: getattr(service.client, k) for k in ("base_url", "callback_url")}
            async with FluxClient(server.token, callback_secret=SECRET, **settings) as first:
                task = await first.submit(GenerateRequest("before the restart"))
            async with aiohttp.ClientSession() as session:
                async with session.post(service.urls["before the restart"],
                                        json=_body(task.id, "before the restart")) as response:
                    assert response.status == status
    assert [t.id for t in seen] == ([task.id] if status == 200 else [])
    counts = service.receiver.counts
    assert (counts["hook_failed"], counts["unclaimed"]) == ((1, 0) if hook == "broken" else (0, 1))


async def test_no_client_attached_answers_503() -> None:
    app = FastAPI()
    app.include_router(callback_router())

    @app.get("/needs-a-client")
    async def needs(client: Annotated[FluxClient, Depends(get_flux_client)]) -> str:
        return client.base_url

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://app") as http:
        response = await http.post(f"{CALLBACK_PATH}?{TOKEN_PARAM}=x", content=b"{}")
        assert response.status_code == 503
        assert response.json() == {"ok": False, "result": "rejected",
                                   "reason": "no FluxClient is attached to this app yet"}
        assert (await http.get("/needs-a-client")).status_code == 503
        app.state.flux_client = "not a client"
        with pytest.raises(TypeError, match="flux_client is a str"):
            await http.get("/needs-a-client")
        assert (await http.get(CALLBACK_PATH)).status_code == 405
    assert "/flux/callback" not in json.dumps(app.openapi())  # no place in the API's docs


def test_the_token_filter_masks_tokens_in_access_logs() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", f"/flux/callback?a=1&{TOKEN_PARAM}=n0nce.MAC-_x&b=2", "1.1",
         200), None,
    )
    assert TokenLogFilter().filter(record)
    assert record.getMessage() == (
        f'127.0.0.1:5000 - "POST /flux/callback?a=1&{TOKEN_PARAM}=<hidden>&b=2 HTTP/1.1" 200'
    )


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_flux_async_alone_imports_no_starlette() -> None:
    done = _run("import sys, flux_async, flux_async.web\n"
                "assert 'starlette' not in sys.modules, 'starlette was imported'\n"
                "assert 'fastapi' not in sys.modules, 'fastapi was imported'")
    assert done.returncode == 0, done.stderr


def test_starlette_users_need_no_fastapi() -> None:
    done = _run("import sys\n"
                "sys.modules['fastapi'] = None  # as if not installed\n"
                "from flux_async.asgi import callback_route, callback_router\n"
                "callback_route('/cb')\n"
                "try:\n"
                "    callback_router('/cb')\n"
                "except ImportError as exc:\n"
                "    print(exc)\n")
    assert done.returncode == 0, done.stderr
    assert "needs FastAPI" in done.stdout


# --- the proof: examples/fastapi_service.py under uvicorn, in its own process ---------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def example_under_uvicorn(
    server: LocalFluxServer, proxy: str, log_file: Path
) -> AsyncIterator[str]:
    """``python -m uvicorn examples.fastapi_service:app``; yields its URL, then stops it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    options = {"max_concurrency": 64, "submit_rate": None, "query_rate": None,
               "poll_interval": 0.05, "callback_poll_interval": 60.0}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACEDATACLOUD_API_TOKEN": server.token,
           "FLUX_ASYNC_BASE_URL": proxy, "FLUX_PUBLIC_URL": base,
           "FLUX_CLIENT_OPTIONS": json.dumps(options)}
    env.pop("FLUX_LOCAL", None)
    command = [sys.executable, "-m", "uvicorn", "examples.fastapi_service:app",
               "--host", "127.0.0.1", "--port", str(port)]
    with log_file.open("wb") as log:
        process = await anyio.open_process(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    async with process, aiohttp.ClientSession() as http:

        async def up() -> bool:
            try:
                async with http.get(base + "/openapi.json") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                if process.returncode is not None:
                    pytest.fail(await anyio.Path(log_file).read_text())
                return False

        with anyio.fail_after(30):
            while not await up():  # noqa: ASYNC110 - nothing to wait on but the port itself
                await anyio.sleep(0.05)
        try:
            yield base
        finally:
            process.terminate()  # uvicorn shuts down gracefully: the lifespan ends
            with anyio.fail_after(15):
                await process.wait()
    # uvicorn shuts down, then re-raises the signal it caught.
    assert process.returncode in (0, -signal.SIGTERM)


async def test_the_fastapi_example_under_uvicorn(tmp_path: Path) -> None:
    log_file = tmp_path / "uvicorn.log"
    jobs = 50
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=34)) as server:
        async with recording_proxy(server) as (proxy, urls):
            async with example_under_uvicorn(server, proxy, log_file) as base:
                async with aiohttp.ClientSession(base_url=base) as http:

                    async def post(body: dict[str, Any]) -> str:
                        async with http.post("/images", json=body) as response:
                            assert response.status == 202, await response.text()
                            task_id: str = (await response.json())["task_id"]
                            return task_id

                    async def statuses() -> dict[str, dict[str, Any]]:
                        views = {}
                        for task_id in ids:
                            async with http.get(f"/images/{task_id}") as response:
                                assert response.status == 200
                                views[task_id] = await response.json()
                        return views

                    ids = await asyncio.gather(*(post({"prompt": f"job {i}"})
                                                 for i in range(jobs)))
                    assert len(set(ids)) == len(urls) == jobs
                    # Forged posts at job 0's wait, while every task is still running.
                    target, other = urls["job 0"], urls["job 1"]
                    forged = [
                        (target.split("?")[0], _body(ids[0], "job 0"), 403),
                        (target.replace(_token(target), _token(target)[:-4] + "AAAA"),
                         _body(ids[0], "job 0"), 403),
                        (other, _body(ids[0], "job 0"), 403),
                        (target, _body(ids[0], "another prompt"), 409),
                    ]
                    for url, body, status in forged:
                        async with http.post(url, json=body) as response:
                            assert response.status == status, await response.text()
                    assert all(v["status"] == "pending" for v in (await statuses()).values())

                    await server.finish_all()  # returns once every callback was answered
                    views = await statuses()
        output = await anyio.Path(log_file).read_text()
    assert {v["status"] for v in views.values()} == {"succeeded"}
    assert [views[i]["images"] for i in ids] == [[server.image_url(f"{i}-0.png")] for i in ids]
    assert server.stats.callbacks_sent == jobs
    assert server.stats.callbacks_failed == 0
    assert queries(server) == 0  # every wait was resolved by its callback
    # The access log shows the callbacks, not their tokens; the lifespan ended cleanly.
    assert output.count('"POST /flux/callback?flux_token=<hidden> HTTP/1.1" 200') == jobs
    assert not any(_token(url) in output for url in urls.values())
    assert "Application shutdown complete" in output


def test_the_callback_secret_never_shows() -> None:
    client = FluxClient("k", callback_url="http://127.0.0.1:9/cb", callback_secret=SECRET)
    route = callback_route(client=client)
    assert SECRET not in repr(route.receiver) + repr(vars(route.receiver))
    assert repr(route.receiver).startswith("<CallbackReceiver max_body=262144")

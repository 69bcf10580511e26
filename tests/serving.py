"""Serving ASGI apps for real in tests: uvicorn on a port-0 socket, a recording proxy
of the local server, and the drive of an example image service end to end.

Shared by the Starlette/FastAPI tests (test_asgi), the plain ASGI receiver's
(test_asgi_app) and the framework examples' (test_litestar_service,
test_django_service).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import aiohttp
import anyio
import pytest
import uvicorn
from aiohttp import web

from flux_async.testing import LocalFluxServer

from .conftest import eventually, serve
from .test_callbacks import _body, _token, queries

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


def base_url(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def uvicorn_serving(
    app: Any, sock: socket.socket, lifespan: Literal["on", "off"] = "on"
) -> AsyncIterator[None]:
    """Serve ``app`` with uvicorn on ``sock`` in this event loop; stop it on leaving.

    ``lifespan="on"`` runs the app's lifespan (uvicorn fails to start if the app
    refuses it); ``"off"`` sends none, as servers without lifespan support do.
    """
    server = uvicorn.Server(uvicorn.Config(app, lifespan=lifespan, log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or serving.done())
        assert server.started, "uvicorn did not start"
        yield
    finally:
        server.should_exit = True
        await serving


@asynccontextmanager
async def example_under_uvicorn(
    target: str, server: LocalFluxServer, proxy: str, log_file: Path
) -> AsyncIterator[str]:
    """``python -m uvicorn examples.<target>`` in a process of its own, configured by the
    environment as its docstring says; yields its URL, then stops it.

    The example's client talks to ``proxy`` (``recording_proxy(server)``).
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    options = {"max_concurrency": 64, "submit_rate": None, "query_rate": None,
               "poll_interval": 0.05, "callback_poll_interval": 60.0}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACEDATACLOUD_API_TOKEN": server.token,
           "FLUX_ASYNC_BASE_URL": proxy, "FLUX_PUBLIC_URL": base,
           "FLUX_CLIENT_OPTIONS": json.dumps(options)}
    env.pop("FLUX_LOCAL", None)
    command = [sys.executable, "-m", "uvicorn", f"examples.{target}",
               "--host", "127.0.0.1", "--port", str(port)]
    with log_file.open("wb") as log:
        process = await anyio.open_process(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    async with process, aiohttp.ClientSession() as http:

        async def up() -> bool:
            try:
                # Served only once the lifespan (which opens the client) is done.
                async with http.get(base + CALLBACK_PATH) as response:
                    return response.status == 405
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


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py``, imported under a name of its own."""
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def exercise_image_service(
    base: str, server: LocalFluxServer, urls: dict[str, str], jobs: int
) -> None:
    """Drive an example service (``POST /images``, ``GET /images/{id}``) end to end.

    ``jobs`` submissions, forged callbacks at the first one while every task still
    runs (each refused, nothing changed), then the local server finishes them all:
    every status must come from its callback, without a single task query.
    ``server`` must be slow (``generation_time=60.0``), ``urls`` the recording
    proxy's.
    """
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
                    assert response.status == 200, await response.text()
                    views[task_id] = await response.json()
            return views

        ids = await asyncio.gather(*(post({"prompt": f"job {i}"}) for i in range(jobs)))
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
                assert (await response.json())["result"] == "rejected"  # the receiver's
        assert all(v["status"] == "pending" for v in (await statuses()).values())

        await server.finish_all()  # returns once every callback was answered
        views = await statuses()
    assert {v["status"] for v in views.values()} == {"succeeded"}
    assert [views[i]["images"] for i in ids] == [[server.image_url(f"{i}-0.png")] for i in ids]
    assert server.stats.callbacks_sent == jobs
    assert server.stats.callbacks_failed == 0
    assert queries(server) == 0  # every wait was resolved by its callback

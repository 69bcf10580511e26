"""flux_async.asgi: callbacks into Starlette and FastAPI apps served by a real uvicorn."""

from __future__ import annotations

import asyncio
import json
import logging
import os
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

from .serving import (
    CALLBACK_PATH,
    ROOT,
    bound_socket,
    example_under_uvicorn,
    exercise_image_service,
    recording_proxy,
    uvicorn_serving,
)
from .test_callbacks import FORGERIES, SECRET, _body, _hook, _token, forge

pytestmark = pytest.mark.anyio


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


async def test_the_fastapi_example_under_uvicorn(tmp_path: Path) -> None:
    log_file = tmp_path / "uvicorn.log"
    jobs = 50
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=34)) as server:
        async with recording_proxy(server) as (proxy, urls):
            async with example_under_uvicorn("fastapi_service:app", server, proxy,
                                             log_file) as base:
                await exercise_image_service(base, server, urls, jobs)
        output = await anyio.Path(log_file).read_text()
    # The access log shows the callbacks, not their tokens; the lifespan ended cleanly.
    assert output.count('"POST /flux/callback?flux_token=<hidden> HTTP/1.1" 200') == jobs
    assert not any(_token(url) in output for url in urls.values())
    assert "Application shutdown complete" in output


def test_the_callback_secret_never_shows() -> None:
    client = FluxClient("k", callback_url="http://127.0.0.1:9/cb", callback_secret=SECRET)
    route = callback_route(client=client)
    assert SECRET not in repr(route.receiver) + repr(vars(route.receiver))
    assert repr(route.receiver).startswith("<CallbackReceiver max_body=262144")

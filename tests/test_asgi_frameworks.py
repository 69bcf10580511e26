"""CallbackApp in real frameworks: examples/litestar_service.py and examples/django_service.py.

Each example is served by uvicorn on a port-0 socket, its lifespan opening the
client against the local server (through a proxy noting the callback URLs), and
must resolve its generations by callback alone, refusing forged ones. Skipped
when the framework is not installed (the ``tests`` extra installs both).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import anyio
import pytest

from flux_async.asgi import CallbackApp
from flux_async.testing import LocalFluxServer, ServerSettings

from .serving import (
    CALLBACK_PATH,
    base_url,
    bound_socket,
    example_under_uvicorn,
    exercise_image_service,
    load_example,
    recording_proxy,
    uvicorn_serving,
)
from .test_callbacks import _token

pytestmark = pytest.mark.anyio

JOBS = 20


def _needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed (the tests extra has it)")


def _litestar(example: ModuleType, public_url: str, **settings: Any) -> tuple[Any, CallbackApp]:
    app = example.create_app(public_url, **settings)
    return app, app.state.flux_callbacks


def _django(example: ModuleType, public_url: str, **settings: Any) -> tuple[Any, CallbackApp]:
    application = example.Service(public_url, **settings)
    return application, application.callbacks


Build = Callable[..., tuple[Any, CallbackApp]]
FRAMEWORKS = [
    pytest.param("litestar_service", _litestar, marks=_needs("litestar"), id="litestar"),
    pytest.param("django_service", _django, marks=_needs("django"), id="django"),
]


@asynccontextmanager
async def example_serving(
    server: LocalFluxServer, name: str, build: Build
) -> AsyncIterator[tuple[str, dict[str, str], CallbackApp]]:
    """The example ``name`` under uvicorn; yields its URL, the callback URLs, its receiver."""
    with bound_socket() as sock:  # closed by uvicorn, or here if the app fails to build
        base = base_url(sock)
        async with recording_proxy(server) as (proxy, urls):
            app, callbacks = build(
                load_example(name), base, api_key=server.token, base_url=proxy,
                max_concurrency=64, submit_rate=None, query_rate=None, poll_interval=0.05,
                callback_poll_interval=60.0,
            )
            async with uvicorn_serving(app, sock, lifespan="on"):
                yield base, urls, callbacks


@pytest.mark.parametrize(("name", "build"), FRAMEWORKS)
async def test_generations_resolve_by_callback_and_forgeries_are_refused(
    name: str, build: Build
) -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=51)) as server:
        async with example_serving(server, name, build) as (base, urls, callbacks):
            await exercise_image_service(base, server, urls, JOBS)
            async with aiohttp.ClientSession(base_url=base) as http:
                async with http.get(CALLBACK_PATH) as response:
                    assert response.status == 405
    # Three forgeries refused 403 and one 409 by the receiver; every task by callback.
    assert callbacks.counts == Counter(resolved=JOBS, rejected=4)


@pytest.mark.parametrize(("name", "build"), FRAMEWORKS)
async def test_bad_requests_and_unknown_tasks(name: str, build: Build) -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=52)) as server:
        async with example_serving(server, name, build) as (base, _, callbacks):
            async with aiohttp.ClientSession(base_url=base) as http:
                for body in ({"count": 2}, {"prompt": "a cat", "count": 0}):
                    async with http.post("/images", json=body) as response:
                        assert response.status == 400, body
                async with http.get("/images/no-such-task") as response:
                    assert response.status == 404  # asked of the API, which knows none
    assert server.stats.requests["images"] == 0  # nothing was submitted
    assert sum(callbacks.counts.values()) == 0


@pytest.mark.parametrize(
    "target",
    [pytest.param("litestar_service:app", marks=_needs("litestar"), id="litestar"),
     pytest.param("django_service:application", marks=_needs("django"), id="django")],
)
async def test_the_example_as_its_docstring_runs_it(target: str, tmp_path: Path) -> None:
    """``uvicorn examples.<target>``, configured by the environment, in its own process."""
    log_file = tmp_path / "uvicorn.log"
    jobs = 5
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=53)) as server:
        async with recording_proxy(server) as (proxy, urls):
            async with example_under_uvicorn(target, server, proxy, log_file) as base:
                await exercise_image_service(base, server, urls, jobs)
        output = await anyio.Path(log_file).read_text()
    # The access log shows the callbacks, not their tokens; the lifespan ended cleanly.
    assert output.count('"POST /flux/callback?flux_token=<hidden> HTTP/1.1" 200') == jobs
    assert not any(_token(url) in output for url in urls.values())
    assert "Application shutdown complete" in output

from __future__ import annotations

import os

# Every local server of this suite answers through a realistic link (1448-byte
# pieces, 2 ms apart) unless a test names the link itself: the loopback's
# instant, whole answers hide bugs that a real network shows at once. Set before
# anything builds a ServerSettings (their link defaults read this variable); a
# value in the environment wins, FLUX_LOCAL_LINK=off runs the suite on loopback.
os.environ.setdefault("FLUX_LOCAL_LINK", "1448:0.002")

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

from flux_async import FluxClient
from flux_async.testing import LocalFluxServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a scale test of tens of seconds")


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp runs on asyncio only.
    return "asyncio"


def client_for(server: LocalFluxServer, **settings: Any) -> FluxClient:
    """A client of ``server``; fast polling unless the test says otherwise.

    Its downloads may reach ``server`` (and only it) on the loopback: the
    download guard refuses loopback addresses unless told.
    """
    settings.setdefault("download_allow", [server.url])
    settings.setdefault("poll_interval", 0.05)
    settings.setdefault("busy_poll_interval", 0.02)
    settings.setdefault("submit_rate", None)
    settings.setdefault("query_rate", None)
    return FluxClient(server.token, base_url=server.url, **settings)


async def eventually(condition: Callable[[], bool], *, within: float = 10.0) -> None:
    """Wait until ``condition()`` holds, checking every 10 ms; fail after ``within`` s.

    For conditions only observable by looking (a server's counter, a file on
    disk): the wait ends as soon as it holds, it is not a fixed delay.
    """
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await anyio.sleep(0.01)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 on an ephemeral port; yield its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from flux_async import FluxClient
from flux_async.testing import LocalFluxServer


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp runs on asyncio only.
    return "asyncio"


def client_for(server: LocalFluxServer, **settings: Any) -> FluxClient:
    """A client of ``server``; fast polling unless the test says otherwise."""
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

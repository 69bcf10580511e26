from __future__ import annotations

from typing import Any

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

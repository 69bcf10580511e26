"""Pytest fixtures for code that talks to the Flux API, backed by :class:`LocalFluxServer`.

Registered as the ``flux_async`` pytest11 entry point, so installing the package makes
``flux_server`` available. The fixture is async: run the tests with anyio's pytest
plugin (``@pytest.mark.anyio``) on the asyncio backend. Override
``flux_server_settings`` in a conftest.py or test module to change the behaviour::

    @pytest.fixture
    def flux_server_settings() -> ServerSettings:
        return ServerSettings(generation_time=0.01, failure_rate=0.5, seed=1)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ._server import LocalFluxServer
from ._settings import ServerSettings

__all__ = ["flux_server", "flux_server_settings"]


@pytest.fixture
def flux_server_settings() -> ServerSettings:
    """Settings for ``flux_server``: fast tasks, a fixed seed."""
    return ServerSettings(generation_time=(0.05, 0.2), seed=1234)


@pytest.fixture
async def flux_server(flux_server_settings: ServerSettings) -> AsyncIterator[LocalFluxServer]:
    """A running local Flux server for one test; ``.url`` and ``.token`` to connect."""
    async with LocalFluxServer(flux_server_settings) as server:
        yield server

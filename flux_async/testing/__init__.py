"""A local, faithful server of the Ace Data Cloud Flux API, for tests and benchmarks.

    async with LocalFluxServer(ServerSettings(generation_time=0.1)) as server:
        ...  # point a client at server.url with server.token

Run it standalone with ``python -m flux_async.testing``; pytest users get the
``flux_server`` fixture from :mod:`flux_async.testing.pytest_plugin`.
"""

from ._serve import serve
from ._server import LocalFluxServer
from ._settings import DEFAULT_TOKEN, AsyncAnswer, Faults, PendingShape, ServerSettings, TokenState
from ._stats import ServerStats

__all__ = [
    "DEFAULT_TOKEN",
    "AsyncAnswer",
    "Faults",
    "LocalFluxServer",
    "PendingShape",
    "ServerSettings",
    "ServerStats",
    "TokenState",
    "serve",
]

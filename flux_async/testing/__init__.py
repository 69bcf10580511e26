"""A local, faithful server of the Ace Data Cloud Flux API, for tests and benchmarks.

    async with LocalFluxServer(ServerSettings(generation_time=0.1)) as server:
        ...  # point a client at server.url with server.token

Run it standalone with ``python -m flux_async.testing``; pytest users get the
``flux_server`` fixture from :mod:`flux_async.testing.pytest_plugin`.

The loopback answers instantly and whole, which no real network does. Set
``FLUX_LOCAL_LINK="1448:0.002"`` (or ``ServerSettings(link_chunk_bytes=1448,
link_chunk_gap=0.002)``) to have every answer arrive in pieces, and see
``ServerSettings`` for a lagging task store, slow submission answers and the rest.
"""

from ._serve import serve
from ._server import LocalFluxServer
from ._settings import (
    DEFAULT_TOKEN,
    LINK_ENV,
    AsyncAnswer,
    ErrorSuccessField,
    Faults,
    LinkFraming,
    PendingShape,
    ServerSettings,
    TokenState,
)
from ._stats import ServerStats

__all__ = [
    "DEFAULT_TOKEN",
    "LINK_ENV",
    "AsyncAnswer",
    "ErrorSuccessField",
    "Faults",
    "LinkFraming",
    "LocalFluxServer",
    "PendingShape",
    "ServerSettings",
    "ServerStats",
    "TokenState",
    "serve",
]

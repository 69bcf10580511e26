"""Serve the local Flux server until told to stop (the standalone runner's core)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from contextlib import suppress

from ._server import LocalFluxServer
from ._settings import DEFAULT_TOKEN, ServerSettings

__all__ = ["serve"]


async def serve(
    settings: ServerSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    tokens: Sequence[str] = (DEFAULT_TOKEN,),
    stop: asyncio.Event | None = None,
    on_ready: Callable[[LocalFluxServer], object] | None = None,
) -> None:
    """Serve until ``stop`` is set, or until SIGINT/SIGTERM when ``stop`` is None.

    Prints the ``listening on`` line (flushed) once the port is bound, then calls
    ``on_ready(server)`` if given (e.g. for a CLI to run its own work against it).
    """
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(NotImplementedError, RuntimeError):  # e.g. Windows
                loop.add_signal_handler(sig, stop.set)
    async with LocalFluxServer(settings, tokens=tokens, host=host, port=port) as server:
        print(f"flux_async.testing listening on {server.url} token={server.token}", flush=True)
        if on_ready is not None:
            on_ready(server)
        await stop.wait()

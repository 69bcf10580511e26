"""flux_async in callback mode: the ``flux_async.web`` receiver, served by the client process.

The receiver is mounted in an ``aiohttp.web`` app on 127.0.0.1 (port 0), and the
client is given that URL as ``callback_url``; the local server POSTs each result
there when its task finishes. The poller still checks every
``callback_poll_interval`` (30 s) as a fallback. The receiver's CPU is part of
the client's, as it would be in a real deployment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.contenders import Probe
from benchmarks.scenarios import Scenario

__all__ = ["run"]

PATH = "/flux/callback"


async def run(
    s: Scenario,
    url: str,
    token: str,
    probe: Probe,
    run_map: Callable[[Any, Scenario, Probe], Awaitable[None]],
) -> None:
    from aiohttp import web

    from flux_async import FluxClient
    from flux_async.web import add_callback_route

    app = web.Application()
    receiver = add_callback_route(app, PATH)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        callback_url = f"http://{host}:{port}{PATH}"
        async with FluxClient(token, base_url=url, callback_url=callback_url,
                              **s.flux_settings) as client:
            receiver.client = client
            await run_map(client, s, probe)
    finally:
        await runner.cleanup()

"""Control endpoints under ``/_local/``, for driving a server in another process.

Benchmarks run the server with ``python -m flux_async.testing`` and cannot touch the
Python object, so these routes expose its public API over HTTP. They are not part of
the vendor's protocol and are never counted in the stats.

* ``GET /_local/stats[?finish_times=1]``: ``server.stats.snapshot()``
* ``POST /_local/reset``: ``server.reset_stats()``
* ``GET|POST /_local/settings``: read, or change with a JSON object of fields
  (see ``LocalFluxServer.update_settings``); answers the settings after the change
* ``POST /_local/finish_all``: ``server.finish_all()``
* ``POST /_local/token_state`` ``{"token", "state"}``: ``server.set_token_state()``
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from ._settings import ServerSettings, TokenState
from ._stats import ServerStats

__all__ = ["control_routes"]

_OK = {"ok": True}


def _bad_request(message: str) -> web.Response:
    body = {"error": {"code": "bad_request", "message": message}, "trace_id": str(uuid.uuid4())}
    # Same bytes and content type as the vendor-shaped errors of the real endpoints.
    return web.Response(status=400, body=json.dumps(body).encode(), content_type="application/json")


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class Controlled(Protocol):
    """What the control routes drive (``LocalFluxServer`` is one)."""

    @property
    def stats(self) -> ServerStats: ...
    @property
    def settings(self) -> ServerSettings: ...
    def reset_stats(self) -> None: ...
    async def finish_all(self) -> None: ...
    def set_token_state(self, token: str, state: TokenState) -> None: ...
    def update_settings(self, changes: Mapping[str, Any]) -> None: ...


def control_routes(server: Controlled) -> list[web.RouteDef]:
    """The ``/_local/`` routes of ``server``."""

    async def stats(request: web.Request) -> web.StreamResponse:
        with_times = request.query.get("finish_times", "") not in ("", "0", "false")
        return web.json_response(server.stats.snapshot(finish_times=with_times))

    async def reset(request: web.Request) -> web.StreamResponse:
        server.reset_stats()
        return web.json_response(_OK)

    async def finish_all(request: web.Request) -> web.StreamResponse:
        await server.finish_all()
        return web.json_response(_OK)

    async def token_state(request: web.Request) -> web.StreamResponse:
        body = await _json_object(request)
        if body is None or not isinstance(body.get("token"), str):
            return _bad_request("expected {'token': str, 'state': str}")
        try:
            server.set_token_state(body["token"], body.get("state"))  # type: ignore[arg-type]
        except ValueError as exc:
            return _bad_request(str(exc))
        return web.json_response(_OK)

    async def settings(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            changes = await _json_object(request)
            if changes is None:
                return _bad_request("expected a JSON object of settings")
            try:
                server.update_settings(changes)
            except ValueError as exc:
                return _bad_request(str(exc))
        return web.json_response(server.settings.to_json())

    return [
        web.get("/_local/stats", stats),
        web.post("/_local/reset", reset),
        web.get("/_local/settings", settings),
        web.post("/_local/settings", settings),
        web.post("/_local/finish_all", finish_all),
        web.post("/_local/token_state", token_state),
    ]

"""The callback route for Starlette and FastAPI apps (the ``asgi`` extra).

Reached through ``flux_async.asgi``, which imports this module (and so Starlette)
only when one of its names is asked for; its docstring shows the use. The
decisions are ``Receiver``'s, shared with ``flux_async.web`` and the plain
``CallbackApp``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._client.client import FluxClient
from .._client.receiver import CONTENT_TYPE, Receiver, UnclaimedHook, parse_content_length
from .._core.callbacks import MAX_CALLBACK_BYTES, TOKEN_PARAM
from ._app import scope_client

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = [
    "CallbackReceiver",
    "CallbackRoute",
    "attached_client",
    "callback_route",
    "callback_router",
    "get_flux_client",
]


def attached_client(request: Request) -> FluxClient | None:
    """The client of ``request``'s app: its lifespan state first, then ``app.state``."""
    return scope_client(request.scope)


def get_flux_client(request: Request) -> FluxClient:
    """The attached client, for ``Depends(get_flux_client)``; 503 until there is one."""
    client = attached_client(request)
    if client is None:
        raise HTTPException(503, "no FluxClient is attached to this app yet")
    return client


class CallbackReceiver(Receiver):
    """The Starlette endpoint of callbacks: ``handle`` is the route's endpoint.

    ``client`` is the ``FluxClient`` the callbacks belong to; when ``None`` it is
    looked up at each request (``attached_client``), so the route can exist before
    the client does. ``counts`` tallies the verdicts for metrics and tests.
    """

    async def handle(self, request: Request) -> Response:
        client = self.client if self.client is not None else attached_client(request)
        answer = await self.receive(
            client, request.query_params.get(TOKEN_PARAM),
            parse_content_length(request.headers.get("content-length")), request.stream(),
        )
        return Response(answer.text, status_code=answer.status, media_type=CONTENT_TYPE)


class CallbackRoute(Route):
    """``POST path`` answered by ``receiver`` (kept as ``route.receiver``)."""

    def __init__(self, path: str, receiver: CallbackReceiver) -> None:
        # Not in an OpenAPI schema: the service posts here, the app's users never do.
        super().__init__(path, receiver.handle, methods=["POST"], name="flux_callback",
                         include_in_schema=False)
        self.receiver = receiver


def callback_route(
    path: str = "/flux/callback",
    client: FluxClient | None = None,
    *,
    on_unclaimed: UnclaimedHook | None = None,
    max_body: int = MAX_CALLBACK_BYTES,
) -> CallbackRoute:
    """A Starlette route receiving callbacks at ``path``, for ``routes=[...]``."""
    receiver = CallbackReceiver(client, on_unclaimed=on_unclaimed, max_body=max_body)
    return CallbackRoute(path, receiver)


def callback_router(
    path: str = "/flux/callback",
    client: FluxClient | None = None,
    *,
    on_unclaimed: UnclaimedHook | None = None,
    max_body: int = MAX_CALLBACK_BYTES,
) -> APIRouter:
    """The same route in a FastAPI ``APIRouter``, for ``app.include_router(...)``.

    The receiver is ``router.routes[0].receiver``. Needs FastAPI, imported here
    only, so Starlette-only apps can use the rest of this module without it.
    """
    try:
        from fastapi import APIRouter
    except ImportError as exc:
        raise ImportError(
            "callback_router needs FastAPI (pip install 'flux-async[fastapi]'); "
            "with Starlette alone use callback_route"
        ) from exc
    router = APIRouter()
    router.routes.append(
        callback_route(path, client, on_unclaimed=on_unclaimed, max_body=max_body)
    )
    return router

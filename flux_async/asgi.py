"""Receive the service's callbacks in a Starlette or FastAPI application.

Mount the route where ``FluxClient(callback_url=...)`` points, and open the client
in the app's lifespan, yielding it as the lifespan state ``flux_client``: the client
then lives exactly as long as the app, and every request sees it as
``request.state.flux_client``. With FastAPI::

    from contextlib import asynccontextmanager
    from typing import Annotated

    from fastapi import Depends, FastAPI
    from flux_async import FluxClient, GenerateRequest
    from flux_async.asgi import callback_router, get_flux_client

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with FluxClient(callback_url="https://example.com/flux/callback") as client:
            yield {"flux_client": client}
        # Leaving the block closed the client: pending waits failed, session closed.

    app = FastAPI(lifespan=lifespan)
    app.include_router(callback_router("/flux/callback"))

    @app.post("/images")
    async def submit(prompt: str,
                     client: Annotated[FluxClient, Depends(get_flux_client)]) -> dict[str, str]:
        task = await client.submit(GenerateRequest(prompt))
        return {"task_id": task.id}

With Starlette alone (no FastAPI needed)::

    from starlette.applications import Starlette
    from flux_async.asgi import callback_route

    app = Starlette(routes=[callback_route("/flux/callback")], lifespan=lifespan)

The client is also found as ``app.state.flux_client`` (set it there if your app
has no lifespan of its own), or pass ``client=`` to the route. Until one is
there, posts are answered 503.

A callback for a task the client waits on resolves the wait at once; the poller
still checks callback-mode tasks every ``callback_poll_interval``, so a lost
callback costs latency, never a result.

**Callbacks without a waiter.** A callback whose token is valid but whose task
this client does not follow (typically after a restart, or another worker's task)
is *unclaimed*. With an ``on_unclaimed`` hook (sync or async) the route hands it
the parsed ``Task`` and answers 200 (500 if the hook raises, so the service may
retry); without one it answers 404. The token proves the post came from a URL
this client (or one with the same ``callback_secret``) handed out, not that the
content is true: confirm with ``client.get_task(task.id)`` before acting on an
unclaimed result that matters. With several workers, give them all the same
``callback_secret``, or each worker refuses (403) the others' callbacks.

**Logs.** The token travels in the query string, which uvicorn's access log
prints: ``logging.getLogger("uvicorn.access").addFilter(TokenLogFilter())``
masks it (``examples/fastapi_service.py`` does so).

**Answers** (the same as ``flux_async.web``): 403 missing or wrong token (also a
token issued for another of this client's tasks), 413 a body over ``max_body``
(by ``Content-Length`` or while reading), 400 not JSON or not a result's shape,
409 contradicts what was submitted (or the result already received), 404
unclaimed without a hook, 503 no client attached, 200 accepted or a harmless
duplicate. A rejected post changes nothing.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._client.client import FluxClient
from ._client.receiver import CONTENT_TYPE, Receiver, UnclaimedHook, parse_content_length
from ._core.callbacks import MAX_CALLBACK_BYTES, TOKEN_PARAM, CallbackVerdict

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = [
    "STATE_KEY",
    "TOKEN_PARAM",
    "CallbackReceiver",
    "CallbackRoute",
    "CallbackVerdict",
    "TokenLogFilter",
    "UnclaimedHook",
    "attached_client",
    "callback_route",
    "callback_router",
    "get_flux_client",
]

#: The name of the client in the lifespan state (``request.state``) or ``app.state``.
STATE_KEY = "flux_client"

_TOKEN_IN_TEXT = re.compile(rf"({TOKEN_PARAM}=)[^&\s\"']*")


def attached_client(request: Request) -> FluxClient | None:
    """The client of ``request``'s app: its lifespan state first, then ``app.state``."""
    found = getattr(request.state, STATE_KEY, None)
    if found is None:
        app_state = getattr(request.scope.get("app"), "state", None)
        found = getattr(app_state, STATE_KEY, None)
    if found is not None and not isinstance(found, FluxClient):
        raise TypeError(f"{STATE_KEY} is a {type(found).__name__}, not a FluxClient")
    return found


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


class TokenLogFilter(logging.Filter):
    """Masks callback tokens in log records (the access log prints query strings).

    Rewrites the record's message and string arguments, so formatters that pick
    the arguments apart (uvicorn's access formatter does) see the masked text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _mask(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_mask(a) if isinstance(a, str) else a for a in record.args)
        return True


def _mask(text: str) -> str:
    return _TOKEN_IN_TEXT.sub(r"\1<hidden>", text)

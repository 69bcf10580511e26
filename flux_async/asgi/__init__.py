"""Receive the service's callbacks in any ASGI application.

**Any ASGI framework** (Litestar, Quart, Django, a path-dispatch of your own):
``CallbackApp`` is a plain ASGI 3 application, with no framework and no extra
needed. Mount it where ``FluxClient(callback_url=...)`` points; give it the
client, set ``app.client`` later, or let it find the client in the ASGI lifespan
state (``scope["state"]["flux_client"]``) or as ``app.state.flux_client`` of the
host app (``scope_client``). Django, behind a path-dispatch::

    from django.core.asgi import get_asgi_application
    from flux_async import FluxClient
    from flux_async.asgi import CallbackApp

    client = FluxClient(callback_url="https://example.com/flux/callback")
    callbacks = CallbackApp(client)
    django_app = get_asgi_application()

    async def application(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/flux/callback":
            await callbacks(scope, receive, send)
        else:
            await django_app(scope, receive, send)

It needs no lifespan; close the client when the process ends (the guide
``docs/guides/asgi.md`` and ``examples/django_service.py`` do so in the lifespan
when the server runs one; ``examples/litestar_service.py`` shows Litestar).

**Starlette and FastAPI** (the ``asgi`` extra; Starlette is imported only when
one of these names is): ``callback_route`` / ``callback_router`` add the route,
and ``get_flux_client`` is a dependency; open the client in the app's lifespan,
yielding it as the lifespan state ``flux_client``::

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with FluxClient(callback_url="https://example.com/flux/callback") as client:
            yield {"flux_client": client}

    app = FastAPI(lifespan=lifespan)
    app.include_router(callback_router("/flux/callback"))

    @app.post("/images")
    async def submit(prompt: str,
                     client: Annotated[FluxClient, Depends(get_flux_client)]) -> dict[str, str]:
        task = await client.submit(GenerateRequest(prompt))
        return {"task_id": task.id}

With Starlette alone: ``Starlette(routes=[callback_route("/flux/callback")],
lifespan=lifespan)``. The route finds the client as ``CallbackApp`` does, or is
given ``client=``; until there is one, posts are answered 503.

A callback for a task the client waits on resolves the wait at once; the poller
still checks callback-mode tasks every ``callback_poll_interval``, so a lost
callback costs latency, never a result.

**Callbacks without a waiter.** A callback whose token is valid but whose task
this client does not follow (typically after a restart, or another worker's task)
is *unclaimed*. With an ``on_unclaimed`` hook (sync or async) the receiver hands
it the parsed ``Task`` and answers 200 (500 if the hook raises, so the service
may retry); without one it answers 404. The token proves the post came from a
URL this client (or one with the same ``callback_secret``) handed out, not that
the content is true: confirm with ``client.get_task(task.id)`` before acting on
an unclaimed result that matters. With several workers, give them all the same
``callback_secret``, or each worker refuses (403) the others' callbacks.

**Logs.** The token travels in the query string, which uvicorn's access log
prints: ``logging.getLogger("uvicorn.access").addFilter(TokenLogFilter())``
masks it.

**Answers** (the same as ``flux_async.web``): 403 missing or wrong token (also a
token issued for another of this client's tasks), 413 a body over ``max_body``
(by ``Content-Length`` or while reading), 400 not JSON or not a result's shape,
409 contradicts what was submitted (or the result already received), 404
unclaimed without a hook, 405 not a POST, 503 no client attached, 200 accepted or
a harmless duplicate. A rejected post changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._client.receiver import UnclaimedHook
from .._core.callbacks import TOKEN_PARAM, CallbackVerdict
from ._app import STATE_KEY, CallbackApp, scope_client
from ._logs import TokenLogFilter

if TYPE_CHECKING:
    from ._starlette import (
        CallbackReceiver,
        CallbackRoute,
        attached_client,
        callback_route,
        callback_router,
        get_flux_client,
    )

__all__ = [
    "STATE_KEY",
    "TOKEN_PARAM",
    "CallbackApp",
    "CallbackReceiver",
    "CallbackRoute",
    "CallbackVerdict",
    "TokenLogFilter",
    "UnclaimedHook",
    "attached_client",
    "callback_route",
    "callback_router",
    "get_flux_client",
    "scope_client",
]

# Names that need Starlette, imported at first use (PEP 562): the plain app above
# must work where Starlette is not installed, and cost nothing where it is.
_STARLETTE_NAMES = frozenset({
    "CallbackReceiver", "CallbackRoute", "attached_client", "callback_route",
    "callback_router", "get_flux_client",
})


def __getattr__(name: str) -> Any:
    if name not in _STARLETTE_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import _starlette
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "starlette":
            raise
        raise ImportError(
            f"flux_async.asgi.{name} needs Starlette (pip install 'flux-async[asgi]'); "
            "CallbackApp, the plain ASGI receiver, needs no extra"
        ) from exc
    value = getattr(_starlette, name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | _STARLETTE_NAMES)

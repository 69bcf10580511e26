"""A small Litestar service generating images with flux_async, results pushed by callbacks.

The same service as ``examples/fastapi_service.py``, written the Litestar way, its
callbacks received by ``flux_async.asgi.CallbackApp`` (a plain ASGI app, mounted as
a Litestar ``asgi`` handler). Run it against an in-process local server of the API
(no key needed)::

    FLUX_LOCAL=1 uvicorn examples.litestar_service:app --port 8000
    curl -s -XPOST localhost:8000/images -H 'content-type: application/json' \\
        -d '{"prompt": "a white siamese cat"}'
    curl -s localhost:8000/images/<task_id>

or against the real service, reachable by it at a public URL::

    ACEDATACLOUD_API_TOKEN=... FLUX_PUBLIC_URL=https://my.host \\
        uvicorn examples.litestar_service:app --port 8000

Configuration (read from the environment when uvicorn imports ``app``): the same
as ``examples/fastapi_service.py``: ``FLUX_PUBLIC_URL``, ``FLUX_LOCAL=1``,
``FLUX_CLIENT_OPTIONS`` (a JSON object of ``FluxClient`` arguments), and the
client's own ``ACEDATACLOUD_API_TOKEN`` and ``FLUX_ASYNC_BASE_URL``.

Routes: ``POST /images`` ``{"prompt", "model"?, "size"?, "count"?}`` answers
``202 {"task_id"}`` (a body of the wrong shape is Litestar's 400; a value the API
would refuse is 400 ``{"error", "field"}``); ``GET /images/{task_id}`` answers
``{"task_id", "status", "images", "error"}``, free for tasks this process
submitted; ``POST /flux/callback`` receives the callbacks.

Written for Litestar 2.25 or later (``JSONBody``, ``FromPath``); ``CallbackApp``
itself takes any version. The client is opened and closed by the app's lifespan and kept as
``app.state.flux_client``, where the handlers (``state``) and ``CallbackApp``
find it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from litestar import Litestar, Response, asgi, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, JSONBody
from litestar.types import Receive, Scope, Send

from flux_async import (
    FluxClient,
    FluxError,
    GenerateRequest,
    NotFoundError,
    Task,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    ValidationError,
)
from flux_async.asgi import CallbackApp, TokenLogFilter
from flux_async.testing import LocalFluxServer, ServerSettings

log = logging.getLogger("litestar_service")

CALLBACK_PATH = "/flux/callback"
# Ids submitted by this process (bounded: the oldest are forgotten first). Others are
# asked of the API, which also covers tasks submitted before a restart.
MAX_REMEMBERED = 100_000
_TOKEN_FILTER = TokenLogFilter()


@dataclasses.dataclass
class ImageIn:
    prompt: str
    model: str | None = None
    size: str | None = None
    count: int | None = None


def _view(task_id: str, status: str, images: list[str] | None = None,
          error: str | None = None) -> dict[str, Any]:
    return {"task_id": task_id, "status": status, "images": images or [], "error": error}


@post("/images", status_code=202)
async def submit_image(data: JSONBody[ImageIn], state: State) -> Any:
    client: FluxClient = state.flux_client
    try:
        generation = GenerateRequest(data.prompt, model=data.model, size=data.size,
                                     count=data.count)
    except ValidationError as exc:
        return Response({"error": str(exc), "field": exc.field}, status_code=400)
    try:
        task = await client.submit(generation)
    except FluxError as exc:
        log.warning("submission failed: %s", exc)
        raise HTTPException(f"the image service failed: {type(exc).__name__}",
                            status_code=502) from exc
    submitted: OrderedDict[str, None] = state.submitted
    submitted[task.id] = None
    if len(submitted) > MAX_REMEMBERED:
        submitted.popitem(last=False)
    return {"task_id": task.id}


@get("/images/{task_id:str}")
async def image_status(task_id: FromPath[str], state: State) -> dict[str, Any]:
    client: FluxClient = state.flux_client
    if task_id in state.submitted:
        try:
            # timeout=0 answers now: the result if the client has it, else "pending".
            result = await client.wait(task_id, timeout=0)
        except TaskTimeoutError:
            return _view(task_id, "pending")
        except TaskFailedError as exc:
            return _view(task_id, "failed", error=exc.message)
        return _view(task_id, "succeeded", result.urls)
    try:
        task: Task = await client.get_task(task_id)
    except NotFoundError as exc:
        raise NotFoundException(f"no task {task_id}") from exc
    except FluxError as exc:
        raise HTTPException(f"the image service failed: {type(exc).__name__}",
                            status_code=502) from exc
    if task.status is TaskStatus.PENDING:
        return _view(task_id, "pending")
    if task.status is TaskStatus.SUCCEEDED and task.result is not None:
        return _view(task_id, "succeeded", task.result.urls)
    return _view(task_id, "failed", error=task.error.message if task.error else None)


async def _unclaimed(task: Task) -> None:
    # A callback nobody here waits for (a task submitted before a restart): a real
    # service would store it; the token proves its origin, get_task() its content.
    log.info("unclaimed callback for task %s (%s)", task.id, task.status.value)


def create_app(public_url: str, *, local: bool = False, **client_settings: Any) -> Litestar:
    """The service. ``public_url`` is where the API can reach this app (for callbacks).

    ``client_settings`` go to ``FluxClient`` (``api_key``, ``base_url``, ...);
    ``local=True`` starts a ``LocalFluxServer`` with the app and points the client at it.
    """
    callback_url = public_url.rstrip("/") + CALLBACK_PATH
    # No client given: it finds app.state.flux_client (through scope["app"]) per post.
    callbacks = CallbackApp(on_unclaimed=_unclaimed)

    # copy_scope: the receiver only reads the scope; Litestar asks to be told.
    @asgi(CALLBACK_PATH, copy_scope=True)
    async def flux_callback(scope: Scope, receive: Receive, send: Send) -> None:
        await callbacks(scope, receive, send)

    @asynccontextmanager
    async def flux(app: Litestar) -> AsyncIterator[None]:
        # The token rides in the callback URL's query string, which the access log prints.
        logging.getLogger("uvicorn.access").addFilter(_TOKEN_FILTER)
        settings = dict(client_settings)
        async with AsyncExitStack() as stack:
            if local:
                server = await stack.enter_async_context(
                    LocalFluxServer(ServerSettings(generation_time=(1.0, 3.0)))
                )
                settings.update(api_key=server.token, base_url=server.url)
            app.state.flux_client = await stack.enter_async_context(
                FluxClient(callback_url=callback_url, **settings)
            )
            app.state.submitted = OrderedDict()
            yield
        # Leaving the stack closed the client (pending waits failed, session closed),
        # then the local server.

    app = Litestar([submit_image, image_status, flux_callback], lifespan=[flux])
    app.state.flux_callbacks = callbacks  # for metrics: callbacks.counts
    return app


def settings_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``create_app``'s arguments, from the environment (see the module docstring)."""
    env = dict(os.environ if environ is None else environ)
    options = json.loads(env.get("FLUX_CLIENT_OPTIONS") or "{}")
    if not isinstance(options, dict):
        raise ValueError("FLUX_CLIENT_OPTIONS must be a JSON object of FluxClient arguments")
    return {
        "public_url": env.get("FLUX_PUBLIC_URL") or "http://127.0.0.1:8000",
        "local": env.get("FLUX_LOCAL", "") not in ("", "0", "false"),
        **options,
    }


app = create_app(**settings_from_env())

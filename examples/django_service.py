"""A small Django (ASGI) service generating images with flux_async, results pushed by callbacks.

The same service as ``examples/fastapi_service.py``, written as a one-file Django
project. Django has no ASGI lifespan and cannot route to an ASGI app, so the
module's ``application`` is a small path-dispatch in front of it: callbacks go to
``flux_async.asgi.CallbackApp``, everything else to Django, and the lifespan
(which uvicorn runs, with its state) opens and closes the client. Run it
against an in-process local server of the API (no key needed)::

    FLUX_LOCAL=1 uvicorn examples.django_service:application --port 8000
    curl -s -XPOST localhost:8000/images -H 'content-type: application/json' \\
        -d '{"prompt": "a white siamese cat"}'
    curl -s localhost:8000/images/<task_id>

or against the real service, reachable by it at a public URL::

    ACEDATACLOUD_API_TOKEN=... FLUX_PUBLIC_URL=https://my.host \\
        uvicorn examples.django_service:application --port 8000

Configuration: as ``examples/fastapi_service.py`` (``FLUX_PUBLIC_URL``,
``FLUX_LOCAL=1``, ``FLUX_CLIENT_OPTIONS``, the client's own
``ACEDATACLOUD_API_TOKEN`` and ``FLUX_ASYNC_BASE_URL``). Routes: ``POST /images``
``{"prompt", "model"?, "size"?, "count"?}`` answers ``202 {"task_id"}`` (400
``{"error", "field"?}`` for a bad body); ``GET /images/<task_id>`` answers
``{"task_id", "status", "images", "error"}``, free for tasks this process
submitted; ``POST /flux/callback`` receives the callbacks.

In a project of your own, the views go in an app's ``views.py``, the dispatch in
the project's ``asgi.py`` (around ``get_asgi_application()``); the client is in
the ASGI lifespan state, so views reach it as ``scope_client(request.scope)``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections import OrderedDict
from contextlib import AsyncExitStack
from typing import Any

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

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
from flux_async.asgi import STATE_KEY, CallbackApp, TokenLogFilter, scope_client
from flux_async.testing import LocalFluxServer, ServerSettings

log = logging.getLogger("django_service")

if not settings.configured:  # a one-file project: the settings a real one keeps apart
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(","),
        ROOT_URLCONF=__name__,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
        INSTALLED_APPS=[],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware",
                    "django.middleware.csrf.CsrfViewMiddleware"],
    )  # get_asgi_application() below sets Django up with them

CALLBACK_PATH = "/flux/callback"
# Ids submitted by this process (bounded: the oldest are forgotten first). Others are
# asked of the API, which also covers tasks submitted before a restart.
MAX_REMEMBERED = 100_000
SUBMITTED = "submitted"
_TOKEN_FILTER = TokenLogFilter()


def _client(request: HttpRequest) -> FluxClient:
    client = scope_client(request.scope)  # an ASGIRequest
    if client is None:
        raise RuntimeError("no FluxClient: serve `application` with a lifespan-running server")
    return client


def _view(task_id: str, status: str, images: list[str] | None = None,
          error: str | None = None) -> JsonResponse:
    return JsonResponse({"task_id": task_id, "status": status, "images": images or [],
                         "error": error})


@csrf_exempt  # an API called by programs, not a form
@require_POST
async def submit_image(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body)
        prompt = body["prompt"]
        generation = GenerateRequest(prompt, model=body.get("model"), size=body.get("size"),
                                     count=body.get("count"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return JsonResponse({"error": 'expected a JSON object with a "prompt"'}, status=400)
    except ValidationError as exc:
        return JsonResponse({"error": str(exc), "field": exc.field}, status=400)
    try:
        task = await _client(request).submit(generation)
    except FluxError as exc:
        log.warning("submission failed: %s", exc)
        return JsonResponse({"error": f"the image service failed: {type(exc).__name__}"},
                            status=502)
    submitted: OrderedDict[str, None] = request.scope["state"][SUBMITTED]
    submitted[task.id] = None
    if len(submitted) > MAX_REMEMBERED:
        submitted.popitem(last=False)
    return JsonResponse({"task_id": task.id}, status=202)


@require_GET
async def image_status(request: HttpRequest, task_id: str) -> JsonResponse:
    client = _client(request)
    if task_id in request.scope["state"][SUBMITTED]:
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
    except NotFoundError:
        return JsonResponse({"error": f"no task {task_id}"}, status=404)
    except FluxError as exc:
        return JsonResponse({"error": f"the image service failed: {type(exc).__name__}"},
                            status=502)
    if task.status is TaskStatus.PENDING:
        return _view(task_id, "pending")
    if task.status is TaskStatus.SUCCEEDED and task.result is not None:
        return _view(task_id, "succeeded", task.result.urls)
    return _view(task_id, "failed", error=task.error.message if task.error else None)


urlpatterns = [
    path("images", submit_image),
    path("images/<str:task_id>", image_status),
]


async def _unclaimed(task: Task) -> None:
    # A callback nobody here waits for (a task submitted before a restart): a real
    # service would store it; the token proves its origin, get_task() its content.
    log.info("unclaimed callback for task %s (%s)", task.id, task.status.value)


class Service:
    """The ASGI application: Django, with the callbacks and the client beside it.

    ``callbacks`` is the ``CallbackApp`` (its ``counts`` are the callbacks' metrics).
    """

    def __init__(self, public_url: str, *, local: bool = False,
                 **client_settings: Any) -> None:
        self.callback_url = public_url.rstrip("/") + CALLBACK_PATH
        self.local = local
        self.client_settings = client_settings
        # No client given: it finds the one the lifespan put in scope["state"].
        self.callbacks = CallbackApp(on_unclaimed=_unclaimed)
        self.django = get_asgi_application()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == CALLBACK_PATH:
            await self.callbacks(scope, receive, send)
        else:
            await self.django(scope, receive, send)

    async def _lifespan(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()  # lifespan.startup
        if "state" not in scope:
            await send({"type": "lifespan.startup.failed",
                        "message": "this server keeps no lifespan state"})
            return
        # The token rides in the callback URL's query string, which the access log prints.
        logging.getLogger("uvicorn.access").addFilter(_TOKEN_FILTER)
        async with AsyncExitStack() as stack:
            try:
                settings = dict(self.client_settings)
                if self.local:
                    server = await stack.enter_async_context(
                        LocalFluxServer(ServerSettings(generation_time=(1.0, 3.0))))
                    settings.update(api_key=server.token, base_url=server.url)
                client = FluxClient(callback_url=self.callback_url, **settings)
                # The server copies this state into every request's scope.
                scope["state"][STATE_KEY] = await stack.enter_async_context(client)
                scope["state"][SUBMITTED] = OrderedDict()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        # Leaving the stack closed the client (pending waits failed, session closed),
        # then the local server.
        await send({"type": "lifespan.shutdown.complete"})


def settings_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``Service``'s arguments, from the environment (see the module docstring)."""
    env = dict(os.environ if environ is None else environ)
    options = json.loads(env.get("FLUX_CLIENT_OPTIONS") or "{}")
    if not isinstance(options, dict):
        raise ValueError("FLUX_CLIENT_OPTIONS must be a JSON object of FluxClient arguments")
    return {
        "public_url": env.get("FLUX_PUBLIC_URL") or "http://127.0.0.1:8000",
        "local": env.get("FLUX_LOCAL", "") not in ("", "0", "false"),
        **options,
    }


application = Service(**settings_from_env())

"""A small FastAPI service generating images with flux_async, results pushed by callbacks.

The same service as ``examples/web_service.py``, written the FastAPI way. Run it
against an in-process local server of the API (no key needed)::

    FLUX_LOCAL=1 uvicorn examples.fastapi_service:app --port 8000
    curl -s -XPOST localhost:8000/images -H 'content-type: application/json' \\
        -d '{"prompt": "a white siamese cat"}'
    curl -s localhost:8000/images/<task_id>

or against the real service, reachable by it at a public URL::

    ACEDATACLOUD_API_TOKEN=... FLUX_PUBLIC_URL=https://my.host \\
        uvicorn examples.fastapi_service:app --port 8000

Configuration, read from the environment when uvicorn imports ``app``:

* ``FLUX_PUBLIC_URL``: where the API reaches this app (callbacks go to
  ``$FLUX_PUBLIC_URL/flux/callback``); default ``http://127.0.0.1:8000``.
* ``FLUX_LOCAL=1``: start a ``LocalFluxServer`` with the app and use it.
* ``FLUX_CLIENT_OPTIONS``: a JSON object of ``FluxClient`` keyword arguments, e.g.
  ``{"max_concurrency": 50, "submit_rate": null}``.
* The client's own ``ACEDATACLOUD_API_TOKEN`` and ``FLUX_ASYNC_BASE_URL``.

Routes:

* ``POST /images`` ``{"prompt", "model"?, "size"?, "count"?}`` submits and answers
  ``202 {"task_id"}`` at once (as soon as the service gave an id; if
  ``max_concurrency`` generations are already running it waits for a slot). A
  body of the wrong shape is FastAPI's 422; a value the API would refuse is 400
  ``{"error", "field"}``.
* ``GET /images/{task_id}`` answers ``{"task_id", "status", "images", "error"}``
  with ``status`` one of ``pending``, ``succeeded``, ``failed``. For tasks this
  process submitted it costs no request to the API: the client already holds the
  result, pushed by the callback (or found by its fallback poll).
* ``POST /flux/callback`` receives the service's callbacks (``flux_async.asgi``).

The client is opened and closed by the app's lifespan, so it lives exactly as long
as the app; uvicorn's access log masks the callback token (``TokenLogFilter``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

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
from flux_async.asgi import TokenLogFilter, callback_router, get_flux_client
from flux_async.testing import LocalFluxServer, ServerSettings

log = logging.getLogger("fastapi_service")

CALLBACK_PATH = "/flux/callback"
# Ids submitted by this process (bounded: the oldest are forgotten first). Others are
# asked of the API, which also covers tasks submitted before a restart.
MAX_REMEMBERED = 100_000
_TOKEN_FILTER = TokenLogFilter()

FluxDep = Annotated[FluxClient, Depends(get_flux_client)]


def submitted_ids(request: Request) -> OrderedDict[str, None]:
    ids: OrderedDict[str, None] = request.state.submitted
    return ids


Submitted = Annotated[OrderedDict[str, None], Depends(submitted_ids)]


class ImageIn(BaseModel):
    prompt: str
    model: str | None = None
    size: str | None = None
    count: int | None = None


class ImageOut(BaseModel):
    task_id: str
    status: Literal["pending", "succeeded", "failed"]
    images: list[str] = []
    error: str | None = None


class Submitted202(BaseModel):
    task_id: str


router = APIRouter()


@router.post("/images", status_code=202, response_model=Submitted202)
async def submit_image(image: ImageIn, client: FluxDep, submitted: Submitted) -> Any:
    try:
        generation = GenerateRequest(
            image.prompt, model=image.model, size=image.size, count=image.count
        )
    except ValidationError as exc:
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)
    try:
        task = await client.submit(generation)
    except FluxError as exc:
        log.warning("submission failed: %s", exc)
        raise HTTPException(502, f"the image service failed: {type(exc).__name__}") from exc
    submitted[task.id] = None
    if len(submitted) > MAX_REMEMBERED:
        submitted.popitem(last=False)
    return Submitted202(task_id=task.id)


@router.get("/images/{task_id}", response_model=ImageOut)
async def image_status(task_id: str, client: FluxDep, submitted: Submitted) -> ImageOut:
    if task_id in submitted:
        try:
            # timeout=0 answers now: the result if the client has it, else "pending".
            result = await client.wait(task_id, timeout=0)
        except TaskTimeoutError:
            return ImageOut(task_id=task_id, status="pending")
        except TaskFailedError as exc:
            return ImageOut(task_id=task_id, status="failed", error=exc.message)
        return ImageOut(task_id=task_id, status="succeeded", images=result.urls)
    try:
        task: Task = await client.get_task(task_id)
    except NotFoundError as exc:
        raise HTTPException(404, f"no task {task_id}") from exc
    except FluxError as exc:
        raise HTTPException(502, f"the image service failed: {type(exc).__name__}") from exc
    if task.status is TaskStatus.PENDING:
        return ImageOut(task_id=task_id, status="pending")
    if task.status is TaskStatus.SUCCEEDED and task.result is not None:
        return ImageOut(task_id=task_id, status="succeeded", images=task.result.urls)
    error = task.error.message if task.error is not None else None
    return ImageOut(task_id=task_id, status="failed", error=error)


async def _unclaimed(task: Task) -> None:
    # A callback nobody here waits for (a task submitted before a restart): a real
    # service would store it; the token proves its origin, get_task() its content.
    log.info("unclaimed callback for task %s (%s)", task.id, task.status.value)


def create_app(public_url: str, *, local: bool = False, **client_settings: Any) -> FastAPI:
    """The service. ``public_url`` is where the API can reach this app (for callbacks).

    ``client_settings`` go to ``FluxClient`` (``api_key``, ``base_url``, ...);
    ``local=True`` starts a ``LocalFluxServer`` with the app and points the client at it.
    """
    callback_url = public_url.rstrip("/") + CALLBACK_PATH

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # The token rides in the callback URL's query string, which the access log prints.
        logging.getLogger("uvicorn.access").addFilter(_TOKEN_FILTER)
        settings = dict(client_settings)
        async with AsyncExitStack() as stack:
            if local:
                server = await stack.enter_async_context(
                    LocalFluxServer(ServerSettings(generation_time=(1.0, 3.0)))
                )
                settings.update(api_key=server.token, base_url=server.url)
            client = await stack.enter_async_context(
                FluxClient(callback_url=callback_url, **settings)
            )
            yield {"flux_client": client, "submitted": OrderedDict()}
        # Leaving the stack closed the client (pending waits failed, session closed),
        # then the local server.

    app = FastAPI(title="flux_async example", lifespan=lifespan)
    app.include_router(router)
    app.include_router(callback_router(CALLBACK_PATH, on_unclaimed=_unclaimed))
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


"""A small aiohttp service generating images with flux_async, results pushed by callbacks.

Run it against an in-process local server of the API (no key needed)::

    python examples/web_service.py --local --port 8080
    curl -s -XPOST localhost:8080/images -d '{"prompt": "a white siamese cat"}'
    curl -s localhost:8080/images/<task_id>

or against the real service, reachable by it at a public URL::

    ACEDATACLOUD_API_TOKEN=... python examples/web_service.py --public-url https://my.host

Routes:

* ``POST /images`` ``{"prompt", "model"?, "size"?, "count"?}`` submits and answers
  ``202 {"task_id"}`` at once (as soon as the service gave an id; if
  ``max_concurrency`` generations are already running it waits for a slot).
* ``GET /images/{task_id}`` answers ``{"task_id", "status", "images", "error"}``
  with ``status`` one of ``pending``, ``succeeded``, ``failed``. For tasks this
  process submitted it costs no request to the API: the client already holds the
  result, pushed by the callback (or found by its fallback poll).
* ``POST /flux/callback`` receives the service's callbacks (``flux_async.web``).

The client is opened and closed by the app's ``cleanup_ctx``, so it lives exactly
as long as the app.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from flux_async import (
    FluxClient,
    FluxError,
    GenerateRequest,
    ImageResult,
    NotFoundError,
    Task,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    ValidationError,
)
from flux_async.testing import LocalFluxServer, ServerSettings
from flux_async.web import FLUX_CLIENT, add_callback_route

log = logging.getLogger("web_service")

CALLBACK_PATH = "/flux/callback"
# Ids submitted by this process (bounded: the oldest are forgotten first). Others are
# asked of the API, which also covers tasks submitted before a restart.
SUBMITTED: web.AppKey[OrderedDict[str, None]] = web.AppKey("submitted")
LOCAL_SERVER = web.AppKey("local_server", LocalFluxServer)
MAX_REMEMBERED = 100_000


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def _view(
    task_id: str, status: str, result: ImageResult | None, error: str | None
) -> dict[str, Any]:
    urls = result.urls if result is not None else []
    return {"task_id": task_id, "status": status, "images": urls, "error": error}


async def submit_image(request: web.Request) -> web.Response:
    client = request.app[FLUX_CLIENT]
    try:
        body = await request.json()
    except ValueError:
        return _json(400, {"error": "the body must be JSON"})
    if not isinstance(body, dict):
        return _json(400, {"error": "the body must be a JSON object"})
    try:
        generation = GenerateRequest(
            body.get("prompt"),  # type: ignore[arg-type]  # validated by GenerateRequest
            model=body.get("model"), size=body.get("size"), count=body.get("count"),
        )
    except ValidationError as exc:
        return _json(400, {"error": str(exc), "field": exc.field})
    try:
        task = await client.submit(generation)
    except FluxError as exc:
        log.warning("submission failed: %s", exc)
        return _json(502, {"error": f"the image service failed: {type(exc).__name__}"})
    submitted = request.app[SUBMITTED]
    submitted[task.id] = None
    if len(submitted) > MAX_REMEMBERED:
        submitted.popitem(last=False)
    return _json(202, {"task_id": task.id})


async def image_status(request: web.Request) -> web.Response:
    client = request.app[FLUX_CLIENT]
    task_id = request.match_info["task_id"]
    if task_id in request.app[SUBMITTED]:
        try:
            # timeout=0 answers now: the result if the client has it, else "pending".
            result = await client.wait(task_id, timeout=0)
        except TaskTimeoutError:
            return _json(200, _view(task_id, "pending", None, None))
        except TaskFailedError as exc:
            return _json(200, _view(task_id, "failed", None, exc.message))
        return _json(200, _view(task_id, "succeeded", result, None))
    try:
        task: Task = await client.get_task(task_id)
    except NotFoundError:
        return _json(404, {"error": f"no task {task_id}"})
    except FluxError as exc:
        return _json(502, {"error": f"the image service failed: {type(exc).__name__}"})
    error = task.error.message if task.error is not None else None
    status = {TaskStatus.PENDING: "pending", TaskStatus.SUCCEEDED: "succeeded"}.get(
        task.status, "failed"
    )
    return _json(200, _view(task_id, status, task.result, error))


async def _unclaimed(task: Task) -> None:
    # A callback nobody here waits for (a task submitted before a restart): a real
    # service would store it; the token proves its origin, get_task() its content.
    log.info("unclaimed callback for task %s (%s)", task.id, task.status.value)


class PathOnlyAccessLogger(AbstractAccessLogger):
    """aiohttp's default access log prints query strings: the callback token too."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %d %.3fs', request.remote, request.method, request.path,
                         response.status, time)


def create_app(
    public_url: str, *, local: bool = False, **client_settings: Any
) -> web.Application:
    """The service. ``public_url`` is where the API can reach this app (for callbacks).

    ``client_settings`` go to ``FluxClient`` (``api_key``, ``base_url``, ...);
    ``local=True`` starts a ``LocalFluxServer`` with the app and points the client at it.
    """
    app = web.Application()
    app[SUBMITTED] = OrderedDict()
    app.add_routes([web.post("/images", submit_image), web.get("/images/{task_id}", image_status)])
    add_callback_route(app, CALLBACK_PATH, on_unclaimed=_unclaimed)
    callback_url = public_url.rstrip("/") + CALLBACK_PATH

    async def local_server(app: web.Application) -> AsyncIterator[None]:
        async with LocalFluxServer(ServerSettings(generation_time=(1.0, 3.0))) as server:
            app[LOCAL_SERVER] = server
            yield

    async def flux_client(app: web.Application) -> AsyncIterator[None]:
        settings = dict(client_settings)
        if local:
            server = app[LOCAL_SERVER]
            settings.update(api_key=server.token, base_url=server.url)
        async with FluxClient(callback_url=callback_url, **settings) as client:
            app[FLUX_CLIENT] = client
            yield
        # Leaving the block closed the client: pending waits failed, session closed.

    contexts: list[Callable[[web.Application], AsyncIterator[None]]] = [flux_client]
    if local:
        contexts.insert(0, local_server)
    app.cleanup_ctx.extend(contexts)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--local", action="store_true", help="use an in-process local server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--public-url", help="URL the API reaches this app at (callbacks)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    app = create_app(public_url, local=args.local)
    print(json.dumps({"listening": f"http://{args.host}:{args.port}", "callbacks": public_url}))
    web.run_app(app, host=args.host, port=args.port, print=None,
                access_log_class=PathOnlyAccessLogger)


if __name__ == "__main__":
    main()

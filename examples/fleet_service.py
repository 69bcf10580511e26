"""The aiohttp image service of ``web_service.py``, run by gunicorn with 4 workers, one token.

Every worker is a process with its own ``FluxClient``; a ``RedisCoordinator`` makes
them share the token's limits (10 generations in flight, 5 submissions a second,
the pause after a 429) as one client would keep them. The callback route is mounted
on every worker: gunicorn hands each callback to whichever worker accepts it, and
that worker routes it through Redis to the worker waiting for the task. A worker
that dies leaves its tasks to the others (``on_recovered``)::

    export ACEDATACLOUD_API_TOKEN=...            # the one token of the fleet
    export FLUX_REDIS_URL=redis://127.0.0.1:6379/0
    export FLUX_PUBLIC_URL=https://images.example.com   # where the API reaches the fleet
    export FLUX_CALLBACK_SECRET=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    gunicorn -k aiohttp.GunicornWebWorker -w 4 --bind 0.0.0.0:8080 \\
        examples.fleet_service:app_factory

(from the repository root; ``FLUX_ASYNC_BASE_URL`` points the clients elsewhere,
e.g. at ``python -m flux_async.testing``). The routes are ``web_service.py``'s:
``POST /images``, ``GET /images/{task_id}``, ``POST /flux/callback``.

The callback secret must be the same in every worker: the worker that receives a
callback checks its token before handing it on. gunicorn's ``--preload`` is fine
too: nothing here connects before a worker starts.
"""

from __future__ import annotations

import logging
import os

from aiohttp import web
from aiohttp.typedefs import Handler

from examples.web_service import create_app
from flux_async import Recovered
from flux_async.redis import RedisCoordinator

log = logging.getLogger("fleet_service")

#: The settings read from the environment, each worker alike.
REDIS_URL_ENV = "FLUX_REDIS_URL"
PUBLIC_URL_ENV = "FLUX_PUBLIC_URL"
SECRET_ENV = "FLUX_CALLBACK_SECRET"


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise SystemExit(f"fleet_service: set ${name} (see the module docstring)")
    return value


def _recovered(recovered: Recovered) -> None:
    # A task a dead worker had submitted, followed to its end by this one. A real
    # service would store the outcome where its status route finds it; here
    # GET /images/{id} on any worker asks the API, so logging it is enough.
    if recovered.error is not None:
        log.warning("recovered task %s failed: %s", recovered.task_id, recovered.error)
    else:
        log.info("recovered task %s: %s", recovered.task_id, recovered.result)


@web.middleware
async def served_by(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Name the worker that answered (``X-Worker-Pid``): to see how the load spreads."""
    response = await handler(request)
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


async def app_factory() -> web.Application:
    """What gunicorn's aiohttp worker calls in each worker process, after the fork.

    The client closes the coordinator when the app's cleanup closes the client
    (its slots given back, the tasks it still follows left to the other workers).
    """
    logging.basicConfig(level=os.environ.get("FLUX_LOG_LEVEL", "INFO"))
    coordinator = RedisCoordinator.from_url(_required(REDIS_URL_ENV))
    app = create_app(
        _required(PUBLIC_URL_ENV),
        coordinator=coordinator,
        on_recovered=_recovered,
        callback_secret=_required(SECRET_ENV),
    )
    app.middlewares.append(served_by)
    return app

"""Receive the service's callbacks in your own aiohttp.web application.

Mount the receiver where ``FluxClient(callback_url=...)`` points, and store the
client on the app under ``FLUX_CLIENT`` (aiohttp's ``AppKey`` convention; the
receiver finds it through ``request.config_dict``, so sub-apps work too)::

    from aiohttp import web
    from flux_async import FluxClient
    from flux_async.web import FLUX_CLIENT, add_callback_route

    async def flux(app: web.Application):
        async with FluxClient(callback_url="https://example.com/flux/callback") as client:
            app[FLUX_CLIENT] = client
            yield

    app = web.Application()
    add_callback_route(app, "/flux/callback")
    app.cleanup_ctx.append(flux)

Or as a sub-app: ``app.add_subapp("/flux/callback", callback_app())`` answers at
``/flux/callback/``.

A callback for a task the client waits on resolves the wait at once; the poller
still checks callback-mode tasks every ``callback_poll_interval``, so a lost
callback costs latency, never a result.

**Callbacks without a waiter.** A callback whose token is valid but whose task
this client does not follow (nothing waits on it, nothing in flight claims it:
typically after a restart, or another worker's task) is *unclaimed*. With an
``on_unclaimed`` hook the receiver hands it the parsed ``Task`` and answers 200
(500 if the hook raises, so the service may retry); without one it answers 404.
The token proves the post came from a URL this client (or one with the same
``callback_secret``) handed out, not that the content is true: confirm with
``client.get_task(task.id)`` before acting on an unclaimed result that matters.

**Logs.** The token travels in the query string, which aiohttp's default access
log prints: log ``request.path`` instead (``examples/web_service.py`` shows an
access logger doing so). Tokens are per submission, so one that leaks settles no
other task this client follows (at most it makes the client ask the service
about that task, which is free), but it does authenticate unclaimed posts.

**Failures are confirmed.** A callback reporting a failure never fails a wait by
itself: the client queries that task at once and the service's answer decides.
So does a callback for a task followed through ``wait(id)`` alone (after a
restart no token is bound to it). Both answer 200 with ``result: "confirming"``.

**Answers.** 403 missing or wrong token (also a token issued for another of this
client's tasks), 413 a body over ``max_body`` (by ``Content-Length`` or while
reading), 400 not JSON or not a result's shape, 409 contradicts what was submitted
(or the result already received), 404 unclaimed without a hook, 200 accepted
(``resolved``, ``held``, ``confirming``) or a harmless duplicate. A rejected post
changes nothing.
"""

from __future__ import annotations

from aiohttp import web

from ._client.client import FluxClient
from ._client.receiver import CONTENT_TYPE, Receiver, UnclaimedHook
from ._core.callbacks import MAX_CALLBACK_BYTES, TOKEN_PARAM, CallbackVerdict

__all__ = [
    "CALLBACK_RECEIVER",
    "FLUX_CLIENT",
    "TOKEN_PARAM",
    "CallbackReceiver",
    "CallbackVerdict",
    "UnclaimedHook",
    "add_callback_route",
    "callback_app",
]

#: Where the receiver looks for its client (through sub-apps too) when not given one.
FLUX_CLIENT = web.AppKey("flux_async.client", FluxClient)


class CallbackReceiver(Receiver):
    """The aiohttp handler of callbacks: ``handle`` is the route's handler.

    ``client`` is the ``FluxClient`` the callbacks belong to; when ``None`` it is
    looked up as ``request.config_dict[FLUX_CLIENT]`` at each request, so the
    route can be mounted before the client exists (it is created at startup).
    ``counts`` tallies the verdicts (``resolved``, ``confirming``, ``held``,
    ``duplicate``, ``unclaimed``, ``rejected``) for metrics and tests.
    """

    async def handle(self, request: web.Request) -> web.Response:
        client = self.client if self.client is not None else request.config_dict.get(FLUX_CLIENT)
        answer = await self.receive(
            client, request.query.get(TOKEN_PARAM), request.content_length,
            request.content.iter_any(),
        )
        return web.Response(status=answer.status, text=answer.text, content_type=CONTENT_TYPE)


#: Where ``add_callback_route`` and ``callback_app`` leave their receiver.
CALLBACK_RECEIVER = web.AppKey("flux_async.callback_receiver", CallbackReceiver)


def add_callback_route(
    app: web.Application,
    path: str = "/flux/callback",
    client: FluxClient | None = None,
    *,
    on_unclaimed: UnclaimedHook | None = None,
    max_body: int = MAX_CALLBACK_BYTES,
) -> CallbackReceiver:
    """Add ``POST path`` to ``app``; the receiver is also ``app[CALLBACK_RECEIVER]``."""
    receiver = CallbackReceiver(client, on_unclaimed=on_unclaimed, max_body=max_body)
    app.router.add_post(path, receiver.handle)
    app[CALLBACK_RECEIVER] = receiver
    return receiver


def callback_app(
    client: FluxClient | None = None,
    *,
    on_unclaimed: UnclaimedHook | None = None,
    max_body: int = MAX_CALLBACK_BYTES,
) -> web.Application:
    """A sub-app receiving callbacks at its root: ``app.add_subapp("/flux/callback", ...)``."""
    sub = web.Application()
    add_callback_route(sub, "/", client, on_unclaimed=on_unclaimed, max_body=max_body)
    return sub

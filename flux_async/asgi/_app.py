"""The callback receiver as a plain ASGI 3 application: no web framework imported.

``CallbackApp`` speaks raw ``scope``/``receive``/``send``, so any ASGI host can
mount it: Litestar, Quart, Django behind a path-dispatch, a Starlette ``Mount``,
or a server serving it alone. The decisions are ``Receiver``'s
(``flux_async._client.receiver``), shared with the aiohttp and Starlette
receivers: this module only reads the ASGI messages and writes the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from .._client.client import FluxClient
from .._client.receiver import CONTENT_TYPE, Answer, Receiver, parse_content_length
from .._core.callbacks import TOKEN_PARAM

__all__ = ["STATE_KEY", "CallbackApp", "Receive", "Scope", "Send", "scope_client"]

log = logging.getLogger("flux_async")

# ASGI 3's three arguments, typed loosely enough that every framework's own types
# (Starlette's mappings, Litestar's and asgiref's TypedDicts) are accepted.
Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[Any]]

#: The client's name in the ASGI lifespan state (``scope["state"]``) or ``app.state``.
STATE_KEY = "flux_client"

_METHOD_NOT_ALLOWED = Answer(405, "rejected", "callbacks are POSTed")


def scope_client(scope: Mapping[str, Any]) -> FluxClient | None:
    """The client attached to an ASGI connection, or None.

    Looked up as ``scope["state"]["flux_client"]`` (the ASGI lifespan state:
    what a lifespan handler stores there, servers copy into every request's
    scope), then as ``scope["app"].state.flux_client`` (the host framework's app
    state, as Starlette and Litestar keep it). ``TypeError`` if something else
    is stored under that name.
    """
    state = scope.get("state")
    found = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    if found is None:
        found = getattr(getattr(scope.get("app"), "state", None), STATE_KEY, None)
    if found is not None and not isinstance(found, FluxClient):
        raise TypeError(f"{STATE_KEY} is a {type(found).__name__}, not a FluxClient")
    return found


class _ClientGone(Exception):
    """The poster hung up before its body was whole."""


class _Body:
    """A request's body as ASGI hands it over, one ``http.request`` message at a time.

    A plain async iterator (not an async generator): the receiver may stop reading
    early, at its size cap, and nothing is then left to finalise.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._more = True

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if not self._more:
            raise StopAsyncIteration
        message = await self._receive()
        if message["type"] != "http.request":  # http.disconnect: nothing more will come
            raise _ClientGone
        self._more = bool(message.get("more_body", False))
        return bytes(message.get("body", b""))


class CallbackApp(Receiver):
    """An ASGI application receiving the service's callbacks; mount it where they go.

    It answers at whatever path it is given (the host routes to it) and needs no
    lifespan: ``client`` is the ``FluxClient`` the callbacks belong to, given
    here or set later (``app.client = client``); while it is None each request
    looks it up with ``scope_client``, and posts are answered 503 until there is
    one. The rules are the other receivers': a token in the ``flux_token`` query
    parameter, a body of at most ``max_body`` bytes (413 at once for a larger
    ``Content-Length``, and reading stops as soon as a streamed body passes it),
    the client's ``handle_callback`` judging the rest (so a fleet's coordinator
    routes a post to the process following its task), and ``on_unclaimed``.
    Bodies are read as JSON whatever their ``Content-Type`` says, as the other
    receivers do; answers are small JSON objects. Methods other than POST get
    405. A poster that hangs up mid-body changes nothing and gets no answer
    (``counts["disconnected"]``). Served alone it acknowledges the lifespan
    events; a websocket is refused.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _acknowledge_lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # before accept: a 403
        else:
            raise ValueError(f"CallbackApp serves HTTP, not {kind!r}")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _answer(send, _METHOD_NOT_ALLOWED, [(b"allow", b"POST")])
            return
        client = self.client if self.client is not None else scope_client(scope)
        try:
            answer = await self.receive(
                client, _token(scope), parse_content_length(_header(scope, b"content-length")),
                _Body(receive),
            )
        except _ClientGone:
            # Nothing was judged: a partial body never reaches the client.
            self.counts["disconnected"] += 1
            log.info("a callback's poster hung up before its body was whole")
            return
        try:
            await _answer(send, answer)
        except OSError:
            # ASGI 2.4 servers raise an OSError on a closed connection: the post
            # was judged already, only its answer is lost (the service retries).
            log.info("a callback's poster hung up before its answer (%d)", answer.status)


def _token(scope: Scope) -> str | None:
    query: bytes = scope.get("query_string", b"")
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name == TOKEN_PARAM:
            return value
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            text: str = value.decode("latin-1")
            return text
    return None


async def _answer(send: Send, answer: Answer, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = answer.text.encode()
    headers = [(b"content-type", CONTENT_TYPE.encode()),
               (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _acknowledge_lifespan(receive: Receive, send: Send) -> None:
    # Nothing to start or stop: the client's lifetime is its owner's. Answering
    # keeps servers quiet when this app is served alone.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

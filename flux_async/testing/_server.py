"""An in-process aiohttp server that speaks the Ace Data Cloud Flux protocol.

The real service cannot be reached from where this project is built and tested, so
this server is the reference the client is measured against: every answer shape of
the vendor's protocol, its errors and limits, plus injected faults (resets, gateway
pages, truncated bodies, slowness, refusals) that a robust client must survive.

Design notes
------------
* Task progress is computed lazily from the monotonic clock, so pending tasks cost no
  timers. Only held-open requests and callbacks schedule a wake-up (one
  ``loop.call_later`` per such task), and ``close()`` cancels them all.
* One seeded ``random.Random`` drives durations, failures, faults and ids, so a seed
  reproduces a run as far as request interleaving allows.
* Handlers serialise with ``json.dumps`` directly: benchmarks poll 10,000 tasks.
* Handlers build whole ``web.Response``s; the middleware is the one place that
  sends them through the simulated link (``link_chunk_bytes``), so every answer,
  errors included, arrives in pieces the same way.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import random
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from functools import partial
from typing import Any, get_args

import aiohttp
from aiohttp import web

from ._control import control_routes
from ._png import render_png
from ._settings import DEFAULT_TOKEN, ServerSettings, TokenState, settings_update
from ._stats import ServerStats
from ._tasks import Account, Task
from ._uploads import UploadStore
from ._validate import Submission, check_ids, check_submission

__all__ = ["LocalFluxServer"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_JSON = "application/json"
_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
# What each non-"ok" token state answers: (status, code, message).
_TOKEN_ERRORS: dict[str, tuple[int, str, str]] = {
    "expired": (401, "token_expired", "the token has expired"),
    "invalid": (401, "invalid_token", "the token is invalid"),
    "used_up": (403, "used_up", "the balance of this token is used up"),
    "disabled": (400, "disabled", "the application is disabled"),
}
_CALLBACK_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
# Faults that strike before anything happens and answer a JSON error: nothing is
# created or billed. (status, code, message)
_FAULT_ERRORS: dict[str, tuple[int, str, str]] = {
    "server_error": (500, "api_error", "internal error, please retry later"),
    "forbidden": (403, "forbidden", "the content was refused, or this token has no access"),
    "upstream_timeout": (504, "timeout", "the upstream model timed out, please retry"),
}
_EARLY_FAULTS = frozenset({"reset_before", "gateway_page", *_FAULT_ERRORS})
# Request keys: the task a submission created, and whether its answer was cut short.
# aiohttp 3.14 types a request's storage by key (and warns about plain strings);
# before it, keys are strings: the server runs on every aiohttp the package allows.
_RequestKey: Any = getattr(web, "RequestKey", None)
_SUBMITTED: Any = (_RequestKey("flux_local_submitted", str) if _RequestKey is not None
                   else "flux_local_submitted")
_CUT: Any = _RequestKey("flux_local_cut", bool) if _RequestKey is not None else "flux_local_cut"


class _Dropped(web.Response):
    """Marks the answer to a reset connection: never sent, not counted as a status."""


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class LocalFluxServer:
    """A local, faithful stand-in for ``https://api.acedata.cloud``'s Flux endpoints.

    Use it as an async context manager (or ``start()``/``close()``) and point a client
    at ``server.url`` with ``server.token``. ``server.settings`` may be changed at any
    time; ``server.stats`` counts what clients did.
    """

    def __init__(
        self,
        settings: ServerSettings | None = None,
        *,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        token_list = list(tokens)
        if not token_list:
            raise ValueError("at least one token is needed")
        self.settings = settings if settings is not None else ServerSettings()
        self.stats = ServerStats()
        self.token = token_list[0]
        self._accounts = {t: Account(t) for t in token_list}
        self._host = host
        self._port = port
        self._rng = random.Random(self.settings.seed)
        self._api_id = self._uuid()
        self._tasks: dict[str, Task] = {}
        self._seq = 0
        self._fail_seq = 0
        self._answers_mismatch = 0
        self._answers_error = 0
        self._answers_linked = 0
        # Wake-ups for held-open requests and callbacks, keyed by task id.
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._waiters: dict[str, list[asyncio.Future[bool]]] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing: asyncio.Event | None = None
        self._url: str | None = None
        self.uploads = UploadStore(self)  # POST /files/upload and the files it hosts

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket and start serving (idempotent while running)."""
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/flux/images", self._handle_images)
        app.router.add_post("/flux/tasks", self._handle_tasks)
        app.router.add_get("/files/{name}", self._handle_files)
        app.router.add_routes(control_routes(self))
        app.router.add_routes(self.uploads.routes())
        # A short shutdown timeout: close() already wakes every waiting handler, this
        # only bounds the wait for a handler stuck writing to a slow client.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        self._session = aiohttp.ClientSession(timeout=_CALLBACK_TIMEOUT)
        self._closing = asyncio.Event()

    async def close(self) -> None:
        """Stop serving; cancel pending callbacks and wake held-open requests."""
        if self._runner is None:
            return
        assert self._closing is not None
        self._closing.set()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(False)
        self._waiters.clear()
        deliveries = list(self._deliveries)
        for delivery in deliveries:
            delivery.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        runner, self._runner = self._runner, None
        await runner.cleanup()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> LocalFluxServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- public helpers ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. ``http://127.0.0.1:54321``."""
        if self._url is None:
            raise RuntimeError("the server has not been started")
        return self._url

    @property
    def port(self) -> int:
        """The bound TCP port (useful when started with port 0)."""
        return int(self.url.rsplit(":", 1)[1])

    def image_url(self, name: str) -> str:
        """Absolute URL of a served file, e.g. ``image_url(f"{task_id}-0.png")``."""
        return f"{self.url}/files/{name}"

    def set_token_state(self, token: str, state: TokenState) -> None:
        """Make ``token`` answer as ``state``; an unknown token is registered."""
        if state not in get_args(TokenState):
            raise ValueError(f"state must be one of {get_args(TokenState)}, got {state!r}")
        account = self._accounts.get(token)
        if account is None:
            account = self._accounts[token] = Account(token)
        account.state = state

    def update_settings(self, changes: Mapping[str, Any]) -> None:
        """Apply a JSON-style object of setting changes, all or none.

        Same format as ``POST /_local/settings`` (``generation_time`` may be a list,
        ``faults`` maps endpoint names to objects of Faults fields and replaces the
        whole mapping). A new ``seed`` also reseeds the server's random generator.
        Raises ``ValueError`` naming the offending field.
        """
        values = settings_update(self.settings, changes)
        for name, value in values.items():
            setattr(self.settings, name, value)
        if "seed" in values:
            self._rng.seed(values["seed"])

    def reset_stats(self) -> None:
        """Zero the counters (tasks in flight stay in flight)."""
        self.stats.reset()

    async def finish_all(self) -> None:
        """Make every unfinished task finish now; wait for the callbacks this triggers."""
        now = time.monotonic()
        for task in self._tasks.values():
            if task.finish_mono > now:
                task.duration = now - task.start_mono
                self.stats.finish_times[task.id] = task.finished_at
        for account in self._accounts.values():
            account.finishing.clear()
        self.stats.all_finished()
        for task_id, handle in list(self._timers.items()):
            handle.cancel()
            self._on_finish(task_id)
        if self._deliveries:
            await asyncio.gather(*list(self._deliveries), return_exceptions=True)

    # -- plumbing ----------------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _error(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        """A vendor-shaped error; ``"success": false`` per ``error_success_field``."""
        body: dict[str, Any] = {"error": {"code": code, "message": message}}
        mode = self.settings.error_success_field
        if mode == "always" or (mode == "mixed" and self._answers_error % 2 == 1):
            body = {"success": False, **body}
        self._answers_error += 1
        body["trace_id"] = self._uuid()
        return web.Response(status=status, body=_dumps(body), content_type=_JSON, headers=headers)

    def _too_many(self, wait: float, code: str, what: str) -> web.Response:
        """A 429: ``rate_limited`` for the in-flight limit, ``too_many_requests`` for rates.

        ``Retry-After`` only on a ``retry_after_share`` of them (none by default: the
        vendor documents no rate-limit headers).
        """
        self.stats.rate_limited += 1
        if code == "rate_limited":
            self.stats.over_capacity += 1
        headers = None
        if self._rng.random() < self.settings.retry_after_share:
            headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        return self._error(429, code, f"{what}, please slow down", headers)

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Reset the connection: the client sees no answer at all.

        SO_LINGER 0 turns the close into a TCP RST; the response returned afterwards
        is never written (aiohttp notices the dead transport and discards it).
        """
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return _Dropped(status=499)

    async def _pause(self, delay: float) -> None:
        """Sleep, but return early when the server closes."""
        assert self._closing is not None
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    def _draw_fault(self, endpoint: str) -> str | None:
        faults = self.settings.faults.get(endpoint)
        return None if faults is None else faults.draw(self._rng.random())

    def _before(
        self, request: web.Request, endpoint: str, fault: str | None
    ) -> web.StreamResponse | None:
        """Apply a fault that strikes before anything happens, if one was drawn."""
        if fault is None or fault not in _EARLY_FAULTS:
            return None
        self.stats.faults_injected[f"{endpoint}:{fault}"] += 1
        if fault == "reset_before":
            return self._drop(request)
        if fault == "gateway_page":
            return web.Response(status=502, body=_GATEWAY_PAGE, content_type="text/html")
        return self._error(*_FAULT_ERRORS[fault])

    async def _deliver(
        self,
        request: web.Request,
        endpoint: str,
        fault: str | None,
        body: bytes,
        content_type: str = _JSON,
        status: int = 200,
    ) -> web.StreamResponse:
        """Send an answer, through a late fault (reset/truncate/slow) if one was drawn."""
        if fault in ("reset_after", "truncated", "slow") and status == 200:
            assert fault is not None
            self.stats.faults_injected[f"{endpoint}:{fault}"] += 1
            if fault == "reset_after":
                return self._drop(request)
            if fault == "truncated":
                request[_CUT] = True
                body = body[: len(body) // 2]
            else:
                faults = self.settings.faults.get(endpoint)
                await self._pause(faults.slow_delay if faults is not None else 0.0)
        return web.Response(status=status, body=body, content_type=content_type)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Turn routing errors into vendor-shaped JSON errors and count every answer."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            code = {404: "no_api", 405: "method_not_allowed"}.get(exc.status, "bad_request")
            response = self._error(
                exc.status, code, f"{request.method} {request.path}: {exc.reason}"
            )
        path = request.path
        if path.startswith("/_local/"):
            return response
        # /flux/tasks counts itself: its key depends on the action in the body.
        if path == "/flux/images" and request.method == "POST":
            self.stats.requests["images"] += 1
        elif path == "/files/upload" and request.method == "POST":
            self.stats.requests["uploads"] += 1
        elif path.startswith("/files/") and request.method in ("GET", "HEAD"):
            self.stats.requests["files"] += 1
        elif path != "/flux/tasks" or request.method != "POST":
            self.stats.requests["other"] += 1
        delivered = not isinstance(response, _Dropped)
        if delivered:
            self.stats.statuses[response.status] += 1
        if (
            delivered
            and self.settings.link_chunk_bytes is not None
            and request.method != "HEAD"
            and isinstance(response, web.Response)
            and not response.prepared
        ):
            response, delivered = await self._through_link(request, response)
        elif delivered and (request.transport is None or request.transport.is_closing()):
            delivered = False  # the client left before its answer could be written
        task_id = request.get(_SUBMITTED)
        if task_id is not None and (not delivered or request.get(_CUT, False)):
            self.stats.answer_lost(task_id)
        return response

    async def _through_link(
        self, request: web.Request, response: web.Response
    ) -> tuple[web.StreamResponse, bool]:
        """Send ``response`` in pieces, like a real link; True if all of it was written.

        Pieces of at most ``link_chunk_bytes``, ``link_chunk_gap`` seconds apart;
        framed by Content-Length or chunked transfer per ``link_framing``.
        """
        settings = self.settings
        size = settings.link_chunk_bytes
        assert size is not None
        body = response.body
        assert isinstance(body, bytes)
        out = web.StreamResponse(status=response.status, reason=response.reason)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "transfer-encoding"):
                out.headers.add(name, value)
        framing = settings.link_framing
        if framing == "mixed":
            framing = ("length", "chunked")[self._answers_linked % 2]
        self._answers_linked += 1
        if framing == "chunked":
            out.enable_chunked_encoding()
        else:
            out.content_length = len(body)
        try:
            await out.prepare(request)
            for start in range(0, len(body), size):
                if start and settings.link_chunk_gap > 0:
                    await asyncio.sleep(settings.link_chunk_gap)
                # write() drains aiohttp's buffer when it fills; the transport
                # sends what it can at once (TCP_NODELAY), so a piece is a segment.
                await out.write(body[start : start + size])
            await out.write_eof()
        except ConnectionError:  # the client went away mid-answer
            return out, False
        return out, True

    def _authenticate(self, request: web.Request) -> Account | web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return self._error(400, "no_token", "no token: send 'authorization: Bearer <token>'")
        account = self._accounts.get(token)
        if account is None:
            return self._error(401, "invalid_token", "the token is invalid")
        if account.state == "ok":
            return account
        if account.state == "mismatched":
            self._answers_mismatch += 1
            status = 400 if self._answers_mismatch % 2 else 401
            return self._error(status, "token_mismatched", "the token is not for this API")
        return self._error(*_TOKEN_ERRORS[account.state])

    @staticmethod
    async def _read_json(request: web.Request) -> Any:
        """The parsed body, or ``Ellipsis`` when it is not JSON."""
        try:
            return json.loads(await request.read())
        except ValueError:
            return ...

    # -- tasks -------------------------------------------------------------------------

    def _create_task(self, account: Account, body: dict[str, Any], sub: Submission) -> Task:
        lo, hi = self.settings.duration_bounds()
        duration = self._rng.uniform(lo, hi) if hi > lo else lo
        failed = self._rng.random() < self.settings.failure_rate
        task = Task(
            id=self._uuid(),
            trace_id=self._uuid(),
            account=account,
            request={k: v for k, v in body.items() if k != "callback_url"},
            count=sub.count,
            created_at=time.time(),
            start_mono=time.monotonic(),
            duration=duration,
            failed=failed,
            seq=self._seq,
            fail_seq=self._fail_seq,
            callback_url=sub.callback_url,
        )
        self._seq += 1
        self._fail_seq += failed
        self._tasks[task.id] = task
        if duration > 0:
            heapq.heappush(account.finishing, task.finish_mono)
        self.stats.task_created(task.id, sub.prompt, task.finish_mono, task.finished_at)
        if sub.callback_url is not None:
            self._watch(task)
        return task

    def _watch(self, task: Task) -> None:
        """Schedule the wake-up of a task that someone waits for (at most one timer)."""
        if task.id in self._timers or self._closing is None or self._closing.is_set():
            return
        delay = max(0.0, task.finish_mono - time.monotonic())
        loop = asyncio.get_running_loop()
        self._timers[task.id] = loop.call_later(delay, self._on_finish, task.id)

    def _on_finish(self, task_id: str) -> None:
        """A watched task ended: release held-open requests, send its callback."""
        self._timers.pop(task_id, None)
        for future in self._waiters.pop(task_id, ()):
            if not future.done():
                future.set_result(True)
        task = self._tasks[task_id]
        if task.callback_url is None or self._session is None:
            return
        if self._rng.random() < self.settings.callback_drop_rate:
            self.stats.callbacks_dropped += 1
            return
        delivery = asyncio.get_running_loop().create_task(self._post_callback(task))
        self._deliveries.add(delivery)
        delivery.add_done_callback(self._deliveries.discard)

    async def _post_callback(self, task: Task) -> None:
        assert self._session is not None
        assert task.callback_url is not None
        body = _dumps(task.final_body(self.url))
        for attempt in range(self.settings.callback_attempts):
            if attempt:
                await asyncio.sleep(self.settings.callback_retry_delay)
            ok = False
            try:
                async with self._session.post(
                    task.callback_url, data=body, headers={"Content-Type": _JSON}
                ) as response:
                    await response.read()
                    ok = 200 <= response.status < 300
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                ok = False
            if ok:
                self.stats.callbacks_sent += 1
                return
        self.stats.callbacks_failed += 1

    async def _wait_finished(self, task: Task) -> bool:
        """Wait until ``task`` ends; False if the server closes first."""
        if task.done(time.monotonic()):
            return True
        if self._closing is None or self._closing.is_set():
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task.id, []).append(future)
        self._watch(task)
        return await future

    def _visible_task(self, account: Account, task_id: str, now: float) -> Task | None:
        """A task as ``/flux/tasks`` shows it to ``account`` at monotonic ``now``.

        Other tokens' tasks look unknown, and so does any task younger than
        ``visibility_delay`` (the vendor's task store lags its submissions).
        """
        task = self._tasks.get(task_id)
        if task is None or task.account is not account:
            return None
        return task if now - task.start_mono >= self.settings.visibility_delay else None

    # -- handlers ----------------------------------------------------------------------

    def _admit(
        self, request: web.Request, endpoint: str, fault: str | None, *, submission: bool
    ) -> Account | web.StreamResponse:
        """What every API request goes through first: early faults, the token, the rate."""
        early = self._before(request, endpoint, fault)
        if early is not None:
            return early
        account = self._authenticate(request)
        if isinstance(account, web.Response):
            return account
        if submission:
            rate, bucket, what = (self.settings.submit_rate, account.submit_bucket,
                                  "too many submissions per second")
        else:
            rate, bucket, what = (self.settings.query_rate, account.query_bucket,
                                  "too many task queries per second")
        if rate is not None:
            wait = bucket.take(rate, time.monotonic())
            if wait > 0:
                return self._too_many(wait, "too_many_requests", what)
        return account

    async def _handle_images(self, request: web.Request) -> web.StreamResponse:
        fault = self._draw_fault("images")
        account = self._admit(request, "images", fault, submission=True)
        if not isinstance(account, Account):
            return account
        settings = self.settings
        body = await self._read_json(request)
        sub = check_submission(body)
        if isinstance(sub, str):
            return self._error(400, "bad_request", sub)
        if settings.max_in_flight is not None:
            now = time.monotonic()
            if account.in_flight(now) >= settings.max_in_flight:
                wait = account.finishing[0] - now
                return self._too_many(wait, "rate_limited", "too many generations in flight")
        task = self._create_task(account, body, sub)
        request[_SUBMITTED] = task.id
        if sub.callback_url is not None or sub.is_async:
            if settings.submit_answer_delay > 0:
                # The task exists and runs meanwhile, whether or not anyone waits.
                await self._pause(settings.submit_answer_delay)
            return await self._deliver(
                request, "images", fault, _dumps(task.submit_answer(settings.async_answer))
            )
        if fault == "reset_after":
            # Held open: drop right away, the task keeps running (and is pollable).
            return await self._deliver(request, "images", fault, b"")
        if not await self._wait_finished(task):
            return self._error(503, "api_error", "the server is shutting down")
        final = _dumps(task.final_body(self.url))
        return await self._deliver(
            request, "images", fault, final, status=500 if task.failed else 200
        )

    async def _handle_tasks(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        action = body.get("action") if isinstance(body, dict) else None
        self.stats.requests[action if action in ("retrieve", "retrieve_batch") else "other"] += 1
        fault = self._draw_fault("tasks")
        account = self._admit(request, "tasks", fault, submission=False)
        if not isinstance(account, Account):
            return account
        settings = self.settings
        if not isinstance(body, dict):
            return self._error(400, "bad_request", "the request body must be a JSON object")
        now = time.monotonic()
        if action == "retrieve":
            task_id = body.get("id")
            if not isinstance(task_id, str):
                return self._error(400, "bad_request", "id must be a task id string")
            self.stats.ids_queried += 1
            task = self._visible_task(account, task_id, now)
            if task is None:
                return self._error(404, "not_found", "Task not found")
            answer = task.task_object(now, self.url, self._api_id, settings)
        elif action == "retrieve_batch":
            if not settings.batch_enabled:
                return self._error(400, "api_not_implemented", "retrieve_batch is not available")
            ids = check_ids(body)
            if isinstance(ids, str):
                return self._error(400, "bad_request", ids)
            self.stats.ids_queried += len(ids)
            visible = partial(self._visible_task, account, now=now)
            found = [t for t in map(visible, ids) if t is not None]
            # The vendor does not keep the order asked; never keeping it (a shuffle that
            # lands on the same order is rotated) makes order-dependent clients fail fast.
            tasks = found[:]
            self._rng.shuffle(tasks)
            if len(tasks) > 1 and all(a is b for a, b in zip(tasks, found, strict=True)):
                tasks.append(tasks.pop(0))
            items = [t.task_object(now, self.url, self._api_id, settings) for t in tasks]
            answer = {"items": items, "count": len(items)}
        else:
            return self._error(400, "bad_request", "action must be 'retrieve' or 'retrieve_batch'")
        return await self._deliver(request, "tasks", fault, _dumps(answer))

    async def _handle_files(self, request: web.Request) -> web.StreamResponse:
        fault = self._draw_fault("files")
        early = self._before(request, "files", fault)
        if early is not None:
            return early
        name = request.match_info["name"]
        stem, dash, index = name.removesuffix(".png").rpartition("-")
        task = self._tasks.get(stem) if name.endswith(".png") and dash else None
        if (
            task is None
            or not index.isdigit()
            or int(index) >= task.count
            or index != str(int(index))
            or task.failed
            or not task.done(time.monotonic())
        ):
            return self._error(404, "not_found", f"file {name!r} not found")
        return await self._deliver(request, "files", fault, render_png(name), "image/png")

"""``FluxClient.map``: many requests through one client, an outcome per request.

The input is read lazily (any iterable or async iterable, a generator of a
million requests included): the next request is taken only when fewer than
``window`` requests are outstanding, "outstanding" meaning submitted or waiting
to be taken by the consumer. Memory therefore stays flat whatever the input
size, and a slow consumer slows submissions instead of piling up results.

Only the submission of a request runs in a task of its own. Once the service
has a task id, nothing waits in a coroutine: the request's own record is its
``Watch`` on the tracker, told the outcome when the task resolves (or its
deadline passes), and the outcome goes straight to the consumer's stream.
Thousands of pending tasks then cost a tracker entry and that record each.

Outcomes come in completion order, or input order with ``ordered=True`` (a
reorder buffer then holds at most ``window`` finished outcomes).
"""

from __future__ import annotations

import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
)
from typing import Any, Literal

import anyio
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from .._core.errors import ClientClosedError, FluxError, TaskError, ValidationError
from .._core.limits import deadline_after
from .._core.models import EditRequest, GenerateRequest, ImageRequest, ImageResult, Outcome
from .followed import Watch
from .launch import Launcher
from .primitives import Flights
from .tracker import Tracker

log = logging.getLogger("flux_async")

__all__ = ["MapEvent", "MapProgress", "Requests", "check_requests", "outcomes"]

Requests = Iterable[ImageRequest] | AsyncIterable[ImageRequest]
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


@attrs.frozen
class MapProgress:
    """Counts so far: ``submitted`` to the service, then ``succeeded`` or ``failed``.

    ``failed`` includes requests that never reached the service (bad input, a
    deadline while queued); ``in_flight`` are submitted and not yet resolved.
    """

    submitted: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def in_flight(self) -> int:
        return max(0, self.submitted - self.done)


@attrs.frozen
class MapEvent:
    """One step of one request, for progress hooks.

    ``kind`` is ``"submitted"`` (``task_id`` set), ``"succeeded"`` or ``"failed"``
    (``outcome`` set); ``progress`` holds the counts after this event.
    """

    kind: Literal["submitted", "succeeded", "failed"]
    index: int
    request: ImageRequest
    progress: MapProgress
    task_id: str | None = None
    outcome: Outcome | None = None


def check_requests(requests: object, on_event: object) -> None:
    """``map``'s arguments, checked before anything starts."""
    if isinstance(requests, (str, bytes, GenerateRequest, EditRequest)) or not isinstance(
        requests, (Iterable, AsyncIterable)
    ):
        raise ValidationError(
            "requests", f"must be an iterable of requests, got {requests!r:.80}"
        )
    if on_event is not None and not callable(on_event):
        raise ValidationError("on_event", f"must be callable, got {on_event!r:.80}")


async def _each(requests: Requests) -> AsyncIterator[ImageRequest]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request


class _Request(Watch):
    """One request of a ``map``: its place, and its watch on the task once submitted."""

    __slots__ = ("index", "request", "run", "task_id")

    def __init__(self, run: _Run, index: int, request: ImageRequest,
                 timeout: float | None) -> None:
        super().__init__(deadline_after(timeout), timeout)
        self.run = run
        self.index = index
        self.request = request
        self.task_id: str | None = None

    def notify(self, result: ImageResult | None, error: FluxError | None) -> None:
        self.run.deliver(self, result, error)


class _Run:
    """The state of one ``map`` call."""

    def __init__(
        self,
        launcher: Launcher,
        tracker: Tracker,
        send: MemoryObjectSendStream[Outcome],
        window: anyio.Semaphore,
        size: int,
        *,
        timeout: float | None,
        callback_url: str | None,
        ordered: bool,
        on_event: Callable[[MapEvent], None] | None,
        on_failure: Callable[[Exception], None],
    ) -> None:
        self._launcher = launcher
        self._tracker = tracker
        self._timeout = timeout
        self._callback_url = callback_url
        self._on_failure = on_failure
        self._send = send
        self._window = window
        self._size = size
        self._ordered = ordered
        self._next = 0  # ordered: the index the consumer gets next
        self._ready: dict[int, Outcome] = {}  # ordered: finished ahead of their turn
        self._on_event = on_event
        self._outstanding: dict[int, _Request] = {}  # started, not yet delivered
        self._flights = Flights(self._bug)
        self._scope: anyio.CancelScope | None = None  # the loop over the input
        self.failure: Exception | None = None
        self.progress = MapProgress()

    def _emit(self, kind: Literal["submitted", "succeeded", "failed"], index: int,
              request: ImageRequest, task_id: str | None, outcome: Outcome | None) -> None:
        p = self.progress  # built directly: attrs.evolve costs more, twice per request
        if kind == "submitted":
            self.progress = MapProgress(p.submitted + 1, p.succeeded, p.failed)
        elif kind == "succeeded":
            self.progress = MapProgress(p.submitted, p.succeeded + 1, p.failed)
        else:
            self.progress = MapProgress(p.submitted, p.succeeded, p.failed + 1)
        if self._on_event is not None:
            self._on_event(MapEvent(kind, index, request, self.progress, task_id, outcome))

    def deliver(self, one: _Request, result: ImageResult | None,
                error: FluxError | None) -> None:
        """Hand one request's outcome on (runs in whichever task learnt it)."""
        index, request = one.index, one.request
        self._outstanding.pop(index, None)
        if result is not None:
            outcome = Outcome(index, request, result=result, task_id=result.task_id)
        else:
            task_id = one.task_id
            if isinstance(error, TaskError) and error.task_id:
                task_id = error.task_id
            outcome = Outcome(index, request, error=error, task_id=task_id)
        try:
            self._emit("succeeded" if outcome.ok else "failed", index, request,
                       outcome.task_id, outcome)
        except Exception as exc:  # the user's hook: stop the run, re-raise to the consumer
            self._fail(exc)
            return
        if not self._ordered:
            self._push(outcome)
            return
        self._ready[index] = outcome
        while self._next in self._ready:
            self._push(self._ready.pop(self._next))
            self._next += 1

    def _fail(self, exc: Exception) -> None:
        """The input or a hook raised: stop the run; the consumer gets ``exc`` itself."""
        if self.failure is None:
            self.failure = exc
            self._on_failure(exc)  # now: the run may be cancelled as soon as the stream closes
        self._send.close()
        self._stop()

    def _stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        self._flights.cancel()

    def _bug(self) -> None:
        """A submission's task raised (not a FluxError: a bug): the run stops."""
        self._stop()

    def _push(self, outcome: Outcome) -> None:
        # Never full: the buffer holds `window` and at most `window` are outstanding.
        # Broken or closed: the consumer left, and the run is being cancelled.
        try:
            self._send.send_nowait(outcome)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            if outcome.task_id is not None:  # a paid task's outcome nobody will take
                log.warning("map left; task %s ended after it (%s): client.wait(%r)",
                            outcome.task_id, "succeeded" if outcome.ok else "failed",
                            outcome.task_id)

    async def _one(self, index: int, request: ImageRequest) -> None:
        one = _Request(self, index, request, self._timeout)
        self._outstanding[index] = one

        def on_submitted(task_id: str) -> None:
            one.task_id = task_id
            try:
                self._emit("submitted", index, request, task_id, None)
            except Exception as exc:  # the user's hook: the task is followed all the same
                self._fail(exc)

        try:
            if not isinstance(request, (GenerateRequest, EditRequest)):
                raise ValidationError(
                    "request", f"expected a GenerateRequest or EditRequest, got {request!r}"
                )
            await self._launcher.launch(
                request, deadline=one.deadline, timeout=self._timeout,
                callback_url=self._callback_url, watch=one, on_submitted=on_submitted,
            )
        except FluxError as exc:
            self.deliver(one, None, exc)

    async def _room(self) -> None:
        """The window's permit for one more request (counted hungry while it waits)."""
        if self._window.value:
            # The yield lets the submission just spawned start; the permit is taken
            # after it, so a cancellation there holds none. (``acquire`` would add a
            # cancel scope and two checks of the cancellation per request.)
            await anyio.lowlevel.checkpoint()
            if self._window.value:  # only this loop takes permits
                self._window.acquire_nowait()
                return
        tracker = self._tracker
        tracker.hungry += 1
        if tracker.listener is not None:
            tracker.listener.wake()
        try:
            await self._window.acquire()
        finally:
            tracker.hungry -= 1

    async def run(self, requests: Requests) -> None:
        flights = self._flights
        try:
            with anyio.CancelScope() as self._scope:
                index = 0
                try:
                    async for request in _each(requests):
                        # A waiting acquire is woken by the consumer's release before a
                        # cancellation can land (anyio skips tasks whose wait is done):
                        # without this check, closing the client under an endless
                        # input would never stop this loop.
                        await anyio.lowlevel.checkpoint_if_cancelled()
                        await self._room()  # given back as the consumer takes one
                        flights.start(self._one(index, request))
                        index += 1
                except Exception as exc:  # the input raised: not wrapped in a group
                    self._fail(exc)
                await flights.wait()
            self._scope = None
            if flights.error is not None:
                raise flights.error
            if self.failure is not None:
                return
            # All submitted: wait until every outcome has been taken by the consumer.
            for _ in range(self._size):
                await self._window.acquire()
        finally:
            if len(flights):  # stopped or cancelled: no submission outlives its run
                with anyio.CancelScope(shield=True):
                    await flights.stop()
            for one in list(self._outstanding.values()):  # cancelled: stop following
                self._tracker.unwatch(one, cancelled=True)
            self._outstanding.clear()
            self._send.close()


async def outcomes(
    launcher: Launcher,
    tracker: Tracker,
    spawn: Spawn,
    requests: Requests,
    *,
    size: int,
    timeout: float | None,
    callback_url: str | None,
    ordered: bool,
    on_event: Callable[[MapEvent], None] | None,
) -> AsyncGenerator[Outcome, None]:
    """Run every request, yielding each ``Outcome`` as the consumer takes it.

    At most ``size`` requests are outstanding (submitted, or finished and not
    yet taken). If the input or a progress hook raises, that exception itself is
    raised here once the outcomes already delivered have been yielded; if the
    client closes under the run, ``ClientClosedError``.
    """
    send, receive = anyio.create_memory_object_stream[Outcome](size)
    # Not fast_acquire: the checkpoint in each acquire lets every submission
    # start as it is spawned, instead of thousands queueing at the connector.
    window = anyio.Semaphore(size)
    failure: list[BaseException] = []
    completed: list[bool] = []
    finished = anyio.Event()
    scope = anyio.CancelScope()
    run = _Run(launcher, tracker, send, window, size, timeout=timeout,
               callback_url=callback_url, ordered=ordered, on_event=on_event,
               on_failure=failure.append)

    async def runner() -> None:
        with scope:
            try:
                await run.run(requests)
                completed.append(True)
            except Exception as exc:  # a bug: re-raised to the consumer
                failure.append(exc)
            finally:
                send.close()
                finished.set()

    spawn(runner)
    try:
        async with receive:
            async for outcome in receive:
                window.release()  # taken: one more request may start
                yield outcome
    finally:
        scope.cancel()
        with anyio.CancelScope(shield=True):
            await finished.wait()
    if failure:
        raise failure[0]
    if not completed and tracker.closed:
        raise ClientClosedError("the FluxClient was closed during map")

"""``FluxClient.map``: many requests through one client, an outcome per request.

The input is read lazily (any iterable or async iterable, a generator of a
million requests included): the next request is taken only when fewer than
``window`` requests are outstanding, "outstanding" meaning submitted or waiting
to be taken by the consumer. Memory therefore stays flat whatever the input
size, and a slow consumer slows submissions instead of piling up results.

Outcomes come in completion order, or input order with ``ordered=True`` (the
head of the line then holds up at most ``window`` finished outcomes).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Literal

import anyio
import attrs
from anyio.abc import ObjectSendStream

from ._errors import FluxError, TaskError, ValidationError
from ._models import EditRequest, GenerateRequest, ImageRequest, ImageResult, Outcome

__all__ = ["MapEvent", "MapProgress", "Requests", "run_map"]

Requests = Iterable[ImageRequest] | AsyncIterable[ImageRequest]
# Runs one request to its end; calls its second argument with the task id once known.
Launch = Callable[[ImageRequest, Callable[[str], None]], Awaitable[ImageResult]]


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


async def _each(requests: Requests) -> AsyncIterator[ImageRequest]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request


class _Sequencer:
    """Lets outcomes through in input order: index n waits for n - 1 to pass."""

    def __init__(self) -> None:
        self.next = 0
        self._turns: dict[int, anyio.Event] = {}

    async def turn(self, index: int) -> None:
        if index != self.next:
            await self._turns.setdefault(index, anyio.Event()).wait()

    def advance(self) -> None:
        self.next += 1
        event = self._turns.pop(self.next, None)
        if event is not None:
            event.set()


class _Run:
    """The state of one ``map`` call."""

    def __init__(
        self,
        launch: Launch,
        send: ObjectSendStream[Outcome],
        *,
        window: int,
        ordered: bool,
        on_event: Callable[[MapEvent], None] | None,
    ) -> None:
        self._launch = launch
        self._send = send
        self._window = anyio.Semaphore(window)
        self._sequencer = _Sequencer() if ordered else None
        self._on_event = on_event
        self.progress = MapProgress()

    def _emit(self, kind: Literal["submitted", "succeeded", "failed"], index: int,
              request: ImageRequest, task_id: str | None, outcome: Outcome | None) -> None:
        p = self.progress
        if kind == "submitted":
            self.progress = attrs.evolve(p, submitted=p.submitted + 1)
        elif kind == "succeeded":
            self.progress = attrs.evolve(p, succeeded=p.succeeded + 1)
        else:
            self.progress = attrs.evolve(p, failed=p.failed + 1)
        if self._on_event is not None:
            self._on_event(MapEvent(kind, index, request, self.progress, task_id, outcome))

    async def _outcome(self, index: int, request: ImageRequest) -> Outcome:
        submitted: list[str] = []

        def on_submitted(task_id: str) -> None:
            submitted.append(task_id)
            self._emit("submitted", index, request, task_id, None)

        try:
            if not isinstance(request, (GenerateRequest, EditRequest)):
                raise ValidationError(
                    "request", f"expected a GenerateRequest or EditRequest, got {request!r}"
                )
            result = await self._launch(request, on_submitted)
        except FluxError as exc:
            task_id = exc.task_id if isinstance(exc, TaskError) else None
            task_id = task_id or next(iter(submitted), None)
            outcome = Outcome(index, request, error=exc, task_id=task_id)
            self._emit("failed", index, request, outcome.task_id, outcome)
        else:
            outcome = Outcome(index, request, result=result, task_id=result.task_id)
            self._emit("succeeded", index, request, outcome.task_id, outcome)
        return outcome

    async def _one(self, index: int, request: ImageRequest) -> None:
        try:
            outcome = await self._outcome(index, request)
            if self._sequencer is not None:
                await self._sequencer.turn(index)
            try:
                await self._send.send(outcome)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the consumer left; the run is being cancelled
            if self._sequencer is not None:
                self._sequencer.advance()
        finally:
            self._window.release()

    async def run(self, requests: Requests) -> None:
        async with self._send, anyio.create_task_group() as group:
            index = 0
            async for request in _each(requests):
                await self._window.acquire()
                group.start_soon(self._one, index, request)
                index += 1


async def run_map(
    launch: Launch,
    requests: Requests,
    send: ObjectSendStream[Outcome],
    *,
    window: int,
    ordered: bool,
    on_event: Callable[[MapEvent], None] | None,
) -> None:
    """Run every request through ``launch``, sending each ``Outcome`` to ``send``."""
    await _Run(launch, send, window=window, ordered=ordered, on_event=on_event).run(requests)

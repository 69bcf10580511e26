"""Socket-free doubles: an injected clock and timer, and a service behind the two query methods.

As gidgethub tests its request logic by replacing two methods, these tests replace
the two I/O methods of ``TaskQueries`` (``fetch_batch``, ``fetch_one``) and drive
the poller, the tracker and ``map`` with plain calls and a clock the test moves.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from flux_async import FluxError, ImageResult, NotFoundError
from flux_async._core.limits import Backoff, RateLimiter
from flux_async._engine.followed import Watch
from flux_async._engine.poller import Poller
from flux_async._engine.queries import TaskQueries
from flux_async._engine.tracker import Tracker


class Clock:
    """The time, as the test says; also the timer the tracker arms (``schedule``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def schedule(self, when: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(self, when, fn)
        self.timers.append((when, fn))
        return timer

    def advance(self, seconds: float) -> None:
        """Move the time on and fire the timers that came due (as the loop would)."""
        self.now += seconds
        while due := sorted((t for t in self.timers if t[0] <= self.now), key=lambda t: t[0]):
            self.timers.remove(due[0])
            due[0][1]()


class Timer:
    def __init__(self, clock: Clock, when: float, fn: Callable[[], None]) -> None:
        self._clock, self._entry = clock, (when, fn)

    def cancel(self) -> None:
        if self._entry in self._clock.timers:
            self._clock.timers.remove(self._entry)


class FakeQueries(TaskQueries):
    """The service's task store as a dict; counts what was asked."""

    def __init__(self, *, chunk_size: int = 50) -> None:
        async def no_post(path: str, payload: Mapping[str, Any]) -> Any:
            raise AssertionError("no request leaves a fake")

        super().__init__(no_post, RateLimiter(None), Backoff(), attempts=3,
                         chunk_size=chunk_size)
        self.tasks: dict[str, Mapping[str, Any]] = {}
        self.batch_calls: list[list[str]] = []
        self.retrieve_calls: list[str] = []
        self.batch_error: Exception | None = None
        self.refuses_batches = False

    async def fetch_batch(self, task_ids: Sequence[str]) -> list[Mapping[str, Any]]:
        self.batch_calls.append(list(task_ids))
        if self.batch_error is not None:
            raise self.batch_error
        if self.refuses_batches:
            raise NotFoundError("no such action", status=404, code="no_api")
        return [self.tasks[i] for i in task_ids if i in self.tasks]

    async def fetch_one(self, task_id: str) -> Mapping[str, Any]:
        self.retrieve_calls.append(task_id)
        if task_id not in self.tasks:
            raise NotFoundError("Task not found", status=404, code="not_found", trace_id="tr")
        return self.tasks[task_id]


def done(task_id: str, prompt: str = "p") -> dict[str, Any]:
    """A finished task object as ``/flux/tasks`` shows it."""
    return {"id": task_id, "type": "images", "created_at": 1.0, "trace_id": "t",
            "request": {}, "finished_at": 2.0,
            "response": {"success": True, "task_id": task_id,
                         "data": [{"prompt": prompt, "image_url": f"https://cdn/{task_id}.png"}]}}


def failed(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "type": "images", "created_at": 1.0, "trace_id": "t",
            "request": {}, "finished_at": 2.0,
            "response": {"success": False, "task_id": task_id,
                         "error": {"code": "bad", "message": "no"}}}


def running(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "type": "images", "created_at": 1.0, "trace_id": "t",
            "request": {}, "finished_at": None}


class Slots:
    """Counts slots given back (the tracker's only use of the pool)."""

    def __init__(self) -> None:
        self.given_back = 0

    def give_back(self) -> None:
        self.given_back += 1


def build(
    queries: FakeQueries | None = None, clock: Clock | None = None, *,
    grace: float = 120.0, hurry: Callable[[], bool] = lambda: False,
) -> tuple[Tracker, Poller, FakeQueries, Clock, Slots]:
    """A tracker and its poller on a fake service and clock; rounds are driven by the test."""
    queries = queries or FakeQueries()
    clock = clock or Clock()
    slots = Slots()
    tracker = Tracker(give_back=slots.give_back, clock=clock, schedule=clock.schedule)

    def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        fn().close()  # rounds are driven by the test, not by a background loop

    poller = Poller(tracker, queries, spawn=spawn, interval=1.0, busy_interval=0.2,
                    callback_interval=30.0, hurry=hurry, not_found_grace=grace, clock=clock)
    return tracker, poller, queries, clock, slots


class Seen(Watch):
    """A watch that records what it is told."""

    __slots__ = ("told",)

    def __init__(self, deadline: float | None = None, timeout: float | None = None) -> None:
        super().__init__(deadline, timeout)
        self.told: list[tuple[ImageResult | None, FluxError | None]] = []

    def notify(self, result: ImageResult | None, error: FluxError | None) -> None:
        self.told.append((result, error))

    @property
    def error(self) -> FluxError | None:
        assert len(self.told) == 1, self.told
        return self.told[0][1]

    @property
    def result(self) -> ImageResult | None:
        assert len(self.told) == 1, self.told
        return self.told[0][0]


def follow(tracker: Tracker, task_id: str, deadline: float | None = None,
           timeout: float | None = None) -> Seen:
    """``wait(task_id)`` without a coroutine: the watch records the outcome."""
    seen = Seen(deadline, timeout)
    tracker.watch(tracker.follow(task_id), seen)
    return seen

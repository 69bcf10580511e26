"""The not-found grace and per-task errors of the poller, without a socket.

The poller is driven round by round with fake fetchers and an injected clock:
what the service answers and what time it is are both chosen by the test.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import pytest

from flux_async import (
    AuthenticationError,
    ClientClosedError,
    ForbiddenError,
    InsufficientBalanceError,
    NotFoundError,
    TaskAuthenticationError,
    TaskClosedError,
    TaskError,
    TaskForbiddenError,
    TaskInsufficientBalanceError,
    TaskNotFoundError,
)
from flux_async._limits import RateLimiter
from flux_async._poller import DEFAULT_NOT_FOUND_GRACE, MISSING_ROUNDS, Poller

pytestmark = pytest.mark.anyio

GRACE = 120.0


class FakeService:
    """Answers task queries from a dict; counts what was asked."""

    def __init__(self) -> None:
        self.tasks: dict[str, Mapping[str, Any]] = {}
        self.batch_calls = 0
        self.retrieve_calls: list[str] = []
        self.batch_error: Exception | None = None
        self.batch_supported = True

    async def fetch_batch(self, ids: Sequence[str]) -> list[Mapping[str, Any]]:
        self.batch_calls += 1
        if self.batch_error is not None:
            raise self.batch_error
        if not self.batch_supported:
            raise NotFoundError("no such action", status=404, code="no_api")
        return [self.tasks[i] for i in ids if i in self.tasks]

    async def fetch_one(self, task_id: str) -> Mapping[str, Any]:
        self.retrieve_calls.append(task_id)
        if task_id not in self.tasks:
            raise NotFoundError("Task not found", status=404, code="not_found", trace_id="tr")
        return self.tasks[task_id]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _poller(service: FakeService, clock: Clock) -> Poller:
    def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        fn().close()  # rounds are driven by the test, not by a background loop

    return Poller(
        fetch_batch=service.fetch_batch, fetch_one=service.fetch_one,
        limiter=RateLimiter(None), spawn=spawn, interval=1.0, busy_interval=0.2,
        is_busy=lambda: True, chunk_size=50, not_found_grace=GRACE, clock=clock,
    )


def _done(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "type": "images", "created_at": 1.0, "trace_id": "t",
            "request": {}, "finished_at": 2.0,
            "response": {"success": True, "task_id": task_id,
                         "data": [{"prompt": "p", "image_url": "https://cdn/x.png"}]}}


async def test_an_unknown_id_costs_only_batch_slots_until_the_grace_has_passed() -> None:
    service, clock = FakeService(), Clock()
    poller = _poller(service, clock)
    entry = poller.entry("new-task")
    entry.waiters = 1
    # Rounds every 0.2 s for almost the whole grace: "not yet", never "lost".
    rounds = 0
    while clock.now - 1000.0 < GRACE - 0.2:
        await poller._round(["new-task"], clock.now)
        clock.now += 0.2
        rounds += 1
    assert rounds > 500
    assert not entry.done.is_set()
    assert service.retrieve_calls == []  # no retrieve storm: one batch slot per round
    assert service.batch_calls == rounds
    # The grace has passed: the next round asks for the id alone, and the 404 ends it.
    clock.now = 1000.0 + GRACE
    await poller._round(["new-task"], clock.now)
    assert service.retrieve_calls == ["new-task"]
    assert entry.done.is_set()
    error = entry.error
    assert isinstance(error, TaskNotFoundError)
    assert isinstance(error, NotFoundError)
    assert error.task_id == "new-task"
    assert (error.status, error.code, error.trace_id) == (404, "not_found", "tr")
    assert "new-task" in str(error)


async def test_a_task_that_appears_late_resolves() -> None:
    service, clock = FakeService(), Clock()
    poller = _poller(service, clock)
    entry = poller.entry("late")
    entry.waiters = 1
    for _ in range(50):  # 10 s of busy rounds without the task
        await poller._round(["late"], clock.now)
        clock.now += 0.2
    service.tasks["late"] = _done("late")
    await poller._round(["late"], clock.now)
    assert entry.done.is_set()
    assert entry.error is None
    assert entry.task is not None
    assert entry.task.result is not None


async def test_the_grace_counts_from_when_the_id_became_known() -> None:
    service, clock = FakeService(), Clock()
    poller = _poller(service, clock)
    old = poller.entry("old")
    old.waiters = 1
    clock.now += GRACE - 1
    young = poller.entry("young")  # e.g. wait(id) started just now
    young.waiters = 1
    clock.now += 2
    for _ in range(MISSING_ROUNDS):
        await poller._round(["old", "young"], clock.now)
    assert isinstance(old.error, TaskNotFoundError)
    assert not young.done.is_set()
    assert service.retrieve_calls == ["old"]


async def test_per_id_mode_treats_a_404_within_the_grace_as_not_yet() -> None:
    service, clock = FakeService(), Clock()
    service.batch_supported = False
    poller = _poller(service, clock)
    entry = poller.entry("x")
    entry.waiters = 1
    await poller._round(["x"], clock.now)  # batch refused: falls back to retrieve
    assert not poller.batch_supported
    for _ in range(20):
        clock.now += 1
        await poller._round(["x"], clock.now)
    assert not entry.done.is_set()
    clock.now += GRACE
    await poller._round(["x"], clock.now)
    assert isinstance(entry.error, TaskNotFoundError)


@pytest.mark.parametrize(
    ("error", "bound"),
    [
        (AuthenticationError("expired", status=401, code="token_expired"),
         TaskAuthenticationError),
        (InsufficientBalanceError("used up", status=403, code="used_up"),
         TaskInsufficientBalanceError),
        (ForbiddenError("no access", status=403, code="forbidden"), TaskForbiddenError),
    ],
)
async def test_an_error_ending_many_waits_names_each_task(
    error: Exception, bound: type[TaskError]
) -> None:
    service, clock = FakeService(), Clock()
    service.batch_error = error
    poller = _poller(service, clock)
    entries = [poller.entry(f"t{i}") for i in range(3)]
    for entry in entries:
        entry.waiters = 1
    await poller._round([e.task_id for e in entries], clock.now)
    errors = [e.error for e in entries]
    assert [type(e) for e in errors] == [bound] * 3
    assert all(isinstance(e, type(error)) for e in errors)
    assert [e.task_id for e in errors] == ["t0", "t1", "t2"]  # type: ignore[union-attr]
    assert len({id(e) for e in errors}) == 3  # one instance per task, none shared
    assert all(e.__cause__ is error for e in errors)  # type: ignore[union-attr]
    assert all(e.status == error.status for e in errors)  # type: ignore[union-attr, attr-defined]


async def test_closing_names_each_task_and_returns_the_submitted_ones() -> None:
    poller = _poller(FakeService(), Clock())
    mine = poller.entry("mine")
    mine.request = object()  # type: ignore[assignment]  # submitted by this client
    waited = poller.entry("waited")
    running = poller.close(ClientClosedError("closed"))
    assert running == ["mine"]
    for entry in (mine, waited):
        assert isinstance(entry.error, TaskClosedError)
        assert entry.error.task_id == entry.task_id


def test_the_default_grace_is_minutes() -> None:
    assert 120 <= DEFAULT_NOT_FOUND_GRACE <= 600

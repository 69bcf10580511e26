"""The not-found grace and per-task errors of the poller, without a socket.

The poller is driven round by round on a fake service (its two query methods
replaced) and an injected clock: what the service answers and what time it is
are both chosen by the test.
"""

from __future__ import annotations

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
from flux_async._core.models import GenerateRequest, Task, TaskStatus
from flux_async._engine.poller import DEFAULT_NOT_FOUND_GRACE, MISSING_ROUNDS
from flux_async._engine.tracker import Event

from .fakes import Seen, build, done, follow

pytestmark = pytest.mark.anyio

GRACE = 120.0


async def test_an_unknown_id_costs_only_batch_slots_until_the_grace_has_passed() -> None:
    tracker, poller, service, clock, _ = build(grace=GRACE)
    seen = follow(tracker, "new-task")
    # Rounds every 0.2 s for almost the whole grace: "not yet", never "lost".
    rounds = 0
    while clock.now - 1000.0 < GRACE - 0.2:
        await poller.round(["new-task"], clock.now)
        clock.now += 0.2
        rounds += 1
    assert rounds > 500
    assert not seen.told
    assert service.retrieve_calls == []  # no retrieve storm: one batch slot per round
    assert len(service.batch_calls) == rounds
    # The grace has passed: the next round asks for the id alone, and the 404 ends it.
    clock.now = 1000.0 + GRACE
    await poller.round(["new-task"], clock.now)
    assert service.retrieve_calls == ["new-task"]
    error = seen.error
    assert isinstance(error, TaskNotFoundError)
    assert isinstance(error, NotFoundError)
    assert error.task_id == "new-task"
    assert (error.status, error.code, error.trace_id) == (404, "not_found", "tr")
    assert "new-task" in str(error)
    assert tracker.find("new-task") is None


async def test_a_task_that_appears_late_resolves() -> None:
    tracker, poller, service, clock, _ = build(grace=GRACE)
    seen = follow(tracker, "late")
    for _ in range(50):  # 10 s of busy rounds without the task
        await poller.round(["late"], clock.now)
        clock.now += 0.2
    service.tasks["late"] = done("late")
    await poller.round(["late"], clock.now)
    assert seen.error is None
    assert seen.result is not None
    assert seen.result.task_id == "late"


async def test_the_grace_counts_from_when_the_id_became_known() -> None:
    tracker, poller, service, clock, _ = build(grace=GRACE)
    old = follow(tracker, "old")
    clock.now += GRACE - 1
    young = follow(tracker, "young")  # e.g. wait(id) started just now
    clock.now += 2
    for _ in range(MISSING_ROUNDS):
        await poller.round(["old", "young"], clock.now)
    assert isinstance(old.error, TaskNotFoundError)
    assert not young.told
    assert service.retrieve_calls == ["old"]


async def test_per_id_mode_treats_a_404_within_the_grace_as_not_yet() -> None:
    tracker, poller, service, clock, _ = build(grace=GRACE)
    service.refuses_batches = True
    seen = follow(tracker, "x")
    await poller.round(["x"], clock.now)  # batch refused: falls back to retrieve
    assert not service.batch_supported
    for _ in range(20):
        clock.now += 1
        await poller.round(["x"], clock.now)
    assert not seen.told
    clock.now += GRACE
    await poller.round(["x"], clock.now)
    assert isinstance(seen.error, TaskNotFoundError)


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
    tracker, poller, service, clock, _ = build(grace=GRACE)
    service.batch_error = error
    seen = [follow(tracker, f"t{i}") for i in range(3)]
    await poller.round(["t0", "t1", "t2"], clock.now)
    errors = [s.error for s in seen]
    assert [type(e) for e in errors] == [bound] * 3
    assert all(isinstance(e, type(error)) for e in errors)
    assert [e.task_id for e in errors] == ["t0", "t1", "t2"]  # type: ignore[union-attr]
    assert len({id(e) for e in errors}) == 3  # one instance per task, none shared
    assert all(e.__cause__ is error for e in errors)  # type: ignore[union-attr]
    assert all(e.status == error.status for e in errors)  # type: ignore[union-attr, attr-defined]


async def test_closing_names_each_task_and_returns_the_submitted_ones() -> None:
    tracker, _, _, _, slots = build(grace=GRACE)
    mine = tracker.new(Event.QUEUE, request=GenerateRequest("a cat"))
    tracker.move(mine, Event.SLOT)
    waits_mine = Seen()
    tracker.answered(mine, Task("mine", TaskStatus.PENDING), kept=False, watch=waits_mine)
    waited = follow(tracker, "waited")
    adopted, others = tracker.close(ClientClosedError("closed"))
    assert (adopted, others) == ([], ["mine"])
    for seen, task_id in ((waits_mine, "mine"), (waited, "waited")):
        assert isinstance(seen.error, TaskClosedError)
        assert seen.error.task_id == task_id
    assert slots.given_back == 1


def test_the_default_grace_is_minutes() -> None:
    assert 120 <= DEFAULT_NOT_FOUND_GRACE <= 600


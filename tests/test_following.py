"""The poller and ``map`` without sockets: a fake service behind the two query methods,
a fake ``post`` for submissions, and an injected clock.

The end-to-end tests (test_client, test_bulk) run the same paths over real sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from flux_async import GenerateRequest, Outcome, ServerError, TaskTimeoutError
from flux_async._core.callbacks import CallbackBook
from flux_async._core.limits import Backoff, RateLimiter
from flux_async._core.protocol import read_task
from flux_async._engine.coordination import LocalSlots
from flux_async._engine.journal import MemoryJournal
from flux_async._engine.launch import Launcher
from flux_async._engine.map import outcomes
from flux_async._engine.poller import MISSING_ROUNDS
from flux_async._engine.submission import Submitter
from flux_async._engine.tracker import Stage, Tracker

from .fakes import build, done, failed, follow, running

pytestmark = pytest.mark.anyio


# --- the poller ------------------------------------------------------------------------


async def test_a_refused_batch_falls_back_to_retrieve_for_good() -> None:
    tracker, poller, service, clock, _ = build()
    seen = [follow(tracker, f"t{i}") for i in range(3)]
    service.tasks = {"t0": running("t0"), "t1": done("t1"), "t2": failed("t2")}
    service.refuses_batches = True
    await poller.round(["t0", "t1", "t2"], clock.now)
    assert not service.batch_supported
    assert service.retrieve_calls == ["t0", "t1", "t2"]  # the same round, per id
    assert seen[1].result is not None
    assert seen[2].error is not None
    assert not seen[0].told
    service.tasks["t0"] = done("t0")
    await poller.round(["t0"], clock.now + 1)
    assert len(service.batch_calls) == 1  # never asked for a batch again
    assert seen[0].result is not None


async def test_a_round_asks_in_chunks_of_the_batch_size() -> None:
    tracker, poller, service, clock, _ = build()
    ids = [f"t{i}" for i in range(120)]
    for task_id in ids:
        follow(tracker, task_id)
    await poller.round(ids, clock.now)
    assert [len(c) for c in service.batch_calls] == [50, 50, 20]


async def test_a_failed_round_changes_nothing_and_the_next_asks_again() -> None:
    tracker, poller, service, clock, _ = build()
    seen = follow(tracker, "t")
    service.batch_error = ServerError("down", status=502)
    await poller.round(["t"], clock.now)
    assert not seen.told
    assert tracker.find("t") is not None
    service.batch_error = None
    service.tasks["t"] = done("t")
    await poller.round(["t"], clock.now + 1)
    assert seen.result is not None


async def test_missing_ids_within_the_grace_cost_no_retrieve_after_it_one() -> None:
    tracker, poller, service, clock, _ = build(grace=10.0)
    seen = follow(tracker, "ghost")
    for _ in range(MISSING_ROUNDS * 3):  # missing many times, within the grace
        await poller.round(["ghost"], clock.now)
        clock.now += 1
    assert service.retrieve_calls == []
    assert not seen.told
    clock.now += 10
    await poller.round(["ghost"], clock.now)
    assert service.retrieve_calls == ["ghost"]
    assert seen.error is not None
    assert getattr(seen.error, "task_id", None) == "ghost"


async def test_a_task_seen_again_starts_its_missing_count_over() -> None:
    tracker, poller, service, clock, _ = build(grace=0.0)
    seen = follow(tracker, "flaky")
    for _ in range(MISSING_ROUNDS - 1):
        await poller.round(["flaky"], clock.now)
    service.tasks["flaky"] = running("flaky")
    await poller.round(["flaky"], clock.now)
    del service.tasks["flaky"]
    for _ in range(MISSING_ROUNDS - 1):
        await poller.round(["flaky"], clock.now)
    assert service.retrieve_calls == []
    assert not seen.told


async def test_callback_tasks_are_asked_about_only_every_callback_interval() -> None:
    tracker, poller, service, clock, _ = build()
    seen = follow(tracker, "cb")
    followed = tracker.find("cb")
    assert followed is not None
    followed.callbacks = True
    await poller.round(["cb"], clock.now)
    assert followed.not_before == clock.now + poller.callback_interval
    service.tasks["cb"] = done("cb")
    await poller.round(["cb"], clock.now + 30)
    assert seen.result is not None


def test_rounds_come_fast_only_when_told_a_sooner_notice_buys_something() -> None:
    hurry = [False]
    _, poller, _, _, _ = build(hurry=lambda: hurry[0])
    assert poller.next_interval() == 1.0
    hurry[0] = True
    assert poller.next_interval() == 0.2


async def test_a_hint_asks_about_the_task_once_however_often_it_comes() -> None:
    tracker, poller, service, _, _ = build()
    seen = follow(tracker, "hinted")
    spawned: list[Callable[[], Coroutine[Any, Any, None]]] = []
    poller._spawn = spawned.append
    service.tasks["hinted"] = done("hinted")
    for _ in range(5):
        assert tracker.confirm("hinted")
    assert len(spawned) == 1
    await spawned[0]()
    assert service.retrieve_calls == ["hinted"]
    assert seen.result is not None
    assert not tracker.confirm("unknown")


# --- map ----------------------------------------------------------------------------------


class Fixture:
    """A tracker, a launcher whose POST is a function, and a service decided by the test."""

    def __init__(self, group: anyio.abc.TaskGroup, size: int) -> None:
        self.slots = LocalSlots(size)
        self.tracker, _, self.service, self.clock, _ = build()
        self.tracker._give_back = self.slots.give_back
        self.posted: list[str] = []
        self.group = group

        async def post(path: str, body: Mapping[str, Any]) -> Any:
            task_id = f"task-{len(self.posted)}"
            self.posted.append(body["prompt"])
            return {"success": True, "task_id": task_id, "trace_id": "tr"}

        submitter = Submitter(post, RateLimiter(None), Backoff(), spawn=self.spawn,
                              max_retries=3, resend_uncertain=False)
        self.launcher = Launcher(self.tracker, self.slots, submitter, CallbackBook(),
                                 MemoryJournal(),
                                 callback_poll_interval=30.0, waiting=lambda: None)

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.group.start_soon(fn)

    def finish(self, task_id: str) -> None:
        self.tracker.resolve(read_task(done(task_id, prompt=f"p{task_id.split('-')[1]}")))


async def _collect(fixture: Fixture, count: int, *, ordered: bool,
                   finish_order: list[int], timeout: float | None = None) -> list[Outcome]:
    requests = [GenerateRequest(f"p{i}") for i in range(count)]
    got: list[Outcome] = []
    run = outcomes(fixture.launcher, fixture.tracker, fixture.spawn, requests,
                   size=count, timeout=timeout, callback_url=None, ordered=ordered,
                   on_event=None)

    async def finisher() -> None:
        while len(fixture.tracker) < count:  # every task submitted and followed
            await anyio.lowlevel.checkpoint()
        for i in finish_order:
            fixture.finish(f"task-{i}")
            await anyio.lowlevel.checkpoint()

    fixture.group.start_soon(finisher)
    async for outcome in run:
        got.append(outcome)
    return got


async def test_map_yields_in_completion_order_by_default() -> None:
    async with anyio.create_task_group() as group:
        fixture = Fixture(group, 5)
        got = await _collect(fixture, 5, ordered=False, finish_order=[3, 1, 4, 0, 2])
    assert [o.task_id for o in got] == ["task-3", "task-1", "task-4", "task-0", "task-2"]
    assert all(o.ok for o in got)
    assert fixture.slots.in_use == 0


async def test_map_ordered_yields_in_input_order_whatever_finishes_first() -> None:
    async with anyio.create_task_group() as group:
        fixture = Fixture(group, 5)
        got = await _collect(fixture, 5, ordered=True, finish_order=[4, 3, 2, 1, 0])
    assert [o.index for o in got] == [0, 1, 2, 3, 4]
    assert [o.request.prompt for o in got] == [f"p{i}" for i in range(5)]
    assert [o.result.images[0].prompt for o in got if o.result] == [f"p{i}" for i in range(5)]


async def test_map_deadlines_come_from_the_one_heap() -> None:
    async with anyio.create_task_group() as group:
        fixture = Fixture(group, 3)
        requests = [GenerateRequest(f"p{i}") for i in range(3)]
        run = outcomes(fixture.launcher, fixture.tracker, fixture.spawn, requests, size=3,
                       timeout=5.0, callback_url=None, ordered=True, on_event=None)

        async def expire() -> None:
            while len(fixture.tracker) < 3:
                await anyio.lowlevel.checkpoint()
            assert len(fixture.clock.timers) == 1  # one timer for the three deadlines
            fixture.clock.now = anyio.current_time()
            fixture.clock.advance(5.0)  # the injected clock: nobody sleeps

        group.start_soon(expire)
        got = [o async for o in run]
    assert all(isinstance(o.error, TaskTimeoutError) for o in got)
    assert [o.task_id for o in got] == ["task-0", "task-1", "task-2"]
    assert fixture.tracker.counts[Stage.FOLLOWED] == 0
    assert fixture.slots.in_use == 0


async def test_leaving_a_map_stops_following_what_is_left() -> None:
    async with anyio.create_task_group() as group:
        fixture = Fixture(group, 4)
        requests = [GenerateRequest(f"p{i}") for i in range(4)]
        run = outcomes(fixture.launcher, fixture.tracker, fixture.spawn, requests, size=4,
                       timeout=None, callback_url=None, ordered=False, on_event=None)

        async def finish_one() -> None:
            while len(fixture.tracker) < 4:
                await anyio.lowlevel.checkpoint()
            fixture.finish("task-2")

        group.start_soon(finish_one)
        async for outcome in run:
            assert outcome.task_id == "task-2"
            break
        await run.aclose()
    assert len(fixture.tracker) == 0
    assert fixture.slots.in_use == 0


def _unused(tracker: Tracker) -> None:  # keeps the import honest for mypy
    assert tracker is not None

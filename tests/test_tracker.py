"""The tracker's table, slots, settle path and deadlines, as plain function calls.

No loop, no socket: the clock and the timer are the test's (``fakes.Clock``).
"""

from __future__ import annotations

import itertools

import pytest

from flux_async import ClientClosedError, TaskFailedError, TaskTimeoutError
from flux_async._core.models import GenerateRequest, Task, TaskStatus
from flux_async._core.protocol import read_task
from flux_async._engine.tracker import (
    TRANSITIONS,
    Event,
    Followed,
    Stage,
    Tracker,
    TrackerError,
    advance,
)

from .fakes import Seen, build, done, failed, follow

REQUEST = GenerateRequest("a cat")


def pending(task_id: str) -> Task:
    return Task(task_id, TaskStatus.PENDING)


# --- the table -----------------------------------------------------------------------


def test_every_row_of_the_table_is_what_advance_does() -> None:
    for (stage, event), after in TRANSITIONS.items():
        assert advance(stage, event) is after


def test_everything_the_table_leaves_out_is_refused() -> None:
    refused = [
        (stage, event)
        for stage, event in itertools.product([None, *Stage], Event)
        if (stage, event) not in TRANSITIONS
    ]
    assert len(refused) > 30
    for stage, event in refused:
        with pytest.raises(TrackerError, match=event.name):
            advance(stage, event)


def test_done_and_dropped_are_final() -> None:
    for (stage, _event) in TRANSITIONS:
        assert stage not in (Stage.DONE, Stage.DROPPED)


def test_the_docstring_table_is_the_table() -> None:
    import flux_async._engine.tracker as module

    doc = module.__doc__ or ""
    for (stage, event), after in TRANSITIONS.items():
        name = "(new)" if stage is None else stage.name
        row = f"{name:<9}  {event.name:<10}  {after.name}"
        assert row in doc, row


# --- slots -----------------------------------------------------------------------------


def submitted(tracker: Tracker, task_id: str, *, watch: Seen | None = None,
              kept: bool = False) -> Followed:
    followed = tracker.new(Event.QUEUE, request=REQUEST)
    tracker.move(followed, Event.SLOT)
    tracker.answered(followed, pending(task_id), kept=kept, watch=watch)
    return followed


def test_a_slot_is_given_back_once_whichever_way_a_task_ends() -> None:
    tracker, _, _, _, slots = build()
    # Refused before anything was sent: no slot was held.
    queued = tracker.new(Event.QUEUE, request=REQUEST)
    tracker.move(queued, Event.GIVE_UP)
    assert slots.given_back == 0
    # The submission failed after the slot was taken.
    refused = tracker.new(Event.QUEUE, request=REQUEST)
    tracker.move(refused, Event.SLOT)
    tracker.move(refused, Event.REFUSE)
    assert slots.given_back == 1
    # Resolved by a poll, then a late duplicate: one give-back.
    seen = Seen()
    one = submitted(tracker, "one", watch=seen)
    assert tracker.resolve(read_task(done("one")))
    assert not tracker.resolve(read_task(done("one")))
    assert slots.given_back == 2
    assert one.stage is Stage.DONE
    # The last watcher left: the task is dropped, its slot back.
    gone = Seen()
    two = submitted(tracker, "two", watch=gone)
    tracker.unwatch(gone, cancelled=True)
    assert two.stage is Stage.DROPPED
    assert slots.given_back == 3
    # Kept (submit()): no watcher needed, the slot goes back when it ends.
    kept = submitted(tracker, "three", kept=True)
    assert kept.stage is Stage.FOLLOWED
    assert slots.given_back == 3
    tracker.fail(kept, ClientClosedError("closed"))
    assert slots.given_back == 4
    assert tracker.counts == {Stage.QUEUED: 0, Stage.SENDING: 0, Stage.FOLLOWED: 0,
                              Stage.DONE: 2, Stage.DROPPED: 3}


def test_an_answer_carrying_the_result_ends_at_once() -> None:
    tracker, _, _, _, slots = build()
    followed = tracker.new(Event.QUEUE, request=REQUEST)
    tracker.move(followed, Event.SLOT)
    seen = Seen()
    task = read_task(done("quick"))
    assert not tracker.answered(followed, task, kept=False, watch=seen)
    assert followed.stage is Stage.DONE
    assert slots.given_back == 1
    assert seen.result is not None
    assert seen.result.task_id == "quick"
    assert tracker.finished("quick") is task


def test_an_id_already_waited_on_hands_its_watchers_to_the_submission() -> None:
    tracker, _, _, _, slots = build()
    early = follow(tracker, "same")
    mine = Seen()
    submitted(tracker, "same", watch=mine)
    tracker.resolve(read_task(done("same")))
    assert early.result is not None
    assert mine.result is not None
    assert slots.given_back == 1


# --- the settle path -------------------------------------------------------------------


def test_every_watcher_gets_the_same_outcome_by_the_one_rule() -> None:
    tracker, _, _, _, _ = build()
    watchers = [follow(tracker, "t") for _ in range(3)]
    tracker.resolve(read_task(failed("t")))
    errors = [w.error for w in watchers]
    assert all(isinstance(e, TaskFailedError) and e.task_id == "t" for e in errors)
    assert tracker.find("t") is None


def test_a_pending_task_settles_nothing() -> None:
    tracker, _, _, _, _ = build()
    seen = follow(tracker, "t")
    assert not tracker.resolve(pending("t"))
    assert not seen.told


def test_a_failing_watcher_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    tracker, _, _, _, _ = build()

    class Broken(Seen):
        def notify(self, result, error):  # type: ignore[no-untyped-def]
            raise RuntimeError("bug")

    tracker.watch(tracker.follow("t"), Broken())
    fine = follow(tracker, "t")
    tracker.resolve(read_task(done("t")))
    assert fine.result is not None
    assert "telling a waiter of task t failed" in caplog.text


# --- deadlines ---------------------------------------------------------------------------


def test_deadlines_share_one_timer_armed_at_the_earliest() -> None:
    tracker, _, _, clock, _ = build()
    watches = [follow(tracker, f"t{i}", deadline=clock.now + 10 + i, timeout=10 + i)
               for i in range(1000)]
    assert len(clock.timers) == 1  # one timer, not a thousand
    assert clock.timers[0][0] == clock.now + 10
    clock.advance(10.5)
    assert isinstance(watches[0].error, TaskTimeoutError)
    assert watches[0].error.task_id == "t0"
    assert not watches[1].told
    assert len(clock.timers) == 1
    assert clock.timers[0][0] == 1011.0
    clock.advance(1000)
    assert all(isinstance(w.error, TaskTimeoutError) for w in watches)
    assert len(tracker) == 0  # nobody waits any more: none followed
    assert not clock.timers


def test_an_earlier_deadline_rearms_the_timer() -> None:
    tracker, _, _, clock, _ = build()
    late = follow(tracker, "late", deadline=clock.now + 100, timeout=100)
    soon = follow(tracker, "soon", deadline=clock.now + 1, timeout=1)
    assert [when for when, _ in clock.timers] == [clock.now + 1]
    clock.advance(1)
    assert isinstance(soon.error, TaskTimeoutError)
    assert not late.told


def test_settled_and_withdrawn_watches_never_time_out_and_do_not_pile_up() -> None:
    tracker, _, _, clock, _ = build()
    for round_ in range(5):
        seen = [follow(tracker, f"r{round_}-{i}", deadline=clock.now + 600, timeout=600)
                for i in range(200)]
        for i, s in enumerate(seen):
            if i % 2:
                tracker.resolve(read_task(done(f"r{round_}-{i}")))
            else:
                tracker.unwatch(s)
    # 1,000 deadlines came and went early: the heap was rebuilt, not left to grow.
    assert len(tracker.deadlines) == 0
    assert len(tracker.deadlines._heap) < 200
    clock.advance(700)
    assert len(tracker) == 0


def test_one_waiter_timing_out_leaves_the_others_waiting() -> None:
    tracker, _, _, clock, _ = build()
    short = follow(tracker, "t", deadline=clock.now + 1, timeout=1)
    long = follow(tracker, "t", deadline=clock.now + 50, timeout=50)
    clock.advance(2)
    assert isinstance(short.error, TaskTimeoutError)
    assert not long.told
    assert tracker.find("t") is not None
    tracker.resolve(read_task(done("t")))
    assert long.result is not None


def test_cancelling_a_wait_on_a_paid_task_names_it(caplog: pytest.LogCaptureFixture) -> None:
    tracker, _, _, _, _ = build()
    seen = Seen()
    submitted(tracker, "paid", watch=seen)
    tracker.unwatch(seen, cancelled=True)
    assert "wait cancelled; task paid may still finish" in caplog.text

"""The tracker: one owner for every followed task, from its slot to its release.

A request the client submits, or a task id it is asked to wait for, is one
``Followed`` object. Every change of its ``stage`` goes through ``advance`` and
this table, and nothing else gives a generation slot back, so a slot can be
neither leaked nor returned twice:

=========  ==========  =========  =================================================
stage      event       next       when
=========  ==========  =========  =================================================
(new)      QUEUE       QUEUED     a submission asks for a generation slot
(new)      WATCH       FOLLOWED   ``wait(id)``: an id to follow, without a slot
QUEUED     SLOT        SENDING    it has a slot; the paid POST may go out
QUEUED     GIVE_UP     DROPPED    deadline, cancellation or a refused seam before
                                  anything was sent
SENDING    ANSWER      FOLLOWED   the service gave a task id (still running)
SENDING    FINISH      DONE       the answer carried the result itself
SENDING    REFUSE      DROPPED    the submission failed: no task to follow
SENDING    GIVE_UP     DROPPED    answered as the client closed: nobody will
                                  follow it (its id is logged)
FOLLOWED   FINISH      DONE       a poll, a callback or ``get_task`` saw it end
FOLLOWED   FAIL        DONE       an error ended it here (not found after the grace,
                                  the token refused, the client closed)
FOLLOWED   UNWATCH     DROPPED    its last watcher left and nobody keeps it
=========  ==========  =========  =================================================

A task adopted from a process that died (``adopt``) may bring the slot that
process held for it: it is FOLLOWED holding a slot, like a task submitted here.
Leaving SENDING or FOLLOWED gives the slot back (if it held one); entering
FOLLOWED tells the coordinator's directory the task is followed here, leaving it
that it is not. ``submit()``'s tasks, and tasks whose caller left while the POST
was on the wire (adopted), are *kept*: followed with no watcher until they end.

Waiting is one mechanism for ``wait``, ``generate`` and ``map``: a ``Watch`` (a
party waiting for one task, with its own deadline) is told the outcome by the
one settle path. A coroutine waiter's watch resolves a future; ``map``'s watch
is its per-request record, so thousands of pending tasks park no coroutine.
Every deadline sits in one heap, served by one timer (``deadlines``).

asyncio beside anyio: a coroutine waiter awaits a bare future (anyio cancels it
like any await), because anyio's events cost a kilobyte each. The clock and the
timer are injected, so all of this is tested with plain calls.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import anyio
import anyio.lowlevel

from .._core.errors import FluxError, TaskTimeoutError, for_task
from .._core.models import ImageRequest, ImageResult, Task, TaskStatus
from .deadlines import Deadlines, Schedule, loop_time
from .followed import Followed, Stage, Watch, outcome_of, task_outcome
from .telemetry import NO_TELEMETRY, Telemetry

__all__ = [
    "RECENT_RESULTS",
    "TRANSITIONS",
    "Event",
    "Followed",
    "Stage",
    "Tracker",
    "TrackerError",
    "Watch",
    "advance",
    "outcome_of",
    "task_outcome",
]

log = logging.getLogger("flux_async")

#: Finished tasks remembered, so ``wait()`` after ``submit()`` needs no query.
RECENT_RESULTS = 1024


class Event(enum.Enum):
    QUEUE = "a submission asks for a slot"
    WATCH = "an id to follow without a slot"
    SLOT = "a slot was taken"
    GIVE_UP = "given up before anything was sent"
    ANSWER = "the service gave a task id"
    FINISH = "the task ended"
    REFUSE = "the submission failed"
    FAIL = "an error ended it here"
    UNWATCH = "its last watcher left"


TRANSITIONS: Final[Mapping[tuple[Stage | None, Event], Stage]] = {
    (None, Event.QUEUE): Stage.QUEUED,
    (None, Event.WATCH): Stage.FOLLOWED,
    (Stage.QUEUED, Event.SLOT): Stage.SENDING,
    (Stage.QUEUED, Event.GIVE_UP): Stage.DROPPED,
    (Stage.SENDING, Event.ANSWER): Stage.FOLLOWED,
    (Stage.SENDING, Event.FINISH): Stage.DONE,
    (Stage.SENDING, Event.REFUSE): Stage.DROPPED,
    (Stage.SENDING, Event.GIVE_UP): Stage.DROPPED,
    (Stage.FOLLOWED, Event.FINISH): Stage.DONE,
    (Stage.FOLLOWED, Event.FAIL): Stage.DONE,
    (Stage.FOLLOWED, Event.UNWATCH): Stage.DROPPED,
}
# Leaving these gives the slot back (when the task holds one).
_HOLDING = frozenset({Stage.SENDING, Stage.FOLLOWED})


class TrackerError(RuntimeError):
    """A transition the table does not allow: a bug, never the service's doing."""


def advance(stage: Stage | None, event: Event) -> Stage:
    """The stage after ``event``, per ``TRANSITIONS``; ``TrackerError`` if not allowed."""
    try:
        return TRANSITIONS[stage, event]
    except KeyError:
        name = "(new)" if stage is None else stage.name
        raise TrackerError(f"{event.name} is not allowed in stage {name}") from None


class _Waiter(Watch):
    """A coroutine's watch: resolves the future it awaits."""

    __slots__ = ("future",)

    def __init__(self, deadline: float | None, timeout: float | None,
                 future: asyncio.Future[tuple[ImageResult | None, FluxError | None]]) -> None:
        super().__init__(deadline, timeout)
        self.future = future

    def notify(self, result: ImageResult | None, error: FluxError | None) -> None:
        if not self.future.done():
            self.future.set_result((result, error))


class Listener(Protocol):
    """What the tracker tells the poller."""

    def start(self) -> None: ...  # a task is followed: rounds must run
    def wake(self) -> None: ...  # what a sooner notice buys may have changed
    def confirm(self, followed: Followed) -> None: ...  # ask about this task at once


class Tracker:
    """Every followed task of one client, its deadlines and its recent outcomes."""

    def __init__(
        self,
        *,
        give_back: Callable[[], None],
        clock: Callable[[], float] = loop_time,
        schedule: Schedule | None = None,
        directory: Callable[[str, Followed | None], None] | None = None,
        ended: Callable[[Followed], None] | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._give_back = give_back
        self._telemetry = telemetry  # told each task that enters and leaves FOLLOWED
        self._clock = clock
        self._schedule = schedule
        # Told (task id, the Followed) on entering FOLLOWED, (task id, None) on leaving;
        # None in-process, where nobody needs telling.
        self._directory = directory
        # Told each settled task that has a journal entry (its outcome is recorded).
        self._ended = ended
        self.listener: Listener | None = None
        self._followed: dict[str, Followed] = {}
        self.recent: OrderedDict[str, Task] = OrderedDict()
        self.counts = dict.fromkeys(Stage, 0)
        # Parties with a request in hand waiting for room (``map`` at its window):
        # like callers queued for a slot, a sooner notice lets them submit sooner.
        self.hungry = 0
        self.deadlines = (Deadlines(self.expire, clock) if schedule is None
                          else Deadlines(self.expire, clock, schedule))
        self.closed = False

    # --- stages --------------------------------------------------------------------

    def new(self, event: Event, task_id: str = "",
            request: ImageRequest | None = None) -> Followed:
        stage = advance(None, event)
        self.counts[stage] += 1
        followed = Followed(task_id, stage, request)
        if stage is Stage.FOLLOWED:
            self._enter(followed)
        return followed

    def move(self, followed: Followed, event: Event) -> None:
        """Apply ``event``; the slot, the directory and the poller follow the table."""
        old = followed.stage
        new = followed.stage = advance(old, event)
        self.counts[old] -= 1
        self.counts[new] += 1
        if event is Event.SLOT:
            followed.slot = True
        if old is Stage.FOLLOWED:
            if self._followed.get(followed.task_id) is followed:
                del self._followed[followed.task_id]
            self._telemetry.unfollowed(followed)
            if self._directory is not None:
                self._directory(followed.task_id, None)
        if new is Stage.FOLLOWED:
            self._enter(followed)
        if old in _HOLDING and new not in _HOLDING and followed.slot:
            followed.slot = False
            self._give_back()
        if old is Stage.SENDING and self.listener is not None and not self.counts[old]:
            self.listener.wake()  # every slot holder has been answered

    def _enter(self, followed: Followed) -> None:
        followed.since = self._clock()
        self._followed[followed.task_id] = followed
        self._telemetry.followed(followed)
        if self._directory is not None:
            self._directory(followed.task_id, followed)
        if self.listener is not None:
            self.listener.start()

    def answered(self, followed: Followed, task: Task, *, kept: bool,
                 watch: Watch | None) -> bool:
        """The submission of ``followed`` was answered with ``task``; whether it is followed.

        ``watch`` waits for it from now on (told at once if the answer carried the
        result). An id followed already (``wait(id)`` on it) hands its watchers over.
        """
        followed.task_id = task.id
        if task.status is not TaskStatus.PENDING:
            self.remember(task)
            followed.outcome = task
            self.move(followed, Event.FINISH)
            if watch is not None:
                watch.notify(*outcome_of(followed))
            return False
        followed.kept = kept
        known = self._followed.get(task.id)
        if known is not None:
            followed.watches, known.watches = known.watches, None
            for each in followed.watches or ():
                each.followed = followed
            followed.kept = followed.kept or known.kept
            self.move(known, Event.UNWATCH)
        self.move(followed, Event.ANSWER)
        if watch is not None:
            self.watch(followed, watch)
        return True

    # --- lookups (also what a callback's judgement reads) ------------------------------

    def __len__(self) -> int:
        return len(self._followed)

    def now(self) -> float:
        return self._clock()

    def find(self, task_id: str) -> Followed | None:
        return self._followed.get(task_id)

    def finished(self, task_id: str) -> Task | None:
        """The task's final state if it ended here recently."""
        return self.recent.get(task_id)

    def values(self) -> list[Followed]:
        return list(self._followed.values())

    def follow(self, task_id: str) -> Followed:
        """The followed task of ``task_id``, followed from now on if it was not."""
        followed = self._followed.get(task_id)
        return followed if followed is not None else self.new(Event.WATCH, task_id)

    def adopt(self, task_id: str, *, slot: bool) -> Followed:
        """Follow a task adopted from elsewhere, kept until it ends.

        ``slot``: it brings a generation slot (given back when it ends).
        """
        followed = self.follow(task_id)
        followed.kept = followed.adopted = True
        if slot:
            if followed.slot:
                self._give_back()  # it holds one here already (cannot happen): not two
            else:
                followed.slot = True
        return followed

    def confirm(self, task_id: str) -> bool:
        """Have the service asked about a followed task at once; whether it is followed."""
        followed = self._followed.get(task_id)
        if followed is None:
            return False
        if self.listener is not None and not self.closed:
            self.listener.confirm(followed)
        return True

    # --- the settle path ----------------------------------------------------------------

    def resolve(self, task: Task) -> bool:
        """Settle a task from any source (poll, callback, get_task) and remember it.

        Returns whether the task was followed. A pending task changes nothing.
        """
        if task.status is TaskStatus.PENDING:
            return False
        self.remember(task)
        followed = self._followed.get(task.id)
        if followed is None:
            return False
        followed.outcome = task
        self._settle(followed, Event.FINISH)
        return True

    def remember(self, task: Task) -> None:
        recent = self.recent
        recent[task.id] = task
        recent.move_to_end(task.id)
        if len(recent) > RECENT_RESULTS:
            recent.popitem(last=False)

    def fail(self, followed: Followed, error: FluxError) -> None:
        """End a followed task with an error that is not the task's own."""
        followed.outcome = for_task(error, followed.task_id)
        self._settle(followed, Event.FAIL)

    def _settle(self, followed: Followed, event: Event) -> None:
        self.move(followed, event)
        if followed.entry is not None and self._ended is not None:
            try:
                self._ended(followed)
            except Exception:  # the journal's record must not stop the waiters
                log.exception("recording the end of task %s failed", followed.task_id)
        watches, followed.watches = followed.watches, None
        if not watches:
            return
        result, error = outcome_of(followed)
        for watch in watches:
            self._retire(watch)
            try:
                watch.notify(result, error)
            except Exception:  # a waiter's bug must not stop the others
                log.exception("telling a waiter of task %s failed", followed.task_id)

    def close(self, error: FluxError) -> tuple[list[str], list[str]]:
        """Fail everything followed (the client is closing); nothing starts after this.

        Returns the ids of the submitted tasks still running: (adopted, others).
        """
        self.closed = True
        self.deadlines.stop()
        followed = list(self._followed.values())
        adopted = [f.task_id for f in followed if f.request is not None and f.adopted]
        others = [f.task_id for f in followed if f.request is not None and not f.adopted]
        for each in followed:
            self.fail(each, error)
        return adopted, others

    # --- watches and their deadlines ------------------------------------------------------

    def watch(self, followed: Followed, watch: Watch) -> None:
        """``watch`` waits for ``followed`` (which must be FOLLOWED) until its deadline."""
        watch.followed, watch.live = followed, True
        if followed.watches is None:
            followed.watches = [watch]
        else:
            followed.watches.append(watch)
        if watch.deadline is not None and not self.closed:
            self.deadlines.add(watch)

    def unwatch(self, watch: Watch, *, cancelled: bool = False) -> None:
        """``watch`` stops waiting; the task is dropped if nobody else needs it."""
        followed = watch.followed
        if followed is None:
            return
        if cancelled and followed.request is not None:
            # Paid for: say which task, so it can be found (one that resolved just
            # before the cancellation landed is among the recent results).
            state = "may still finish" if watch.live else "had just resolved"
            log.warning("wait cancelled; task %s %s: client.wait(%r)",
                        followed.task_id, state, followed.task_id)
        if watch.live:
            self._retire(watch)
            self._detach(followed, watch)

    def _detach(self, followed: Followed, watch: Watch) -> None:
        watches = followed.watches
        if watches is not None:
            watches.remove(watch)
            if not watches:
                followed.watches = None
        if followed.watches is None and not followed.kept and followed.stage is Stage.FOLLOWED:
            self.move(followed, Event.UNWATCH)

    def _retire(self, watch: Watch) -> None:
        """``watch`` will never be told anything again."""
        watch.live = False
        if watch.deadline is not None:
            self.deadlines.withdrawn()

    def expire(self, now: float) -> int:
        """Tell every watch whose deadline has passed; returns how many were told."""
        due = self.deadlines.due(now)
        for watch in due:  # out of the heap already: not withdrawn, just not live
            watch.live = False
        for watch in due:
            followed = watch.followed
            assert followed is not None
            self._detach(followed, watch)
            try:
                watch.notify(None, TaskTimeoutError(followed.task_id, watch.timeout))
            except Exception:
                log.exception("telling a waiter of task %s failed", followed.task_id)
        return len(due)

    async def wait(self, followed: Followed, deadline: float | None,
                   timeout: float | None) -> ImageResult:
        """Wait for ``followed`` to end (or ``deadline``); its result, or raise its error."""
        if followed.stage is Stage.DONE:
            await anyio.lowlevel.checkpoint()
            result, error = outcome_of(followed)
        else:
            future: asyncio.Future[tuple[ImageResult | None, FluxError | None]] = (
                asyncio.get_running_loop().create_future())
            waiter = _Waiter(deadline, timeout, future)
            self.watch(followed, waiter)
            try:
                result, error = await future
            except BaseException:
                self.unwatch(waiter, cancelled=True)
                raise
        if error is not None:
            raise error
        assert result is not None
        return result

"""The parts a ``FluxClient`` is assembled from, wired together once.

The coordinator gives the slots and the two rate gates; the tracker owns the
followed tasks; the poller asks about them through the task queries; the
launcher takes requests from their slot to the tracker through the submitter.
Two decisions join the parts and live here: when a sooner poll round is worth
its query (``hurry``), and telling a shared coordinator's directory what this
process follows (in the background; ``recorded`` waits for one record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from .._core.callbacks import CallbackBook
from .._core.errors import ClientClosedError, FluxError, NotFoundError
from .._core.journal import lost_body, outcome_body
from .._core.limits import Backoff
from .._core.models import Task
from .._core.settings import ClientSettings
from .._core.wire import unstructure_request
from .coordination import Coordinator, LocalDirectory, TaskDirectory
from .journal import Journal
from .launch import Launcher
from .poller import Poller
from .queries import Post, TaskQueries
from .submission import Submitter
from .telemetry import NO_TELEMETRY, Telemetry
from .tracker import Followed, Stage, Tracker

__all__ = ["Parts"]

log = logging.getLogger("flux_async")

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class Parts:
    """A client's coordinator-backed slots and gates, tracker, poller, queries and launcher."""

    def __init__(self, settings: ClientSettings, coordinator: Coordinator, post: Post,
                 spawn: Spawn, book: CallbackBook, backoff: Backoff, journal: Journal,
                 digest_of: Callable[[str], str | None] = lambda url: None,
                 telemetry: Telemetry = NO_TELEMETRY) -> None:
        s = settings
        # Every API POST goes through here: the telemetry may watch them (or not).
        post = telemetry.observe(post, s.base_url)
        self.coordinator = coordinator
        self.journal = journal
        self.slots = coordinator.slots(s.max_concurrency)
        submit_gate = coordinator.rate_gate(
            "submit", s.submit_rate, s.effective_submit_burst, backoff)
        query_gate = coordinator.rate_gate("query", s.query_rate, s.query_burst, backoff)
        directory = coordinator.directory
        # In-process nobody needs telling: nothing is spent on it.
        self.directory: TaskDirectory | None = (
            None if isinstance(directory, LocalDirectory) else directory)
        self._spawn = spawn
        # task id -> set once its record reached the shared directory
        self._recording: dict[str, anyio.Event] = {}
        self.tracker = Tracker(
            give_back=self.slots.give_back if self.directory is None else self._give_back,
            directory=None if self.directory is None else self._tell_directory,
            ended=self._record_end,
            telemetry=telemetry,
        )
        self.queries = TaskQueries(post, query_gate, backoff, attempts=s.max_retries,
                                   chunk_size=s.batch_size)
        self.poller = Poller(
            self.tracker, self.queries, spawn=spawn, interval=s.poll_interval,
            busy_interval=s.busy_poll_interval, callback_interval=s.callback_poll_interval,
            hurry=self.hurry, not_found_grace=s.not_found_grace,
            shared=None if self.directory is None else self.directory.rounds,
            telemetry=telemetry,
        )
        self.submitter = Submitter(post, submit_gate, backoff, spawn=spawn,
                                   max_retries=s.max_retries,
                                   resend_uncertain=s.resend_uncertain)
        self.launcher = Launcher(self.tracker, self.slots, self.submitter, book, journal,
                                 digest_of=digest_of,
                                 callback_poll_interval=s.callback_poll_interval,
                                 waiting=self.poller.wake,
                                 directory=self.directory,
                                 recorded=None if self.directory is None else self.recorded,
                                 telemetry=telemetry)

    def hurry(self) -> bool:
        """Whether a sooner notice of a finished task buys something now.

        It does when a deadline is near (the result may still beat it), and when
        someone waits for a generation slot (a caller, or ``map`` with more input)
        who could submit at once if one freed: nobody holding a slot is still on
        its way to the service. While slot holders queue on the submission rate, a
        freed slot would only join that queue, so fast rounds would buy nothing.
        """
        tracker = self.tracker
        soonest = tracker.deadlines.earliest()
        if soonest is not None and soonest - tracker.now() < self.poller.interval:
            return True
        if tracker.counts[Stage.SENDING]:
            return False
        return bool(self.slots.waiting or tracker.hungry)

    def _record_end(self, followed: Followed) -> None:
        """A task with a journal entry ended here: record its outcome (queued, not awaited).

        Only the task's own end is recorded: the service's answer, or "not found"
        after the grace. An error of this client (closing, a refused token) ends
        the wait, not the task: its entry stays RUNNING, to be followed again.
        """
        assert followed.entry is not None
        outcome = followed.outcome
        if isinstance(outcome, Task):
            self.journal.ended(followed.entry, outcome_body(outcome), ok=outcome.result is not None)
        elif isinstance(outcome, NotFoundError):
            self.journal.ended(followed.entry, lost_body(followed.task_id, outcome), ok=False)

    def _give_back(self) -> None:
        """A shared slot goes back, unless the client is closing: its task still runs.

        Closing ends the waits, not the tasks. Their slots stay with their records
        for the process that adopts them (``RedisCoordinator.close``).
        """
        if not self.tracker.closed:
            self.slots.give_back()

    def _tell_directory(self, task_id: str, followed: Followed | None) -> None:
        """Tell a shared directory, in the background, that ``task_id`` is followed here or not."""
        directory = self.directory
        assert directory is not None
        if self.tracker.closed:
            return  # still running: left recorded under this process's lease, for adoption
        request = None if followed is None else followed.request
        fields = None if request is None else unstructure_request(request)
        poll = followed is not None and not followed.callbacks

        done = None
        if followed is not None:
            done = self._recording[task_id] = anyio.Event()

        async def tell() -> None:
            try:
                if followed is None:
                    await directory.resolved(task_id)
                else:
                    if await directory.followed(task_id, fields, poll=poll):
                        self.poller.covered(followed)
            except FluxError as exc:
                log.warning("the coordinator could not record task %s: %s", task_id, exc)
            finally:
                if done is not None:
                    done.set()
                    if self._recording.get(task_id) is done:
                        del self._recording[task_id]

        try:
            self._spawn(tell)
        except ClientClosedError:  # stopping: nothing will be written, nobody must wait
            if done is not None:
                done.set()
                self._recording.pop(task_id, None)

    async def recorded(self, task_id: str) -> None:
        """Wait until the shared directory holds ``task_id`` (or gave up trying).

        The directory bounds each attempt by the coordinator's timeout and keeps
        what it could not write for its next renewal, so this never waits long.
        """
        done = self._recording.get(task_id)
        if done is not None:
            await done.wait()

"""One poller per client: asks ``/flux/tasks`` about every followed task, in rounds.

Each round asks ``retrieve_batch`` for up to ``chunk_size`` ids per request, so N
pending tasks cost about N/chunk_size requests a round, not N. A task resolves
in the round that first reports it finished. A failed round (5xx, reset,
timeout, garbled body, 429) changes nothing: the next round asks again. If the
service refuses ``retrieve_batch`` the poller falls back to ``retrieve`` per id
for the rest of the client's life.

Not found is decided in time, not in rounds. A task the service created a
moment ago may not be visible on ``/flux/tasks`` yet, and rounds may come five
times a second: counting rounds would declare paid tasks lost. So for
``not_found_grace`` seconds after an id became known (the submission's answer,
or the start of ``wait(id)``) a missing id or a 404 only means "not yet": it
keeps costing its share of the batch queries, nothing more. After the grace, an
id missing from several answers in a row is asked for alone, and a 404 then
ends its wait with ``TaskNotFoundError``.

The cadence: a round every ``interval``; every ``busy_interval`` only while a
sooner notice buys something (``hurry()``: see ``_cadence``). Tasks submitted
with a callback URL are asked about only every ``callback_interval``, as a
fallback for lost callbacks.

Shared rounds (a fleet's coordinator): a round first claims the fleet's tasks
that no process asked about for this poller's interval, its own among them,
asks about them with its own, and hands each finished task of another process
to that process (``SharedRounds``); answers handed here go through ``pushed``.
Its own tasks that the shared rounds cover (``Followed.shared``) are then asked
about by this process itself only every ``callback_interval``, like tasks with
callbacks: as a fallback.

The poller runs only while something is followed, and stops with the client.
What an answer *means* is decided in ``protocol``/``state``; who waits for a
task and how it settles, in ``tracker``; this module only schedules and routes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import anyio

from .._core import retry
from .._core.errors import (
    APIError,
    AuthenticationError,
    FluxError,
    ForbiddenError,
    InsufficientBalanceError,
    NotFoundError,
)
from .._core.models import TaskStatus
from .._core.protocol import read_task, task_id_of
from .._core.state import classify
from .coordination import SharedRounds
from .queries import TaskQueries
from .telemetry import NO_TELEMETRY, Telemetry
from .tracker import Followed, Tracker

__all__ = ["CLAIM_LIMIT", "DEFAULT_NOT_FOUND_GRACE", "MISSING_ROUNDS", "Poller"]

log = logging.getLogger("flux_async")

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]

# Refusals of a task query that asking again will not change: they end the waits.
_ENDS_WAITS = (AuthenticationError, InsufficientBalanceError, ForbiddenError)
# After the grace, this many answers in a row without an id: ask for that id alone.
MISSING_ROUNDS = 3
# Seconds a known task id may stay unknown to /flux/tasks before it is declared lost.
# Generous: the cost of waiting is a few free batch slots; the cost of giving up
# is a paid task nobody collects (and often a second one paid to replace it).
DEFAULT_NOT_FOUND_GRACE = 300.0
# Most tasks a shared round claims (the rest are due next round): 40 batch queries.
CLAIM_LIMIT = 2000


class Poller:
    """Follows the tracker's tasks until they resolve; see the module docstring."""

    def __init__(
        self,
        tracker: Tracker,
        queries: TaskQueries,
        *,
        spawn: Spawn,
        interval: float,
        busy_interval: float,
        callback_interval: float,
        hurry: Callable[[], bool],
        not_found_grace: float = DEFAULT_NOT_FOUND_GRACE,
        clock: Callable[[], float] = anyio.current_time,
        shared: SharedRounds | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._tracker = tracker
        self._telemetry = telemetry
        self._queries = queries
        self._spawn = spawn
        self.interval = interval
        self.busy_interval = busy_interval
        self.callback_interval = callback_interval
        self._hurry = hurry
        self.not_found_grace = not_found_grace
        self._clock = clock
        self._running = False
        self._wakeup = anyio.Event()
        self.rounds = 0
        tracker.listener = self
        self._shared = shared
        # this round's claimed tasks that other processes follow: id -> owner
        self._foreign: dict[str, str] = {}
        if shared is not None:
            shared.deliver_to(self.pushed)

    @property
    def closed(self) -> bool:
        return self._tracker.closed

    # --- what the tracker tells it -----------------------------------------------

    def start(self) -> None:
        """A task is followed: make sure rounds run."""
        if not self._running and not self.closed:
            self._running = True
            self._spawn(self._run)

    def wake(self) -> None:
        """What a sooner notice buys may have changed: re-evaluate the next round's time."""
        self._wakeup.set()

    def confirm(self, followed: Followed) -> None:
        """Ask the service about one followed task at once (a callback hinted it ended).

        One query of that task alone, free; its answer decides, as any round's
        would. At most one such query per task is under way at a time.
        """
        if not followed.confirming:
            followed.confirming = True
            self._spawn(lambda: self._confirm(followed))

    async def _confirm(self, followed: Followed) -> None:
        try:
            await self._poll_one(followed.task_id)
        finally:
            followed.confirming = False

    def covered(self, followed: Followed) -> None:
        """The fleet's shared rounds ask about ``followed`` now: here, a fallback only."""
        followed.shared = True
        followed.not_before = max(followed.not_before, self._clock() + self.callback_interval)

    def pushed(self, task_id: str, item: Mapping[str, Any]) -> None:
        """Another process's round got this answer about a task followed here."""
        if self._tracker.find(task_id) is not None:  # never handed on again
            self._read(task_id, item)

    def lost(self, followed: Followed, now: float) -> bool:
        """Whether a followed id that the service does not know may be declared lost."""
        return now - followed.since >= self.not_found_grace

    # --- rounds ----------------------------------------------------------------

    def next_interval(self) -> float:
        return self.busy_interval if self._hurry() else self.interval

    async def _run(self) -> None:
        tracker = self._tracker
        try:
            last_round = anyio.current_time()
            while len(tracker) and not self.closed:
                remaining = last_round + self.next_interval() - anyio.current_time()
                if remaining > 0:
                    # Sleep, but let wake() cut it short: what a sooner notice buys
                    # changes as slots free and callers queue.
                    self._wakeup = anyio.Event()
                    with anyio.move_on_after(remaining):
                        await self._wakeup.wait()
                    continue
                last_round = now = anyio.current_time()
                due = [f.task_id for f in tracker.values() if f.not_before <= now]
                if self._shared is not None:
                    due = await self._claim(due)
                if due:
                    with self._telemetry.polling(due):  # the round's queries run inside
                        await self.round(due, now)
        finally:
            self._running = False

    async def _claim(self, due: list[str]) -> list[str]:
        """``due`` and the fleet's tasks this round claims (see the module docstring)."""
        assert self._shared is not None
        try:
            claimed = await self._shared.claim(self.next_interval() * 0.9, CLAIM_LIMIT)
        except FluxError as exc:
            log.debug("no shared round (%s): asking about this process's tasks only", exc)
            return due
        find = self._tracker.find
        self._foreign = {task_id: owner for task_id, owner in claimed if find(task_id) is None}
        return list(dict.fromkeys([*due, *(task_id for task_id, _ in claimed)]))

    async def round(self, due: list[str], now: float) -> None:
        """Ask about every id of ``due`` (batches, or one by one after a refusal)."""
        self.rounds += 1
        tracker = self._tracker
        for task_id in due:
            followed = tracker.find(task_id)
            # A callback, or the fleet's shared rounds, will tell: asked here as a fallback.
            if followed is not None and (followed.callbacks or followed.shared):
                followed.not_before = now + self.callback_interval
        if self._queries.batch_supported:
            size = self._queries.chunk_size
            async with anyio.create_task_group() as group:
                for start in range(0, len(due), size):
                    group.start_soon(self._poll_chunk, due[start : start + size])
        if not self._queries.batch_supported:
            async with anyio.create_task_group() as group:
                for task_id in due:
                    if tracker.find(task_id) is not None:
                        group.start_soon(self._poll_one, task_id)
        now = self._clock()
        lost = [
            f.task_id for f in tracker.values()
            if f.missing >= MISSING_ROUNDS and self.lost(f, now)
        ]
        if lost:
            async with anyio.create_task_group() as group:
                for task_id in lost:
                    group.start_soon(self._poll_one, task_id)

    async def _transient(self, exc: FluxError, ticket: int) -> bool:
        """Whether a failed query is to be asked again next round (a 429 pauses the gate)."""
        return await retry.again_next_round(retry.QUERY, exc, self._queries.gate, ticket)

    def _fail_all(self, task_ids: Sequence[str], error: FluxError) -> None:
        for task_id in task_ids:
            followed = self._tracker.find(task_id)
            if followed is not None:
                self._tracker.fail(followed, error)

    async def _poll_chunk(self, task_ids: list[str]) -> None:
        queries = self._queries
        ticket = await queries.gate.acquire()
        try:
            items = await queries.fetch_batch(task_ids)
        except FluxError as exc:
            if await self._transient(exc, ticket):
                return
            if isinstance(exc, _ENDS_WAITS):
                self._fail_all(task_ids, exc)
            elif isinstance(exc, APIError) and queries.batch_supported:
                # The action itself is refused (not implemented here): ask per id.
                log.warning("retrieve_batch refused (%s); falling back to retrieve", exc)
                queries.batch_supported = False
            return
        queries.gate.succeeded()
        seen: set[str] = set()
        for item in items:
            task_id = task_id_of(item)
            if task_id is not None:
                seen.add(task_id)
                self._read(task_id, item)
        for task_id in task_ids:
            followed = self._tracker.find(task_id)
            if followed is not None:
                followed.missing = 0 if task_id in seen else followed.missing + 1

    async def _poll_one(self, task_id: str) -> None:
        queries = self._queries
        ticket = await queries.gate.acquire()
        try:
            item = await queries.fetch_one(task_id)
        except FluxError as exc:
            if await self._transient(exc, ticket):
                return
            followed = self._tracker.find(task_id)
            if followed is None:
                return
            if isinstance(exc, NotFoundError):
                if self.lost(followed, self._clock()):
                    self._tracker.fail(followed, exc)
                else:  # not visible yet: the task exists, it is not lost
                    followed.missing += 1
            elif isinstance(exc, _ENDS_WAITS):
                self._tracker.fail(followed, exc)
            return
        queries.gate.succeeded()
        followed = self._tracker.find(task_id)
        if followed is not None:
            followed.missing = 0
        self._read(task_id, item)

    def _read(self, task_id: str, item: Mapping[str, Any]) -> None:
        followed = self._tracker.find(task_id)
        if followed is None:
            owner = self._foreign.get(task_id)
            if owner is not None and classify(item) is not TaskStatus.PENDING:
                assert self._shared is not None
                self._shared.hand_over(owner, task_id, item)
            return
        status = classify(item)
        if status is TaskStatus.PENDING:
            # Most answers in a round: decided without building any model.
            return
        try:
            task = read_task(item, status=status)
        except FluxError as exc:
            self._tracker.fail(followed, exc)
            return
        self._tracker.resolve(task)

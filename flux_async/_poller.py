"""One poller per client: follows every pending task through ``/flux/tasks``.

Each round asks ``retrieve_batch`` for up to ``chunk_size`` ids per request, so N
pending tasks cost about N/chunk_size requests a round, not N. A task resolves
in the round that first reports it finished. A failed round (5xx, reset,
timeout, garbled body, 429) changes nothing: the next round asks again. If the
service refuses ``retrieve_batch`` the poller falls back to ``retrieve`` per id
for the rest of the client's life.

Not found is decided in time, not in rounds. A task the service created a
moment ago may not be visible on ``/flux/tasks`` yet, and a round comes every
0.2 s when busy: counting rounds would declare paid tasks lost. So for
``not_found_grace`` seconds after an id became known (the submission's answer,
or the start of ``wait(id)``) a missing id or a 404 only means "not yet": it
keeps costing its share of the batch queries, nothing more. After the grace, an
id missing from several answers in a row is asked for alone, and a 404 then
ends its wait with ``TaskNotFoundError``.

Every error that ends a wait carries its task id: an error that ends several
(a refused token) is bound to each task separately (``_errors._TaskBound``).

The poller runs only while something is followed, and stops with the client.
What an answer *means* is decided in ``_protocol``/``_state``; this module only
schedules and routes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import anyio

from ._done import Done
from ._errors import (
    APIError,
    AuthenticationError,
    ClientClosedError,
    FluxError,
    ForbiddenError,
    InsufficientBalanceError,
    NotFoundError,
    RateLimitError,
    ServerError,
    TransportError,
    for_task,
)
from ._limits import RateLimiter
from ._models import ImageRequest, Task, TaskStatus
from ._protocol import read_task, task_id_of
from ._state import classify

__all__ = ["DEFAULT_NOT_FOUND_GRACE", "Done", "Entry", "Poller"]

log = logging.getLogger("flux_async")

FetchBatch = Callable[[Sequence[str]], Awaitable[list[Mapping[str, Any]]]]
FetchOne = Callable[[str], Awaitable[Mapping[str, Any]]]
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]

# Refusals of a task query that asking again will not change: they end the waits.
_ENDS_WAITS = (AuthenticationError, InsufficientBalanceError, ForbiddenError)
# After the grace, this many answers in a row without an id: ask for that id alone.
MISSING_ROUNDS = 3
# Seconds a known task id may stay unknown to /flux/tasks before it is declared lost.
# Generous: the cost of waiting is a few free batch slots; the cost of giving up
# is a paid task nobody collects (and often a second one paid to replace it).
DEFAULT_NOT_FOUND_GRACE = 300.0
# Finished tasks remembered, so ``wait()`` after ``submit()`` needs no query.
RECENT_RESULTS = 1024


class Entry:
    """One followed task: who waits for it and, once known, how it ended.

    ``background`` entries (from ``submit``) are followed even with no waiter
    until they resolve, because they hold a concurrency slot; the others are
    dropped when their last waiter leaves. ``release`` runs exactly once, when
    the entry leaves the poller. ``on_settle`` callbacks run once, right after
    ``done`` is set: they let ``map`` follow thousands of tasks without a
    coroutine parked per task.
    """

    __slots__ = (
        "background",
        "callback_nonce",
        "confirming",
        "done",
        "error",
        "missing",
        "not_before",
        "on_settle",
        "recheck",
        "release",
        "request",
        "since",
        "task",
        "task_id",
        "waiters",
    )

    def __init__(self, task_id: str, since: float = 0.0) -> None:
        self.task_id = task_id
        self.since = since  # when the id became known: the not-found grace starts here
        self.confirming = False  # a query of this task alone is under way (a callback's hint)
        self.waiters = 0
        self.background = False
        self.not_before = 0.0  # loop time before which rounds skip it (callback mode)
        self.recheck: float | None = None  # interval between polls in callback mode
        self.missing = 0
        self.release: Callable[[], None] | None = None
        self.done = Done()
        self.task: Task | None = None
        self.error: FluxError | None = None
        # What this client submitted for the task (None when only waited on), and the
        # nonce of the callback token issued with it: callbacks are checked against both.
        self.request: ImageRequest | None = None
        self.callback_nonce: str | None = None
        self.on_settle: list[Callable[[Entry], None]] | None = None  # allocated when used

    @property
    def followed(self) -> bool:
        return self.waiters > 0 or self.background


class Poller:
    """Follows entries until they resolve; see the module docstring."""

    def __init__(
        self,
        *,
        fetch_batch: FetchBatch,
        fetch_one: FetchOne,
        limiter: RateLimiter,
        spawn: Spawn,
        interval: float,
        busy_interval: float,
        is_busy: Callable[[], bool],
        chunk_size: int,
        not_found_grace: float = DEFAULT_NOT_FOUND_GRACE,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._fetch_batch = fetch_batch
        self._fetch_one = fetch_one
        self._limiter = limiter
        self._spawn = spawn
        self.interval = interval
        self.busy_interval = busy_interval
        self._is_busy = is_busy
        self.chunk_size = chunk_size
        self.not_found_grace = not_found_grace
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self.recent: OrderedDict[str, Task] = OrderedDict()
        self._running = False
        self._wakeup = anyio.Event()
        self.batch_supported = True
        self.rounds = 0
        self.closed = False

    # --- bookkeeping -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, task_id: str) -> Entry:
        """The entry for ``task_id``, created (and the poller started) if new."""
        entry = self._entries.get(task_id)
        if entry is None:
            entry = self._entries[task_id] = Entry(task_id, self._clock())
        if not self._running and not self.closed:
            self._running = True
            self._spawn(self._run)
        return entry

    def find(self, task_id: str) -> Entry | None:
        """The entry of a task being followed, if any (nothing is created)."""
        return self._entries.get(task_id)

    def leave(self, entry: Entry) -> None:
        """A waiter stopped waiting; drop the entry if nobody needs it any more."""
        entry.waiters -= 1
        if not entry.followed and not entry.done.is_set():
            self._finish(entry)

    def _finish(self, entry: Entry) -> None:
        if self._entries.get(entry.task_id) is entry:
            del self._entries[entry.task_id]
        release, entry.release = entry.release, None
        if release is not None:
            release()

    def resolve(self, task: Task) -> bool:
        """Settle a task from any source (poll, callback, get_task) and remember it.

        Returns whether the task was followed. A pending task changes nothing.
        """
        if task.status is TaskStatus.PENDING:
            return False
        self.recent[task.id] = task
        self.recent.move_to_end(task.id)
        if len(self.recent) > RECENT_RESULTS:
            self.recent.popitem(last=False)
        entry = self._entries.get(task.id)
        if entry is None:
            return False
        entry.task = task
        self._settle(entry)
        return True

    def fail(self, entry: Entry, error: FluxError) -> None:
        """End an entry with an error that is not the task's own (404, bad token...)."""
        entry.error = for_task(error, entry.task_id)
        self._settle(entry)

    def _settle(self, entry: Entry) -> None:
        self._finish(entry)
        entry.done.set()
        callbacks, entry.on_settle = entry.on_settle, None
        for callback in callbacks or ():
            try:
                callback(entry)
            except Exception:  # a callback's bug must not stop the poller for everyone
                log.exception("a settle callback of task %s failed", entry.task_id)

    def close(self, error: ClientClosedError) -> list[str]:
        """Fail every entry (the client is closing); no round starts after this.

        Each waiter gets its own ``TaskClosedError`` naming its task. Returns the
        ids of the tasks this client submitted that had not resolved.
        """
        self.closed = True
        unresolved = [e.task_id for e in self._entries.values() if e.request is not None]
        for entry in list(self._entries.values()):
            self.fail(entry, error)
        return unresolved

    def lost(self, entry: Entry, now: float) -> bool:
        """Whether a followed id that the service does not know may be declared lost."""
        return now - entry.since >= self.not_found_grace

    def confirm(self, task_id: str) -> bool:
        """Ask the service about a followed task right away (a callback hinted it ended).

        One query of that task alone, free; its answer decides, as any round's
        would. Returns whether the task is followed. At most one such query per
        task is under way at a time, so repeated hints cost nothing more.
        """
        entry = self._entries.get(task_id)
        if entry is None:
            return False
        if not entry.confirming and not self.closed:
            entry.confirming = True
            self._spawn(lambda: self._confirm(entry))
        return True

    async def _confirm(self, entry: Entry) -> None:
        try:
            await self._poll_one(entry.task_id)
        finally:
            entry.confirming = False

    # --- rounds ----------------------------------------------------------------

    def wake(self) -> None:
        """Busyness may have changed: re-evaluate the time until the next round now."""
        self._wakeup.set()

    async def _run(self) -> None:
        try:
            last_round = anyio.current_time()
            while self._entries and not self.closed:
                interval = self.busy_interval if self._is_busy() else self.interval
                remaining = last_round + interval - anyio.current_time()
                if remaining > 0:
                    # Sleep, but let wake() cut it short: busyness measured right
                    # after a round (which just freed slots) goes stale quickly.
                    self._wakeup = anyio.Event()
                    with anyio.move_on_after(remaining):
                        await self._wakeup.wait()
                    continue
                last_round = now = anyio.current_time()
                due = [
                    e.task_id
                    for e in self._entries.values()
                    if e.followed and e.not_before <= now
                ]
                if due:
                    await self._round(due, now)
        finally:
            self._running = False

    async def _round(self, due: list[str], now: float) -> None:
        self.rounds += 1
        for task_id in due:
            entry = self._entries.get(task_id)
            if entry is not None and entry.recheck is not None:
                entry.not_before = now + entry.recheck
        if self.batch_supported:
            size = self.chunk_size
            chunks = [due[i : i + size] for i in range(0, len(due), size)]
            async with anyio.create_task_group() as group:
                for chunk in chunks:
                    group.start_soon(self._poll_chunk, chunk)
        if not self.batch_supported:
            async with anyio.create_task_group() as group:
                for task_id in due:
                    if task_id in self._entries:
                        group.start_soon(self._poll_one, task_id)
        now = self._clock()
        lost = [
            e.task_id
            for e in self._entries.values()
            if e.missing >= MISSING_ROUNDS and self.lost(e, now)
        ]
        if lost:
            async with anyio.create_task_group() as group:
                for task_id in lost:
                    group.start_soon(self._poll_one, task_id)

    def _transient(self, exc: FluxError, ticket: int) -> bool:
        """Whether a failed query is to be asked again next round (and note 429s)."""
        if isinstance(exc, RateLimitError):
            pause = self._limiter.penalize(exc.retry_after, anyio.current_time(), ticket)
            log.warning("task queries rate-limited (HTTP 429); pausing them %.1fs", pause)
            return True
        if isinstance(exc, (TransportError, ServerError)):
            log.info("task query failed, asking again next round: %s", exc)
            return True
        return False

    def _fail_all(self, task_ids: Sequence[str], error: FluxError) -> None:
        for task_id in task_ids:
            entry = self._entries.get(task_id)
            if entry is not None:
                self.fail(entry, error)

    async def _poll_chunk(self, task_ids: list[str]) -> None:
        ticket = await self._limiter.acquire()
        try:
            items = await self._fetch_batch(task_ids)
        except FluxError as exc:
            if self._transient(exc, ticket):
                return
            if isinstance(exc, _ENDS_WAITS):
                self._fail_all(task_ids, exc)
            elif isinstance(exc, APIError) and self.batch_supported:
                # The action itself is refused (not implemented here): ask per id.
                log.warning("retrieve_batch refused (%s); falling back to retrieve", exc)
                self.batch_supported = False
            return
        self._limiter.succeeded()
        seen: set[str] = set()
        for item in items:
            task_id = task_id_of(item)
            if task_id is not None:
                seen.add(task_id)
                self._read(task_id, item)
        for task_id in task_ids:
            entry = self._entries.get(task_id)
            if entry is not None:
                entry.missing = 0 if task_id in seen else entry.missing + 1

    async def _poll_one(self, task_id: str) -> None:
        ticket = await self._limiter.acquire()
        try:
            item = await self._fetch_one(task_id)
        except FluxError as exc:
            if self._transient(exc, ticket):
                return
            entry = self._entries.get(task_id)
            if entry is None:
                return
            if isinstance(exc, NotFoundError):
                if self.lost(entry, self._clock()):
                    self.fail(entry, exc)
                else:  # not visible yet: the task exists, it is not lost
                    entry.missing += 1
            elif isinstance(exc, _ENDS_WAITS):
                self.fail(entry, exc)
            return
        self._limiter.succeeded()
        entry = self._entries.get(task_id)
        if entry is not None:
            entry.missing = 0
        self._read(task_id, item)

    def _read(self, task_id: str, item: Mapping[str, Any]) -> None:
        entry = self._entries.get(task_id)
        if entry is None or classify(item) is TaskStatus.PENDING:
            # Most answers in a round: decided without building any model.
            return
        try:
            task = read_task(item)
        except FluxError as exc:
            self.fail(entry, exc)
            return
        self.resolve(task)



"""Two asyncio primitives, cheaper than anyio's, for what every request pays.

``Done``: the one-shot flag every pending task's entry holds. ``Flights``: the
submissions of one ``map``, as bare asyncio tasks run as one group. Both keep
anyio's semantics where they matter (a checkpoint on a flag already set;
level-triggered cancellation of a run) at a fraction of the memory and CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["Done", "Flights"]


class Done:
    """A one-shot flag to wait on, as ``anyio.Event`` (``set``/``is_set``/``wait``), but small.

    Every pending task holds one. An ``anyio.Event`` (an ``asyncio.Event`` and its
    deque) takes about 1 KB before anyone waits: 10 MB at 10,000 pending tasks.
    This takes under 60 bytes, plus one future per waiter while it waits. As with
    anyio, ``wait()`` on a flag already set still yields once (a checkpoint).
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for future in waiters or ():
            if not future.done():
                future.set_result(None)

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        future = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [future]
        else:
            self._waiters.append(future)
        try:
            await future
        except BaseException:
            if self._waiters is not None and future in self._waiters:  # cancelled
                self._waiters.remove(future)
            raise


class Flights:
    """The submissions of one ``map``: bare asyncio tasks, stopped and awaited as one.

    Not an anyio task group: since anyio 4.10 each of its tasks carries a cancel
    scope and an event of its own, about a tenth of the client's CPU per request
    in a 1,000-task job. The run needs less. Every ``FluxError`` is delivered by
    the task itself, so a task that raises is a bug: ``on_error`` stops the run.
    ``stop`` cancels every task left and waits for all of them, cancelling again
    while any is left (as a cancelled anyio scope does: cancellation is level-
    triggered there, so a task cannot outlive its run by swallowing one).
    """

    __slots__ = ("_idle", "_on_error", "_tasks", "error")

    def __init__(self, on_error: Callable[[], None]) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: asyncio.Future[None] | None = None
        self._on_error = on_error
        self.error: BaseException | None = None  # the first bug a task raised

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            exc = task.exception()  # retrieved here: asyncio logs none unread
            if exc is not None and self.error is None:
                self.error = exc
                self._on_error()
        if not self._tasks and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def wait(self) -> None:
        """Return once every task has ended."""
        while self._tasks:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle

    async def stop(self) -> None:
        """Cancel every task and wait for each to end (call shielded)."""
        while self._tasks:
            self.cancel()
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)

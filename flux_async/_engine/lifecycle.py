"""A client's life: one ``ClientState``, and the background tasks it owns.

Background work (poll rounds, ``map`` runs, paid POSTs on the wire) runs in
tasks the client owns, started with asyncio's ``create_task`` and kept in a set:
closing cancels them and waits for every one, so nothing outlives the client.
Not an anyio task group: starting a task in one costs several times as much
(a ``TaskHandle`` with its own cancel scope and event, per paid submission), and
the tasks are not the caller's, so a web app may open the client in one task
and close it in another, as aiohttp's ``cleanup_ctx`` may. The work itself uses
anyio (cancel scopes, task groups) as everywhere else.

Also here: which running clients use each coordinator, so that the last one to
close closes it (several clients may share one).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio

from .._core.errors import ClientClosedError, CoordinationError
from .coordination import Coordinator

__all__ = ["ClientState", "Lifecycle", "hold", "release"]

log = logging.getLogger("flux_async")


class ClientState(enum.Enum):
    NEW = "built; nothing started"
    STARTING = "first use: the coordinator and the background group are starting"
    RUNNING = "running"
    CLOSING = "aclose() under way: nothing new starts"
    CLOSED = "closed"


class Lifecycle:
    """The state of one client and its background tasks."""

    def __init__(self) -> None:
        self.state = ClientState.NEW
        self._started: anyio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def closed(self) -> bool:
        return self.state in (ClientState.CLOSING, ClientState.CLOSED)

    async def start(self, first_use: Callable[[], Awaitable[None]]) -> None:
        """Run ``first_use`` once (callers meanwhile wait); then the client runs."""
        while self.state is not ClientState.RUNNING:
            if self.closed:
                raise ClientClosedError("this FluxClient is closed")
            if self.state is ClientState.STARTING:
                assert self._started is not None
                await self._started.wait()
                continue
            self.state, started = ClientState.STARTING, anyio.Event()
            self._started = started
            try:
                await first_use()
            except BaseException:
                self.state = ClientState.NEW  # e.g. CoordinationError: may be tried again
                raise
            else:
                if self.state is ClientState.STARTING:
                    self.state = ClientState.RUNNING
            finally:
                started.set()

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``fn()`` in a task of the client's (until it ends or the client stops)."""
        if self._stopped or self.state is ClientState.NEW:
            raise ClientClosedError("this FluxClient is closed")
        task = asyncio.get_running_loop().create_task(fn())
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug: nothing spawned here raises on purpose.
            log.error("background work of the client failed", exc_info=task.exception())

    def begin_closing(self) -> bool:
        """Enter CLOSING; False if closing had begun already."""
        if self.closed:
            return False
        self.state = ClientState.CLOSING
        return True

    async def stop(self) -> None:
        """Cancel the background tasks and wait for every one (call shielded)."""
        self._stopped = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        self.state = ClientState.CLOSED


# The running clients of each coordinator: the last to close closes it.
_USERS: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()


def hold(coordinator: Coordinator, client: object) -> None:
    _USERS.setdefault(coordinator, set()).add(id(client))


async def release(coordinator: Coordinator, client: object) -> None:
    """``client`` is done with ``coordinator``; the last client to go closes it."""
    users = _USERS.get(coordinator, set())
    users.discard(id(client))
    if users:
        return
    try:
        await coordinator.close()
    except CoordinationError as exc:
        log.warning("closing the coordinator failed: %s", exc)

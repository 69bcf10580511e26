"""A client's life: one ``ClientState``, and the task group its background work runs in.

Background work (poll rounds, ``map`` runs, paid POSTs on the wire) lives in one
anyio task group hosted by a supervisor task started on first use; stopping
cancels the group and waits for it, so nothing outlives the client. Hosting the
group in a task of its own (asyncio's ``create_task``: anyio has no way to start a
task outside a group) lets a web app open the client in one task and close it in
another, as aiohttp's ``cleanup_ctx`` may.

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
import anyio.abc

from ._coordination import Coordinator
from ._errors import ClientClosedError, CoordinationError

__all__ = ["ClientState", "Lifecycle", "hold", "release"]

log = logging.getLogger("flux_async")


class ClientState(enum.Enum):
    NEW = "built; nothing started"
    STARTING = "first use: the coordinator and the background group are starting"
    RUNNING = "running"
    CLOSING = "aclose() under way: nothing new starts"
    CLOSED = "closed"


class Lifecycle:
    """The state of one client and its background task group."""

    def __init__(self) -> None:
        self.state = ClientState.NEW
        self._started: anyio.Event | None = None
        self._stopping = anyio.Event()
        self._group: anyio.abc.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self.state in (ClientState.CLOSING, ClientState.CLOSED)

    async def start(self, first_use: Callable[[], Awaitable[None]]) -> None:
        """Run ``first_use`` once (callers meanwhile wait), then start the group."""
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
                started.set()
                raise
            ready = anyio.Event()
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(ready))
            await ready.wait()
            started.set()

    async def _supervise(self, ready: anyio.Event) -> None:
        async with anyio.create_task_group() as group:
            self._group = group
            if self.state is ClientState.STARTING:
                self.state = ClientState.RUNNING
            ready.set()
            await self._stopping.wait()
            group.cancel_scope.cancel()
        self._group = None

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._group is None:
            raise ClientClosedError("this FluxClient is closed")
        self._group.start_soon(fn)

    def begin_closing(self) -> bool:
        """Enter CLOSING; False if closing had begun already."""
        if self.closed:
            return False
        self.state = ClientState.CLOSING
        return True

    async def stop(self) -> None:
        """Cancel the background group and wait for it (call shielded)."""
        self._stopping.set()
        if self._supervisor is not None:
            await self._supervisor
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

"""What ``flux_async.sync`` runs on: an event loop in a thread, and blocking calls into it.

A ``Loop`` is one daemon thread running asyncio, hosting an anyio ``BlockingPortal``
and the async ``FluxClient`` (built there: its aiohttp session belongs to that loop).
Every blocking call is one task in the portal, so calls from many threads run
concurrently and share the client's limits. A caller interrupted while it waits
(Ctrl-C) cancels its task; ``close()`` closes the client, then cancels whatever
still runs (those callers get ``ClientClosedError``) and joins the thread.

The thread is a daemon of our own rather than ``start_blocking_portal``'s context
manager because a client's life is not a ``with`` block in one place (a module-level
client in a web app), and a non-daemon thread (older anyio runs the portal in an
executor thread) keeps the interpreter from exiting when a client is never closed:
interpreter exit joins such threads before ``atexit`` could close them. Here
``atexit`` closes every open loop while its daemon thread still runs.

A process forked from one with a loop (gunicorn ``--preload``, multiprocessing)
does not inherit the thread: its ``Loop`` copies are dead, refuse calls and close
without waiting on anything.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import queue
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any, Final, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .._core.errors import ClientClosedError
from .._core.models import ImageRequest, Outcome
from .._engine.map import MapEvent
from .client import FluxClient as AsyncFluxClient

__all__ = ["Loop", "StartMap", "iterate_map"]

T = TypeVar("T")

# Starts the async map over a feed of requests, with a progress hook or None.
StartMap = Callable[
    [AsyncIterator[ImageRequest], Callable[[MapEvent], None] | None],
    AsyncGenerator[Outcome, None],
]

_OPEN: set[Loop] = set()
_OPEN_LOCK = threading.Lock()


class Loop:
    """An event loop in a daemon thread, and the async client that lives on it."""

    def __init__(self, make_client: Callable[[], AsyncFluxClient], *, name: str) -> None:
        self.pid = os.getpid()
        self._calls: set[anyio.CancelScope] = set()
        self._idle: anyio.Event | None = None
        self._lock = threading.RLock()
        self._closed = False
        self._stopper: asyncio.Task[None] | None = None
        ready: Future[BlockingPortal] = Future()
        self.thread = threading.Thread(target=self._main, args=(ready,), name=name, daemon=True)
        self.thread.start()
        self._portal = ready.result()
        try:
            # Built on the loop; its validation errors reach the caller unchanged.
            self.client = self._portal.call(make_client)
        except BaseException:
            self._closed = True
            self._stop()
            raise
        with _OPEN_LOCK:
            _OPEN.add(self)

    def _main(self, ready: Future[BlockingPortal]) -> None:
        async def host() -> None:
            async with BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        try:
            anyio.run(host, backend="asyncio")
        except BaseException as exc:
            if ready.done():
                raise
            ready.set_exception(exc)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    # --- calls ---------------------------------------------------------------------

    def start(self, fn: Callable[[], Awaitable[T]]) -> Future[T]:
        """Start ``fn()`` as a task in the portal; its future."""
        if self.pid != os.getpid():  # checked first: a fork may have copied a held lock
            raise ClientClosedError("this FluxClient's event loop stayed in the parent "
                                    "process (the process was forked)")
        with self._lock:
            if self._closed:
                raise ClientClosedError("this FluxClient is closed")
            return self._portal.start_task_soon(self._tracked, fn)

    @property
    def active(self) -> int:
        """Calls running on the loop now."""
        return len(self._calls)

    async def _tracked(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self._closed:  # started just before close(): never begun
            raise ClientClosedError("this FluxClient is closed")
        with anyio.CancelScope() as scope:
            self._calls.add(scope)
            try:
                return await fn()
            finally:
                self._calls.discard(scope)
                if not self._calls and self._idle is not None:
                    self._idle.set()
        raise ClientClosedError("the FluxClient was closed while waiting")  # close() cancelled it

    def result(self, future: Future[T]) -> T:
        """Wait for a call's outcome in this thread; an interruption cancels the call."""
        try:
            return future.result()
        except CancelledError:
            if self._closed:
                raise ClientClosedError("the FluxClient was closed while waiting") from None
            raise
        finally:
            if not future.done():
                # Interrupted here (Ctrl-C): the call's coroutine must not run on.
                future.cancel()

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` on the loop and wait for it; exceptions come back unchanged."""
        return self.result(self.start(fn))

    def call_sync(self, fn: Callable[[], T]) -> T:
        """Run plain ``fn()`` in the loop thread (where the client's state may be touched)."""

        async def run() -> T:
            return fn()

        return self.call(run)

    # --- closing -------------------------------------------------------------------

    def close(self) -> None:
        """Close the client, cancel the calls still running, stop and join the thread."""
        if self.pid != os.getpid():  # forked: no thread here to stop, locks may be held
            self._closed = True
            _OPEN.discard(self)
            return
        with self._lock:
            already, self._closed = self._closed, True
        with _OPEN_LOCK:
            _OPEN.discard(self)
        if self.on_loop_thread:
            # Dropped by code running on the loop itself: nothing here may block.
            if not already:
                self._stopper = asyncio.get_running_loop().create_task(self._close_here())
            return
        if not already:
            try:
                self._portal.call(self._shutdown)
            finally:
                self._stop()
        self.thread.join()

    async def _shutdown(self) -> None:
        # Calls first, then the client: closing the client first would hand a freed
        # slot to a call queued for one, which would then submit (and pay) during
        # close. A submission already on the wire is shielded in the client: it
        # completes, its task id is logged, then its cancellation takes effect.
        if self._calls:
            self._idle = anyio.Event()
            for scope in list(self._calls):
                scope.cancel()
            await self._idle.wait()
        await self.client.aclose()

    async def _close_here(self) -> None:
        await self._shutdown()
        await self._portal.stop(cancel_remaining=True)

    def _stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # stopped already
            self._portal.call(self._portal.stop, True)
        self.thread.join()


def _after_fork() -> None:
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_after_fork)


@atexit.register
def _close_all() -> None:
    """At interpreter exit, close the clients nobody closed (their threads still run)."""
    with _OPEN_LOCK:
        loops = list(_OPEN)
    for loop in loops:
        loop.close()


# --- map ------------------------------------------------------------------------------

_NEED: Final = "need"  # the loop wants the next request
_EVENT: Final = "event"  # a MapEvent for on_event
_DONE: Final = "done"  # a step's future finished
_END = object()  # the input is exhausted


class _Failed:
    """Reading the input raised: the map raises it, as the async map does."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Driver:
    """The loop's end of one blocking map (built, stepped and closed on the loop)."""

    def __init__(self, inbox: queue.SimpleQueue[tuple[str, Any]], start: StartMap,
                 events: bool) -> None:
        self._inbox = inbox
        self._lock = anyio.Lock()  # a step and the close never overlap
        self._answered: anyio.Event | None = None
        self._answer: object = None
        self._outcomes = start(self._feed(), self._event if events else None)

    async def _feed(self) -> AsyncIterator[ImageRequest]:
        # Each request is read by the caller's thread, when the async map asks for it.
        while True:
            self._answered = anyio.Event()
            self._inbox.put((_NEED, None))
            await self._answered.wait()
            item, self._answer = self._answer, None
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]  # the caller's item, checked by the map

    def answer(self, item: object) -> None:
        assert self._answered is not None
        self._answer = item
        self._answered.set()

    def _event(self, event: MapEvent) -> None:
        self._inbox.put((_EVENT, event))

    async def step(self) -> Outcome | None:
        async with self._lock:
            try:
                return await self._outcomes.__anext__()
            except StopAsyncIteration:
                return None

    async def close(self) -> None:
        async with self._lock:
            await self._outcomes.aclose()


def _read(items: Iterator[ImageRequest]) -> object:
    try:
        return next(items)
    except StopIteration:
        return _END
    except Exception as exc:  # the user's iterable: the map raises it, unchanged
        return _Failed(exc)


def iterate_map(
    loop: Loop,
    start: StartMap,
    requests: Iterable[ImageRequest],
    on_event: Callable[[MapEvent], None] | None,
) -> Iterator[Outcome]:
    """The async map as a plain iterator; user code (input, hook) runs in this thread.

    One outcome is taken from the async map per ``next()``, so its back-pressure
    holds. Leaving early (``break``, ``close()``, garbage collection, an exception,
    Ctrl-C) closes the async map, which cancels what is still running.
    """
    items = iter(requests)
    inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    driver = loop.call_sync(lambda: _Driver(inbox, start, on_event is not None))
    future: Future[Outcome | None] | None = None
    try:
        while True:
            future = loop.start(driver.step)
            future.add_done_callback(lambda f: inbox.put((_DONE, f)))
            while True:
                kind, payload = inbox.get()
                if kind == _NEED:
                    item = _read(items)
                    loop.call_sync(functools.partial(driver.answer, item))
                elif kind == _EVENT:
                    assert on_event is not None
                    on_event(payload)
                elif payload is future:
                    break
            outcome = loop.result(future)
            if outcome is None:
                if loop.closed:
                    # The async map ends quietly when its client closes: say so here.
                    raise ClientClosedError("the FluxClient was closed during map()")
                return
            yield outcome
    finally:
        if future is not None and not future.done():
            future.cancel()
        # On the loop thread (a collected iterator) asyncio's async-generator hooks
        # close the async map instead; a closed loop has cancelled it already.
        if not loop.closed and not loop.on_loop_thread:
            loop.call(driver.close)

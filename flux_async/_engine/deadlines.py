"""Every pending deadline of a client in one heap, served by one timer.

A ``Watch`` is one party waiting for one task until its own deadline: a
coroutine in ``wait``/``generate``, or one request of ``map``. Thousands of
them cost one heap entry each and a single ``loop.call_at`` handle armed at the
earliest deadline, not a timer (or a cancel scope) each. A watch that stops
waiting before its deadline is not searched for: it is marked dead, skipped when
it reaches the top, and the heap is rebuilt when the dead outnumber the living.

The timer is ``loop.call_at`` (asyncio beside anyio: anyio has no timer without a
task) and is injected with the clock, so this is tested with plain calls.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Protocol

from .followed import Watch

__all__ = ["Deadlines", "Schedule", "loop_time"]

class Cancellable(Protocol):
    def cancel(self) -> object: ...


#: Calls ``fn`` at loop time ``when`` (``loop.call_at``); returns what cancels it.
Schedule = Callable[[float, Callable[[], None]], Cancellable]
# Rebuild the heap once more than this many entries, and over half of it, are dead.
_MIN_DEAD = 64


def _call_at(when: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_at(when, fn)


def loop_time() -> float:
    """The loop's clock (``anyio.current_time`` on asyncio), readable in a timer callback too."""
    return asyncio.get_running_loop().time()


class Deadlines:
    """The heap of watches with a deadline, and the one timer that serves it.

    ``on_due`` is called (with the current time) when the earliest deadline has
    come; it takes what is due with ``due(now)``.
    """

    def __init__(self, on_due: Callable[[float], object], clock: Callable[[], float],
                 schedule: Schedule = _call_at) -> None:
        self._on_due = on_due
        self._clock = clock
        self._schedule = schedule
        self._heap: list[Watch] = []
        self._dead = 0
        self._timer: Cancellable | None = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        return len(self._heap) - self._dead

    def add(self, watch: Watch) -> None:
        assert watch.deadline is not None
        heapq.heappush(self._heap, watch)
        if self._timer is None or watch.deadline < self._timer_at:
            self._arm()

    def withdrawn(self) -> None:
        """A watch in the heap went dead (``live`` is false now)."""
        self._dead += 1
        if self._dead > _MIN_DEAD and self._dead * 2 > len(self._heap):
            self._heap = [w for w in self._heap if w.live]
            heapq.heapify(self._heap)
            self._dead = 0

    def due(self, now: float) -> list[Watch]:
        """Take the live watches whose deadline has come (they stay ``live``)."""
        heap, taken = self._heap, []
        while heap and (heap[0].deadline or 0.0) <= now:
            watch = heapq.heappop(heap)
            if watch.live:
                taken.append(watch)
            else:
                self._dead -= 1
        return taken

    def earliest(self) -> float | None:
        heap = self._heap
        while heap and not heap[0].live:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0].deadline if heap else None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self.stop()
        when = self.earliest()
        if when is not None:
            self._timer_at = when
            self._timer = self._schedule(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # asyncio runs a timer up to its clock's resolution early: it is due all the same.
        try:
            self._on_due(max(self._clock(), self._timer_at))
        finally:
            if self._timer is None:
                self._arm()

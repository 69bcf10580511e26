"""Counters kept by the local Flux server, for tests and benchmarks to assert on.

Everything a client does that costs money or load on the real service is counted
here: submissions (and duplicates of a prompt, the trace of an unsafe retry), polls,
rate-limit answers, injected faults, callbacks. ``in_flight`` is a live value
computed from a heap of finish times, so it stays correct without timers.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from typing import Any

from attrs import define, field

__all__ = ["ServerStats"]


@define
class ServerStats:
    """What the server has seen since it started (or since the last ``reset()``).

    ``requests`` is keyed by endpoint: ``images``, ``retrieve``, ``retrieve_batch``,
    ``uploads``, ``files`` or ``other``; ``statuses`` by HTTP status answered (dropped connections
    answer none and only show up in ``faults_injected``). ``finish_times`` maps task id
    to the wall-clock epoch at which the task finished (or will finish), so a benchmark
    can compute how late a client noticed. ``unanswered`` lists the tasks that were
    created but whose submission answer never reached the client whole (a reset or
    truncation after creating it, or a client gone before the answer was written):
    tasks a client can only have lost unless it recovers them some other way.
    ``rate_limited`` counts every 429; ``over_capacity`` those that refused a
    submission because ``max_in_flight`` generations were running (code
    ``rate_limited``): what a client's slot accounting, unlike its rate pacing over
    a jittery network, can always avoid.
    """

    requests: Counter[str] = field(factory=Counter)
    statuses: Counter[int] = field(factory=Counter)
    rate_limited: int = 0
    over_capacity: int = 0
    tasks_created: int = 0
    tasks_per_prompt: Counter[str] = field(factory=Counter)
    peak_in_flight: int = 0
    ids_queried: int = 0
    callbacks_sent: int = 0
    callbacks_dropped: int = 0
    callbacks_failed: int = 0
    faults_injected: Counter[str] = field(factory=Counter)
    finish_times: dict[str, float] = field(factory=dict)
    unanswered: list[str] = field(factory=list)
    # Monotonic finish times of every task not yet finished, all tokens together.
    # Live state rather than a counter: reset() keeps it.
    _finishing: list[float] = field(factory=list, repr=False)

    @property
    def in_flight(self) -> int:
        """Tasks created and not yet finished, right now."""
        self._prune(time.monotonic())
        return len(self._finishing)

    @property
    def duplicate_prompts(self) -> dict[str, int]:
        """Prompts submitted more than once, with their task counts."""
        return {p: n for p, n in self.tasks_per_prompt.items() if n > 1}

    def _prune(self, now: float) -> None:
        heap = self._finishing
        while heap and heap[0] <= now:
            heapq.heappop(heap)

    def task_created(
        self, task_id: str, prompt: str, finish_mono: float, finish_wall: float
    ) -> None:
        """Account for a new task; O(log n) in the number of tasks in flight."""
        self.tasks_created += 1
        self.tasks_per_prompt[prompt] += 1
        self.finish_times[task_id] = finish_wall
        now = time.monotonic()
        self._prune(now)
        if finish_mono > now:
            heapq.heappush(self._finishing, finish_mono)
        self.peak_in_flight = max(self.peak_in_flight, len(self._finishing))

    def answer_lost(self, task_id: str) -> None:
        """The submission answer that carried ``task_id`` did not reach the client."""
        self.unanswered.append(task_id)

    def all_finished(self) -> None:
        """Forget every pending finish time (used when tasks are finished early)."""
        self._finishing.clear()

    def reset(self) -> None:
        """Zero every counter; tasks still in flight stay in flight."""
        self.requests.clear()
        self.statuses.clear()
        self.rate_limited = 0
        self.over_capacity = 0
        self.tasks_created = 0
        self.tasks_per_prompt.clear()
        self.ids_queried = 0
        self.callbacks_sent = 0
        self.callbacks_dropped = 0
        self.callbacks_failed = 0
        self.faults_injected.clear()
        self.finish_times.clear()
        self.unanswered.clear()
        self.peak_in_flight = self.in_flight

    def snapshot(self, *, finish_times: bool = False) -> dict[str, Any]:
        """A JSON-able copy; ``finish_times`` (large) only when asked for."""
        out: dict[str, Any] = {
            "requests": dict(self.requests),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "rate_limited": self.rate_limited,
            "over_capacity": self.over_capacity,
            "tasks_created": self.tasks_created,
            "tasks_per_prompt": dict(self.tasks_per_prompt),
            "duplicate_prompts": self.duplicate_prompts,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "ids_queried": self.ids_queried,
            "callbacks_sent": self.callbacks_sent,
            "callbacks_dropped": self.callbacks_dropped,
            "callbacks_failed": self.callbacks_failed,
            "faults_injected": dict(self.faults_injected),
            "unanswered": list(self.unanswered),
        }
        if finish_times:
            out["finish_times"] = dict(self.finish_times)
        return out

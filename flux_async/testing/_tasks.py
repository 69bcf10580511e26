"""Tasks and accounts of the local Flux server, and the JSON shapes they answer.

A task never runs anything: its state is a pure function of the monotonic clock
(``finish_mono``), so 10,000 pending tasks cost 10,000 small slotted objects and no
timers. Only the server's held-open requests and callbacks schedule wake-ups.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import uuid
from typing import Any

from attrs import define, field

from ._settings import PendingShape, ServerSettings, TokenState

__all__ = ["PENDING_SHAPES", "Account", "Task", "TokenBucket"]

#: Every pending shape of docs/protocol.md, in the order ``pending_shapes="all"`` cycles them.
PENDING_SHAPES: tuple[PendingShape, ...] = ("missing", "null", "empty", "no_data")


def _hex_id(*parts: str, size: int = 12) -> str:
    """A stable hex id derived from strings (Mongo-like ``_id``s, per-token user ids)."""
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=size).hexdigest()


@define(slots=True)
class TokenBucket:
    """Token-bucket limiter: ``rate`` per second, capacity ``max(1, rate)``."""

    level: float = 0.0
    stamp: float = -math.inf  # -inf: full on first use

    def take(self, rate: float, now: float) -> float:
        """Consume one token; answer 0.0 if allowed, else seconds until one is available."""
        capacity = max(1.0, rate)
        self.level = min(capacity, self.level + (now - self.stamp) * rate)
        self.stamp = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / rate


@define(slots=True)
class Account:
    """Everything per token: its state, rate limiters, and tasks in flight."""

    token: str
    state: TokenState = "ok"
    submit_bucket: TokenBucket = field(factory=TokenBucket)
    query_bucket: TokenBucket = field(factory=TokenBucket)
    # Min-heap of monotonic finish times of this token's unfinished tasks.
    finishing: list[float] = field(factory=list)
    user_id: str = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.user_id = str(uuid.UUID(_hex_id("user", self.token, size=16)))

    def in_flight(self, now: float) -> int:
        """Tasks of this token still generating at ``now`` (amortised O(log n))."""
        heap = self.finishing
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        return len(heap)


@define(slots=True, eq=False)
class Task:
    """One generation task; its progress is derived from the clock when asked."""

    id: str
    trace_id: str
    account: Account
    request: dict[str, Any]  # the submitted body minus callback_url
    count: int  # images produced on success
    created_at: float  # wall clock, epoch seconds
    start_mono: float
    duration: float
    failed: bool
    seq: int  # creation order, drives deterministic shape cycling
    fail_seq: int  # order among failed tasks, drives the finished_at alternation
    callback_url: str | None = None

    @property
    def finish_mono(self) -> float:
        return self.start_mono + self.duration

    @property
    def finished_at(self) -> float:
        """Wall-clock epoch at which the task ends (in the past once it has ended)."""
        return self.created_at + self.duration

    def done(self, now: float) -> bool:
        return now >= self.finish_mono

    # -- answers -----------------------------------------------------------------------

    def images(self, base_url: str) -> list[dict[str, Any]]:
        """The ``data`` list of a succeeded task."""
        prompt = self.request.get("prompt", "")
        inference = round(self.duration, 3)
        return [
            {
                "prompt": prompt,
                "image_url": f"{base_url}/files/{self.id}-{i}.png",
                "seed": int(_hex_id(self.id, str(i), size=4), 16) & 0x7FFFFFFF,
                "timings": {"inference": inference},
            }
            for i in range(self.count)
        ]

    def final_body(self, base_url: str) -> dict[str, Any]:
        """The held-open answer (and callback body): success with data, or the error."""
        if self.failed:
            return {
                "success": False,
                "task_id": self.id,
                "trace_id": self.trace_id,
                "error": {
                    "code": "generation_failed",
                    "message": "the image could not be generated, please retry",
                },
            }
        return {
            "success": True,
            "task_id": self.id,
            "trace_id": self.trace_id,
            "data": self.images(base_url),
        }

    def submit_answer(self, style: str) -> dict[str, Any]:
        """The immediate answer of an async or callback submission."""
        if style == "mixed":
            style = "full" if self.seq % 2 == 0 else "minimal"
        if style == "minimal":
            return {"task_id": self.id}
        return {"success": True, "task_id": self.id, "trace_id": self.trace_id}

    def task_object(
        self, now: float, base_url: str, api_id: str, settings: ServerSettings
    ) -> dict[str, Any]:
        """The ``/flux/tasks`` view of this task at monotonic time ``now``."""
        account = self.account
        obj: dict[str, Any] = {
            "_id": _hex_id(self.id),
            "id": self.id,
            "api_id": api_id,
            "application_id": _hex_id("app", account.token, api_id, size=16),
            "credential_id": _hex_id("cred", account.token, size=16),
            "user_id": account.user_id,
            "created_at": self.created_at,
            "started_at": self.created_at,
            "type": "images",
            "request": self.request,
            "trace_id": self.trace_id,
        }
        if not self.done(now):
            shape = settings.pending_shapes
            if shape == "all":
                shape = PENDING_SHAPES[self.seq % len(PENDING_SHAPES)]
            if shape == "null":
                obj["response"] = None
            elif shape == "empty":
                obj["response"] = {}
            elif shape == "no_data":
                obj["response"] = {"success": True, "task_id": self.id}
            # The schema allows finished_at/elapsed absent or null until the end;
            # every second round of the shape cycle sends the nulls.
            if (self.seq // len(PENDING_SHAPES)) % 2 == 1:
                obj["finished_at"] = None
                obj["elapsed"] = None
            if settings.status_words:
                self._words(obj, "processing", "")
            return obj
        # Some failed tasks come without finished_at: clients must not rely on it.
        if not self.failed or self.fail_seq % 2 == 0:
            obj["finished_at"] = self.finished_at
            obj["elapsed"] = round(self.duration, 3)
        obj["response"] = self.final_body(base_url)
        if settings.status_words:
            word = "failed" if self.failed else "succeeded"
            self._words(obj, word, word)
        return obj

    def _words(self, obj: dict[str, Any], status: str, state: str) -> None:
        """Top-level words, cycling by seq: ``status`` only, ``state`` only, both.

        The vendor's MCP server reads ``state`` (the empty string while pending);
        other material shows ``status``.
        """
        kind = self.seq % 3
        if kind != 1:
            obj["status"] = status
        if kind != 0:
            obj["state"] = state

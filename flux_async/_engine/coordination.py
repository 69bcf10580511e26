"""The seams between a client and the limits of its API token, and their in-process defaults.

The vendor's limits belong to the API token: generations in flight, submissions
per second, task queries per second. One process keeps them in memory (the
default, costing nothing); a fleet of processes sharing a token keeps them in a
shared store (``flux_async.redis.RedisCoordinator``). The client talks to either
through these protocols, passed as ``FluxClient(..., coordinator=...)``.

Rules for every seam method:

- Fast paths are synchronous and cost nothing in-process (``*_nowait``); a shared
  implementation may always answer "no" there, sending the caller to the async path.
- Async methods may do I/O and may fail with ``CoordinationError``, raised before
  anything is paid: a submission never goes out when its slot or its rate turn
  could not be had. Never a silent fallback to per-process limits.
- Cancelling an async wait gives up what was being waited for (no slot or turn is
  kept by a cancelled waiter).

In-process: ``LocalSlots`` (an anyio semaphore), ``limits.RateLimiter`` (the
rate gate) and ``LocalDirectory`` (nothing to record, nobody to route to).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio

from .._core.callbacks import CallbackVerdict
from .._core.limits import Backoff, RateLimiter
from .journal import Journal

__all__ = [
    "Coordinator",
    "Served",
    "Kind",
    "LocalCoordinator",
    "LocalDirectory",
    "LocalSlots",
    "RateGate",
    "SharedRounds",
    "SlotPool",
    "TaskDirectory",
]

#: The two kinds of request the token's rates limit.
Kind = Literal["submit", "query"]


class SlotPool(Protocol):
    """The ``max_concurrency`` generation slots of one token."""

    capacity: int

    def take_nowait(self) -> bool:
        """Take a slot that is free right now, without I/O; False sends the caller to ``take``."""
        ...

    async def take(self) -> None:
        """Wait for a slot (the caller's cancel scope is the deadline)."""
        ...

    def give_back(self) -> None:
        """Never raises; a shared pool may release in the background."""
        ...

    def adopted(self, task_id: str) -> bool:
        """Whether a slot came with ``task_id``, adopted from a process that died.

        True once: the adopted task holds that slot from now on, and gives it back
        (``give_back``) when it ends.
        """
        ...

    @property
    def in_use(self) -> int:
        """This process's slots in use."""
        ...

    @property
    def waiting(self) -> int:
        """This process's callers queued for a slot."""
        ...


class RateGate(Protocol):
    """One kind of request (submissions or task queries): its rate and its 429 pause."""

    def acquire_nowait(self, now: float) -> int | None:
        """A ticket if a turn is free now, else None (nothing reserved)."""
        ...

    async def acquire(self) -> int:
        """Wait for a turn; returns the ticket to hand to ``penalize``."""
        ...

    async def penalize(self, retry_after: float | None, now: float, ticket: int) -> float:
        """A 429 answered the request of ``ticket``: pause every caller of this kind.

        Halve the rate, recover linearly; echoes of one overload (tickets issued
        before the last penalty) count once. Returns the pause, in seconds.
        """
        ...

    def succeeded(self) -> None:
        """A request of this kind went through."""
        ...


class SharedRounds(Protocol):
    """Poll rounds a fleet shares, so its task queries cost what one poller's would.

    A round claims the fleet's tasks nobody asked about for ``min_age`` seconds,
    asks about them all, and hands each finished task's answer to its owner.
    """

    async def claim(self, min_age: float, limit: int) -> Sequence[tuple[str, str]]:
        """The (task id, owning process) pairs to ask about now; may raise
        ``CoordinationError`` (the round then asks about this process's own tasks)."""
        ...

    def hand_over(self, owner: str, task_id: str, item: Mapping[str, Any]) -> None:
        """Give the process ``owner`` the answer about its task; never raises."""
        ...

    def deliver_to(self, receive: Callable[[str, Mapping[str, Any]], None]) -> None:
        """Where answers other processes got about this process's tasks go."""
        ...


class TaskDirectory(Protocol):
    """Which process follows which task: for routed callbacks and crash recovery."""

    @property
    def rounds(self) -> SharedRounds | None:
        """The fleet's shared poll rounds; None in-process (nothing to share)."""
        ...

    @property
    def tag(self) -> str:
        """Names this process in callback tokens (signed with them), so a callback
        that beats the directory's record still finds its way here; '' in-process."""
        ...

    async def followed(self, task_id: str, request: Mapping[str, Any] | None, *,
                       poll: bool = True) -> bool:
        """This process follows ``task_id`` from now on (``request``: None if only waited on).

        ``poll``: to be asked about in shared rounds (False: a callback will tell).
        Returns whether the shared rounds now ask about it.
        """
        ...

    async def resolved(self, task_id: str) -> None:
        """``task_id`` is no longer followed here."""
        ...

    async def route_callback(self, token: str | None, body: bytes) -> int | None:
        """Hand a callback nobody here follows to the process that does: its HTTP status.

        None when nobody claims it.
        """
        ...


class Served(Protocol):
    """What a coordinator needs of the client it serves (``FluxClient`` is one)."""

    def receive_callback(self, token: str | None, body: bytes) -> CallbackVerdict:
        """Judge a callback another process routed here."""
        ...

    async def adopt(self, task_ids: Iterable[str]) -> None:
        """Follow tasks of a process that died, to their end; nothing is re-sent."""
        ...

    def key_digest(self, label: bytes) -> str:
        """A keyed digest of the client's API key: names the key without revealing it."""
        ...


class Coordinator(Protocol):
    """Where a client gets its slots, its two rate gates and its task directory."""

    def slots(self, capacity: int) -> SlotPool: ...

    def rate_gate(
        self, kind: Kind, rate: float | None, burst: int, backoff: Backoff
    ) -> RateGate: ...

    @property
    def directory(self) -> TaskDirectory: ...

    @property
    def journal(self) -> Journal | None:
        """Where a fleet keeps idempotency keys (used when the client is given none)."""
        ...

    async def start(self, client: Served) -> None:
        """First use: connect, subscribe, start lease renewal (the client calls it once)."""
        ...

    async def close(self) -> None: ...


class LocalSlots:
    """The slots of one process: an anyio semaphore (first come, first served)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = anyio.Semaphore(capacity)

    def __repr__(self) -> str:
        return f"<LocalSlots capacity={self.capacity} in_use={self.in_use}>"

    def take_nowait(self) -> bool:
        if self._free.value == 0:
            return False
        self._free.acquire_nowait()
        return True

    async def take(self) -> None:
        await self._free.acquire()

    def give_back(self) -> None:
        self._free.release()

    def adopted(self, task_id: str) -> bool:
        return False  # nothing is adopted in-process

    @property
    def in_use(self) -> int:
        return self.capacity - self._free.value

    @property
    def waiting(self) -> int:
        return self._free.statistics().tasks_waiting


class LocalDirectory:
    """One process: nothing to record, nobody else to route a callback to."""

    tag = ""
    rounds = None

    async def followed(self, task_id: str, request: Mapping[str, Any] | None, *,
                       poll: bool = True) -> bool:
        return False

    async def resolved(self, task_id: str) -> None:
        return None

    async def route_callback(self, token: str | None, body: bytes) -> int | None:
        return None


class LocalCoordinator:
    """The default: the token's limits kept in this process's memory."""

    def __init__(self) -> None:
        self._directory = LocalDirectory()

    def __repr__(self) -> str:
        return "<LocalCoordinator>"

    def slots(self, capacity: int) -> LocalSlots:
        return LocalSlots(capacity)

    def rate_gate(
        self, kind: Kind, rate: float | None, burst: int, backoff: Backoff
    ) -> RateLimiter:
        return RateLimiter(rate, burst=burst, backoff=backoff)

    @property
    def directory(self) -> LocalDirectory:
        return self._directory

    @property
    def journal(self) -> None:
        return None  # the client's own (by default, keys in memory)

    async def start(self, client: Served) -> None:
        return None

    async def close(self) -> None:
        return None


if TYPE_CHECKING:
    # mypy proves the defaults fit the seams.
    def _fits(local: LocalCoordinator) -> Coordinator:
        return local

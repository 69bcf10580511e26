"""The coordination seams the client talks to, and the error they raise.

# moves to flux_async._coordination / _errors when the carve lands
These are copies of the protocols the client's core defines (one process keeps its
limits in memory; a fleet keeps them in Redis). They live here only until the
client's own ``_coordination`` module exists; the Redis classes are checked
against them by mypy so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .._errors import FluxError

if TYPE_CHECKING:
    from .._client import FluxClient
    from .._limits import Backoff

__all__ = ["CoordinationError", "Coordinator", "RateGate", "SlotPool", "TaskDirectory"]


# moves to flux_async._errors when the carve lands
class CoordinationError(FluxError):
    """The shared limits could not be consulted (Redis down, slow or refusing).

    Raised before anything is paid: a submission never goes out when its slot or
    its rate turn could not be had. There is no silent fallback to per-process
    limits, which would let a fleet breach the token's.
    """


class SlotPool(Protocol):
    """The max_concurrency generation slots of one token."""

    capacity: int

    def take_nowait(self) -> bool: ...
    async def take(self) -> None: ...
    def give_back(self) -> None: ...
    @property
    def in_use(self) -> int: ...
    @property
    def waiting(self) -> int: ...


class RateGate(Protocol):
    """One kind of request (submissions or task queries): its rate and its 429 pause."""

    def acquire_nowait(self, now: float) -> int | None: ...
    async def acquire(self) -> int: ...
    async def penalize(self, retry_after: float | None, now: float, ticket: int) -> float: ...
    def succeeded(self) -> None: ...


class TaskDirectory(Protocol):
    """Which process follows which task: for routed callbacks and crash recovery."""

    async def followed(self, task_id: str, request: Mapping[str, Any] | None) -> None: ...
    async def resolved(self, task_id: str) -> None: ...
    async def route_callback(self, token: str | None, body: bytes) -> int | None: ...


class Coordinator(Protocol):
    def slots(self, capacity: int) -> SlotPool: ...
    def rate_gate(
        self, kind: Literal["submit", "query"], rate: float | None, burst: int, backoff: Backoff
    ) -> RateGate: ...
    @property
    def directory(self) -> TaskDirectory: ...
    async def start(self, client: FluxClient) -> None: ...
    async def close(self) -> None: ...

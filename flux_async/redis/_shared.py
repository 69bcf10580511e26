"""What the parts of a coordinator (slots, rate gates, rounds, directory) use of it.

``RedisCoordinator`` builds its parts and hands each itself; they know it only
through ``Shared``, so none of them imports the coordinator's module (which
imports all of them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

__all__ = ["AdoptedSlots", "Shared"]


class AdoptedSlots(Protocol):
    def hold_adopted(self, task_id: str, member: str) -> None:
        """Keep the slot ``member`` that came with ``task_id`` from a dead process."""
        ...


class Shared(Protocol):
    """A running coordinator, as its parts see it."""

    process_id: str
    lease: float
    route_timeout: float

    @property
    def lease_ms(self) -> int: ...

    @property
    def hold_ms(self) -> int: ...

    @property
    def slot_pool(self) -> AdoptedSlots | None: ...

    @property
    def bus_channel(self) -> str: ...

    @property
    def own_channel(self) -> str: ...

    @property
    def tag(self) -> str: ...

    def channel_of(self, process_id: str) -> str: ...

    def channel_of_tag(self, tag: str) -> str: ...

    def key(self, name: str) -> str: ...

    def new_slot_id(self) -> str: ...

    async def start(self) -> None: ...

    async def renew(self) -> None: ...

    async def call(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any: ...

    async def command(self, *args: Any) -> Any: ...

    def chore(self, work: Callable[[], Awaitable[None]]) -> bool: ...

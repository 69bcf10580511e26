"""The fleet's ``max_concurrency`` slots, as leases in one Redis sorted set.

A slot is a member ``"<process>|<n>"`` whose score is its lease's expiry. Taking
one is a script that first drops lapsed leases (a dead process's slots) and then
adds a member only while fewer than ``capacity`` are there. The owning process's
renewal loop extends all its slots in one round trip; a process killed outright
stops renewing, and its slots come back within one lease time, except those of its
tasks still generating at the service: recovery moves each of those to the process
that adopts the task (as ``"<adopter>|<task id>"``), which gives it back when the
task ends, so a crash never lets the fleet put more than ``capacity`` in flight.

Waiting: only the first of this process's waiters asks Redis (an ``anyio.Lock`` keeps
them in line, first come first served), so a freed slot costs one round trip per
waiting process, not one per waiting task. It asks again when a slot is given back
anywhere in the fleet (the release script publishes ``freed``), when the earliest
lease lapses (the take script says when), or after ``MAX_WAIT`` in case a message
was lost while the subscription reconnected.

After Redis lost its data (a restart without persistence), the slots other
processes hold look free until each of them renews. So the first process to notice
the loss (its own lease is gone) starts a hold of ``lease / 3`` (plus a margin)
during which nobody takes a slot; every process renews within that time and puts
its slots back. A lost Redis costs the fleet a pause, never a breach.
"""

from __future__ import annotations

import logging

import anyio

from .._core.errors import CoordinationError
from ._scripts import SLOT_RELEASE, SLOT_TAKE
from ._shared import Shared

__all__ = ["RedisSlots"]

log = logging.getLogger("flux_async.redis")


class RedisSlots:
    """``capacity`` generation slots shared by every process of one namespace.

    ``take_nowait`` always answers False: a shared slot needs a round trip, so the
    caller goes to ``take``. ``give_back`` returns at once and releases in the
    background; if that fails, the slot's lease lapses on its own.
    """

    # Longest wait between two tries while every slot is taken (a lost "freed").
    MAX_WAIT = 1.0
    # A failed release is tried again this many times before the lease takes over.
    RELEASE_ATTEMPTS = 3

    def __init__(self, coordinator: Shared, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError("capacity must be a positive int")
        self.capacity = capacity
        self._coord = coordinator
        self._held: set[str] = set()
        self._waiting = 0
        self._turn = anyio.Lock()
        self._freed = anyio.Event()
        self._to_release: list[str] = []
        self._flush_queued = False
        # task id -> the slot adopted with it, until the client claims it (``adopted``)
        self._adopted: dict[str, str] = {}

    def __repr__(self) -> str:
        return (
            f"<RedisSlots capacity={self.capacity} in_use={self.in_use} "
            f"waiting={self.waiting}>"
        )

    @property
    def in_use(self) -> int:
        """This process's slots in use."""
        return len(self._held)

    @property
    def waiting(self) -> int:
        """This process's callers queued for a slot."""
        return self._waiting

    @property
    def held(self) -> frozenset[str]:
        """The ids of this process's slots (renewed by the coordinator)."""
        return frozenset(self._held)

    def take_nowait(self) -> bool:
        return False

    async def take(self) -> None:
        """Wait for a slot; ``CoordinationError`` when Redis cannot be asked.

        Cancelling gives up the wait; a slot the script may have granted just as the
        wait was cancelled is given back.
        """
        coord = self._coord
        await coord.start()
        self._waiting += 1
        try:
            async with self._turn:
                while True:
                    freed = self._freed
                    member = coord.new_slot_id()
                    try:
                        taken, wait_ms = await coord.call(
                            SLOT_TAKE,
                            [coord.key("slots"), coord.key("procs"), coord.key("hold")],
                            [member, self.capacity, coord.lease_ms, coord.process_id,
                             coord.hold_ms, coord.key("tasks:")],
                        )
                    except BaseException:
                        # The script may have run before the answer was lost.
                        self._release(member)
                        raise
                    if int(taken) == 1:
                        self._held.add(member)
                        return
                    if int(taken) == -1:
                        await coord.renew()  # Redis lost this process's lease: re-add
                        continue
                    with anyio.move_on_after(min(int(wait_ms) / 1000, self.MAX_WAIT)):
                        await freed.wait()
        finally:
            self._waiting -= 1

    def give_back(self) -> None:
        """Release one of this process's slots (in the background); never raises."""
        if not self._held:
            log.warning("give_back() without a slot taken: ignored")
            return
        self._release(self._held.pop())

    def hold_adopted(self, task_id: str, member: str) -> None:
        """Recovery moved ``member``, the slot of an orphan ``task_id``, to this process."""
        self._held.add(member)
        self._adopted[task_id] = member

    def adopted(self, task_id: str) -> bool:
        """Whether a slot came with the adopted ``task_id``; the task holds it from now on."""
        return self._adopted.pop(task_id, None) is not None

    def wake(self) -> None:
        """A slot was freed somewhere: the first waiter asks Redis again."""
        freed, self._freed = self._freed, anyio.Event()
        freed.set()

    def _release(self, member: str) -> None:
        self._to_release.append(member)
        if not self._flush_queued:
            self._flush_queued = self._coord.chore(self._flush)

    async def _flush(self) -> None:
        """Release every slot given back since the last flush, in one round trip."""
        self._flush_queued = False
        members, self._to_release = self._to_release, []
        if not members:
            return
        coord = self._coord
        for attempt in range(1, self.RELEASE_ATTEMPTS + 1):
            try:
                await coord.call(
                    SLOT_RELEASE, [coord.key("slots")], [coord.bus_channel, *members]
                )
            except CoordinationError as exc:
                if attempt == self.RELEASE_ATTEMPTS:
                    log.warning(
                        "could not give %d slot(s) back (%s): their lease lapses within "
                        "%g s", len(members), exc, coord.lease,
                    )
                    return
                await anyio.sleep(0.1 * 4 ** (attempt - 1))
            else:
                self.wake()
                return

    async def release_all(self, *, keep: int = 0) -> None:
        """Give back every slot at once (closing) but ``keep``; the lease is the backstop.

        The kept slots are those of tasks left running for another process to adopt:
        they lapse unrenewed, and recovery moves them to the adopter.
        """
        members = [*self._held, *self._to_release]
        del members[:keep]
        self._held.clear()
        self._adopted.clear()
        self._to_release = []
        if members:
            coord = self._coord
            await coord.call(
                SLOT_RELEASE, [coord.key("slots")], [coord.bus_channel, *members]
            )

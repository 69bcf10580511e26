"""Poll rounds a fleet shares: each pending task asked about once a round, by whoever comes first.

Alone, every process polls its own tasks in rounds (``poller``): four processes
send four batch queries a round where one poller would send one. Shared, a
round starts by claiming, in one script, the fleet's tasks that no round asked
about for the claimer's own interval: the first process whose round comes asks
about them all (batched, ``retrieve_batch``) and hands each finished task's
answer to the process that follows it, on that process's channel; the others
find nothing due and send nothing. The fleet's task queries then cost about
what one poller's would.

Only tasks without a callback URL are in the shared rounds: a callback tells
about the others. Each process still asks about its own tasks itself every
``callback_poll_interval``, so a lost message or a Redis outage delays a
result, never loses it; an answer handed over twice changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ._scripts import ROUND_CLAIM
from ._shared import Shared

__all__ = ["RedisRounds"]

log = logging.getLogger("flux_async.redis")

#: Takes a task's answer that another process's round got: (task id, task object).
Receive = Callable[[str, Mapping[str, Any]], None]


class RedisRounds:
    """The fleet's shared poll rounds, seen from one process."""

    def __init__(self, coordinator: Shared) -> None:
        self._coord = coordinator
        self._receive: Receive | None = None

    def __repr__(self) -> str:
        return "<RedisRounds>"

    async def claim(self, min_age: float, limit: int) -> list[tuple[str, str]]:
        """The (task id, owner) pairs this round is to ask about; ``CoordinationError``."""
        coord = self._coord
        await coord.start()
        flat = await coord.call(ROUND_CLAIM, [coord.key("polled"), coord.key("owners")],
                                [max(1, round(min_age * 1000)), limit])
        return [(_text(task_id), _text(owner))
                for task_id, owner in zip(flat[::2], flat[1::2], strict=True)]

    def hand_over(self, owner: str, task_id: str, item: Mapping[str, Any]) -> None:
        """Give ``owner`` the answer about its task (in the background; never raises)."""
        coord = self._coord
        if owner == coord.process_id:
            self.on_message({"op": "polled", "id": task_id, "item": item})
            return
        message = json.dumps({"op": "polled", "id": task_id, "item": item})
        channel = coord.channel_of(owner)

        async def publish() -> None:
            await coord.command("PUBLISH", channel, message)

        coord.chore(publish)

    def deliver_to(self, receive: Receive) -> None:
        """Where the answers other processes' rounds got about this process's tasks go."""
        self._receive = receive

    def on_message(self, message: Mapping[str, Any]) -> None:
        task_id, item = message.get("id"), message.get("item")
        receive = self._receive
        if receive is None or not isinstance(task_id, str) or not isinstance(item, dict):
            return
        try:
            receive(task_id, item)
        except Exception:
            log.exception("taking the answer about task %s failed", task_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

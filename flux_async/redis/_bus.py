"""This process's subscription: the namespace's bus and its own channel.

The bus carries what every process wants to hear at once ("freed": a slot was
given back; "penalty <kind> <epoch>": a 429 was counted); the process's own
channel carries callbacks routed to it and the replies to the ones it routed.

Pub/sub is fire and forget: a message published while a subscriber reconnects is
lost. Nothing depends on one arriving: slot waiters also ask again on a timer,
a rate waiter that missed a penalty fires into the pause and its 429 is counted
as an echo, and a routed callback that gets no reply is answered 5xx (the service
sends it again).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from .._core.errors import CoordinationError

__all__ = ["Subscription"]

log = logging.getLogger("flux_async.redis")

#: Runs one Redis call within the coordinator's timeout, as ``CoordinationError``.
Bounded = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class Subscription:
    """Listens on ``channels`` and hands each message to ``deliver(channel, data)``.

    ``resumed`` is called after a broken subscription is back (messages may have
    been missed meanwhile).
    """

    # Waits between attempts to subscribe again: doubling from the first to the last.
    RETRY_FIRST = 0.05
    RETRY_LAST = 2.0

    def __init__(
        self,
        redis: Redis,
        channels: tuple[str, ...],
        bounded: Bounded,
        deliver: Callable[[str, str], None],
        resumed: Callable[[], None],
    ) -> None:
        self._redis = redis
        self._channels = channels
        self._bounded = bounded
        self._deliver = deliver
        self._resumed = resumed
        self._pubsub: PubSub | None = None

    async def open(self) -> None:
        """Subscribe; ``CoordinationError`` when Redis does not answer."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._bounded(lambda: pubsub.subscribe(*self._channels))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _close(pubsub)
            raise
        self._pubsub = pubsub

    async def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await _close(pubsub)

    async def run(self) -> None:
        """Deliver messages until cancelled; subscribe again whenever it breaks."""
        pause = self.RETRY_FIRST
        while True:
            try:
                if self._pubsub is None:
                    await self.open()
                    pause = self.RETRY_FIRST
                    self._resumed()
                    continue
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0)
            except (CoordinationError, RedisError, OSError) as exc:
                log.warning("the Redis subscription broke (%s): subscribing again", exc)
                await self.close()
                await anyio.sleep(pause)
                pause = min(self.RETRY_LAST, pause * 2)
                continue
            if message is not None:
                channel, data = _text(message.get("channel")), _text(message.get("data"))
                if channel is not None and data is not None:
                    self._deliver(channel, data)


async def _close(pubsub: PubSub) -> None:
    # Typed from redis-py 8, untyped before: named as a typed callable, so that
    # mypy --strict passes on every version claimed (no ignore that is unused on one).
    aclose: Callable[[], Awaitable[None]] = pubsub.aclose
    with contextlib.suppress(RedisError, OSError):
        await aclose()


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None

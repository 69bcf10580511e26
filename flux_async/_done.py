"""``Done``: the one-shot flag every pending task's entry holds."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel

__all__ = ["Done"]


class Done:
    """A one-shot flag to wait on, as ``anyio.Event`` (``set``/``is_set``/``wait``), but small.

    Every pending task holds one. An ``anyio.Event`` (an ``asyncio.Event`` and its
    deque) takes about 1 KB before anyone waits: 10 MB at 10,000 pending tasks.
    This takes under 60 bytes, plus one future per waiter while it waits. As with
    anyio, ``wait()`` on a flag already set still yields once (a checkpoint).
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for future in waiters or ():
            if not future.done():
                future.set_result(None)

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        future = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [future]
        else:
            self._waiters.append(future)
        try:
            await future
        except BaseException:
            if self._waiters is not None and future in self._waiters:  # cancelled
                self._waiters.remove(future)
            raise

"""The lines of a batch still to submit, handed to ``client.map`` one at a time."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from flux_async import ImageRequest

from ._input import Entry

__all__ = ["Feed"]


class Feed:
    """The lines still to submit, handed to ``client.map`` one at a time.

    It is fed while the job runs (a stale ``--local`` task id sends its line
    back here), so it is a queue that ends when ``close()``d, not a list. At most
    ``window`` lines are outstanding (taken and not yet resolved), the same window
    as map's own, so a line is only taken when it can be submitted at once: when a
    stop comes, nothing waits in between, half-sent.
    """

    def __init__(
        self, window: int, prepare: Callable[[Entry], Awaitable[Entry | None]] | None = None
    ) -> None:
        self.window = window
        self.prepare = prepare  # uploads a line's local image; None when that failed
        self.outstanding = 0
        self.taken: list[Entry] = []  # map's index -> line
        self._queue: collections.deque[Entry] = collections.deque()
        self._closed = self._stopped = False
        self._wake = anyio.Event()

    def put(self, entry: Entry) -> None:
        self._queue.append(entry)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def release(self) -> None:
        """One taken line resolved."""
        self.outstanding -= 1
        self._wake.set()

    async def requests(self) -> AsyncIterator[ImageRequest]:
        while not self._stopped:
            if self._queue and self.outstanding < self.window:
                entry = self._queue.popleft()
                if entry.image is not None and self.prepare is not None:
                    prepared = await self.prepare(entry)
                    if prepared is None:
                        continue
                    entry = prepared
                self.outstanding += 1
                self.taken.append(entry)
                assert entry.request is not None
                yield entry.request
            elif self._closed and not self._queue:
                return
            else:
                self._wake = anyio.Event()
                await self._wake.wait()

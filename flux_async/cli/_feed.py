"""The lines of a batch still to submit, handed to ``client.map`` one at a time."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import attrs

from flux_async import ImageRequest

from ._input import Entry

__all__ = ["Feed", "key_of"]


def key_of(entry: Entry) -> str:
    """The idempotency key of a line's request: its line and what it asks for.

    Keys live in the output directory's journal: the same line with the same
    request in the same directory is the same paid task; an edited line is another.
    """
    return f"line-{entry.line}-{entry.key}"


class Feed:
    """The lines still to submit, handed to ``client.map`` one at a time.

    It is fed while the job runs (a stale ``--local`` task id sends its line
    back here), so it is a queue that ends when ``close()``d, not a list. At most
    ``window`` lines are outstanding (taken and not yet resolved), the same window
    as map's own, so a line is only taken when it can be submitted at once: when a
    stop comes, nothing waits in between, half-sent.
    """

    def __init__(
        self, window: int, prepare: Callable[[Entry], Awaitable[Entry | None]] | None = None,
        release: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.window = window
        self.prepare = prepare  # uploads a line's local image; None when that failed
        self.release_key = release  # frees an idempotency key (a line paid for again)
        self._again: set[int] = set()  # lines to pay for again: their key is freed first
        self.outstanding = 0
        self.taken: list[Entry] = []  # map's index -> line
        self._queue: collections.deque[Entry] = collections.deque()
        self._closed = self._stopped = False
        self._wake = anyio.Event()

    def put(self, entry: Entry, *, again: bool = False) -> None:
        """Queue a line; ``again``: it had a task (or a submission) already, and is to be
        paid for anew (``--retry-failed``, a stale ``--local`` id): its key is freed first."""
        if again:
            self._again.add(entry.line)
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
                assert entry.request is not None
                key = key_of(entry)
                if entry.line in self._again and self.release_key is not None:
                    self._again.discard(entry.line)
                    await self.release_key(key)
                self.outstanding += 1
                self.taken.append(entry)
                # Keyed: a line whose task an earlier run paid for (even one killed
                # before the manifest heard of it) joins that task instead of paying.
                yield attrs.evolve(entry.request, idempotency_key=key)
            elif self._closed and not self._queue:
                return
            else:
                self._wake = anyio.Event()
                await self._wake.wait()

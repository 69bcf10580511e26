"""Task queries: the two requests that ask about tasks, their retries, and ``get_tasks``.

``fetch_batch`` (``retrieve_batch``) and ``fetch_one`` (``retrieve``) are the
only I/O of following tasks: the poller and ``get_task``/``get_tasks`` go
through them, so a test replaces these two methods and drives everything else
without a socket. Queries are free; they share the query rate gate (and its
429 pause) with the poller.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from .._core import retry
from .._core.errors import ProtocolError
from .._core.limits import Backoff
from .._core.models import Task
from .._core.protocol import TASKS_PATH, read_batch, read_task, retrieve_batch_body, retrieve_body
from .coordination import RateGate

__all__ = ["Post", "TaskQueries"]

Post = Callable[[str, Mapping[str, Any]], Awaitable[Any]]


class TaskQueries:
    """Asks the service about tasks; ``batch_supported`` turns false if it refuses batches."""

    def __init__(self, post: Post, gate: RateGate, backoff: Backoff, *, attempts: int,
                 chunk_size: int) -> None:
        self._post = post
        self.gate = gate
        self._backoff = backoff
        self.attempts = attempts
        self.chunk_size = chunk_size
        self.batch_supported = True

    async def fetch_batch(self, task_ids: Sequence[str]) -> list[Mapping[str, Any]]:
        """One ``retrieve_batch``: the task objects the service knows of ``task_ids``."""
        return read_batch(await self._post(TASKS_PATH, retrieve_batch_body(task_ids)))

    async def fetch_one(self, task_id: str) -> Mapping[str, Any]:
        """One ``retrieve``: the task object of ``task_id``."""
        data = await self._post(TASKS_PATH, retrieve_body(task_id))
        if not isinstance(data, Mapping):
            raise ProtocolError("a retrieve answer is not a JSON object")
        return data

    async def query(self, fetch: Callable[[], Awaitable[Any]]) -> Any:
        """A free task query, asked again with backoff on failures that may pass.

        ``retry``'s loop takes the gate's turn, pauses the gate on a 429 and logs.
        """
        return await retry.call(retry.QUERY, fetch, attempts=self.attempts,
                                 backoff=self._backoff, gate=self.gate)

    async def get_task(self, task_id: str) -> Task:
        return read_task(await self.query(functools.partial(self.fetch_one, task_id)))

    async def get_tasks(self, task_ids: Iterable[str]) -> list[Task]:
        """Each distinct id's task, ``chunk_size`` per request, in the order asked.

        Ids the service does not know are left out, as the service leaves them out.
        """
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, Task] = {}
        size = self.chunk_size
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            if self.batch_supported:
                items = await self.query(functools.partial(self.fetch_batch, chunk))
            else:
                items = [await self.query(functools.partial(self.fetch_one, i)) for i in chunk]
            for item in items:
                task = read_task(item)
                found[task.id] = task
        return [found[i] for i in ids if i in found]

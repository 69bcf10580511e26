"""What the fleet tests run in separate OS processes (``multiprocessing``, spawn).

Each function is one process with its own event loop, its own connection and its
own coordinator, as a worker of a real deployment would be. Results go back on a
``multiprocessing`` queue; ``ready``/``go`` events line the processes up.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.to_thread

from flux_async._core.limits import Backoff
from flux_async.redis import RedisCoordinator

#: The token of every test coordinator; the namespace is derived from it.
TOKEN = "test-token-for-redis"


def _coordinator(url: str, lease: float = 1.0) -> RedisCoordinator:
    return RedisCoordinator.from_url(url, api_key=TOKEN, lease=lease, timeout=2.0)


def take_turns(url: str, turns: int, rate: float, burst: int, go: Any, results: Any) -> None:
    """Acquire ``turns`` submission turns; report the wall-clock time of each."""

    async def main() -> None:
        async with _coordinator(url) as coord:
            gate = coord.rate_gate("submit", rate, burst, Backoff())
            await anyio.to_thread.run_sync(go.wait)
            starts = []
            for _ in range(turns):
                await gate.acquire()
                starts.append(time.time())
            results.put(starts)

    anyio.run(main)


def use_slots(url: str, capacity: int, rounds: int, hold: float, go: Any, results: Any) -> None:
    """Take a slot ``rounds`` times, holding each ``hold`` s; report the peak in use.

    A shared Redis counter, raised after a slot is taken and lowered before it is
    given back, is at most the number of slots held fleet-wide at any instant.
    """

    async def main() -> None:
        async with _coordinator(url) as coord:
            slots = coord.slots(capacity)
            peak = 0

            async def one() -> None:
                nonlocal peak
                await slots.take()
                try:
                    peak = max(peak, int(await coord.command("INCR", "test:in-use")))
                    await anyio.sleep(hold)  # the "generation"
                    await coord.command("DECR", "test:in-use")
                finally:
                    slots.give_back()

            await anyio.to_thread.run_sync(go.wait)
            async with anyio.create_task_group() as group:
                for _ in range(rounds):
                    group.start_soon(one)
            results.put(peak)

    anyio.run(main)


def hold_slots(url: str, capacity: int, count: int, ready: Any,
               submitted: tuple[str, ...] = ()) -> None:
    """Take ``count`` slots and hold them until killed; one per ``submitted`` task id
    is that task's (recorded as submitted here, as a client does)."""

    async def main() -> None:
        async with _coordinator(url) as coord:
            slots = coord.slots(capacity)
            for _ in range(count):
                await slots.take()
            for task_id in submitted:
                await coord.directory.followed(task_id, {"prompt": task_id})
            ready.set()
            await anyio.sleep_forever()

    anyio.run(main)


def penalize_once(url: str, retry_after: float, go: Any, results: Any) -> None:
    """Report a 429 (with ``retry_after``) on the query kind when told to."""

    async def main() -> None:
        async with _coordinator(url) as coord:
            gate = coord.rate_gate("query", 0.5, 1, Backoff())
            await anyio.to_thread.run_sync(go.wait)
            # Taken before the call: the pause starts at Redis's clock during it, so no
            # earlier than this (a time taken after the round trip could be later than
            # the pause's start by as much as a loaded machine delays the answer).
            before = time.time()
            pause = await gate.penalize(retry_after, 0.0, 0)
            results.put((before, pause))

    anyio.run(main)


def follow_tasks(url: str, tasks: dict[str, Any], ready: Any, stop: Any, results: Any) -> None:
    """Follow ``tasks`` (id -> request or None); judge routed callbacks; stop when told.

    The judge answers 200 for a followed task posted with the token "good", 403
    for any other token, 404 for a task it does not follow, and reports each call.
    """

    async def main() -> None:
        async with _coordinator(url) as coord:
            def judge(token: str | None, body: bytes) -> int:
                results.put(("judged", token, body.decode()))
                if token != "good":
                    return 403
                return 200 if any(task in body.decode() for task in tasks) else 404

            coord.directory.judge = judge
            for task_id, request in tasks.items():
                await coord.directory.followed(task_id, request)
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)

    anyio.run(main)


def recover_orphans(url: str, go: Any, stop: Any, results: Any) -> None:
    """Recover three times, as fast as possible, when told; report what was adopted.

    Stays alive until told to stop: a process that closes hands its tasks back.
    """

    async def main() -> None:
        async with _coordinator(url) as coord:
            await anyio.to_thread.run_sync(go.wait)
            adopted = []
            for _ in range(3):
                adopted += [(o.task_id, o.request) for o in await coord.recover()]
            results.put(adopted)
            await anyio.to_thread.run_sync(stop.wait)

    anyio.run(main)


def start_forked(coordinator: RedisCoordinator, results: Any) -> None:
    """Start a coordinator built before the fork (as under gunicorn --preload)."""

    async def main() -> None:
        async with coordinator:
            slots = coordinator.slots(2)
            await slots.take()
            results.put((coordinator.process_id, sorted(slots.held)))

    anyio.run(main)

"""The fleet: several real OS processes, each with its own connection, one token.

Each worker (``_workers``) is a spawned process with its own event loop and
coordinator; they meet only in the real redis-server the fixture started.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

import anyio
import anyio.to_thread
import pytest

from flux_async._core.limits import Backoff
from flux_async.redis import RedisCoordinator

from . import _workers
from ._workers import TOKEN
from .conftest import RedisServer, until

# Loop wake-ups and process scheduling on a loaded machine: a turn returns a little
# after the instant Redis reserved for it (up to this much, and less than one
# turn's spacing in the rate test, so a late turn cannot join the next window).
JITTER = 0.08


class Fleet:
    """Spawns worker processes; kills whatever is still running at the end."""

    def __init__(self) -> None:
        self.ctx: SpawnContext = multiprocessing.get_context("spawn")
        self.processes: list[SpawnProcess] = []

    def spawn(self, target: Callable[..., None], *args: Any) -> SpawnProcess:
        process = self.ctx.Process(target=target, args=args, daemon=True)
        process.start()
        self.processes.append(process)
        return process

    def kill(self, process: SpawnProcess) -> None:
        """SIGKILL: no cleanup of any kind, as the OOM killer would."""
        self.processes.remove(process)
        os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        process.join(10)

    def join(self) -> None:
        """Wait for the workers the test did not kill; each must have succeeded."""
        for process in self.processes:
            process.join(30)
            assert process.exitcode == 0, f"worker {process.name} exited {process.exitcode}"

    def stop(self) -> None:
        for process in self.processes:  # a failed test's leftovers
            if process.is_alive():
                process.kill()
            process.join(10)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    try:
        yield fleet
    finally:
        fleet.stop()


def busiest_window(times: list[float], width: float) -> int:
    """The most events in any half-open window [t, t + width) starting at an event."""
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + width) for i, t in enumerate(times))


def test_the_fleet_shares_one_rate(redis_url: str, fleet: Fleet) -> None:
    rate, burst, workers, turns = 10.0, 3, 3, 7
    go, results = fleet.ctx.Event(), fleet.ctx.Queue()
    for _ in range(workers):
        fleet.spawn(_workers.take_turns, redis_url, turns, rate, burst, go, results)
    go.set()
    starts = [t for _ in range(workers) for t in results.get(timeout=30)]
    fleet.join()

    # In any second, at most rate + burst turns began, across all processes...
    assert busiest_window(starts, 1.0 - JITTER) <= rate + burst
    # ...and the fleet as a whole was held to the pace: alone, each process would
    # have finished its 7 turns in about 0.4 s.
    total = workers * turns
    assert max(starts) - min(starts) >= (total - burst) / rate - JITTER
    print(f"\n{total} turns from {workers} processes in {max(starts) - min(starts):.2f} s, "
          f"busiest second: {busiest_window(starts, 1.0)}")


def test_the_fleet_never_exceeds_its_slots(redis_url: str, fleet: Fleet) -> None:
    capacity, workers, rounds = 4, 3, 6
    go, results = fleet.ctx.Event(), fleet.ctx.Queue()
    for _ in range(workers):
        fleet.spawn(_workers.use_slots, redis_url, capacity, rounds, 0.05, go, results)
    go.set()
    peaks = [results.get(timeout=30) for _ in range(workers)]
    fleet.join()
    # 18 generations wanted at once, 4 slots: the fleet reached but never passed 4.
    assert max(peaks) == capacity


@pytest.mark.anyio
async def test_a_429_in_one_process_pauses_the_others(
    redis_url: str, fleet: Fleet
) -> None:
    go, results = fleet.ctx.Event(), fleet.ctx.Queue()
    fleet.spawn(_workers.penalize_once, redis_url, 3.0, go, results)
    async with RedisCoordinator.from_url(redis_url, api_key=TOKEN, lease=1.0) as coord:
        # The next turn is 2 s away: time enough, on a loaded machine, for the other
        # process to wake and report its 429 before that turn comes.
        gate = coord.rate_gate("query", 0.5, 1, Backoff())
        first = await gate.acquire()  # now
        returned = 0.0

        async def second() -> None:
            nonlocal returned
            await gate.acquire()
            returned = time.time()

        async with anyio.create_task_group() as group:
            group.start_soon(second)
            go.set()  # while `second` sleeps towards its turn, the other process hits a 429
            penalized_no_earlier_than, pause = await anyio.to_thread.run_sync(
                results.get, True, 30)
        # The waiter did not fire at its reserved turn into the pause: it lined up again.
        assert pause == pytest.approx(3.0)
        assert returned >= penalized_no_earlier_than + pause - JITTER
        assert first == 0
        state = await coord.command("HGET", coord.key("rate:query"), "cur")
        assert float(state) == pytest.approx(0.25)  # and the rate was halved fleet-wide
    fleet.join()


@pytest.mark.anyio
async def test_a_killed_process_gives_its_slots_back_within_the_lease(
    redis_url: str, fleet: Fleet
) -> None:
    lease = 1.0
    ready = fleet.ctx.Event()
    holder = fleet.spawn(_workers.hold_slots, redis_url, 3, 3, ready)
    assert await anyio.to_thread.run_sync(ready.wait, 30)
    async with RedisCoordinator.from_url(redis_url, api_key=TOKEN, lease=lease) as coord:
        slots = coord.slots(3)
        with anyio.move_on_after(lease * 1.5):
            await slots.take()  # the holder renews: nothing frees up
        assert slots.in_use == 0
        fleet.kill(holder)
        killed = time.monotonic()
        for _ in range(3):
            await slots.take()
        elapsed = time.monotonic() - killed
        assert slots.in_use == 3
        assert elapsed <= lease + 0.5
        print(f"\nslots back {elapsed:.2f} s after SIGKILL (lease {lease:g} s)")


@pytest.mark.anyio
async def test_the_slots_of_a_dead_process_s_running_tasks_move_to_their_adopter(
    redis_url: str, fleet: Fleet
) -> None:
    # The dead process held 3 slots: 2 for tasks it submitted (still generating at
    # the service after it died), 1 for a submission that never got its answer.
    lease = 1.0
    ready = fleet.ctx.Event()
    holder = fleet.spawn(_workers.hold_slots, redis_url, 3, 3, ready, ("t-1", "t-2"))
    assert await anyio.to_thread.run_sync(ready.wait, 30)
    async with RedisCoordinator.from_url(redis_url, api_key=TOKEN, lease=lease) as coord:
        slots = coord.slots(3)
        fleet.kill(holder)
        # Past its lease, the slots of its tasks still count: nobody recovered them.
        with anyio.move_on_after(lease * 1.5):
            await slots.take()
        assert slots.in_use == 0
        orphans = await coord.recover()
        assert sorted((o.task_id, o.slot is not None) for o in orphans) == [
            ("t-1", True), ("t-2", True)]
        # The adopter holds (and renews) the two, and the third is free at once.
        assert slots.in_use == 2
        with anyio.fail_after(2):
            await slots.take()
        assert slots.in_use == 3
        assert [slots.adopted(t) for t in ("t-1", "t-2", "t-1")] == [True, True, False]
        members = await coord.command("ZRANGE", coord.key("slots"), 0, -1)
        assert {m.decode() for m in members} >= {f"{coord.process_id}|t-1",
                                                  f"{coord.process_id}|t-2"}
        for _ in range(3):  # the tasks ended: their slots go back like any other
            slots.give_back()
        await until(lambda: _empty(coord))


async def _empty(coord: RedisCoordinator) -> bool:
    return int(await coord.command("ZCARD", coord.key("slots"))) == 0


@pytest.mark.anyio
async def test_recovery_adopts_each_orphan_exactly_once(
    redis_server: RedisServer, fleet: Fleet
) -> None:
    url = redis_server.url
    orphans = {f"orphan-{i}": ({"prompt": f"p{i}"} if i % 2 else None) for i in range(8)}
    # The parent keeps every synchronisation object alive until the children have them.
    ready, never, judged = fleet.ctx.Event(), fleet.ctx.Event(), fleet.ctx.Queue()
    owner = fleet.spawn(_workers.follow_tasks, url, orphans, ready, never, judged)
    go, done, results = fleet.ctx.Event(), fleet.ctx.Event(), fleet.ctx.Queue()
    fleet.spawn(_workers.recover_orphans, url, go, done, results)
    fleet.spawn(_workers.recover_orphans, url, go, done, results)
    assert await anyio.to_thread.run_sync(ready.wait, 30)
    async with RedisCoordinator.from_url(url, api_key=TOKEN, lease=1.0) as live:
        await live.directory.followed("alive-1", {"prompt": "mine"})
        fleet.kill(owner)

        async def lapsed() -> bool:
            score = await live.command("ZSCORE", live.key("procs"), await owner_id())
            now = await live.command("TIME")
            return score is None or float(score) <= int(now[0]) * 1000

        async def owner_id() -> str:
            owners = await live.command("HGET", live.key("owners"), "orphan-0")
            return str(owners.decode())

        await until(lapsed, within=5)
        go.set()  # both recover at once, three times each
        first = await anyio.to_thread.run_sync(results.get, True, 30)
        second = await anyio.to_thread.run_sync(results.get, True, 30)
        adopted = [task for task, _ in first + second]
        assert sorted(adopted) == sorted(orphans)  # every orphan, none twice
        assert dict(first + second) == orphans  # with its request
        assert "alive-1" not in adopted  # a live process keeps its tasks
    done.set()
    fleet.join()


@pytest.mark.anyio
async def test_a_callback_reaches_the_process_that_follows_its_task(
    redis_url: str, fleet: Fleet
) -> None:
    ready, stop, judged = fleet.ctx.Event(), fleet.ctx.Event(), fleet.ctx.Queue()
    fleet.spawn(_workers.follow_tasks, redis_url, {"task-a": {"prompt": "a"}},
                ready, stop, judged)
    assert await anyio.to_thread.run_sync(ready.wait, 30)
    async with RedisCoordinator.from_url(redis_url, api_key=TOKEN, lease=1.0) as here:
        body = b'{"success": true, "task_id": "task-a", "data": []}'
        assert await here.directory.route_callback("good", body) == 200
        assert await anyio.to_thread.run_sync(judged.get, True, 5) == (
            "judged", "good", body.decode())
        # The owner's judgement is what comes back: a forged token is its 403.
        assert await here.directory.route_callback("forged", body) == 403
        # Nobody follows this task, or the body names none: not routed at all.
        assert await here.directory.route_callback("good", b'{"task_id": "other"}') is None
        assert await here.directory.route_callback("good", b"not json") is None

        latencies = []
        for _ in range(50):
            began = time.perf_counter()
            assert await here.directory.route_callback("good", body) == 200
            latencies.append(time.perf_counter() - began)
        p50 = statistics.median(latencies) * 1000
        print(f"\nrouted callback, p50 {p50:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    stop.set()
    fleet.join()


def test_a_coordinator_built_before_a_fork_names_each_worker_apart(redis_url: str) -> None:
    built = RedisCoordinator.from_url(redis_url, api_key=TOKEN, lease=1.0)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    workers = [ctx.Process(target=_workers.start_forked, args=(built, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        (one, one_slots), (two, two_slots) = results.get(timeout=30), results.get(timeout=30)
    finally:
        for worker in workers:
            worker.join(10)
    assert len({one, two, built.process_id}) == 3
    assert one_slots != two_slots

"""FluxClients in several OS processes sharing one token through a real redis-server.

Every worker is ``benchmarks/fleet_worker.py`` in a process of its own (its own
event loop, FluxClient and RedisCoordinator), against ONE local server in a
process of its own configured with the vendor's per-token limits: 10 generations
in flight, 5 submissions a second, 60 task queries a second, 429 beyond, no
``Retry-After``. What each test asserts is read off the server's counters (what
was paid for) and the workers' reports (who got which result).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from benchmarks.fleet_worker import ROOT, Fleet, WorkerProcess
from benchmarks.servers import ServerProcess
from flux_async.redis import namespace_for

from .conftest import RedisServer

VENDOR_LIMITS = ["--max-in-flight", "10", "--submit-rate", "5", "--query-rate", "60"]
SECRET = "fleet-tests-callback-secret"
TEST_AGENT = "fleet-test-driver"

Spawn = Callable[..., WorkerProcess]
Serve = Callable[[float, float], ServerProcess]


@pytest.fixture
def api() -> Iterator[Serve]:
    """Starts the one local API server of a test: ``api(lo, hi)`` generation seconds."""
    servers: list[ServerProcess] = []

    def start(lo: float, hi: float) -> ServerProcess:
        server = ServerProcess(["--generation-time", str(lo), str(hi), "--seed", "11",
                                *VENDOR_LIMITS])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    yield fleet
    fleet.stop()


@pytest.fixture
def spawn(redis_server: RedisServer, fleet: Fleet) -> Spawn:
    """Starts a worker process: ``spawn(server, coordinated=True, **spec)``."""

    def start(server: ServerProcess, *, coordinated: bool = True, **spec: Any) -> WorkerProcess:
        return fleet.spawn({"server": server.url, "token": server.token, "secret": SECRET,
                            "redis": redis_server.url if coordinated else None, **spec})

    return start


def settle(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``condition()`` holds (a server's counter), asking every 10 ms."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def queries(stats: dict[str, Any]) -> int:
    """Task queries the server answered (``retrieve`` and ``retrieve_batch``)."""
    return int(stats["requests"].get("retrieve", 0) + stats["requests"].get("retrieve_batch", 0))


def count(kind: str) -> Callable[[list[dict[str, Any]]], int]:
    return lambda events: sum(e["ev"] == kind for e in events)


def ids(worker: WorkerProcess, kind: str) -> list[str]:
    return [e["id"] for e in worker.of(kind)]


@pytest.mark.slow
def test_four_workers_keep_the_token_limits(api: Serve, spawn: Spawn) -> None:
    """4 processes x 10 jobs on one token: never more than the vendor's limits allow.

    Without the coordinator the same fleet meets a storm of 429s (``python -m
    benchmarks.fleet`` prints both side by side); with it, at most 2.
    """
    server = api(1.5, 2.5)  # 5 submissions/s x 2 s each: the 10 slots are all taken
    fleet = [spawn(server) for _ in range(4)]
    for worker in fleet:
        worker.ready()
    for i, worker in enumerate(fleet):
        worker.send(cmd="jobs", prefix=f"w{i}-", n=10)
    for worker in fleet:
        worker.wait_for(lambda ev: count("result")(ev) + count("error")(ev) >= 10, 60)
    stats = server.stats()
    assert [w.close() for w in fleet] == [0, 0, 0, 0]
    assert [len(w.of("result")) for w in fleet] == [10, 10, 10, 10]
    assert stats["tasks_created"] == 40
    assert stats["duplicate_prompts"] == {}
    assert stats["peak_in_flight"] <= 10
    assert stats["statuses"].get("429", 0) <= 2
    print(f"\n4 x 10 jobs, one token, coordinated: {stats['statuses'].get('429', 0)} 429s, "
          f"peak in flight {stats['peak_in_flight']}")


async def _followed(redis_url: str, token: str) -> set[str]:
    """The task ids the fleet's directory records as followed."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        owners = await redis.hkeys(f"flux:{{{namespace_for(token)}}}:owners")
    finally:
        await redis.aclose()
    return {task.decode() for task in owners}


async def _slot_leases(redis_url: str, token: str) -> dict[str, float]:
    """The fleet's slots in Redis: slot id -> its lease's expiry (ms, Redis's clock)."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        slots = cast(list[tuple[bytes, float]], await redis.zrange(
            f"flux:{{{namespace_for(token)}}}:slots", 0, -1, withscores=True))
    finally:
        await redis.aclose()
    return {name.decode(): score for name, score in slots}


@pytest.mark.slow
def test_a_killed_worker_is_recovered_once(
    api: Serve, spawn: Spawn, fleet: Fleet, redis_server: RedisServer
) -> None:
    """kill -9 a worker holding paid tasks: each is delivered once, by another worker.

    Its tasks still generate at the service after it died: the slots they hold move
    to the worker that adopts them, so the fleet's new jobs never push the server
    past its 10 generations in flight, and every slot is back once all have ended.
    """
    lease = 1.0
    server = api(2.0, 3.0)  # the victim's tasks outlive it
    survivors = [spawn(server, lease=lease) for _ in range(3)]
    victim = spawn(server, lease=lease)
    for worker in (*survivors, victim):
        worker.ready()
    victim_id = victim.of("ready")[0]["process_id"]
    victim.send(cmd="jobs", prefix="victim-", n=6)
    victim.wait_for(lambda ev: count("submitted")(ev) >= 6, 30)
    # Killed at once: submit() returned each id only once Redis held it.
    victim.kill()
    orphans = ids(victim, "submitted")
    assert set(orphans) <= asyncio.run(_followed(redis_server.url, server.token))
    delivered_by_victim = ids(victim, "result")
    for i, worker in enumerate(survivors):  # the fleet carries on meanwhile
        worker.send(cmd="jobs", prefix=f"s{i}-", n=2)

    def recovered() -> Counter[str]:
        return Counter(task for w in survivors for task in ids(w, "recovered"))

    fleet.wait_for(lambda: set(recovered()) >= set(orphans) - set(delivered_by_victim),
                   lease + 3.0 + 10, "every orphan recovered")
    # None of its slots is its own any more: moved to an adopter, or freed.
    assert not [s for s in asyncio.run(_slot_leases(redis_server.url, server.token))
                if s.startswith(f"{victim_id}|")]
    for worker in survivors:
        worker.wait_for(lambda ev: count("result")(ev) + count("error")(ev) >= 2, 30)
    # Every task has ended: every slot is back (an adopted one when its task ended).
    settle(lambda: not asyncio.run(_slot_leases(redis_server.url, server.token)))
    stats = server.stats()
    assert [w.close() for w in survivors] == [0, 0, 0]
    # Exactly once: by the victim before it died, or by one survivor's on_recovered.
    times = recovered()
    for task in orphans:
        assert times[task] + delivered_by_victim.count(task) == 1, task
    assert set(times) <= set(orphans)  # nobody "recovered" a live worker's task
    assert all(e["ok"] for w in survivors for e in w.of("recovered"))
    # Nothing submitted twice: one task per prompt, the victim's included.
    assert stats["duplicate_prompts"] == {}
    assert all(stats["tasks_per_prompt"][f"victim-{i}"] == 1 for i in range(6))
    assert [len(w.of("result")) for w in survivors] == [2, 2, 2]
    # The orphans' slots counted while they generated: no submission met a full server.
    assert stats["over_capacity"] == 0
    assert stats["statuses"].get("429", 0) <= 2  # rate pacing over a loaded loopback
    print(f"\nkilled a worker with {len(orphans)} paid tasks; recovered {sum(times.values())}, "
          f"429s over the run {stats['statuses'].get('429', 0)}")


def test_a_callback_on_another_worker_resolves_the_wait(api: Serve, spawn: Spawn) -> None:
    """The API posts to worker B; worker A waits: Redis routes it, nobody polls."""
    server = api(0.3, 0.6)
    waiter, receiver = spawn(server, listen=True), spawn(server, listen=True)
    waiter.ready()
    url = receiver.ready()["callback_url"]
    waiter.send(cmd="jobs", prefix="routed-", n=3, callback_url=url)
    # The clients' fallback poll for tasks with a callback comes after 30 s.
    waiter.wait_for(lambda ev: count("result")(ev) + count("error")(ev) >= 3, 20)
    # The server counts a callback once its answer is read, after the routing.
    settle(lambda: server.stats()["callbacks_sent"] >= 3)
    stats = server.stats()
    assert len(waiter.of("result")) == 3
    assert stats["callbacks_sent"] == 3
    assert queries(stats) == 0
    assert waiter.close() == 0
    assert receiver.close() == 0
    counts = receiver.of("closed")[0]["counts"]
    # B followed none of them, handed none to its own hook: it routed each to A.
    assert counts == {"routed": 3}


def test_redis_down_then_back(api: Serve, spawn: Spawn, redis_server: RedisServer) -> None:
    """Redis stopped: the next submission fails typed, unpaid; restarted, work resumes."""
    server = api(0.2, 0.4)
    worker = spawn(server, lease=1.0, redis_timeout=0.5)
    worker.ready()
    worker.send(cmd="submit", prompt="before")
    worker.wait_for(count("result"), 15)
    redis_server.stop()
    worker.send(cmd="submit", prompt="during")
    worker.wait_for(count("error"), 15)
    error = worker.of("error")[0]
    assert (error["kind"], error["prompt"], error["id"]) == ("CoordinationError", "during", None)
    stats = server.stats()
    assert stats["requests"]["images"] == 1  # the failed one never went out: nothing paid
    assert stats["tasks_per_prompt"] == {"before": 1}
    redis_server.start()  # the same port, empty
    worker.send(cmd="submit", prompt="after")
    worker.wait_for(lambda ev: count("result")(ev) >= 2, 20)
    stats = server.stats()
    assert stats["tasks_per_prompt"] == {"before": 1, "after": 1}
    assert worker.close() == 0


def callback_lines(access_log: Any) -> list[str]:
    """The access log's lines for the API's callbacks (every other request is the test's)."""
    return [line for line in access_log.read_text().splitlines() if TEST_AGENT not in line]


def _gunicorn_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("gunicorn") is None


async def _owners_left(redis_url: str, token: str) -> int:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        return int(await redis.hlen(f"flux:{{{namespace_for(token)}}}:owners"))
    finally:
        await redis.aclose()


@pytest.mark.slow
@pytest.mark.skipif(_gunicorn_missing(), reason="gunicorn is not installed")
def test_the_gunicorn_example_serves_100_jobs(
    api: Serve, redis_server: RedisServer, tmp_path: Any
) -> None:
    """examples/fleet_service.py under gunicorn, 4 aiohttp workers, callbacks on all of them."""
    import aiohttp

    server = api(0.2, 0.5)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ACEDATACLOUD_API_TOKEN": server.token,
           "FLUX_ASYNC_BASE_URL": server.url, "FLUX_REDIS_URL": redis_server.url,
           "FLUX_PUBLIC_URL": base, "FLUX_CALLBACK_SECRET": SECRET,
           "FLUX_LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT)}
    log_path, access_path = tmp_path / "gunicorn.log", tmp_path / "access.log"
    submitters: Counter[str] = Counter()  # worker pid -> jobs it submitted
    with open(log_path, "wb") as log:
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "aiohttp.GunicornWebWorker", "-w", "4",
             "--bind", f"fd://{listener.fileno()}", "--graceful-timeout", "10",
             # Which worker served each request, and for whom (never the query
             # string: callback URLs carry their token there).
             "--access-logfile", str(access_path), "--access-logformat",
             "%P %{User-Agent}i",
             "examples.fleet_service:app_factory"],
            cwd=ROOT, env=env, pass_fds=[listener.fileno()], stdout=log, stderr=log,
        )
    listener.close()  # gunicorn has its own copy

    Stats = dict[str, Any]

    async def drive() -> tuple[Stats, Stats, int, list[Stats]]:
        timeout = aiohttp.ClientTimeout(total=90)
        headers = {"User-Agent": TEST_AGENT}
        # A connection per request, as many clients behind a load balancer would
        # come: kept-alive connections would pin every job to one worker.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers,
                                         connector=connector) as http:
            deadline = time.monotonic() + 30
            while True:  # up once a worker answers (an unknown id: 404 from the API)
                assert gunicorn.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                try:
                    async with http.get(f"{base}/images/not-a-task") as response:
                        if response.status == 404:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)

            # The probe asked the API about its unknown id: queries from here on count.
            probes = await asyncio.to_thread(server.stats)

            # Users arriving one after another, 10 at a time (a burst of 100 new
            # connections at once is accepted whole by the first worker awake).
            arrivals = asyncio.Semaphore(10)

            async def submit(i: int) -> str:
                job = {"prompt": f"job {i}"}
                async with arrivals, http.post(f"{base}/images", json=job) as response:
                    assert response.status == 202, await response.text()
                    submitters[response.headers["X-Worker-Pid"]] += 1
                    return str((await response.json())["task_id"])

            task_ids = await asyncio.gather(*(submit(i) for i in range(100)))
            deadline = time.monotonic() + 30
            while (await asyncio.to_thread(server.stats))["callbacks_sent"] < 100:
                assert time.monotonic() < deadline, "not every callback was accepted"
                await asyncio.sleep(0.05)
            before_reading = await asyncio.to_thread(server.stats)
            owners_left = await _owners_left(redis_server.url, server.token)
            views = []
            for task_id in task_ids:
                async with http.get(f"{base}/images/{task_id}") as response:
                    views.append(await response.json())
            return probes, before_reading, owners_left, views

    try:
        probes, stats, owners_left, views = asyncio.run(drive())
    finally:
        gunicorn.terminate()
        try:
            gunicorn.wait(20)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
            gunicorn.wait()
    log_text = log_path.read_text(errors="replace")
    assert stats["tasks_created"] == 100
    assert stats["duplicate_prompts"] == {}
    assert stats["statuses"].get("429", 0) == 0
    assert stats["peak_in_flight"] <= 10
    assert stats["callbacks_failed"] == 0
    # Every waiter was resolved by a callback, at whichever worker received it: no
    # task query was needed, and no task is still recorded as followed.
    assert queries(stats) == queries(probes)
    assert owners_left == 0
    assert "unclaimed callback" not in log_text
    assert [v["status"] for v in views] == ["succeeded"] * 100, views
    assert all(len(v["images"]) == 1 for v in views)
    # The API's callbacks went to whichever worker took the connection. A worker
    # that received more callbacks than it had submitted tasks got some for tasks
    # another worker waited on, and every wait was resolved (no query, nothing
    # followed any more): at least this many callbacks were routed between workers.
    settle(lambda: len(callback_lines(access_path)) >= 100)
    receivers = Counter(line.split(" ", 1)[0].strip("<>") for line in callback_lines(access_path))
    routed = sum(max(0, n - submitters[pid]) for pid, n in receivers.items())
    print(f"\n100 jobs through gunicorn: jobs submitted per worker "
          f"{sorted(submitters.values())}, callbacks received {sorted(receivers.values())}: "
          f"at least {routed} routed")
    assert sum(receivers.values()) == 100
    assert len(submitters) >= 2
    assert routed > 0

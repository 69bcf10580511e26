"""Two FluxClients sharing one RedisCoordinator against one local server with a hard
in-flight limit: the shared slots keep them under it, so the service never says 429.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from aiohttp import web

from flux_async import ConfigurationError, FluxClient, GenerateRequest, Recovered
from flux_async._core.callbacks import TOKEN_PARAM, CallbackBook
from flux_async.redis import RedisCoordinator, namespace_for
from flux_async.testing import LocalFluxServer, ServerSettings
from flux_async.web import CALLBACK_RECEIVER, add_callback_route

from ..conftest import serve
from ..journal_worker import spawn
from .conftest import until

pytestmark = pytest.mark.anyio

CAPACITY = 3
SECRET = "the-fleet's-callback-secret"
JOBS = 12  # per client


async def _run_two(server: LocalFluxServer, make: object) -> None:
    clients = [make(), make()]  # type: ignore[operator]
    async with clients[0], clients[1], anyio.create_task_group() as group:
        for client in clients:
            for i in range(JOBS):
                group.start_soon(client.generate, f"job {i}")


async def test_two_clients_sharing_a_coordinator_stay_within_the_token_limit(
    redis_url: str,
) -> None:
    settings = ServerSettings(generation_time=(0.05, 0.2), max_in_flight=CAPACITY, seed=3)
    async with LocalFluxServer(settings) as server:
        coordinator = RedisCoordinator.from_url(redis_url, api_key=server.token,
                                                lease=2.0, timeout=1.0)

        def make() -> FluxClient:
            return FluxClient(server.token, base_url=server.url, max_concurrency=CAPACITY,
                              submit_rate=None, poll_interval=0.05, busy_poll_interval=0.02,
                              coordinator=coordinator)

        await _run_two(server, make)
        stats = server.stats
        print(f"shared: {stats.tasks_created} tasks, peak in flight {stats.peak_in_flight}, "
              f"429s {stats.rate_limited}")
        assert stats.tasks_created == 2 * JOBS
        assert stats.rate_limited == 0
        assert stats.peak_in_flight <= CAPACITY
        assert coordinator._closed  # the last client to close closed it


async def test_a_coordinator_built_without_a_key_takes_its_clients_key(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a new user writes it: the key given once, to the client, none in the environment.
    monkeypatch.delenv("ACEDATACLOUD_API_TOKEN", raising=False)
    settings = ServerSettings(generation_time=(0.01, 0.05), seed=5)
    server_key = "key-one"
    async with LocalFluxServer(settings, tokens=[server_key, "key-two"]) as server:
        coordinator = RedisCoordinator.from_url(redis_url, lease=2.0, timeout=1.0)
        assert coordinator.namespace is None
        client = FluxClient(server_key, base_url=server.url, coordinator=coordinator,
                            poll_interval=0.05)
        other = FluxClient("key-two", base_url=server.url, coordinator=coordinator)
        async with client:
            result = await client.generate("a white siamese cat")
            assert result.urls
            assert coordinator.namespace == namespace_for(server_key)
            assert coordinator.namespace not in repr(coordinator)
            # A second client of another key on the same coordinator is refused
            # before anything is sent, with a message that says what to do.
            before = sum(server.stats.requests.values())
            with pytest.raises(ConfigurationError, match="another API key"):
                await other.generate("never sent")
            assert sum(server.stats.requests.values()) == before
            await other.aclose()
        assert server.stats.tasks_created == 1


async def test_a_coordinator_with_no_key_anywhere_says_where_one_goes(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACEDATACLOUD_API_TOKEN", raising=False)
    coordinator = RedisCoordinator.from_url(redis_url)
    with pytest.raises(ConfigurationError, match=r"RedisCoordinator\(api_key=.*FluxClient"):
        await coordinator.start()
    await coordinator.close()


async def test_without_the_coordinator_the_same_two_clients_overrun_the_limit() -> None:
    # The control: each client keeps its own three slots, the token allows three.
    settings = ServerSettings(generation_time=(0.05, 0.2), max_in_flight=CAPACITY, seed=3)
    async with LocalFluxServer(settings) as server:

        def make() -> FluxClient:
            return FluxClient(server.token, base_url=server.url, max_concurrency=CAPACITY,
                              submit_rate=None, poll_interval=0.05, busy_poll_interval=0.02,
                              retry_backoff=0.05)

        await _run_two(server, make)
        assert server.stats.rate_limited > 0


async def _route_three(redis_url: str, settings: ServerSettings) -> tuple[list[str], Any, Any]:
    """Three jobs of process A whose callbacks land on process B (the load balancer's choice).

    Two coordinators on one Redis and one namespace: two processes of a fleet, with
    one callback_secret (so each recognises the fleet's tokens). Returns the prompts
    of A's results, B's receiver counts and the server's stats.
    """
    async with LocalFluxServer(settings) as server:
        coords = [RedisCoordinator.from_url(redis_url, api_key=server.token, lease=2.0,
                                            timeout=1.0) for _ in range(2)]
        app = web.Application()
        add_callback_route(app, "/cb")
        async with serve(app) as base:
            waiting = FluxClient(server.token, base_url=server.url, submit_rate=None,
                                 callback_url=base + "/cb", callback_poll_interval=60.0,
                                 callback_secret=SECRET, coordinator=coords[0])
            other = FluxClient(server.token, base_url=server.url, callback_secret=SECRET,
                               coordinator=coords[1])
            app[CALLBACK_RECEIVER].client = other
            async with waiting, other:
                with anyio.fail_after(10):
                    results = [await waiting.generate(f"job {i}") for i in range(3)]

                    async def answered() -> bool:  # A resolves before B answers the post
                        return server.stats.callbacks_sent + server.stats.callbacks_failed == 3

                    await until(answered)
            counts = app[CALLBACK_RECEIVER].counts
        return [r.images[0].prompt for r in results], counts, server.stats


async def test_a_callback_landing_on_another_process_is_routed_to_the_waiting_one(
    redis_url: str,
) -> None:
    # Generations of 10-50 ms: a callback may come before or after the record of its
    # task reaches Redis, and is routed either way.
    prompts, counts, stats = await _route_three(
        redis_url, ServerSettings(generation_time=(0.01, 0.05), seed=4))
    assert prompts == ["job 0", "job 1", "job 2"]
    assert counts["routed"] == 3  # each judged by the waiting process: resolved
    assert stats.requests["retrieve"] + stats.requests["retrieve_batch"] == 0


async def test_a_callback_that_beats_the_submissions_answer_is_routed_by_its_token(
    redis_url: str,
) -> None:
    # The service answers each submission 0.3 s after creating its task, which ends in
    # 10 ms: every callback lands on B while nobody, not even Redis, knows the task.
    # B routes it by the tag its (authentic) token carries; A holds it until the
    # answer comes, and the wait resolves with no task query.
    prompts, counts, stats = await _route_three(
        redis_url, ServerSettings(generation_time=0.01, submit_answer_delay=0.3, seed=5))
    assert prompts == ["job 0", "job 1", "job 2"]
    assert counts["routed"] == 3
    assert stats.requests["retrieve"] + stats.requests["retrieve_batch"] == 0


async def test_shared_rounds_ask_about_every_process_s_tasks_once(redis_url: str) -> None:
    # Two processes of a fleet, no callbacks. A would ask about its tasks once a
    # minute; B's rounds come every 0.1 s and claim the fleet's tasks, A's among them,
    # so A's waits end through B's answers, without a round of A's own.
    settings = ServerSettings(generation_time=(0.2, 0.4), seed=6)
    async with LocalFluxServer(settings) as server:
        coords = [RedisCoordinator.from_url(redis_url, api_key=server.token, lease=2.0,
                                            timeout=1.0) for _ in range(2)]
        a = FluxClient(server.token, base_url=server.url, submit_rate=None, poll_interval=60.0,
                       busy_poll_interval=60.0, coordinator=coords[0])
        b = FluxClient(server.token, base_url=server.url, submit_rate=None, poll_interval=0.1,
                       busy_poll_interval=0.1, coordinator=coords[1])
        a_done = anyio.Event()
        results = []

        async def run_a() -> None:
            results.extend([await a.generate(f"a{i}") for i in range(3)])
            a_done.set()

        async def keep_b_polling() -> None:
            n = 0
            while not a_done.is_set():
                await b.generate(f"b{n}")
                n += 1

        async with a, b:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    group.start_soon(run_a)
                    group.start_soon(keep_b_polling)
            own_rounds = a._parts.poller.rounds
        assert [r.images[0].prompt for r in results] == ["a0", "a1", "a2"]
        assert own_rounds == 0
        # Each of B's rounds asked about both processes' tasks in one batch query.
        assert server.stats.requests["retrieve"] == 0


async def test_a_client_closing_with_tasks_running_leaves_their_slots_to_the_adopter(
    redis_url: str,
) -> None:
    # A closes while its 2 tasks still generate: they stay recorded, with their slots
    # (never freed for a new submission while the service still runs them). B's
    # renewal adopts both, with their slots, and gives each back when its task ends.
    settings = ServerSettings(generation_time=3.0, seed=7)
    async with LocalFluxServer(settings) as server:
        coords = [RedisCoordinator.from_url(redis_url, api_key=server.token, lease=1.0,
                                            timeout=1.0) for _ in range(2)]
        recovered: list[Recovered] = []
        a = FluxClient(server.token, base_url=server.url, submit_rate=None,
                       max_concurrency=CAPACITY, coordinator=coords[0])
        b = FluxClient(server.token, base_url=server.url, submit_rate=None,
                       max_concurrency=CAPACITY, coordinator=coords[1],
                       on_recovered=recovered.append)

        async def slots() -> set[str]:
            members = await coords[1].command("ZRANGE", coords[1].key("slots"), 0, -1)
            return {m.decode() for m in members}

        async with b:
            async with a:
                tasks = [await a.submit(GenerateRequest(f"a{i}")) for i in range(2)]
            a_id, b_id = coords[0].process_id, coords[1].process_id
            assert len(await slots()) == 2  # closing kept them: the tasks still run

            async def adopted() -> bool:
                return await slots() == {f"{b_id}|{t.id}" for t in tasks}

            await until(adopted, within=2.5)
            assert b._parts.slots.in_use == 2
            assert not any(s.startswith(f"{a_id}|") for s in await slots())

            async def ended() -> bool:
                return len(recovered) == 2 and not await slots()

            await until(ended, within=10)
        assert sorted(r.task_id for r in recovered) == sorted(t.id for t in tasks)
        assert all(r.ok for r in recovered)
        assert server.stats.tasks_created == 2


async def test_a_callback_whose_process_died_before_recording_it_is_unclaimed(
    redis_url: str,
) -> None:
    # The token of a process that died between its submission's answer and the
    # record: nobody owns the task, nobody listens on the tag's channel. The post is
    # unclaimed at once (a receiver hands it to on_unclaimed), not held or lost.
    async with LocalFluxServer(ServerSettings(seed=8)) as server:
        coord = RedisCoordinator.from_url(redis_url, api_key=server.token, timeout=1.0)
        client = FluxClient(server.token, base_url=server.url, callback_secret=SECRET,
                            coordinator=coord)
        _, url = CallbackBook(SECRET).issue("http://fleet/cb", tag="0123456789ab")
        token = parse_qs(urlsplit(url).query)[TOKEN_PARAM][0]
        body = {"success": True, "task_id": "t-gone", "trace_id": "tr",
                "data": [{"image_url": "https://cdn.example/x.png", "prompt": "p"}]}
        async with client:
            with anyio.fail_after(5):
                verdict = await client.handle_callback(token, body)
    assert (verdict.status, verdict.kind) == (404, "unclaimed")
    assert verdict.task is not None
    assert verdict.task.id == "t-gone"


async def test_four_processes_with_one_key_pay_once_through_the_fleets_redis(
    redis_url: str,
) -> None:
    settings = ServerSettings(generation_time=1.0, submit_answer_delay=0.2)
    async with LocalFluxServer(settings) as server:
        processes = [await spawn("keyed", "--url", server.url, "--token", server.token,
                                 "--redis", redis_url, "--key", "order-9")
                     for _ in range(4)]
        answers = []
        for process in processes:
            out, err = await process.communicate()
            assert process.returncode == 0, err.decode()
            answers.append(json.loads(out.decode().splitlines()[-1]))
        assert len({answer.get("task_id") for answer in answers}) == 1, answers
        assert server.stats.tasks_created == 1
        assert server.stats.requests["images"] == 1

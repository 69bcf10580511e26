"""Off the loopback, no paid task is lost: a lagging task store, and cancellation mid-POST.

Both conditions are reproduced by the local server: ``visibility_delay`` keeps new
tasks unknown to ``/flux/tasks`` for a while, ``submit_answer_delay`` holds the
submission's answer after the task was created.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random

import pytest

from flux_async import GenerateRequest, ImageResult, TaskClosedError, TaskError
from flux_async.testing import LocalFluxServer, ServerSettings

from .conftest import client_for, eventually

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("how", ["gather", "map"])
async def test_tasks_the_task_store_does_not_know_yet_are_all_delivered(how: str) -> None:
    settings = ServerSettings(generation_time=(0.05, 0.5), visibility_delay=2.0, seed=31)
    async with LocalFluxServer(settings) as server:
        # Busy polling every 20 ms: about 100 rounds before any task becomes visible.
        async with client_for(server, max_concurrency=200) as client:
            if how == "gather":
                results = await asyncio.gather(
                    *(client.generate(f"p{i}") for i in range(200)), return_exceptions=True
                )
            else:
                outcomes = [o async for o in client.map(
                    [GenerateRequest(f"p{i}") for i in range(200)])]
                results = [o.result if o.ok else o.error for o in outcomes]  # type: ignore[misc]
        stats = server.stats
    errors = [r for r in results if not isinstance(r, ImageResult)]
    assert errors == []
    assert stats.tasks_created == 200
    assert {r.task_id for r in results if isinstance(r, ImageResult)} == set(stats.finish_times)
    # The invisible spell cost batch slots, not one retrieve per id.
    assert stats.requests["retrieve"] == 0


async def test_every_created_task_reaches_the_caller_whatever_cancels_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """100 generate() calls cancelled at random moments, half by task.cancel(),
    half by asyncio.wait_for, while each submission's answer takes 0.3 s."""
    caplog.set_level(logging.WARNING, logger="flux_async")
    rng = random.Random(9)
    settings = ServerSettings(generation_time=(0.3, 1.0), submit_answer_delay=0.3, seed=32)
    before = asyncio.all_tasks()
    traced: set[str] = set()
    async with LocalFluxServer(settings) as server:
        client = client_for(server, max_concurrency=100)
        async with client:

            async def cancelled_by_task_cancel(i: int, delay: float) -> None:
                task = asyncio.get_running_loop().create_task(client.generate(f"c{i}"))
                await asyncio.sleep(delay)  # the random moment of the cancellation
                task.cancel()
                try:
                    traced.add((await task).task_id)
                except asyncio.CancelledError:
                    pass
                except TaskError as exc:
                    traced.add(exc.task_id or "")

            async def cancelled_by_wait_for(i: int, delay: float) -> None:
                try:
                    result = await asyncio.wait_for(client.generate(f"w{i}"), delay)
                    traced.add(result.task_id)
                except asyncio.TimeoutError:  # not the builtin TimeoutError on 3.10
                    pass
                except TaskError as exc:
                    traced.add(exc.task_id or "")

            await asyncio.gather(*(
                (cancelled_by_task_cancel if i % 2 else cancelled_by_wait_for)(
                    i, rng.uniform(0.0, 0.7))
                for i in range(100)
            ))

            def logged() -> set[str]:
                text = " ".join(r.getMessage() for r in caplog.records
                                if r.levelno >= logging.WARNING)
                return {t for t in server.stats.finish_times if t in text}

            # Answers of POSTs whose caller left arrive up to 0.3 s later.
            with contextlib.suppress(TimeoutError):
                await eventually(lambda: set(server.stats.finish_times) <= traced | logged())
            created = set(server.stats.finish_times)
            untraced = created - traced - logged()
            assert not untraced, {  # where each lost id is, to say which path lost it
                t: (t in client._tracker.recent, client._tracker.find(t) is not None)
                for t in untraced}
            only_logged = created - traced
            assert only_logged  # some cancellations did land while a POST was out
            # A logged id is usable: the task was followed, its result is kept.
            for task_id in sorted(only_logged)[:10]:
                assert (await client.wait(task_id, timeout=10)).task_id == task_id
        assert client._link._session is not None
        assert client._link._session.closed
    assert 0 < len(created) <= 100
    assert server.stats.duplicate_prompts == {}
    gc.collect()
    assert asyncio.all_tasks() - before == set()


async def test_closing_lets_a_paid_post_answer_and_names_its_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flux_async")
    settings = ServerSettings(generation_time=30.0, submit_answer_delay=0.5, seed=33)
    before = asyncio.all_tasks()
    async with LocalFluxServer(settings) as server:
        client = client_for(server)
        async with client:
            job = asyncio.get_running_loop().create_task(client.generate("closing"))
            submitted = asyncio.get_running_loop().create_task(
                client.submit(GenerateRequest("submitted")))
            await eventually(lambda: server.stats.tasks_created == 2)
            # Both POSTs are on the wire, their answers 0.5 s away: close now.
        with pytest.raises(TaskClosedError) as info:
            await job
        task = await submitted  # the submission itself completed: its id came back
        created = set(server.stats.finish_times)
    assert {info.value.task_id, task.id} == created
    closing = [r.getMessage() for r in caplog.records if "closed with" in r.getMessage()]
    assert len(closing) == 1
    assert all(task_id in closing[0] for task_id in created)
    gc.collect()
    assert asyncio.all_tasks() - before == set()

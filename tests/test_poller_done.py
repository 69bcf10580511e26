"""``Done``, the small one-shot flag every pending task's entry holds."""

from __future__ import annotations

import asyncio
import sys

import anyio
import pytest

from flux_async._engine.primitives import Done


@pytest.mark.anyio
async def test_wait_returns_once_set_and_wakes_every_waiter() -> None:
    done = Done()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await done.wait()
        woken.append(n)

    async with anyio.create_task_group() as group:
        for n in range(3):
            group.start_soon(waiter, n)
        await anyio.wait_all_tasks_blocked()  # every waiter is parked on the flag
        assert not done.is_set()
        assert woken == []
        done.set()
        done.set()  # idempotent
    assert done.is_set()
    assert sorted(woken) == [0, 1, 2]


@pytest.mark.anyio
async def test_wait_on_a_set_flag_still_checkpoints() -> None:
    done = Done()
    done.set()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await done.wait()  # a checkpoint: the pending cancellation is delivered here
    assert scope.cancelled_caught


@pytest.mark.anyio
async def test_a_cancelled_waiter_is_forgotten_and_others_still_wake() -> None:
    done = Done()
    with anyio.move_on_after(0.01) as scope:
        await done.wait()
    assert scope.cancelled_caught
    assert not done._waiters  # nothing left behind by the timed-out wait

    task = asyncio.get_running_loop().create_task(done.wait())
    await asyncio.sleep(0)
    done.set()
    await asyncio.wait_for(task, 1)


def test_it_is_small() -> None:
    # The point of it: 10,000 pending tasks hold 10,000 of these.
    assert sys.getsizeof(Done()) < 100

"""``Flights``: map's submissions as bare asyncio tasks, awaited, failed and stopped as one."""

from __future__ import annotations

import asyncio

import pytest

from flux_async._engine.primitives import Flights

pytestmark = pytest.mark.anyio


async def test_wait_returns_once_every_task_ended() -> None:
    flights = Flights(lambda: None)
    gates = [asyncio.get_running_loop().create_future() for _ in range(3)]
    ended: list[int] = []

    async def one(i: int) -> None:
        await gates[i]
        ended.append(i)

    for i in range(3):
        flights.start(one(i))
    waiting = asyncio.ensure_future(flights.wait())
    for gate in gates[:2]:
        gate.set_result(None)
    await asyncio.sleep(0)  # a turn of the loop: the two ended, the wait did not
    await asyncio.sleep(0)
    assert sorted(ended) == [0, 1]
    assert not waiting.done()
    gates[2].set_result(None)
    await waiting
    assert len(flights) == 0
    assert flights.error is None


async def test_a_task_that_raises_is_a_bug_reported_once() -> None:
    told: list[bool] = []
    flights = Flights(lambda: told.append(True))

    async def bug() -> None:
        raise RuntimeError("bug")

    flights.start(bug())
    flights.start(bug())
    await flights.wait()
    assert isinstance(flights.error, RuntimeError)
    assert told == [True]


async def test_stop_cancels_until_every_task_ended() -> None:
    flights = Flights(lambda: None)
    cancels: list[int] = []

    async def stubborn() -> None:
        # Swallows the first cancellation: stop() must cancel it again, as a
        # cancelled anyio scope would, rather than wait for it forever.
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            cancels.append(1)
        await asyncio.get_running_loop().create_future()

    async def plain() -> None:
        await asyncio.get_running_loop().create_future()

    flights.start(stubborn())
    flights.start(plain())
    await asyncio.sleep(0)  # both started and waiting
    await asyncio.wait_for(flights.stop(), 5)
    assert len(flights) == 0
    assert cancels == [1]
    assert flights.error is None

"""Bulk work at the vendor's limits: map, 429s, retries that never pay twice, cancellation."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from flux_async import (
    ClientClosedError,
    ConnectError,
    EditRequest,
    FluxClient,
    GenerateRequest,
    MapEvent,
    Outcome,
    SubmissionUncertainError,
    TaskClosedError,
    TaskFailedError,
    TaskTimeoutError,
    ValidationError,
)
from flux_async.testing import Faults, LocalFluxServer, ServerSettings

from .conftest import client_for, eventually

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

pytestmark = pytest.mark.anyio

FAST = ServerSettings(generation_time=(0.05, 0.3), seed=11)


def _requests(n: int, tag: str = "p") -> list[GenerateRequest]:
    return [GenerateRequest(f"{tag} {i}") for i in range(n)]


async def _collect(client: FluxClient, requests: object, **kwargs: object) -> list[Outcome]:
    return [outcome async for outcome in client.map(requests, **kwargs)]  # type: ignore[arg-type]


# --- map ---------------------------------------------------------------------------


async def test_map_yields_one_outcome_per_request_in_completion_order() -> None:
    async with LocalFluxServer(FAST) as server, client_for(server) as client:
        outcomes = await _collect(client, _requests(40))
    assert sorted(o.index for o in outcomes) == list(range(40))
    assert all(o.ok and o.result is not None for o in outcomes)
    assert [o.index for o in outcomes] != list(range(40))  # completion order, not input order
    assert {o.request.prompt for o in outcomes} == {f"p {i}" for i in range(40)}


async def test_map_ordered_keeps_input_order() -> None:
    async with LocalFluxServer(FAST) as server, client_for(server, max_concurrency=5) as client:
        outcomes = await _collect(client, _requests(25), ordered=True)
    assert [o.index for o in outcomes] == list(range(25))


async def test_one_failure_never_aborts_the_rest() -> None:
    settings = ServerSettings(generation_time=(0.05, 0.2), failure_rate=0.3, seed=12)
    requests: list[object] = [*_requests(20), "not a request", GenerateRequest("last")]
    async with LocalFluxServer(settings) as server, client_for(server) as client:
        outcomes = await _collect(client, requests)
    assert len(outcomes) == 22
    failed = [o for o in outcomes if not o.ok]
    assert any(isinstance(o.error, TaskFailedError) and o.task_id for o in failed)
    bad = [o for o in outcomes if isinstance(o.error, ValidationError)]
    assert len(bad) == 1
    assert bad[0].index == 20
    assert any(o.ok for o in outcomes)


async def test_map_reads_its_input_lazily_and_stops_when_left() -> None:
    pulled = 0

    def endless() -> Iterator[GenerateRequest]:
        nonlocal pulled
        while True:  # a million requests, or more: never materialised
            pulled += 1
            yield GenerateRequest(f"p {pulled}")

    before = asyncio.all_tasks()
    async with LocalFluxServer(FAST) as server:
        async with client_for(server, max_concurrency=4) as client:
            taken = 0
            async for outcome in client.map(endless()):
                assert outcome.ok
                taken += 1
                if taken == 10:
                    break
            # At most max_concurrency ahead of what was consumed (+1 being read).
            assert pulled <= taken + 4 + 1
        created = server.stats.tasks_created
    assert created <= pulled
    assert asyncio.all_tasks() - before == set()


async def test_map_takes_async_iterables_and_reports_progress() -> None:
    async def produce() -> AsyncIterator[GenerateRequest | EditRequest]:
        for i in range(6):
            yield GenerateRequest(f"g {i}")
        yield EditRequest("e", image_url="https://example.invalid/x.png")

    events: list[MapEvent] = []
    async with LocalFluxServer(FAST) as server, client_for(server) as client:
        outcomes = await _collect(client, produce(), on_event=events.append)
    assert len(outcomes) == 7
    kinds = [e.kind for e in events]
    assert kinds.count("submitted") == 7
    assert kinds.count("succeeded") == 7
    last = events[-1].progress
    assert (last.submitted, last.succeeded, last.failed, last.in_flight) == (7, 7, 0, 0)
    assert all(e.task_id for e in events if e.kind == "submitted")


async def test_map_never_holds_more_than_max_concurrency_in_flight() -> None:
    async with LocalFluxServer(FAST) as server, client_for(server, max_concurrency=7) as client:
        peak = 0

        def watch(_: MapEvent) -> None:
            nonlocal peak
            peak = max(peak, client.in_flight)

        outcomes = await _collect(client, _requests(60), on_event=watch)
    assert len(outcomes) == 60
    assert peak <= 7
    assert server.stats.peak_in_flight <= 7


async def test_a_deadline_in_map_gives_timeouts_that_carry_the_task_id() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=5.0, seed=13)) as server:
        async with client_for(server) as client:
            outcomes = await _collect(client, _requests(3), timeout=0.2)
    assert all(isinstance(o.error, TaskTimeoutError) for o in outcomes)
    assert all(o.task_id for o in outcomes)


# --- rate limits and 429s ------------------------------------------------------------


async def test_client_at_the_server_limits_gets_no_429() -> None:
    settings = ServerSettings(generation_time=(0.1, 0.4), max_in_flight=10, submit_rate=20,
                              query_rate=60, seed=14)
    async with LocalFluxServer(settings) as server:
        client = FluxClient(server.token, base_url=server.url, submit_rate=20,
                            poll_interval=0.1, busy_poll_interval=0.05)
        async with client:
            outcomes = await _collect(client, _requests(60))
    assert all(o.ok for o in outcomes)
    assert server.stats.rate_limited == 0
    assert server.stats.peak_in_flight <= 10


@pytest.mark.parametrize("retry_after_share", [0.0, 0.5, 1.0])
async def test_tighter_server_limits_only_change_the_429_rate(retry_after_share: float) -> None:
    settings = ServerSettings(generation_time=(0.05, 0.2), submit_rate=8, max_in_flight=4,
                              retry_after_share=retry_after_share, seed=15)
    async with LocalFluxServer(settings) as server:
        client = client_for(server, submit_rate=30, max_concurrency=10)
        async with client:
            outcomes = await _collect(client, _requests(40))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert server.stats.rate_limited > 0
    assert server.stats.duplicate_prompts == {}
    assert server.stats.tasks_created == 40


async def test_query_429s_slow_the_poller_but_lose_nothing() -> None:
    settings = ServerSettings(generation_time=(0.05, 0.2), query_rate=5, seed=16)
    async with LocalFluxServer(settings) as server:
        async with client_for(server, batch_size=2, query_rate=50) as client:
            outcomes = await _collect(client, _requests(20))
    assert all(o.ok for o in outcomes)
    assert server.stats.rate_limited > 0


# --- retries that never pay twice ----------------------------------------------------

IMAGE_FAULTS = Faults(server_error=0.04, gateway_page=0.04, reset_before=0.04, reset_after=0.04,
                      truncated=0.04, slow=0.04, slow_delay=3.0)


async def test_faulty_submissions_end_typed_and_are_never_sent_twice() -> None:
    settings = ServerSettings(generation_time=(0.05, 0.2), faults={"images": IMAGE_FAULTS,
                              "tasks": Faults(server_error=0.05, reset_before=0.05)},
                              submit_rate=50, seed=17)
    async with LocalFluxServer(settings) as server:
        client = client_for(server, max_concurrency=20, request_timeout=1.0)
        async with client:
            outcomes = await _collect(client, _requests(150))
        stats = server.stats
    assert len(outcomes) == 150
    errors = [o.error for o in outcomes if not o.ok]
    assert errors
    assert all(isinstance(e, SubmissionUncertainError) for e in errors), errors
    for error in errors:
        assert isinstance(error, SubmissionUncertainError)
        assert isinstance(error.request, GenerateRequest)
        assert error.__cause__ is not None
    assert stats.duplicate_prompts == {}
    assert max(stats.tasks_per_prompt.values()) == 1


async def test_opting_in_resends_uncertain_submissions() -> None:
    settings = ServerSettings(generation_time=(0.05, 0.2),
                              faults={"images": Faults(server_error=0.3)}, seed=18)
    async with LocalFluxServer(settings) as server:
        client = client_for(server, resend_uncertain=True, max_retries=10, retry_backoff=0.05)
        async with client:
            outcomes = await _collect(client, _requests(20))
    assert all(o.ok for o in outcomes)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connect_errors_are_retried_until_the_service_is_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()
    refused = anyio.Event()

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "re-sending" in record.getMessage():
                refused.set()

    spy = Spy()
    logging.getLogger("flux_async").addHandler(spy)
    try:
        server = LocalFluxServer(FAST, port=port)
        client = FluxClient(server.token, base_url=f"http://127.0.0.1:{port}", poll_interval=0.05)
        async with client, anyio.create_task_group() as group:
            results: list[object] = []

            async def generate() -> None:
                results.append(await client.generate("a cat"))

            group.start_soon(generate)
            await refused.wait()  # the first attempt was refused: nothing listens yet
            await server.start()
        await server.close()
    finally:
        logging.getLogger("flux_async").removeHandler(spy)
    assert len(results) == 1
    assert server.stats.tasks_created == 1


async def test_connect_errors_give_up_after_max_retries() -> None:
    client = FluxClient("k", base_url=f"http://127.0.0.1:{_free_port()}", max_retries=2,
                        retry_backoff=0.01)
    async with client:
        with pytest.raises(ConnectError):
            await client.generate("a cat")
        assert client.in_flight == 0


# --- cancellation and deadlines -------------------------------------------------------

SLOW = ServerSettings(generation_time=30.0, seed=19)


async def test_a_cancel_scope_gives_the_slot_back_and_leaves_nothing() -> None:
    before = asyncio.all_tasks()
    async with LocalFluxServer(SLOW) as server:
        async with client_for(server, max_concurrency=2) as client:
            with anyio.move_on_after(0.3):
                await asyncio.gather(*(client.generate(f"p{i}") for i in range(5)))
            assert client.in_flight == 0
            assert len(client._tracker) == 0
    gc.collect()
    assert asyncio.all_tasks() - before == set()


async def test_task_cancel_mid_wait() -> None:
    async with LocalFluxServer(SLOW) as server, client_for(server) as client:
        task = asyncio.get_running_loop().create_task(client.generate("p"))
        await eventually(lambda: server.stats.tasks_created == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.in_flight == 0


async def test_an_exception_in_a_sibling_cancels_cleanly() -> None:
    before = asyncio.all_tasks()
    async with LocalFluxServer(SLOW) as server:
        with pytest.raises(ExceptionGroup) as info:  # noqa: PT012
            async with client_for(server) as client, anyio.create_task_group() as group:
                for i in range(3):
                    group.start_soon(client.generate, f"p{i}")
                await eventually(lambda: server.stats.tasks_created == 3)
                raise RuntimeError("boom")
        assert info.group_contains(RuntimeError)
    gc.collect()
    assert asyncio.all_tasks() - before == set()


async def test_breaking_out_of_map_cancels_the_rest() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=(0.05, 5.0), seed=20)) as server:
        async with client_for(server, max_concurrency=5) as client:
            async for outcome in client.map(_requests(50)):
                assert outcome.ok
                break
            await eventually(lambda: client.in_flight == 0)
            assert server.stats.tasks_created <= 6


async def test_leaving_the_client_mid_map_is_clean() -> None:
    before = asyncio.all_tasks()
    async with LocalFluxServer(SLOW) as server:
        with anyio.move_on_after(0.3):
            async with client_for(server) as client:
                async for _ in client.map(_requests(20)):
                    pass
    gc.collect()
    assert asyncio.all_tasks() - before == set()


async def test_cancelling_during_the_paid_post_still_learns_the_task_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The answer to the submission is delayed after the task was created: cancel then.
    settings = ServerSettings(generation_time=30.0, seed=21,
                              faults={"images": Faults(slow=1.0, slow_delay=0.5)})
    caplog.set_level(logging.WARNING, logger="flux_async")
    submitted: list[str] = []
    async with LocalFluxServer(settings) as server, client_for(server) as client:
        with anyio.move_on_after(5) as outer:
            async with anyio.create_task_group() as group:
                async def consume() -> None:
                    async for _ in client.map([GenerateRequest("p")],
                                              on_event=lambda e: submitted.append(e.task_id or "")):
                        pass

                group.start_soon(consume)
                await eventually(lambda: server.stats.tasks_created == 1)
                group.cancel_scope.cancel()  # the POST is on the wire, its answer not yet back
        assert not outer.cancelled_caught
        # The POST was let answer: its task is followed in the background, holding
        # its slot, and its id reaches the progress hook and a WARNING record.
        await eventually(lambda: bool(submitted))
        created = set(server.stats.finish_times)
        assert client.in_flight == 1
    assert len(created) == 1
    assert submitted == list(created)
    assert any(next(iter(created)) in r.getMessage() for r in caplog.records
               if r.levelno >= logging.WARNING)


# --- map raises the error itself ----------------------------------------------------


def _failing_input() -> Iterator[GenerateRequest]:
    yield GenerateRequest("first")
    raise KeyError("the input broke")


def _hook_failing_on(kind: str) -> object:
    def hook(event: MapEvent) -> None:
        if event.kind == kind:
            raise KeyError(f"the hook broke on {kind}")

    return hook


@pytest.mark.parametrize(
    ("requests", "on_event", "message"),
    [
        (_failing_input, None, "the input broke"),
        (lambda: _requests(3), _hook_failing_on("submitted"), "the hook broke on submitted"),
        (lambda: _requests(3), _hook_failing_on("succeeded"), "the hook broke on succeeded"),
    ],
)
async def test_map_raises_the_underlying_error_not_a_group(
    requests: object, on_event: object, message: str
) -> None:
    before = asyncio.all_tasks()
    async with LocalFluxServer(FAST) as server, client_for(server) as client:
        with pytest.raises(KeyError, match=message):
            await _collect(client, requests(), on_event=on_event)  # type: ignore[operator]
        assert await client.generate("still usable")
    gc.collect()
    assert asyncio.all_tasks() - before == set()


async def test_map_raises_client_closed_when_the_client_closes_under_it() -> None:
    async with LocalFluxServer(SLOW) as server:
        client = client_for(server, max_concurrency=3)
        async with client:
            got: list[Outcome] = []

            def endless() -> Iterator[GenerateRequest]:
                n = 0
                while True:
                    n += 1
                    yield GenerateRequest(f"p {n}")

            async def consume() -> None:
                async for outcome in client.map(endless()):
                    got.append(outcome)

            task = asyncio.get_running_loop().create_task(consume())
            await eventually(lambda: server.stats.tasks_created == 3)
        with pytest.raises(ClientClosedError):  # not an ExceptionGroup, not a quiet end
            await task
    # Outcomes delivered before: the waits the close ended, each naming its task.
    assert all(isinstance(o.error, ClientClosedError) for o in got)
    named = [o for o in got if isinstance(o.error, TaskClosedError)]
    assert {o.task_id for o in named} == set(server.stats.finish_times)

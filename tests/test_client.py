"""FluxClient end to end against the local server, over real sockets."""

from __future__ import annotations

import asyncio
import logging
import zlib

import aiohttp
import anyio
import pytest

from flux_async import (
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    EditRequest,
    FluxClient,
    FluxError,
    GenerateRequest,
    InsufficientBalanceError,
    NotFoundError,
    ServerError,
    TaskClosedError,
    TaskFailedError,
    TaskNotFoundError,
    TaskStatus,
    TaskTimeoutError,
    ValidationError,
)
from flux_async.testing import Faults, LocalFluxServer, ServerSettings

from .conftest import client_for, eventually

pytestmark = pytest.mark.anyio


def _is_png(body: bytes) -> bool:
    if not body.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    idat = b""
    pos = 8
    while pos < len(body):
        length = int.from_bytes(body[pos : pos + 4], "big")
        kind = body[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += body[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return len(zlib.decompress(idat)) > 0


async def test_generate_returns_real_images(flux_server: LocalFluxServer) -> None:
    async with client_for(flux_server) as client:
        result = await client.generate("a white siamese cat", count=2, size="1024x1024")
    assert len(result.images) == 2
    assert all(image.prompt == "a white siamese cat" for image in result.images)
    assert result.trace_id
    async with aiohttp.ClientSession() as session:
        for url in result.urls:
            async with session.get(url) as response:
                assert response.headers["content-type"] == "image/png"
                assert _is_png(await response.read())


async def test_edit(flux_server: LocalFluxServer) -> None:
    async with client_for(flux_server) as client:
        result = await client.edit("make it blue", image_url=flux_server.image_url("x-0.png"))
    assert len(result.images) == 1


async def test_two_hundred_gathered_generations() -> None:
    """Issue 2, criterion 2: 200 at once, 1-3 s each, max_concurrency=50, default polling."""
    settings = ServerSettings(generation_time=(1.0, 3.0), seed=2)
    async with LocalFluxServer(settings) as server:
        client = FluxClient(
            server.token, base_url=server.url, max_concurrency=50, submit_rate=None
        )
        async with client:
            results = await asyncio.gather(
                *(client.generate(f"prompt {i}") for i in range(200))
            )
        stats = server.stats
    assert len({r.task_id for r in results}) == 200
    assert all(len(r.images) == 1 for r in results)
    requests = stats.requests["images"] + stats.requests["retrieve"] + stats.requests[
        "retrieve_batch"]
    assert stats.tasks_created == 200
    assert requests / 200 <= 1.3, dict(stats.requests)
    assert stats.peak_in_flight <= 50


@pytest.mark.parametrize(
    ("state", "error", "code"),
    [
        ("invalid", AuthenticationError, "invalid_token"),
        ("expired", AuthenticationError, "token_expired"),
        ("mismatched", AuthenticationError, "token_mismatched"),
        ("used_up", InsufficientBalanceError, "used_up"),
        ("disabled", BadRequestError, "disabled"),
    ],
)
async def test_token_errors_are_typed(
    flux_server: LocalFluxServer, state: str, error: type[FluxError], code: str
) -> None:
    flux_server.set_token_state(flux_server.token, state)  # type: ignore[arg-type]
    async with client_for(flux_server) as client:
        with pytest.raises(error) as info:
            await client.generate("a cat")
    err = info.value
    assert err.code == code  # type: ignore[attr-defined]
    assert err.message  # type: ignore[attr-defined]
    assert err.trace_id  # type: ignore[attr-defined]
    assert flux_server.stats.tasks_created == 0


async def test_an_unknown_token_and_no_token(flux_server: LocalFluxServer) -> None:
    async with FluxClient("sk-not-known", base_url=flux_server.url) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_task("nope")
    assert info.value.status == 401
    assert info.value.code == "invalid_token"


async def test_unknown_task_is_not_found(flux_server: LocalFluxServer) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    async with client_for(flux_server, not_found_grace=0.3) as client:
        with pytest.raises(NotFoundError) as info:
            await client.get_task(unknown)
        assert info.value.status == 404
        assert info.value.trace_id
        # wait() on an id the service does not know ends too once the grace has
        # passed, instead of hanging, and names the task.
        with pytest.raises(TaskNotFoundError) as lost:
            await client.wait(unknown, timeout=30)
    assert isinstance(lost.value, NotFoundError)
    assert lost.value.task_id == unknown
    assert lost.value.status == 404
    assert unknown in str(lost.value)


async def test_an_unknown_id_is_not_declared_lost_within_the_grace(
    flux_server: LocalFluxServer,
) -> None:
    # The default grace is minutes: a short wait on an unknown id times out, as a
    # wait on a task not yet visible must, and costs only batch queries.
    async with client_for(flux_server) as client:
        with pytest.raises(TaskTimeoutError) as info:
            await client.wait("not-visible-yet", timeout=0.5)
    assert info.value.task_id == "not-visible-yet"
    assert flux_server.stats.requests["retrieve"] == 0
    assert flux_server.stats.requests["retrieve_batch"] >= 3


async def test_a_gateway_page_is_a_server_error_not_a_decode_error(
    flux_server: LocalFluxServer,
) -> None:
    flux_server.settings.faults = {"tasks": Faults(gateway_page=1.0)}
    async with client_for(flux_server, max_retries=1) as client:
        with pytest.raises(ServerError) as info:
            await client.get_task("anything")
    assert info.value.status == 502
    assert info.value.code is None
    assert "not a JSON answer" in info.value.message


async def test_failed_task_carries_id_code_and_message(flux_server: LocalFluxServer) -> None:
    flux_server.settings.failure_rate = 1.0
    async with client_for(flux_server) as client:
        with pytest.raises(TaskFailedError) as info:
            await client.generate("a cat")
    assert info.value.task_id
    assert info.value.code == "generation_failed"
    assert info.value.message


async def test_timeout_keeps_the_task_waitable() -> None:
    settings = ServerSettings(generation_time=0.6, seed=3)
    async with LocalFluxServer(settings) as server, client_for(server) as client:
        with pytest.raises(TaskTimeoutError) as info:
            await client.generate("slow cat", timeout=0.1)
        task_id = info.value.task_id
        assert task_id is not None
        assert client.in_flight == 0  # nobody waits: the slot is back
        result = await client.wait(task_id, timeout=10)
    assert result.task_id == task_id
    assert server.stats.tasks_created == 1


async def test_submit_get_task_and_wait(flux_server: LocalFluxServer) -> None:
    async with client_for(flux_server) as client:
        task = await client.submit(GenerateRequest("a cat"))
        assert task.status is TaskStatus.PENDING
        assert client.in_flight == 1  # the submitted task holds its slot until it resolves
        result = await client.wait(task)
        assert result.task_id == task.id
        again = await client.get_task(task.id)
        assert again.status is TaskStatus.SUCCEEDED
        assert again.result is not None
        assert again.result.urls == result.urls
        assert client.in_flight == 0


async def test_get_tasks_in_the_order_asked(flux_server: LocalFluxServer) -> None:
    async with client_for(flux_server, batch_size=2) as client:
        tasks = [await client.submit(GenerateRequest(f"p{i}")) for i in range(5)]
        ids = [t.id for t in reversed(tasks)] + ["unknown-id"]
        for t in tasks:
            await client.wait(t)
        got = await client.get_tasks(ids)
    assert [t.id for t in got] == ids[:-1]
    assert all(t.status is TaskStatus.SUCCEEDED for t in got)
    assert flux_server.stats.requests["retrieve_batch"] >= 3


async def test_batch_refused_falls_back_to_retrieve(flux_server: LocalFluxServer) -> None:
    flux_server.settings.batch_enabled = False
    async with client_for(flux_server) as client:
        results = await asyncio.gather(*(client.generate(f"p{i}") for i in range(6)))
    assert len(results) == 6
    assert flux_server.stats.requests["retrieve"] >= 6
    assert flux_server.stats.requests["retrieve_batch"] == 1  # refused once, never again


@pytest.mark.parametrize("answer", ["minimal", "mixed"])
async def test_every_answer_and_pending_shape(answer: str) -> None:
    settings = ServerSettings(generation_time=(0.1, 0.3), async_answer=answer,  # type: ignore[arg-type]
                              status_words=answer == "mixed", failure_rate=0.3, seed=5)
    async with LocalFluxServer(settings) as server, client_for(server) as client:
        outcomes = await asyncio.gather(
            *(client.generate(f"p{i}") for i in range(30)), return_exceptions=True
        )
    assert all(isinstance(o, TaskFailedError) or len(o.images) == 1 for o in outcomes)  # type: ignore[union-attr]
    assert any(isinstance(o, TaskFailedError) for o in outcomes)
    assert server.stats.tasks_created == 30


async def test_failed_polls_are_retried_not_surfaced() -> None:
    faults = Faults(server_error=0.1, gateway_page=0.1, reset_before=0.1, truncated=0.1, slow=0.05,
                    slow_delay=0.3)
    settings = ServerSettings(generation_time=(0.1, 0.4), faults={"tasks": faults}, seed=6)
    async with LocalFluxServer(settings) as server, client_for(server, batch_size=5) as client:
        results = await asyncio.gather(*(client.generate(f"p{i}") for i in range(40)))
    assert len(results) == 40
    assert sum(server.stats.faults_injected.values()) > 0


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.generate(""), "prompt"),
        (lambda c: c.generate("a", count=0), "count"),
        (lambda c: c.generate("a", count=-1), "count"),
        (lambda c: c.generate("a", size="huge"), "size"),
        (lambda c: c.edit("a", image_url=""), "image_url"),
        (lambda c: c.edit("a", image_url="file:///etc/passwd"), "image_url"),
        (lambda c: c.submit(EditRequest("a", image_url="ftp://x/y.png")), "image_url"),
    ],
)
async def test_bad_input_is_refused_before_any_request(
    flux_server: LocalFluxServer, call: object, field: str
) -> None:
    async with client_for(flux_server) as client:
        with pytest.raises(ValidationError) as info:
            await call(client)  # type: ignore[operator]
    assert info.value.field == field
    assert sum(flux_server.stats.requests.values()) == 0


async def test_the_key_is_never_shown(
    flux_server: LocalFluxServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-very-secret-key-1234567890"
    caplog.set_level(logging.DEBUG)
    flux_server.settings.faults = {"tasks": Faults(server_error=0.5)}
    seen: list[str] = []
    async with FluxClient(secret, base_url=flux_server.url, poll_interval=0.05) as client:
        seen += [repr(client), str(client), repr(vars(client))]
        for call in (client.generate("a cat"), client.get_task("x"), client.get_tasks(["x"])):
            try:
                await call
            except FluxError as exc:
                seen += [str(exc), repr(exc), repr(exc.__cause__), str(exc.__dict__)]
    seen += [record.getMessage() for record in caplog.records]
    seen += [caplog.text]
    assert seen
    assert not [text for text in seen if secret in text]


async def test_a_session_passed_in_is_left_open(flux_server: LocalFluxServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with client_for(flux_server, session=session) as client:
            await client.generate("a cat")
        assert not session.closed  # checked between the two exits


async def test_closing_leaves_no_tasks_and_fails_waiters(
    flux_server: LocalFluxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flux_async")
    flux_server.settings.generation_time = 30.0
    before = asyncio.all_tasks()
    client = client_for(flux_server)
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await client.generate("never done")
        except FluxError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as group, client:
        for _ in range(3):
            group.start_soon(one)
        await eventually(lambda: flux_server.stats.tasks_created == 3)
    assert len(errors) == 3
    # Each waiter gets an error of its own, naming its task.
    assert all(isinstance(e, ClientClosedError) and isinstance(e, TaskClosedError)
               for e in errors)
    created = set(flux_server.stats.finish_times)
    assert {e.task_id for e in errors} == created  # type: ignore[attr-defined]
    assert len({id(e) for e in errors}) == 3
    # ... and the ids of the tasks left running are logged: in the one line of
    # aclose(), or, for a task whose submission answer was still arriving when the
    # client closed (the server counts a task before its answer is sent), in a
    # warning of its own from the launcher.
    messages = [r.getMessage() for r in caplog.records if r.name == "flux_async"]
    assert len([m for m in messages if "closed with" in m]) <= 1
    assert all(any(task_id in m for m in messages) for task_id in created)
    # The client's tasks, that is: the local server's keep-alive handlers (in this same
    # loop) outlive a closed connection on aiohttp before 3.11, until they time out.
    left = {t for t in asyncio.all_tasks() - before if "RequestHandler" not in repr(t)}
    assert left == set()
    assert client.closed

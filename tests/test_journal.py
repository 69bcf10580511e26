"""Idempotency keys and the task journal, against the local server over real sockets.

What a user pays for is read off the server's counters: ``tasks_created`` (every
task is a payment) and ``requests["images"]`` (paid submissions sent).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from flux_async import (
    EditRequest,
    GenerateRequest,
    IdempotencyConflictError,
    ImageResult,
    InsufficientBalanceError,
    JournalError,
    Recovered,
    SubmissionUncertainError,
    TaskFailedError,
)
from flux_async.testing import Faults, LocalFluxServer, ServerSettings

from .conftest import client_for, eventually

pytestmark = pytest.mark.anyio


def paid(server: LocalFluxServer) -> int:
    return server.stats.requests["images"]


# --- keys without a journal: one process ------------------------------------------------


async def test_twenty_concurrent_callers_with_one_key_pay_once() -> None:
    settings = ServerSettings(generation_time=(0.1, 0.2), submit_answer_delay=0.05, seed=1)
    async with LocalFluxServer(settings) as server, client_for(server) as client:
        results = await asyncio.gather(*(
            client.generate("a red fox", idempotency_key="order-123") for _ in range(20)))
        assert {r.task_id for r in results} == {results[0].task_id}
        assert server.stats.tasks_created == 1
        # A later call gets the recorded result at once: nothing is sent.
        again = await client.generate("a red fox", idempotency_key="order-123")
        assert again.urls == results[0].urls
        assert paid(server) == 1


async def test_the_same_key_with_another_request_is_refused_before_anything_is_sent() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=0.01)) as server:
        async with client_for(server) as client:
            await client.generate("a red fox", idempotency_key="k")
            before = sum(server.stats.requests.values())
            for call in (client.generate("a blue fox", idempotency_key="k"),
                         client.generate("a red fox", size="512x512", idempotency_key="k"),
                         client.submit(GenerateRequest("a red fox", count=2),
                                       idempotency_key="k")):
                with pytest.raises(IdempotencyConflictError, match="another request") as info:
                    await call
                assert info.value.field == "idempotency_key"
                assert info.value.key == "k"
            assert sum(server.stats.requests.values()) == before
            # While the first is still in flight, too.
            slow = asyncio.ensure_future(client.generate("slow", idempotency_key="s"))
            await eventually(lambda: server.stats.tasks_created == 2)
            with pytest.raises(IdempotencyConflictError):
                await client.generate("not slow", idempotency_key="s")
            await slow
        assert server.stats.tasks_created == 2


async def test_a_key_names_a_failure_too_and_a_refusal_frees_it() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=0.01, failure_rate=1.0)) as server:
        async with client_for(server) as client:
            with pytest.raises(TaskFailedError) as first:
                await client.generate("doomed", idempotency_key="f")
            with pytest.raises(TaskFailedError) as again:
                await client.generate("doomed", idempotency_key="f")
            assert again.value.task_id == first.value.task_id
            assert server.stats.tasks_created == 1
            # A refused submission created nothing: the key is free for the same request.
            server.set_token_state(server.token, "used_up")
            with pytest.raises(InsufficientBalanceError):
                await client.generate("refused", idempotency_key="r")
            server.set_token_state(server.token, "ok")
            server.settings.failure_rate = 0.0
            assert (await client.generate("refused", idempotency_key="r")).urls
        assert server.stats.tasks_created == 2


async def test_map_and_submit_take_keys_from_the_requests() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=(0.01, 0.05))) as server:
        async with client_for(server) as client:
            requests = [GenerateRequest(f"p{i % 5}", idempotency_key=f"job-{i % 5}")
                        for i in range(20)]
            outcomes = [o async for o in client.map(requests)]
            assert all(o.ok for o in outcomes)
            assert server.stats.tasks_created == 5
            by_key: dict[str, set[str]] = {}
            for o in outcomes:
                assert o.request.idempotency_key is not None
                assert o.task_id is not None
                by_key.setdefault(o.request.idempotency_key, set()).add(o.task_id)
            assert all(len(ids) == 1 for ids in by_key.values())
            task = await client.submit(GenerateRequest("p0"), idempotency_key="job-0")
            assert task.id in by_key["job-0"]
            assert task.status.finished
        assert server.stats.tasks_created == 5
        assert paid(server) == 5


# --- the SQLite journal: across clients and restarts -------------------------------------


async def test_a_new_client_on_the_same_journal_joins_the_recorded_task(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.db"
    settings = ServerSettings(generation_time=(0.5, 0.6), submit_answer_delay=0.05)
    async with LocalFluxServer(settings) as server:
        async with client_for(server, journal=journal) as first:
            task = await first.submit(GenerateRequest("a cat"), idempotency_key="job-1")
        # The first client closed with its task running: the next one follows it.
        recovered: list[Recovered] = []
        async with client_for(server, journal=journal, on_recovered=recovered.append) as second:
            result = await second.generate("a cat", idempotency_key="job-1")
            assert result.task_id == task.id
            await eventually(lambda: len(recovered) == 1)
            assert recovered[0].task_id == task.id
            assert recovered[0].idempotency_key == "job-1"
            assert recovered[0].result is not None
            assert recovered[0].result.urls == result.urls
        async with client_for(server, journal=journal) as third:
            before = sum(server.stats.requests.values())
            done = await third.generate("a cat", idempotency_key="job-1")
            assert done.urls == result.urls
            assert sum(server.stats.requests.values()) == before  # read from the journal
        assert server.stats.tasks_created == 1


async def test_unkeyed_tasks_left_running_are_followed_by_the_next_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flux_async")
    journal = tmp_path / "journal.db"
    async with LocalFluxServer(ServerSettings(generation_time=(0.4, 0.5))) as server:
        async with client_for(server, journal=journal) as first:
            ids = {(await first.submit(GenerateRequest(f"p{i}"))).id for i in range(3)}
        async with client_for(server, journal=journal) as second:
            # No hook: a WARNING record names each task and its outcome.
            await eventually(lambda: sum(
                "adopted task" in r.getMessage() and "succeeded" in r.getMessage()
                for r in caplog.records) == 3)
            assert all(any(i in r.getMessage() for r in caplog.records) for i in ids)
            assert second.in_flight == 0
        assert server.stats.tasks_created == 3


async def test_edits_of_a_local_image_are_known_by_its_bytes(tmp_path: Path) -> None:
    from flux_async.testing._png import render_png

    image = tmp_path / "cat.png"
    image.write_bytes(render_png("cat"))
    journal = tmp_path / "journal.db"
    async with LocalFluxServer(ServerSettings(generation_time=0.05)) as server:
        results = []
        for _ in range(2):  # two processes in turn: each uploads, the second pays nothing
            async with client_for(server, journal=journal) as client:
                results.append(await client.edit("make it blue", image=image,
                                                 model="flux-kontext-pro",
                                                 idempotency_key="edit-1"))
        assert results[0].task_id == results[1].task_id
        assert server.stats.tasks_created == 1
        other = tmp_path / "dog.png"
        other.write_bytes(render_png("dog"))
        async with client_for(server, journal=journal) as client:
            with pytest.raises(IdempotencyConflictError):
                await client.edit("make it blue", image=other, model="flux-kontext-pro",
                                  idempotency_key="edit-1")
            # The same edit by URL is another request: it is paid (no key, no journal entry
            # to join), and the key's own task stays the only one for the key.
            await client.wait(await client.submit(EditRequest(
                "make it blue", image_url=results[0].urls[0], model="flux-kontext-pro")))
        assert server.stats.tasks_created == 2


# --- a submission of unknown fate -------------------------------------------------------


def _journal_rows(path: Path) -> list[dict[str, Any]]:
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM entries")]
    finally:
        connection.close()


async def test_an_uncertain_submission_keeps_its_key_until_released(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    settings = ServerSettings(generation_time=0.05)
    async with LocalFluxServer(settings) as server:
        server.settings.faults = {"images": Faults(reset_after=1.0)}
        async with client_for(server, journal=journal) as client:
            with pytest.raises(SubmissionUncertainError) as info:
                await client.generate("lost answer", idempotency_key="u")
            assert info.value.idempotency_key == "u"
            server.settings.faults = {}
            # The task may exist: the key is not sent again, in this process ...
            with pytest.raises(SubmissionUncertainError):
                await client.generate("lost answer", idempotency_key="u")
        assert [r["state"] for r in _journal_rows(journal)] == ["unknown"]
        recovered: list[Recovered] = []
        async with client_for(server, journal=journal, on_recovered=recovered.append) as client:
            # ... nor by the next one, which reports it once with its key.
            await eventually(lambda: len(recovered) == 1)
            assert recovered[0].task_id is None
            assert recovered[0].idempotency_key == "u"
            assert isinstance(recovered[0].error, SubmissionUncertainError)
            with pytest.raises(SubmissionUncertainError):
                await client.generate("lost answer", idempotency_key="u")
            assert server.stats.tasks_created == 1
            # The caller decides to pay again.
            assert await client.release_key("u")
            result = await client.generate("lost answer", idempotency_key="u")
            assert result.urls
        assert server.stats.tasks_created == 2


# --- a journal that cannot be used is an error before anything is paid -----------------


async def test_an_unusable_journal_is_an_error_before_anything_is_paid(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    other = tmp_path / "other.db"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE accounts (id INTEGER)")
    connection.commit()
    connection.close()
    newer = tmp_path / "newer.db"
    async with LocalFluxServer(ServerSettings(generation_time=0.01)) as server:
        async with client_for(server, journal=newer) as client:
            await client.generate("fine")
        connection = sqlite3.connect(newer)
        connection.execute("PRAGMA user_version = 99")
        connection.commit()
        connection.close()
        before = sum(server.stats.requests.values())
        for path, reason in ((garbage, "not readable"), (other, "something else"),
                             (newer, "newer flux_async"), (tmp_path, "cannot be opened")):
            client = client_for(server, journal=path)
            with pytest.raises(JournalError, match=reason) as info:
                await client.generate("never sent")
            assert info.value.path is not None
            await client.aclose()
        assert sum(server.stats.requests.values()) == before
    assert garbage.read_bytes().startswith(b"this is not a database")


async def test_closing_leaves_no_thread_and_no_lock(tmp_path: Path) -> None:
    import threading

    journal = tmp_path / "journal.db"
    async with LocalFluxServer(ServerSettings(generation_time=0.01)) as server:
        async with client_for(server, journal=journal) as client:
            await client.generate("one")
            assert any(t.name.startswith("flux_async journal") for t in threading.enumerate())
        assert not any(t.name.startswith("flux_async journal") for t in threading.enumerate())
        assert list((tmp_path / "journal.db.owners").glob("*.lock")) == []  # no owner left


async def test_a_cancelled_caller_leaves_the_key_usable() -> None:
    settings = ServerSettings(generation_time=0.05, max_in_flight=1)
    async with LocalFluxServer(settings) as server, client_for(server, max_concurrency=1) as c:
        blocker = asyncio.ensure_future(c.generate("holds the only slot"))
        await eventually(lambda: server.stats.tasks_created == 1)
        queued = asyncio.ensure_future(c.generate("queued", idempotency_key="q"))
        await anyio.sleep(0.01)
        queued.cancel()  # cancelled while waiting for a slot: nothing was sent
        with pytest.raises(asyncio.CancelledError):
            await queued
        await blocker
        result: ImageResult = await c.generate("queued", idempotency_key="q")
        assert result.urls
        assert server.stats.tasks_created == 2


# --- retention, and a callback settling a submission whose answer was lost -------------


@pytest.mark.parametrize("where", ["memory", "sqlite"])
async def test_a_key_is_free_again_after_its_retention(tmp_path: Path, where: str) -> None:
    journal = None if where == "memory" else tmp_path / "journal.db"
    async with LocalFluxServer(ServerSettings(generation_time=0.01)) as server:
        async with client_for(server, journal=journal, key_retention=0.3) as client:
            first = await client.generate("a cat", idempotency_key="k")
            with pytest.raises(IdempotencyConflictError):
                await client.generate("a dog", idempotency_key="k")
            await anyio.sleep(0.4)  # the retention itself is what is under test
            second = await client.generate("a dog", idempotency_key="k")
        assert first.task_id != second.task_id
        assert server.stats.tasks_created == 2


@pytest.mark.parametrize("where", ["memory", "sqlite"])
async def test_a_key_of_unknown_fate_outlives_the_retention(tmp_path: Path, where: str) -> None:
    journal = None if where == "memory" else tmp_path / "journal.db"
    settings = ServerSettings(generation_time=0.01, faults={"images": Faults(reset_after=1.0)})
    async with LocalFluxServer(settings) as server:
        async with client_for(server, journal=journal, key_retention=0.2) as client:
            with pytest.raises(SubmissionUncertainError):
                await client.generate("a cat", idempotency_key="u")
            server.settings.faults = {}
            await anyio.sleep(0.3)  # past the retention, which is what is under test
            with pytest.raises(SubmissionUncertainError):
                await client.generate("a cat", idempotency_key="u")
            assert await client.release_key("u")
            assert (await client.generate("a cat", idempotency_key="u")).urls
        assert server.stats.tasks_created == 2


async def test_a_callback_settles_a_submission_whose_answer_was_lost(tmp_path: Path) -> None:
    from aiohttp import web

    from flux_async.web import add_callback_route

    from .conftest import serve

    settings = ServerSettings(generation_time=0.3, faults={"images": Faults(reset_after=1.0)})
    recovered: list[Recovered] = []
    async with LocalFluxServer(settings) as server:
        app = web.Application()
        receiver = add_callback_route(app, "/cb")
        async with serve(app) as url:
            client = client_for(server, journal=tmp_path / "journal.db",
                                callback_url=f"{url}/cb", on_recovered=recovered.append)
            receiver.client = client
            async with client:
                # The task is created, and the answer carrying its id is cut off.
                with pytest.raises(SubmissionUncertainError):
                    await client.generate("a lost answer", idempotency_key="lost")
                assert server.stats.tasks_created == 1
                server.settings.faults = {}
                # Its callback names it by the token issued with the submission.
                await eventually(lambda: len(recovered) == 1)
                assert recovered[0].idempotency_key == "lost"
                assert recovered[0].task_id == server.stats.unanswered[0]
                result = await client.generate("a lost answer", idempotency_key="lost")
                assert result.task_id == recovered[0].task_id
        assert server.stats.tasks_created == 1


async def test_opening_sweeps_only_the_old_lock_files_of_ended_handles(tmp_path: Path) -> None:
    import os
    import time

    from flux_async._edge.sqlite import SQLiteJournal

    path = tmp_path / "journal.db"
    live = SQLiteJournal(path)
    await live.open(60.0)
    owners = tmp_path / "journal.db.owners"
    old, young = owners / "deadbeef00000001.lock", owners / "deadbeef00000002.lock"
    old.touch()
    young.touch()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(owners / f"{live.owner}.lock", (an_hour_ago, an_hour_ago))  # old, but locked
    other = SQLiteJournal(path)
    await other.open(60.0)
    try:
        assert not old.exists()  # ended long ago, nothing open: swept
        assert young.exists()  # may be a handle about to lock its file: left
        assert (owners / f"{live.owner}.lock").exists()  # a live handle's: left
    finally:
        await other.close()
        await live.close()


async def test_a_journaled_job_under_faults_and_429s_pays_once_per_key(tmp_path: Path) -> None:
    """Resets before and after the answer, 5xx, 429s without Retry-After: a job run
    twice on one journal pays once per key, and says which keys it cannot vouch for."""
    journal = tmp_path / "journal.db"
    faults = Faults(server_error=0.05, reset_before=0.05, reset_after=0.05)
    settings = ServerSettings(generation_time=(0.05, 0.2), submit_rate=5.0, seed=41,
                              faults={"images": faults})
    requests = [GenerateRequest(f"p{i}", idempotency_key=f"k{i}") for i in range(30)]

    async def run(server: LocalFluxServer) -> dict[str, str]:
        outcomes: dict[str, str] = {}
        async with client_for(server, journal=journal, submit_rate=None, retry_backoff=0.01,
                              max_concurrency=10) as client:
            async for outcome in client.map(requests):
                key = outcome.request.idempotency_key
                assert key is not None
                if outcome.result is not None:
                    outcomes[key] = outcome.result.task_id
                else:
                    assert isinstance(outcome.error, SubmissionUncertainError), outcome.error
                    outcomes[key] = "uncertain"
        return outcomes

    async with LocalFluxServer(settings) as server:
        first = await run(server)
        paid = server.stats.tasks_created
        assert server.stats.rate_limited > 0  # the 429s came, without Retry-After
        second = await run(server)
        assert "uncertain" in first.values()  # some fates were unknown, as the faults meant
        assert second == first  # the same tasks, and the same keys of unknown fate
        assert server.stats.tasks_created == paid
        assert max(server.stats.tasks_per_prompt.values()) == 1

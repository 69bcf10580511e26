"""flux_async.sync.FluxClient: the blocking client, from plain threads and running loops.

The local server runs in a thread of its own (its own loop, through a blocking
portal): the blocking client's callers may block any other loop, the test's too.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import pathlib
import queue
import signal
import sys
import textwrap
import threading
import time
import typing
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

import flux_async
from flux_async import (
    ClientClosedError,
    ConfigurationError,
    GenerateRequest,
    NotFoundError,
    Outcome,
    TaskFailedError,
    TaskStatus,
    ValidationError,
)
from flux_async import FluxClient as AsyncFluxClient
from flux_async.sync import FluxClient
from flux_async.testing import LocalFluxServer, ServerSettings

from .conftest import eventually

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = pathlib.Path(flux_async.__file__).resolve().parents[1]


class Served:
    """A LocalFluxServer running on its own loop thread."""

    def __init__(self, server: LocalFluxServer, portal: BlockingPortal) -> None:
        self.server = server
        self.portal = portal

    def stats(self) -> dict[str, Any]:
        return self.portal.call(self.server.stats.snapshot)

    def client(self, **settings: Any) -> FluxClient:
        settings.setdefault("poll_interval", 0.05)
        settings.setdefault("busy_poll_interval", 0.02)
        settings.setdefault("submit_rate", None)
        settings.setdefault("query_rate", None)
        settings.setdefault("download_allow", [self.server.url])  # its images: loopback
        return FluxClient(self.server.token, base_url=self.server.url, **settings)


@contextmanager
def served(settings: ServerSettings | None = None) -> Iterator[Served]:
    with start_blocking_portal("asyncio") as portal:
        server = LocalFluxServer(settings or ServerSettings(generation_time=(0.02, 0.08), seed=7))
        portal.call(server.start)
        try:
            yield Served(server, portal)
        finally:
            portal.call(server.close)


def wait_until(condition: Callable[[], bool], *, within: float = 10.0) -> None:
    """``conftest.eventually`` for plain threads: poll ``condition`` every 10 ms."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "flux_async.sync"]


# --- the mirror ---------------------------------------------------------------------

# Intended differences, each with its reason; anything else is drift.
RENAMED = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}
# An aiohttp session and a coordinator belong to one loop (the blocking client's is
# private); the recovery hook comes with the coordinator.
NOT_MIRRORED_PARAMS = {("__init__", "session"), ("__init__", "coordinator"),
                       ("__init__", "on_recovered")}


def _public_methods(cls: type) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[:-1]):  # a base class's methods are the class's too
        found.update((n, v) for n, v in vars(klass).items()
                     if not n.startswith("_") or n in {"__init__", *RENAMED})
    return found


def test_the_blocking_client_mirrors_every_public_method() -> None:
    for name, async_member in _public_methods(AsyncFluxClient).items():
        sync_name = RENAMED.get(name, name)
        sync_member = getattr(FluxClient, sync_name, None)
        assert sync_member is not None, f"flux_async.sync.FluxClient lacks {sync_name}"
        if isinstance(async_member, property):
            assert isinstance(sync_member, property), name
            continue
        if name in {"__aenter__", "__aexit__", "aclose"}:
            continue  # the context-manager protocol differs by nature
        a_sig, s_sig = inspect.signature(async_member), inspect.signature(sync_member)
        a_hints = typing.get_type_hints(async_member)
        s_hints = typing.get_type_hints(sync_member)
        a_params = {n: p for n, p in a_sig.parameters.items()
                    if (name, n) not in NOT_MIRRORED_PARAMS}
        assert list(a_params) == list(s_sig.parameters), name
        for pname, a_param in a_params.items():
            s_param = s_sig.parameters[pname]
            assert s_param.kind == a_param.kind, (name, pname)
            # The sentinel DEFAULT compares by identity: the very same object.
            assert s_param.default == a_param.default, (name, pname)
            assert type(s_param.default) is type(a_param.default), (name, pname)
            if (name, pname) == ("map", "requests"):
                # Read in the caller's thread: a plain iterable, not an async one.
                assert s_hints[pname] == Iterable[flux_async.ImageRequest]
            elif pname != "self":
                assert s_hints[pname] == a_hints[pname], (name, pname)
        if name == "map":
            assert a_hints["return"] == AsyncGenerator[Outcome, None]
            assert s_hints["return"] == Iterator[Outcome]
        elif inspect.iscoroutinefunction(async_member) or name == "receive_callback":
            assert s_hints["return"] == a_hints["return"], name
        assert name == "__init__" or sync_member.__doc__, name


def test_the_blocking_client_mirrors_the_public_settings() -> None:
    client = AsyncFluxClient("k", base_url="http://127.0.0.1:9")
    settings = {n for n in vars(client) if not n.startswith("_")}
    for name in settings:
        assert isinstance(getattr(FluxClient, name, None), property), name


# --- construction, errors, one call at a time ----------------------------------------


def test_constructor_errors_reach_the_caller_unchanged_and_leave_no_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = loop_threads()
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        FluxClient("k", max_concurrency=0)
    monkeypatch.delenv("ACEDATACLOUD_API_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="ACEDATACLOUD_API_TOKEN"):
        FluxClient()
    assert loop_threads() == before


def test_the_key_never_shows() -> None:
    with FluxClient("sk-sync-secret-4242", base_url="http://127.0.0.1:9") as client:
        assert "sk-sync-secret-4242" not in repr(client) + str(client)
        assert "sk-sync-secret-4242" not in repr(vars(client))


def test_every_call_end_to_end(tmp_path: pathlib.Path) -> None:
    with served() as srv, srv.client() as client:
        assert client.base_url == srv.server.url
        result = client.generate("a cat", count=2)
        assert len(result.images) == 2
        edited = client.edit("make it blue", image_url=result.urls[0])
        assert edited.images
        local = tmp_path / "cat.png"
        local.write_bytes(client.fetch_image(result.images[0]))
        assert client.edit("make it green", image=local).images  # uploaded first
        assert client.upload(local.read_bytes()).startswith("http")
        task = client.submit(GenerateRequest("submitted"))
        assert task.status is TaskStatus.PENDING
        assert client.wait(task.id).task_id == task.id
        assert client.get_task(task.id).status is TaskStatus.SUCCEEDED
        found = client.get_tasks(iter([task.id, result.task_id, task.id]))
        assert [t.id for t in found] == [task.id, result.task_id]
        verdict = client.receive_callback("not-a-token", b"{}")
        assert verdict.status == 403
        assert client.in_flight == 0
    assert client.closed


def test_errors_are_the_async_clients_unchanged() -> None:
    settings = ServerSettings(generation_time=0.02, failure_rate=1.0, seed=1)
    with served(settings) as srv, srv.client() as client:
        with pytest.raises(TaskFailedError) as failed:
            client.generate("doomed")
        assert failed.value.task_id
        with pytest.raises(NotFoundError) as missing:
            client.get_task("00000000-0000-0000-0000-000000000000")
        assert missing.value.status == 404
        with pytest.raises(ValidationError):
            client.generate("x", size="huge")
        assert srv.stats()["tasks_created"] == 1


def test_download_writes_files(tmp_path: pathlib.Path) -> None:
    with served() as srv, srv.client() as client:
        result = client.generate("a cat to keep", count=2)
        paths = client.download(result, tmp_path)
        assert sorted(p.name for p in paths) == [f"{result.task_id}-0.png",
                                                  f"{result.task_id}-1.png"]
        assert all(p.read_bytes().startswith(PNG) for p in paths)
        assert client.fetch_image(result.images[0]) == paths[0].read_bytes()
        # Images from a generator, read in this thread.
        more = client.download((i for i in result.images), tmp_path / "gen", prefix="g")
        assert [p.name for p in more] == ["g-0.png", "g-1.png"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".flux-")]


# --- threads ------------------------------------------------------------------------


def test_sixteen_threads_share_one_client_and_its_limits() -> None:
    """16 threads x 10 generations through one client: limits hold for all of them."""
    settings = ServerSettings(generation_time=(0.02, 0.06), max_in_flight=8, seed=3)
    with served(settings) as srv, srv.client(max_concurrency=8) as client:
        results: dict[tuple[int, int], str] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(16)

        def worker(n: int) -> None:
            start.wait()
            for j in range(10):
                try:
                    results[n, j] = client.generate(f"thread {n} job {j}").task_id
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        stats = srv.stats()
    assert not errors
    assert len(results) == 160
    assert len(set(results.values())) == 160
    assert stats["tasks_created"] == 160
    assert stats["rate_limited"] == 0
    assert "429" not in stats["statuses"]
    assert 2 <= stats["peak_in_flight"] <= 8


def test_close_fails_blocked_calls_and_leaves_no_thread() -> None:
    with served(ServerSettings(generation_time=30.0)) as srv:
        client = srv.client(max_concurrency=1)
        loop = client._holder.loop
        outcomes: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()

        def call(prompt: str) -> None:
            try:
                client.generate(prompt)
            except BaseException as exc:
                outcomes.put(exc)
            else:
                outcomes.put(None)

        # One waits for its result; two wait for the only slot.
        threads = [threading.Thread(target=call, args=(f"blocked {i}",)) for i in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda: loop.active == 3 and srv.stats()["tasks_created"] == 1)
        client.close()
        for thread in threads:
            thread.join(timeout=5)
            assert not thread.is_alive()
        errors = [outcomes.get_nowait() for _ in threads]
        assert all(isinstance(e, ClientClosedError) for e in errors), errors
        assert not loop.thread.is_alive()
        assert loop not in loop_threads()
        assert not loop_threads()
        with pytest.raises(ClientClosedError):
            client.generate("after close")
        client.close()  # again: nothing to do


def test_an_unclosed_client_is_closed_when_collected() -> None:
    def forget_one() -> threading.Thread:
        client = FluxClient("k", base_url="http://127.0.0.1:9")
        return client._holder.loop.thread  # the client is dropped on return

    with pytest.warns(ResourceWarning, match="without close"):
        thread = forget_one()
    assert not thread.is_alive()


# --- map ----------------------------------------------------------------------------


def test_map_is_a_plain_iterator_and_user_code_runs_in_the_callers_thread() -> None:
    me = threading.get_ident()
    readers: set[int] = set()
    hooks: set[int] = set()
    kinds: list[str] = []

    def requests() -> Iterator[Any]:
        for i in range(12):
            readers.add(threading.get_ident())
            yield "not a request" if i == 5 else GenerateRequest(f"mapped {i}")

    def on_event(event: flux_async.MapEvent) -> None:
        hooks.add(threading.get_ident())
        kinds.append(event.kind)

    with served() as srv, srv.client(max_concurrency=4) as client:
        outcomes = list(client.map(requests(), ordered=True, on_event=on_event))
    assert [o.index for o in outcomes] == list(range(12))
    assert [o.ok for o in outcomes] == [i != 5 for i in range(12)]
    assert isinstance(outcomes[5].error, ValidationError)
    assert readers == {me}
    assert hooks == {me}
    assert kinds.count("submitted") == 11
    assert kinds.count("succeeded") == 11
    assert kinds.count("failed") == 1


def _holds_only_created_tasks(client: FluxClient, srv: Any) -> None:
    """Wait (5 s at most) until every slot in use belongs to a task the server created."""
    deadline = time.monotonic() + 5.0
    while client.in_flight > srv.stats()["tasks_created"]:  # a POST still on the wire
        assert time.monotonic() < deadline, (client.in_flight, srv.stats()["tasks_created"])
        time.sleep(0.01)


def test_breaking_out_of_map_cancels_what_runs() -> None:
    read = 0

    def requests() -> Iterator[Any]:
        nonlocal read
        for i in range(1000):
            read += 1
            # Two fail at once (never sent); the rest take 30 s on the server.
            yield "bad" if i < 2 else GenerateRequest(f"slow {i}")

    with served(ServerSettings(generation_time=30.0)) as srv:
        with srv.client(max_concurrency=4) as client:
            taken = []
            for outcome in client.map(requests()):
                taken.append(outcome)
                if len(taken) == 2:
                    break
            assert all(isinstance(o.error, ValidationError) for o in taken)
            # Leaving the loop cancelled the rest: no call left running, and the only
            # slots still held are those of tasks created by POSTs that were already
            # on the wire (let answer, followed in the background: never lost).
            _holds_only_created_tasks(client, srv)
            assert client._holder.loop.active == 0
            assert read <= 2 + 4 + 1  # lazily read: nothing beyond the window
            created = srv.stats()["tasks_created"]
            assert created <= 4
            # Closing the iterator explicitly, or dropping it, does the same.
            it = client.map(requests())
            next(it)
            it.close()
            it = client.map(requests())
            next(it)
            del it
            gc.collect()
            _holds_only_created_tasks(client, srv)
            assert client._holder.loop.active == 0
            assert client.generate  # still usable afterwards
        assert srv.stats()["tasks_created"] <= created + 8


def test_an_input_error_comes_out_of_map_unchanged() -> None:
    boom = LookupError("row 3 is unreadable")

    def requests() -> Iterator[GenerateRequest]:
        yield GenerateRequest("fine")
        raise boom

    with served() as srv, srv.client() as client:
        with pytest.raises(LookupError) as info:
            list(client.map(requests()))
        _holds_only_created_tasks(client, srv)  # a POST on the wire was let answer
    # The very object the input raised, not wrapped in a group: it crossed two
    # threads untouched.
    assert info.value is boom


# --- inside a running event loop (a notebook cell) ------------------------------------


@pytest.mark.anyio
async def test_works_from_a_thread_whose_loop_is_running() -> None:
    asyncio.get_running_loop()  # as in a Jupyter cell: asyncio.run() would refuse
    with served() as srv:
        with srv.client(max_concurrency=2) as client:
            result = client.generate("from a cell")
            assert result.images
            outcomes = list(client.map(GenerateRequest(f"cell {i}") for i in range(4)))
            assert all(o.ok for o in outcomes)
            task = client.submit(GenerateRequest("later"))
            assert client.wait(task).task_id == task.id
        assert not loop_threads()


# --- processes: Ctrl-C, interpreter exit, fork -----------------------------------------


def _script(tmp_path: pathlib.Path, body: str) -> list[str]:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


async def _read_all(stream: Any) -> str:
    chunks = []
    async for chunk in stream:
        chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.mark.anyio
@pytest.mark.parametrize("closing", ["with", "never"])
async def test_ctrl_c_in_a_blocked_call_stops_the_script_cleanly(
    tmp_path: pathlib.Path, closing: str
) -> None:
    script = _script(tmp_path, """
        import sys
        from flux_async.sync import FluxClient

        url, token, closing = sys.argv[1:4]
        client = FluxClient(token, base_url=url, poll_interval=0.05)
        if closing == "with":
            with client:
                client.generate("blocked")
        else:
            client.generate("blocked")  # closed at interpreter exit
        print("not reached")
    """)
    async with LocalFluxServer(ServerSettings(generation_time=60.0)) as server:
        process = await anyio.open_process(
            [*script, server.url, server.token, closing], env=_env()
        )
        async with process:
            # Submitted: the script is blocked waiting for the result.
            await eventually(lambda: server.stats.tasks_created == 1, within=30)
            sent = time.monotonic()
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                assert process.stdout is not None
                assert process.stderr is not None
                out, err = await _read_all(process.stdout), await _read_all(process.stderr)
                code = await process.wait()
            elapsed = time.monotonic() - sent
    assert code == -signal.SIGINT, err
    assert elapsed < 5
    assert "not reached" not in out
    assert err.count("Traceback") == 1, err
    # Beside the traceback, only the client's warning naming the paid task (it may
    # still finish: wait() on it later), which the loop thread logs when it likes.
    (task_id,) = server.stats.finish_times
    lines = err.splitlines()
    notes = [line for line in lines if "may still finish" in line]
    assert notes, err
    assert all(task_id in line for line in notes), err
    assert [line for line in lines if line not in notes][-1] == "KeyboardInterrupt", err
    for noise in ("Task was destroyed", "Exception ignored", "Unclosed", "never awaited",
                  "Warning"):
        assert noise not in err, err


@pytest.mark.anyio
async def test_a_caught_ctrl_c_has_cancelled_the_call(tmp_path: pathlib.Path) -> None:
    script = _script(tmp_path, """
        import sys, time
        from flux_async.sync import FluxClient

        with FluxClient(sys.argv[2], base_url=sys.argv[1], poll_interval=0.05) as client:
            try:
                client.generate("blocked")
            except KeyboardInterrupt:
                pass
            deadline = time.monotonic() + 5
            while client.in_flight and time.monotonic() < deadline:
                time.sleep(0.01)
            print("in flight", client.in_flight, flush=True)
    """)
    async with LocalFluxServer(ServerSettings(generation_time=60.0)) as server:
        process = await anyio.open_process([*script, server.url, server.token], env=_env())
        async with process:
            # Polled: the submission's answer reached the client, which now only waits.
            # (Interrupted while the answer was still on the wire, the created task would
            # rightly keep its slot, followed in the background: a paid task is never
            # dropped.)
            await eventually(lambda: server.stats.ids_queried >= 1, within=30)
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                assert process.stdout is not None
                assert process.stderr is not None
                out, err = await _read_all(process.stdout), await _read_all(process.stderr)
                code = await process.wait()
    # The interrupted wait was cancelled on the loop: its slot is free.
    assert code == 0, err
    assert out.strip() == "in flight 0"


@pytest.mark.anyio
async def test_a_script_that_never_closes_exits_promptly_and_quietly(
    tmp_path: pathlib.Path,
) -> None:
    script = _script(tmp_path, """
        import sys
        from flux_async.sync import FluxClient

        from flux_async import GenerateRequest

        client = FluxClient(sys.argv[2], base_url=sys.argv[1], poll_interval=0.05)
        task = client.submit(GenerateRequest("left pending"))  # followed in the background
        print(client.get_task(task.id).status)
    """)
    async with LocalFluxServer(ServerSettings(generation_time=60.0)) as server:
        with anyio.fail_after(30):
            done = await anyio.run_process([*script, server.url, server.token], env=_env(),
                                           check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "TaskStatus.PENDING"
    assert done.stderr == b"", done.stderr.decode()


@pytest.mark.anyio
@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
async def test_a_forked_child_gets_its_own_loop(tmp_path: pathlib.Path) -> None:
    script = _script(tmp_path, """
        import os, sys
        from flux_async.sync import FluxClient

        client = FluxClient(sys.argv[2], base_url=sys.argv[1], poll_interval=0.05)
        client.generate("parent")
        pid = os.fork()
        if pid == 0:  # as a gunicorn --preload worker
            print("child", client.generate("child").task_id, flush=True)
            sys.exit(0)  # atexit runs here: must not wait on the parent's loop
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        client.generate("parent again")
        client.close()
    """)
    async with LocalFluxServer(ServerSettings(generation_time=0.02)) as server:
        with anyio.fail_after(30):
            done = await anyio.run_process([*script, server.url, server.token], env=_env(),
                                           check=False)
        created = server.stats.tasks_created
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "child exit 0" in out
    assert out.startswith("child ")
    assert created == 3

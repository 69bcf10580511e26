"""Callbacks end to end: the local server POSTs results to a receiver over real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import anyio
import pytest
from aiohttp import web

from flux_async import (
    BlockedAddressError,
    FluxClient,
    GenerateRequest,
    Task,
    TaskFailedError,
    TaskStatus,
)
from flux_async._client.receiver import Receiver
from flux_async.testing import Faults, LocalFluxServer, ServerSettings
from flux_async.web import (
    CALLBACK_RECEIVER,
    TOKEN_PARAM,
    CallbackReceiver,
    add_callback_route,
    callback_app,
)

from .conftest import client_for, eventually, serve

pytestmark = pytest.mark.anyio

SECRET = "a-stable-callback-secret-for-tests"


@asynccontextmanager
async def receiving(
    server: LocalFluxServer, *, sub_app: bool = False, query: str = "", **settings: Any
) -> AsyncIterator[tuple[FluxClient, CallbackReceiver, SimpleNamespace]]:
    """A client in callback mode, its receiver served on a real socket.

    ``sent.urls`` maps each submitted prompt to the callback URL the client put on
    it, as seen on the wire (an aiohttp trace of the request body).
    """
    sent = SimpleNamespace(urls={})

    async def on_chunk(_s: object, _c: object, params: aiohttp.TraceRequestChunkSentParams) -> None:
        try:
            body = json.loads(params.chunk)
        except ValueError:
            return
        if isinstance(body, dict) and "callback_url" in body:
            sent.urls[body["prompt"]] = body["callback_url"]

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(on_chunk)
    app = web.Application()
    sub = callback_app()
    if sub_app:
        app.add_subapp("/flux/callback", sub)
        path = "/flux/callback/"
    else:
        add_callback_route(app, "/flux/callback")
        path = "/flux/callback"
    settings.setdefault("callback_poll_interval", 60.0)
    settings.setdefault("callback_secret", SECRET)
    async with serve(app) as base, aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = client_for(server, callback_url=base + path + query, session=session,
                            **settings)
        receiver = sub[CALLBACK_RECEIVER] if sub_app else app[CALLBACK_RECEIVER]
        receiver.client = client
        async with client:
            yield client, receiver, sent


def queries(server: LocalFluxServer) -> int:
    return server.stats.requests["retrieve"] + server.stats.requests["retrieve_batch"]


@pytest.mark.parametrize(("sub_app", "tasks"), [(False, 200), (True, 30)])
async def test_callbacks_resolve_waits_without_polling(sub_app: bool, tasks: int) -> None:
    settings = ServerSettings(generation_time=(0.05, 0.3), failure_rate=0.2, seed=11)
    async with LocalFluxServer(settings) as server:
        async with receiving(server, sub_app=sub_app, max_concurrency=tasks,
                             query="?tenant=7") as (client, receiver, sent):
            outcomes = await asyncio.gather(
                *(client.generate(f"cat {i}") for i in range(tasks)), return_exceptions=True
            )
    assert all(not isinstance(o, BaseException) or isinstance(o, TaskFailedError)
               for o in outcomes)
    failures = sum(isinstance(o, TaskFailedError) for o in outcomes)
    assert failures  # failures come by callback...
    # ... and each is confirmed by one query of that task before it fails the wait;
    # successes cost no query at all.
    assert server.stats.requests["retrieve"] == failures
    assert server.stats.requests["retrieve_batch"] == 0
    assert server.stats.callbacks_sent == tasks
    counts = receiver.counts
    assert counts["resolved"] + counts["held"] + counts["confirming"] == tasks
    assert counts["confirming"] > 0
    assert receiver.counts["rejected"] == 0
    # The URL's own query is kept; every submission has a token of its own.
    assert all(parse_qs(urlsplit(u).query)["tenant"] == ["7"] for u in sent.urls.values())
    assert len({_token(u) for u in sent.urls.values()}) == tasks


async def test_lost_callbacks_cost_latency_not_results() -> None:
    settings = ServerSettings(generation_time=(0.05, 0.2), callback_drop_rate=0.5, seed=12)
    async with LocalFluxServer(settings) as server:
        async with receiving(server, callback_poll_interval=0.2) as (client, _, _):
            results = await asyncio.gather(*(client.generate(f"dog {i}") for i in range(30)))
    assert len({r.task_id for r in results}) == 30
    dropped = server.stats.callbacks_dropped
    assert 0 < dropped < 30
    assert server.stats.callbacks_sent + dropped == 30
    assert queries(server) > 0  # the dropped ones were found by the fallback poll


async def test_a_callback_before_the_submission_answer_is_kept() -> None:
    # The task ends at once and its callback goes out, while the submission's own
    # answer is held back by the server for half a second.
    settings = ServerSettings(generation_time=0.0, seed=13,
                              faults={"images": Faults(slow=1.0, slow_delay=0.5)})
    async with LocalFluxServer(settings) as server:
        async with receiving(server) as (client, receiver, _):
            result = await client.generate("a very fast cat")
    assert receiver.counts["held"] == 1
    assert result.urls == [server.image_url(f"{result.task_id}-0.png")]
    assert queries(server) == 0


# --- forged and odd posts ------------------------------------------------------------


def _body(task_id: str, prompt: str, url: str = "http://evil.example/x.png") -> dict[str, Any]:
    return {"success": True, "task_id": task_id, "trace_id": "t",
            "data": [{"prompt": prompt, "image_url": url}]}


async def chunked(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _without_token(url: str) -> str:
    return url.split("?")[0]


def _with_token(url: str, token: str) -> str:
    return f"{_without_token(url)}?{TOKEN_PARAM}={token}"


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)[TOKEN_PARAM][0]


# (the target's callback URL, another task's, the target's id) -> (URL, body)
Forgery = Callable[[str, str, str], tuple[str, Any]]
FORGERIES: dict[str, tuple[Forgery, int]] = {
    # name: (how to build (url, body) from the target's and another task's URLs, status)
    "no secret": (lambda t, o, tid: (_without_token(t), _body(tid, "target")), 403),
    "wrong secret": (
        lambda t, o, tid: (_with_token(t, _token(t).split(".")[0] + ".AAAA"), _body(tid, "target")),
        403,
    ),
    "another task's token": (lambda t, o, tid: (o, _body(tid, "target")), 403),
    "unknown task id": (lambda t, o, tid: (t, _body("no-such-task", "target")), 404),
    "oversized": (
        lambda t, o, tid: (t, {**_body(tid, "target"), "pad": "x" * 300_000}), 413
    ),
    "oversized, chunked": (
        lambda t, o, tid: (t, [json.dumps(_body(tid, "target")).encode()[:-1]]
                           + [b" " * 65536] * 5 + [b"}"]), 413
    ),
    "not JSON": (lambda t, o, tid: (t, b"<html>hello</html>"), 400),
    "nested too deeply": (lambda t, o, tid: (t, b"[" * 100_000 + b"]" * 100_000), 400),
    "wrong shape: no success": (lambda t, o, tid: (t, {"task_id": tid, "data": []}), 400),
    "wrong shape: data": (
        lambda t, o, tid: (t, {"success": True, "task_id": tid, "data": "x.png"}), 400
    ),
    "wrong shape: image": (
        lambda t, o, tid: (t, {"success": True, "task_id": tid, "data": [{"url": 1}]}), 400
    ),
    "other prompt": (lambda t, o, tid: (t, _body(tid, "something else")), 409),
}


async def forge(
    kind: str, server: LocalFluxServer, client: FluxClient, receiver: Receiver,
    urls: dict[str, str],
) -> None:
    """Post the forgery ``kind`` at a running task; check it changed nothing.

    ``urls`` maps each submitted prompt to its callback URL. Shared by every
    receiver's tests (aiohttp here, Starlette in test_asgi).
    """
    build, status = FORGERIES[kind]
    target = await client.submit(GenerateRequest("target"))
    await client.submit(GenerateRequest("other"))
    url, body = build(urls["target"], urls["other"], target.id)
    if isinstance(body, list):  # sent chunked: no Content-Length to judge by
        data: Any = chunked(body)
    else:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=data) as response:
            assert response.status == status, await response.text()
            assert (await response.json())["ok"] is False
    assert client.in_flight == 2  # neither task resolved
    assert sum(receiver.counts.values()) == 1
    assert receiver.counts["resolved"] == receiver.counts["held"] == 0
    await server.finish_all()
    result = await client.wait(target, timeout=10)
    assert result.urls == [server.image_url(f"{target.id}-0.png")]
    assert queries(server) == 0


@pytest.mark.parametrize("kind", list(FORGERIES))
async def test_a_forged_callback_changes_nothing(kind: str) -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=14)) as server:
        async with receiving(server) as (client, receiver, sent):
            await forge(kind, server, client, receiver, sent.urls)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "the body is nested too deeply"),
        (b'{"success": ' * 20_000 + b"true" + b"}" * 20_000, "the body is nested too deeply"),
        (b"[" * 100_000, "the body is nested too deeply"),  # not even closed: still too deep
        (b"<html>hello</html>", "the body is not JSON"),
    ],
)
async def test_a_body_nested_too_deeply_is_answered_so(body: bytes, reason: str) -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=17)) as server:
        async with receiving(server) as (client, receiver, sent):
            await client.submit(GenerateRequest("target"))
            async with aiohttp.ClientSession() as session:
                async with session.post(sent.urls["target"], data=body) as response:
                    answer = await response.json()
                    assert response.status == 400
            assert answer == {"ok": False, "result": "rejected", "reason": reason}
            assert receiver.counts["rejected"] == 1
            assert client.in_flight == 1


async def test_a_callbacks_image_url_cannot_reach_into_the_network(tmp_path: Any) -> None:
    """A result that came by callback (its only proof, a token in a URL that may have
    leaked) names an image on the machine's own network: downloading it is refused."""
    hits: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, content_type="image/png")

    inside = web.Application()
    inside.router.add_get("/admin/backup.png", secret)
    async with serve(inside) as internal, LocalFluxServer(
        ServerSettings(generation_time=60.0, seed=18)
    ) as server:
        # client_for lets downloads reach the local API server's port, and only it.
        async with receiving(server) as (client, _, sent):
            task = await client.submit(GenerateRequest("target"))
            body = _body(task.id, "target", url=f"{internal}/admin/backup.png")
            async with aiohttp.ClientSession() as session:
                async with session.post(sent.urls["target"], json=body) as response:
                    assert response.status == 200
            result = await client.wait(task, timeout=10)
            assert result.urls == [f"{internal}/admin/backup.png"]
            with pytest.raises(BlockedAddressError) as info:
                await client.download(result, tmp_path)
            with pytest.raises(BlockedAddressError):
                await client.fetch_image(result.images[0])
    assert info.value.reason == "loopback"
    assert hits == []
    assert list(tmp_path.iterdir()) == []


async def test_a_task_submitted_without_a_callback_refuses_one() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=15)) as server:
        async with receiving(server) as (client, receiver, sent):
            url, client.callback_url = client.callback_url, None  # per request only, now
            await client.submit(GenerateRequest("with callback"), callback_url=url)
            plain = await client.submit(GenerateRequest("no callback"))
            assert "no callback" not in sent.urls
            async with aiohttp.ClientSession() as session:
                async with session.post(sent.urls["with callback"],
                                        json=_body(plain.id, "no callback")) as response:
                    assert response.status == 409
            assert client.in_flight == 2
            assert receiver.counts["rejected"] == 1


async def test_duplicates_are_harmless_and_contradictions_refused() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=(0.05, 0.1), seed=16)) as server:
        async with receiving(server) as (client, receiver, sent):
            result = await client.generate("a cat", count=2)
            url = sent.urls["a cat"]
            same = {"success": True, "task_id": result.task_id, "trace_id": result.trace_id,
                    "data": list(result.raw["data"])}
            other = _body(result.task_id, "a cat")
            async with aiohttp.ClientSession() as session:
                for body, status in ((same, 200), (same, 200), (other, 409)):
                    async with session.post(url, json=body) as response:
                        assert response.status == status
            again = await client.wait(result.task_id)
    assert again.urls == result.urls
    assert receiver.counts["duplicate"] == 2
    assert receiver.counts["rejected"] == 1


def _hook(kind: str, seen: list[Task]) -> Any:
    async def store(task: Task) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(task)

    def broken(task: Task) -> None:
        raise RuntimeError("the database is down")

    return {"sync": seen.append, "async": store, "broken": broken, "none": None}[kind]


@pytest.mark.parametrize(
    ("secret", "hook", "status"),
    [
        (SECRET, "sync", 200),
        (SECRET, "async", 200),
        (SECRET, "broken", 500),  # the service may try again
        (SECRET, "none", 404),
        ("another-secret-after-restart", "sync", 403),
    ],
)
async def test_callbacks_without_a_waiter_after_a_restart(
    secret: str, hook: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The first client submits and goes away; the callback reaches its successor."""
    seen: list[Task] = []
    statuses: list[int] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        statuses.append(response.status)
        return response

    app = web.Application(middlewares=[record])
    receiver = add_callback_route(app, "/flux/callback", on_unclaimed=_hook(hook, seen))
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=17)) as server:
        async with serve(app) as base:
            url = base + "/flux/callback"
            async with client_for(server, callback_url=url, callback_secret=SECRET) as first:
                receiver.client = first
                task = await first.submit(GenerateRequest("before the restart"))
            async with client_for(server, callback_url=url, callback_secret=secret) as second:
                receiver.client = second
                await server.finish_all()  # returns once the callback was delivered
    assert statuses == [status]
    if status == 200:
        assert [t.id for t in seen] == [task.id]
        assert seen[0].status is TaskStatus.SUCCEEDED
        assert receiver.counts["unclaimed"] == 1
    else:
        assert seen == []
    if hook == "broken":
        assert "the on_unclaimed hook failed" in caplog.text


def test_the_callback_secret_never_shows() -> None:
    client = FluxClient("k", callback_url="http://127.0.0.1:9/cb", callback_secret=SECRET)
    assert SECRET not in repr(client) + repr(vars(client))
    receiver = CallbackReceiver(client)
    assert SECRET not in repr(receiver) + repr(vars(receiver))


# --- a token opens exactly one task; failures are confirmed ---------------------------


async def _post(url: str, body: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        return response.status, (await response.json())["result"]


def _failure(task_id: str) -> dict[str, Any]:
    return {"success": False, "task_id": task_id, "trace_id": "t",
            "error": {"code": "generation_failed", "message": "forged"}}


async def test_a_leaked_token_cannot_settle_a_task_followed_after_a_restart() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=60.0, seed=41)) as server:
        async with receiving(server) as (first, _, sent):
            await first.submit(GenerateRequest("A"))
            b = await first.submit(GenerateRequest("B"))
        leaked = _token(sent.urls["A"])
        # A new process with the same callback_secret follows B through wait(id).
        async with receiving(server) as (second, receiver, _):
            assert second.callback_url is not None
            waiting = asyncio.get_running_loop().create_task(second.wait(b.id, timeout=20))
            await eventually(lambda: second._tracker.find(b.id) is not None)
            before = server.stats.requests["retrieve"]
            status, kind = await _post(_with_token(second.callback_url, leaked),
                                       _body(b.id, "B"))
            assert (status, kind) == (200, "confirming")  # a hint: the service is asked
            await eventually(lambda: server.stats.requests["retrieve"] > before)
            assert not waiting.done()
            assert receiver.counts["resolved"] == 0
            await server.finish_all()
            result = await waiting
    assert result.urls == [server.image_url(f"{b.id}-0.png")]  # the service's, not the post's


@pytest.mark.parametrize("service_says", ["running", "succeeded"])
async def test_a_failure_callback_is_confirmed_before_it_fails_a_wait(service_says: str) -> None:
    settings = ServerSettings(generation_time=60.0, seed=42,
                              callback_drop_rate=1.0 if service_says == "succeeded" else 0.0)
    async with LocalFluxServer(settings) as server:
        async with receiving(server) as (client, receiver, sent):
            task = await client.submit(GenerateRequest("target"))
            if service_says == "succeeded":
                await server.finish_all()  # done, and its own callback lost on the way
            # The task's own token, with a failure the service never reported.
            status, kind = await _post(sent.urls["target"], _failure(task.id))
            assert (status, kind) == (200, "confirming")
            await eventually(lambda: server.stats.requests["retrieve"] == 1)
            if service_says == "running":
                assert client.in_flight == 1  # still followed, not failed
                await server.finish_all()  # the genuine callback settles it
            result = await client.wait(task, timeout=10)
    assert result.urls == [server.image_url(f"{task.id}-0.png")]
    assert receiver.counts["confirming"] == 1


async def test_a_genuine_failure_callback_fails_the_wait_after_one_query() -> None:
    settings = ServerSettings(generation_time=(0.05, 0.1), failure_rate=1.0, seed=44)
    async with LocalFluxServer(settings) as server:
        async with receiving(server) as (client, receiver, _):
            with pytest.raises(TaskFailedError) as info:
                await client.generate("doomed")
    assert info.value.code == "generation_failed"
    assert server.stats.requests["retrieve"] == 1
    assert receiver.counts["confirming"] + receiver.counts["held"] == 1


async def test_early_posts_for_other_task_ids_displace_nothing() -> None:
    # The task ends and its callback goes out 0.6 s after the submission, whose own
    # answer comes only at 1.5 s: the genuine callback is held. Posts with the same
    # token for other task ids came first; they must neither win nor crowd it out.
    settings = ServerSettings(generation_time=0.6, submit_answer_delay=1.5, seed=43)
    async with LocalFluxServer(settings) as server:
        async with receiving(server) as (client, receiver, sent):
            job = asyncio.get_running_loop().create_task(client.generate("fast cat"))
            await eventually(lambda: "fast cat" in sent.urls)
            for other in ("another-task", "third-task", "fourth-task"):
                assert await _post(sent.urls["fast cat"], _body(other, "fast cat")) == (
                    200, "held")
            with anyio.fail_after(10):
                result = await job
            assert client.in_flight == 0
    assert result.urls == [server.image_url(f"{result.task_id}-0.png")]
    assert receiver.counts["held"] == 4
    assert queries(server) == 0  # the held genuine callback settled it

"""Tests of flux_async.testing.LocalFluxServer, over real sockets with plain aiohttp."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from flux_async.testing import DEFAULT_TOKEN, Faults, LocalFluxServer, ServerSettings
from flux_async.testing._validate import MAX_PROMPT_CHARS
from flux_async.testing.pytest_plugin import flux_server, flux_server_settings  # noqa: F401

pytestmark = pytest.mark.anyio

SLOW = 60.0  # a generation time no test waits for: tasks stay pending until finish_all()
OTHER_TOKEN = "other-token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings() -> ServerSettings:
    return ServerSettings(generation_time=SLOW, seed=7)


@pytest.fixture
async def server(settings: ServerSettings) -> AsyncIterator[LocalFluxServer]:
    async with LocalFluxServer(settings, tokens=(DEFAULT_TOKEN, OTHER_TOKEN)) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Answer:
    """One HTTP answer, read whole."""

    def __init__(self, status: int, headers: Any, raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def code(self) -> str:
        return str(self.json["error"]["code"])


async def post(
    http: aiohttp.ClientSession,
    server: LocalFluxServer,
    path: str,
    body: Any,
    token: str | None = DEFAULT_TOKEN,
    *,
    raw: bytes | None = None,
) -> Answer:
    headers = {"accept": "application/json", "content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body).encode()
    async with http.post(server.url + path, data=data, headers=headers) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


async def submit(
    http: aiohttp.ClientSession, server: LocalFluxServer, token: str = DEFAULT_TOKEN, **fields: Any
) -> Answer:
    body = {"action": "generate", "prompt": "a white siamese cat", "async": True, **fields}
    return await post(http, server, "/flux/images", body, token)


async def retrieve(
    http: aiohttp.ClientSession, server: LocalFluxServer, task_id: str, token: str = DEFAULT_TOKEN
) -> Answer:
    return await post(http, server, "/flux/tasks", {"action": "retrieve", "id": task_id}, token)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition that another coroutine makes true.

    The conditions are server counters with no event to wait on; polling them is
    waiting on the real condition, bounded by a timeout, not a sleep that hopes.
    """
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


def word(obj: dict[str, Any]) -> str:
    """A task object's top-level status word: ``status`` and ``state`` must agree."""
    words = {obj[k] for k in ("status", "state") if k in obj}
    assert len(words) == 1, obj
    return str(words.pop())


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Check a PNG structurally (chunks, CRCs, IDAT size); answer width, height, pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + payload) & 0xFFFFFFFF == crc, kind
        chunks.append((kind, payload))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    assert all(raw[y * (1 + 3 * width)] <= 4 for y in range(height))
    return width, height, raw


# -- submissions -----------------------------------------------------------------------


async def test_async_full_answer(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    ans = await submit(http, server)
    assert ans.status == 200
    assert ans.headers["content-type"] == "application/json"
    assert set(ans.json) == {"success", "task_id", "trace_id"}
    assert ans.json["success"] is True


async def test_async_minimal_and_mixed(
    server: LocalFluxServer, http: aiohttp.ClientSession
) -> None:
    server.settings.async_answer = "minimal"
    assert set((await submit(http, server)).json) == {"task_id"}
    server.settings.async_answer = "mixed"
    shapes = [frozenset((await submit(http, server)).json) for _ in range(4)]
    assert len(set(shapes)) == 2
    assert shapes[0] != shapes[1]
    assert shapes[0] == shapes[2]


async def test_held_open_success(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    server.settings.generation_time = 0.02
    body = {"action": "generate", "prompt": "cat", "count": 2, "size": "16:9",
            "model": "flux-kontext-pro", "extra": "kept"}
    started = time.monotonic()
    ans = await post(http, server, "/flux/images", body)
    assert time.monotonic() - started >= 0.02
    assert ans.status == 200
    out = ans.json
    assert out["success"] is True
    assert set(out) == {"success", "task_id", "trace_id", "data"}
    assert len(out["data"]) == 2
    for i, item in enumerate(out["data"]):
        assert item["prompt"] == "cat"
        assert item["image_url"] == server.image_url(f"{out['task_id']}-{i}.png")
        assert isinstance(item["seed"], int)
        assert item["timings"]["inference"] == pytest.approx(0.02, abs=1e-3)


async def test_held_open_edit_makes_one_image(
    server: LocalFluxServer, http: aiohttp.ClientSession
) -> None:
    server.settings.generation_time = 0.0
    for action in ("edit", "edits"):
        body = {"action": action, "prompt": "p", "image_url": "https://x.test/a.png", "count": 3}
        ans = await post(http, server, "/flux/images", body)
        assert ans.status == 200
        assert len(ans.json["data"]) == 1


async def test_held_open_failure_and_finish_all(
    server: LocalFluxServer, http: aiohttp.ClientSession
) -> None:
    server.settings.failure_rate = 1.0
    request = asyncio.ensure_future(
        post(http, server, "/flux/images", {"action": "generate", "prompt": "p"})
    )
    await until(lambda: server.stats.tasks_created == 1)
    assert not request.done()
    await server.finish_all()
    ans = await request
    assert ans.status == 500
    assert ans.json["success"] is False
    assert ans.json["error"]["code"] == "generation_failed"
    assert set(ans.json) == {"success", "task_id", "trace_id", "error"}


# -- callbacks -------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[Any]]]:
    """A tiny callback receiver: its URL and the bodies it got."""
    got: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        got.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/cb", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/cb", got
    finally:
        await runner.cleanup()


async def test_callback_success(
    server: LocalFluxServer, http: aiohttp.ClientSession, receiver: tuple[str, list[Any]]
) -> None:
    url, got = receiver
    ans = await post(
        http, server, "/flux/images", {"action": "generate", "prompt": "p", "callback_url": url}
    )
    assert ans.status == 200
    task_id = ans.json["task_id"]
    assert got == []
    await server.finish_all()  # also awaits the deliveries it triggers
    assert len(got) == 1
    assert got[0]["success"] is True
    assert got[0]["task_id"] == task_id
    assert set(got[0]) == {"success", "task_id", "trace_id", "data"}
    assert server.stats.callbacks_sent == 1
    polled = (await retrieve(http, server, task_id)).json
    assert polled["response"] == got[0]
    assert "callback_url" not in polled["request"]


async def test_callback_failure_body_and_natural_timer(
    server: LocalFluxServer, http: aiohttp.ClientSession, receiver: tuple[str, list[Any]]
) -> None:
    url, got = receiver
    server.settings.failure_rate = 1.0
    server.settings.generation_time = 0.01
    await submit(http, server, callback_url=url)
    await until(lambda: server.stats.callbacks_sent == 1)
    assert got[0]["success"] is False
    assert got[0]["error"]["code"] == "generation_failed"


async def test_callback_drop_and_delivery_error(
    server: LocalFluxServer, http: aiohttp.ClientSession, receiver: tuple[str, list[Any]]
) -> None:
    url, got = receiver
    server.settings.callback_drop_rate = 1.0
    await submit(http, server, callback_url=url)
    await server.finish_all()
    assert got == []
    assert server.stats.callbacks_dropped == 1
    server.settings.callback_drop_rate = 0.0
    await submit(http, server, callback_url=url.replace("/cb", "/nowhere"))  # answers 404
    await server.finish_all()
    assert server.stats.callbacks_failed == 1
    assert server.stats.callbacks_sent == 0


# -- retrieving ------------------------------------------------------------------------


def pending_shape(obj: dict[str, Any]) -> str:
    assert "finished_at" not in obj
    assert "elapsed" not in obj
    if "response" not in obj:
        return "missing"
    response = obj["response"]
    if response is None:
        return "null"
    if response == {}:
        return "empty"
    assert response == {"success": True, "task_id": obj["id"]}
    return "no_data"


async def test_pending_shapes_cycle(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    ids = [(await submit(http, server)).json["task_id"] for _ in range(4)]
    shapes = [pending_shape((await retrieve(http, server, i)).json) for i in ids]
    assert sorted(shapes) == ["empty", "missing", "no_data", "null"]
    again = [pending_shape((await retrieve(http, server, i)).json) for i in ids]
    assert again == shapes  # deterministic per task


@pytest.mark.parametrize("shape", ["missing", "null", "empty", "no_data"])
async def test_pending_shape_fixed(
    server: LocalFluxServer, http: aiohttp.ClientSession, shape: Any
) -> None:
    server.settings.pending_shapes = shape
    for _ in range(2):
        task_id = (await submit(http, server)).json["task_id"]
        assert pending_shape((await retrieve(http, server, task_id)).json) == shape


async def test_retrieve_success(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    server.settings.status_words = True
    sub = (await submit(http, server, count=2, size="1024x1024")).json
    pending = (await retrieve(http, server, sub["task_id"])).json
    assert pending["status"] == "processing"
    assert "state" not in pending  # the first task of the cycle: status only
    await server.finish_all()
    obj = (await retrieve(http, server, sub["task_id"])).json
    assert obj["id"] == sub["task_id"]
    assert obj["trace_id"] == sub["trace_id"]
    assert obj["type"] == "images"
    assert obj["status"] == "succeeded"
    assert len(obj["_id"]) == 24
    assert isinstance(obj["api_id"], str)
    assert obj["request"] == {
        "action": "generate",
        "prompt": "a white siamese cat",
        "async": True,
        "count": 2,
        "size": "1024x1024",
    }
    assert obj["created_at"] <= obj["started_at"] <= obj["finished_at"] <= time.time()
    assert obj["elapsed"] == pytest.approx(obj["finished_at"] - obj["created_at"], abs=1e-3)
    assert obj["finished_at"] == server.stats.finish_times[sub["task_id"]]
    assert obj["response"]["success"] is True
    assert len(obj["response"]["data"]) == 2


async def test_retrieve_failure_alternates_finished_at(
    server: LocalFluxServer, http: aiohttp.ClientSession
) -> None:
    server.settings.failure_rate = 1.0
    server.settings.status_words = True
    ids = [(await submit(http, server)).json["task_id"] for _ in range(4)]
    await server.finish_all()
    objs = [(await retrieve(http, server, i)).json for i in ids]
    assert [("finished_at" in o) for o in objs] == [True, False, True, False]
    for obj in objs:
        assert obj["response"]["success"] is False
        assert obj["response"]["error"]["code"] == "generation_failed"
        assert word(obj) == "failed"
        assert ("elapsed" in obj) == ("finished_at" in obj)


async def test_retrieve_batch(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    ids = [(await submit(http, server)).json["task_id"] for _ in range(12)]
    mine_elsewhere = (await submit(http, server, token=OTHER_TOKEN)).json["task_id"]
    asked = [*ids, "no-such-task", mine_elsewhere]
    ans = await post(http, server, "/flux/tasks", {"action": "retrieve_batch", "ids": asked})
    assert ans.status == 200
    assert ans.json["count"] == 12
    got = [item["id"] for item in ans.json["items"]]
    assert sorted(got) == sorted(ids)
    assert got != ids  # shuffled
    assert server.stats.ids_queried == len(asked)
    for _ in range(5):  # never in the order asked, even for two ids
        pair = await post(http, server, "/flux/tasks", {"action": "retrieve_batch", "ids": ids[:2]})
        assert [item["id"] for item in pair.json["items"]] == ids[1::-1]


async def test_retrieve_batch_limits(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    too_many = {"action": "retrieve_batch", "ids": [f"id-{i}" for i in range(101)]}
    ans = await post(http, server, "/flux/tasks", too_many)
    assert (ans.status, ans.code) == (400, "bad_request")
    assert "ids" in ans.json["error"]["message"]
    server.settings.batch_enabled = False
    ans = await post(http, server, "/flux/tasks", {"action": "retrieve_batch", "ids": ["x"]})
    assert (ans.status, ans.code) == (400, "api_not_implemented")


async def test_tasks_are_private_to_their_token(
    server: LocalFluxServer, http: aiohttp.ClientSession
) -> None:
    task_id = (await submit(http, server)).json["task_id"]
    assert (await retrieve(http, server, task_id)).status == 200
    ans = await retrieve(http, server, task_id, token=OTHER_TOKEN)
    assert (ans.status, ans.code) == (404, "not_found")


# -- errors ----------------------------------------------------------------------------


def check_error(ans: Answer, status: int | tuple[int, ...], code: str) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert ans.status in statuses
    assert ans.headers["content-type"] == "application/json"
    # The vendor documents error bodies with and without "success": false.
    assert set(ans.json) - {"success"} == {"error", "trace_id"}
    assert ans.json.get("success", False) is False
    assert set(ans.json["error"]) == {"code", "message"}
    assert ans.code == code


@pytest.mark.parametrize("path", ["/flux/images", "/flux/tasks"])
@pytest.mark.parametrize(
    ("state", "status", "code"),
    [
        ("expired", 401, "token_expired"),
        ("invalid", 401, "invalid_token"),
        ("used_up", 403, "used_up"),
        ("disabled", 400, "disabled"),
        ("mismatched", (400, 401), "token_mismatched"),
    ],
)
async def test_token_states(
    server: LocalFluxServer,
    http: aiohttp.ClientSession,
    path: str,
    state: Any,
    status: int | tuple[int, ...],
    code: str,
) -> None:
    server.set_token_state(server.token, state)
    body = {"action": "generate", "prompt": "p", "async": True}
    if path == "/flux/tasks":
        body = {"action": "retrieve", "id": "x"}
    check_error(await post(http, server, path, body), status, code)
    server.set_token_state(server.token, "ok")
    assert (await submit(http, server)).status == 200


async def test_auth_errors(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    body = {"action": "generate", "prompt": "p", "async": True}
    check_error(await post(http, server, "/flux/images", body, token=None), 400, "no_token")
    async with http.post(
        server.url + "/flux/tasks", json=body, headers={"authorization": f"Token {server.token}"}
    ) as resp:
        check_error(Answer(resp.status, resp.headers, await resp.read()), 400, "no_token")
    check_error(await post(http, server, "/flux/images", body, token="nope"), 401, "invalid_token")
    assert server.stats.tasks_created == 0


async def test_unknown_task_path_and_method(
    server: LocalFluxServer, http: aiohttp.ClientSession
) -> None:
    check_error(await retrieve(http, server, "no-such-task"), 404, "not_found")
    check_error(await post(http, server, "/flux/videos", {}), 404, "no_api")
    async with http.get(server.url + "/flux/images") as resp:
        check_error(Answer(resp.status, resp.headers, await resp.read()), 405, "method_not_allowed")
    ans = await post(http, server, "/flux/tasks", {"action": "cancel", "id": "x"})
    check_error(ans, 400, "bad_request")


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt is too long"),
        ({"action": "upscale"}, "action"),
        ({"action": "edit"}, "image_url"),
        ({"action": "edits", "image_url": "ftp://x/y.png"}, "image_url"),
        ({"count": 0}, "count"),
        ({"count": -1}, "count"),
        ({"count": 11}, "count"),
        ({"count": 2.5}, "count"),
        ({"count": True}, "count"),
        ({"count": "2"}, "count"),
        ({"size": "big"}, "size"),
        ({"size": "1024x"}, "size"),
        ({"size": 1024}, "size"),
        ({"size": "0:9"}, "size"),
        ({"model": 1}, "model"),
        ({"callback_url": "not a url"}, "callback_url"),
        ({"async": "yes"}, "async"),
    ],
)
async def test_bad_fields(
    server: LocalFluxServer, http: aiohttp.ClientSession, fields: dict[str, Any], field_name: str
) -> None:
    body = {"action": "generate", "prompt": "p", "async": True, **fields}
    ans = await post(http, server, "/flux/images", body)
    check_error(ans, 400, "bad_request")
    assert field_name in ans.json["error"]["message"]
    assert server.stats.tasks_created == 0


async def test_the_longest_prompt_is_taken(
    server: LocalFluxServer, http: aiohttp.ClientSession
) -> None:
    # Counted in characters, not bytes: 32,000 two-byte characters still pass.
    ans = await submit(http, server, prompt="é" * MAX_PROMPT_CHARS)
    assert ans.status == 200, ans.raw[:200]
    assert server.stats.tasks_created == 1


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
async def test_non_json_bodies(
    server: LocalFluxServer, http: aiohttp.ClientSession, raw: bytes
) -> None:
    for path in ("/flux/images", "/flux/tasks"):
        check_error(await post(http, server, path, None, raw=raw), 400, "bad_request")


# -- limits ----------------------------------------------------------------------------


async def test_max_in_flight(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    server.settings.max_in_flight = 2
    assert (await submit(http, server)).status == 200
    assert (await submit(http, server)).status == 200
    first = await submit(http, server)
    check_error(first, 429, "rate_limited")  # the concurrency limit's code, every time
    assert "Retry-After" not in first.headers  # the vendor documents none
    assert (await submit(http, server, token=OTHER_TOKEN)).status == 200  # per token
    server.settings.retry_after_share = 1.0
    second = await submit(http, server)
    check_error(second, 429, "rate_limited")
    assert 1 <= int(second.headers["Retry-After"]) <= SLOW
    assert server.stats.rate_limited == 2
    assert server.stats.statuses[429] == 2
    await server.finish_all()
    assert (await submit(http, server)).status == 200


async def test_submit_rate(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    server.settings.submit_rate = 0.5  # capacity 1, then one token every 2 s
    server.settings.retry_after_share = 1.0
    assert (await submit(http, server)).status == 200
    ans = await submit(http, server)
    check_error(ans, 429, "too_many_requests")  # the rate's code, not the in-flight one
    assert ans.headers["Retry-After"] == "2"
    assert (await submit(http, server, token=OTHER_TOKEN)).status == 200
    assert server.stats.tasks_created == 2


async def test_query_rate(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    server.settings.query_rate = 3.0  # capacity 3
    server.settings.retry_after_share = 1.0
    task_id = (await submit(http, server)).json["task_id"]
    answers = [await retrieve(http, server, task_id) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    check_error(answers[-1], 429, "too_many_requests")
    assert answers[-1].headers["Retry-After"] == "1"
    server.settings.retry_after_share = 0.0
    assert "Retry-After" not in (await retrieve(http, server, task_id)).headers


# -- faults ----------------------------------------------------------------------------


async def test_fault_reset_before(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    server.settings.faults = {"images": Faults(reset_before=1.0)}
    with pytest.raises(aiohttp.ClientConnectionError):
        await submit(http, server)
    assert server.stats.tasks_created == 0
    assert server.stats.faults_injected["images:reset_before"] == 1
    server.settings.faults = {}
    assert (await submit(http, server)).status == 200  # the server is fine afterwards


@pytest.mark.parametrize("held_open", [False, True])
async def test_fault_reset_after(
    server: LocalFluxServer, http: aiohttp.ClientSession, held_open: bool
) -> None:
    server.settings.faults = {"images": Faults(reset_after=1.0)}
    extra: dict[str, Any] = {"async": False} if held_open else {}
    with pytest.raises(aiohttp.ClientConnectionError):
        await submit(http, server, **extra)
    assert server.stats.tasks_created == 1
    assert server.stats.faults_injected["images:reset_after"] == 1
    assert server.stats.in_flight == 1


async def test_fault_reset_after_on_tasks(
    server: LocalFluxServer, http: aiohttp.ClientSession
) -> None:
    task_id = (await submit(http, server)).json["task_id"]
    server.settings.faults["tasks"] = Faults(reset_after=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await retrieve(http, server, task_id)
    assert server.stats.requests["retrieve"] == 1


async def test_fault_truncated(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    server.settings.faults = {"images": Faults(truncated=1.0), "tasks": Faults(truncated=1.0)}
    ans = await submit(http, server)
    assert ans.status == 200
    assert ans.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        _ = ans.json
    assert server.stats.tasks_created == 1
    with pytest.raises(json.JSONDecodeError):
        _ = (await post(http, server, "/flux/tasks", {"action": "retrieve_batch", "ids": []})).json


async def test_fault_gateway_page_and_server_error(
    server: LocalFluxServer, http: aiohttp.ClientSession
) -> None:
    server.settings.faults = {"images": Faults(gateway_page=1.0)}
    ans = await submit(http, server)
    assert ans.status == 502
    assert ans.headers["content-type"].startswith("text/html")
    assert b"<html>" in ans.raw
    server.settings.faults = {"tasks": Faults(server_error=1.0)}
    check_error(await retrieve(http, server, "x"), 500, "api_error")
    assert server.stats.tasks_created == 0
    assert dict(server.stats.faults_injected) == {"images:gateway_page": 1, "tasks:server_error": 1}


async def test_fault_slow(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    server.settings.faults = {"images": Faults(slow=1.0, slow_delay=0.2)}
    started = time.monotonic()
    ans = await submit(http, server)
    assert ans.status == 200
    assert time.monotonic() - started >= 0.2
    assert server.stats.faults_injected["images:slow"] == 1


def test_fault_draw_is_exclusive_and_ordered() -> None:
    faults = Faults(server_error=0.25, reset_after=0.25, slow=0.5)
    assert faults.draw(0.1) == "server_error"
    assert faults.draw(0.3) == "reset_after"
    assert faults.draw(0.7) == "slow"
    assert Faults().draw(0.0) is None


# -- files -----------------------------------------------------------------------------


async def test_png_files(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    task_id = (await submit(http, server, count=2)).json["task_id"]
    name = f"{task_id}-1.png"
    async with http.get(server.image_url(name)) as resp:
        assert resp.status == 404  # not generated yet
    await server.finish_all()
    async with http.get(server.image_url(name)) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "image/png"
        data = await resp.read()
    width, height, pixels = decode_png(data)
    assert (width, height) == (64, 64)
    assert len(set(pixels)) > 8  # a picture, not a flat colour
    async with http.get(server.image_url(f"{task_id}-0.png")) as resp:
        other = await resp.read()
    assert other != data
    async with http.get(server.image_url(name)) as resp:
        assert await resp.read() == data  # deterministic
    for bad in (f"{task_id}-2.png", f"{task_id}-01.png", f"{task_id}-1.jpg", "x.png", "..%2F"):
        async with http.get(server.image_url(bad)) as resp:
            assert resp.status == 404, bad
    assert server.stats.requests["files"] == 9


async def test_no_files_for_failed_tasks(
    server: LocalFluxServer, http: aiohttp.ClientSession
) -> None:
    server.settings.failure_rate = 1.0
    task_id = (await submit(http, server)).json["task_id"]
    await server.finish_all()
    async with http.get(server.image_url(f"{task_id}-0.png")) as resp:
        assert resp.status == 404


# -- stats and control endpoints -------------------------------------------------------


async def test_stats(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    a = (await submit(http, server, prompt="a")).json["task_id"]
    await submit(http, server, prompt="a")
    await submit(http, server, prompt="b")
    await retrieve(http, server, a)
    await post(http, server, "/flux/tasks", {"action": "retrieve_batch", "ids": [a, "zz"]})
    await post(http, server, "/nope", {})
    stats = server.stats
    assert stats.requests == {"images": 3, "retrieve": 1, "retrieve_batch": 1, "other": 1}
    assert stats.statuses == {200: 5, 404: 1}
    assert stats.tasks_created == 3
    assert stats.tasks_per_prompt == {"a": 2, "b": 1}
    assert stats.duplicate_prompts == {"a": 2}
    assert stats.in_flight == 3
    assert stats.peak_in_flight == 3
    assert stats.ids_queried == 3
    assert len(stats.finish_times) == 3
    await server.finish_all()
    assert stats.in_flight == 0
    assert stats.peak_in_flight == 3
    snap = stats.snapshot()
    assert "finish_times" not in snap
    assert json.loads(json.dumps(snap)) == snap
    server.reset_stats()
    assert server.stats.snapshot(finish_times=True) == {
        "requests": {},
        "statuses": {},
        "rate_limited": 0,
        "over_capacity": 0,
        "tasks_created": 0,
        "tasks_per_prompt": {},
        "duplicate_prompts": {},
        "in_flight": 0,
        "peak_in_flight": 0,
        "ids_queried": 0,
        "callbacks_sent": 0,
        "callbacks_dropped": 0,
        "callbacks_failed": 0,
        "faults_injected": {},
        "unanswered": [],
        "finish_times": {},
    }


async def test_local_endpoints(server: LocalFluxServer, http: aiohttp.ClientSession) -> None:
    task_id = (await submit(http, server)).json["task_id"]
    async with http.get(server.url + "/_local/stats?finish_times=1") as resp:
        snap = await resp.json()
    assert snap["tasks_created"] == 1
    assert set(snap["finish_times"]) == {task_id}
    ans = await post(
        http,
        server,
        "/_local/settings",
        {"failure_rate": 1.0, "generation_time": [0.0, 0.0], "faults": {"files": {"slow": 0.5}}},
    )
    assert ans.status == 200
    assert ans.json["failure_rate"] == 1.0
    assert server.settings.failure_rate == 1.0
    assert server.settings.generation_time == (0.0, 0.0)
    assert server.settings.faults == {"files": Faults(slow=0.5)}
    bad_changes: list[dict[str, Any]] = [
        {"failure_rate": 2},
        {"nope": 1},
        {"faults": {"x": {}}},
        {"faults": {"tasks": {"slow": "x"}}},
        {"faults": {"tasks": {"sloow": 1}}},
        {"seed": "s"},
        {"batch_enabled": 1},
    ]
    for bad in bad_changes:
        check_error(await post(http, server, "/_local/settings", bad), 400, "bad_request")
    assert server.settings.failure_rate == 1.0
    await post(http, server, "/_local/token_state", {"token": OTHER_TOKEN, "state": "used_up"})
    check_error(await submit(http, server, token=OTHER_TOKEN), 403, "used_up")
    await post(http, server, "/_local/finish_all", {})
    assert server.stats.in_flight == 0
    await post(http, server, "/_local/reset", {})
    async with http.get(server.url + "/_local/stats") as resp:
        snap = await resp.json()
    assert snap["requests"] == {}  # control endpoints are not counted
    assert snap["tasks_created"] == 0


def test_settings_validate_on_assignment() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        ServerSettings(failure_rate=1.5)
    settings = ServerSettings()
    with pytest.raises(ValueError, match="generation_time"):
        settings.generation_time = (3.0, 1.0)
    with pytest.raises(ValueError, match="pending_shapes"):
        settings.pending_shapes = "weird"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="max_in_flight"):
        settings.max_in_flight = 0


# -- lifecycle -------------------------------------------------------------------------


async def test_close_leaves_nothing_behind(
    http: aiohttp.ClientSession, receiver: tuple[str, list[Any]]
) -> None:
    before = asyncio.all_tasks()
    server = LocalFluxServer(ServerSettings(generation_time=SLOW))
    await server.start()
    url = server.url
    held = asyncio.ensure_future(
        post(http, server, "/flux/images", {"action": "generate", "prompt": "p"})
    )
    await submit(http, server, callback_url=receiver[0])
    await until(lambda: server.stats.tasks_created == 2)
    await server.close()
    with anyio.fail_after(2):
        try:
            ans = await held
            assert ans.status == 503
        except aiohttp.ClientConnectionError:
            pass
    assert asyncio.all_tasks() <= before | {asyncio.current_task()}
    assert receiver[1] == []
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(url + "/_local/stats"):
            pass
    await server.close()  # idempotent


async def test_pytest_plugin_fixture(flux_server: LocalFluxServer) -> None:  # noqa: F811
    assert flux_server.url.startswith("http://127.0.0.1:")
    assert flux_server.settings.generation_time == (0.05, 0.2)
    assert flux_server.token == DEFAULT_TOKEN


def test_standalone_runner() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [
        sys.executable,
        "-m",
        "flux_async.testing",
        "--port",
        "0",
        "--token",
        "tok",
        "--seed",
        "1",
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        try:
            prefix = "flux_async.testing listening on http://127.0.0.1:"
            assert line.startswith(prefix)
            url, token = line.split(" ")[3], line.split(" ")[4]
            assert token == "token=tok"
            assert int(url.rsplit(":", 1)[1]) > 0
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0


async def test_seed_reproduces_a_run(http: aiohttp.ClientSession) -> None:
    runs = []
    for _ in range(2):
        async with LocalFluxServer(ServerSettings(generation_time=(1, 50), seed=99)) as srv:
            task_id = (await submit(http, srv)).json["task_id"]
            runs.append((task_id, srv.stats.finish_times[task_id] - time.time()))
            srv.update_settings({"seed": 5})
            assert srv.settings.seed == 5
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] == pytest.approx(runs[1][1], abs=0.5)

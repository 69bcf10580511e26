"""The local server's hostile settings, over real sockets with plain aiohttp.

A link that delivers answers in pieces, a task store that lags its submissions,
slow submission answers, refusals (403, 504), 429s that say which limit was hit
and carry no Retry-After, both error body spellings, and the vendor's model rules.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from flux_async.testing import DEFAULT_TOKEN, Faults, LocalFluxServer, ServerSettings
from flux_async.testing._settings import LINK_ENV, link_from_env
from flux_async.testing._validate import ASPECT_RATIOS, MODELS
from tests.conftest import eventually

pytestmark = pytest.mark.anyio

SLOW = 60.0  # tasks stay pending unless finish_all() is called


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Reply:
    """An answer, with the pieces it arrived in."""

    def __init__(self, response: aiohttp.ClientResponse, pieces: list[bytes]) -> None:
        self.status = response.status
        self.headers = response.headers
        self.pieces = pieces
        self.raw = b"".join(pieces)

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


async def call(
    http: aiohttp.ClientSession,
    server: LocalFluxServer,
    path: str,
    body: Any,
    *,
    method: str = "POST",
    timeout: float | None = None,
) -> Reply:
    headers = {"authorization": f"Bearer {DEFAULT_TOKEN}", "content-type": "application/json"}
    async with http.request(
        method, server.url + path, data=json.dumps(body).encode(), headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as response:
        # iter_any hands over what has arrived so far: one item per piece read.
        pieces = [piece async for piece in response.content.iter_any()]
        return Reply(response, pieces)


async def submit(http: aiohttp.ClientSession, server: LocalFluxServer, **fields: Any) -> Reply:
    body = {"action": "generate", "prompt": "a cat", "async": True, **fields}
    return await call(http, server, "/flux/images", body)


async def retrieve(http: aiohttp.ClientSession, server: LocalFluxServer, task_id: str) -> Reply:
    return await call(http, server, "/flux/tasks", {"action": "retrieve", "id": task_id})


def error_of(reply: Reply, status: int, code: str) -> str:
    assert reply.status == status, reply.raw
    body = reply.json
    assert set(body) - {"success"} == {"error", "trace_id"}
    assert body.get("success", False) is False
    assert body["error"]["code"] == code
    return str(body["error"]["message"])


# -- the link --------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_link_answers_arrive_in_pieces(http: aiohttp.ClientSession, framing: Any) -> None:
    settings = ServerSettings(generation_time=SLOW, link_chunk_bytes=200, link_chunk_gap=0.005,
                              link_framing=framing, seed=1)
    async with LocalFluxServer(settings) as server:
        ids = [(await submit(http, server)).json["task_id"] for _ in range(5)]
        started = time.monotonic()
        reply = await call(http, server, "/flux/tasks", {"action": "retrieve_batch", "ids": ids})
        elapsed = time.monotonic() - started
    assert reply.status == 200
    assert len(reply.raw) > 1000
    assert len(reply.pieces) > 1  # more than one read: the body was not there at once
    assert max(map(len, reply.pieces)) <= len(reply.raw) - 200
    assert {item["id"] for item in reply.json["items"]} == set(ids)
    gaps = (len(reply.raw) + 199) // 200 - 1
    assert elapsed >= gaps * 0.005
    if framing == "length":
        assert reply.headers["Content-Length"] == str(len(reply.raw))
    else:
        assert reply.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in reply.headers


async def test_link_mixed_framing_alternates_and_covers_errors_and_files(
    http: aiohttp.ClientSession,
) -> None:
    settings = ServerSettings(generation_time=0.0, link_chunk_bytes=16, link_chunk_gap=0.0)
    assert settings.link_framing == "mixed"
    async with LocalFluxServer(settings) as server:
        missing = await retrieve(http, server, "no-such-task")
        error_of(missing, 404, "not_found")
        assert len(missing.raw) > 16
        unknown = await call(http, server, "/flux/videos", {})
        error_of(unknown, 404, "no_api")
        framings = {"Content-Length" in r.headers for r in (missing, unknown)}
        assert framings == {True, False}
        task_id = (await submit(http, server)).json["task_id"]
        png = await call(http, server, f"/files/{task_id}-0.png", None, method="GET")
    assert png.status == 200
    assert png.headers["Content-Type"] == "image/png"
    assert png.raw.startswith(b"\x89PNG\r\n\x1a\n")
    assert png.raw.endswith(b"IEND\xaeB`\x82")


async def test_link_client_leaving_mid_answer_loses_the_task(http: aiohttp.ClientSession) -> None:
    # 16-byte pieces 50 ms apart: a submission answer takes a few hundred ms to send.
    settings = ServerSettings(generation_time=SLOW, link_chunk_bytes=16, link_chunk_gap=0.05)
    async with LocalFluxServer(settings) as server:
        with pytest.raises(asyncio.TimeoutError):  # not the builtin one on 3.10
            await call(http, server, "/flux/images",
                       {"action": "generate", "prompt": "p", "async": True}, timeout=0.1)
        await eventually(lambda: len(server.stats.unanswered) == 1)
        assert server.stats.tasks_created == 1
        assert server.stats.unanswered == list(server.stats.finish_times)


def test_link_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert link_from_env({}) == (None, 0.0)
    assert link_from_env({LINK_ENV: "off"}) == (None, 0.0)
    assert link_from_env({LINK_ENV: "1448:0.002"}) == (1448, 0.002)
    assert link_from_env({LINK_ENV: " 512 "}) == (512, 0.0)
    for bad in ("0:0.1", "x:1", "100:-1", "100:nan", "100:abc", ":0.1"):
        with pytest.raises(ValueError, match=LINK_ENV):
            link_from_env({LINK_ENV: bad})
    monkeypatch.setenv(LINK_ENV, "700:0.01")
    settings = ServerSettings()
    assert (settings.link_chunk_bytes, settings.link_chunk_gap) == (700, 0.01)
    explicit = ServerSettings(link_chunk_bytes=None)
    assert explicit.link_chunk_bytes is None
    monkeypatch.delenv(LINK_ENV)
    assert ServerSettings().link_chunk_bytes is None
    with pytest.raises(ValueError, match="link_chunk_bytes"):
        ServerSettings(link_chunk_bytes=0)
    with pytest.raises(ValueError, match="link_chunk_gap"):
        ServerSettings(link_chunk_gap=-1.0)
    with pytest.raises(ValueError, match="link_framing"):
        ServerSettings(link_framing="smoke")  # type: ignore[arg-type]


# -- a task store that lags, a slow submission answer ----------------------------------


async def test_visibility_delay(http: aiohttp.ClientSession) -> None:
    settings = ServerSettings(generation_time=SLOW, visibility_delay=0.3)
    async with LocalFluxServer(settings) as server:
        created = time.monotonic()
        task_id = (await submit(http, server)).json["task_id"]
        early = await retrieve(http, server, task_id)
        if time.monotonic() - created < 0.3:  # a loaded machine may have been slower
            assert error_of(early, 404, "not_found") == "Task not found"
            batch = await call(http, server, "/flux/tasks",
                               {"action": "retrieve_batch", "ids": [task_id]})
            assert batch.json == {"items": [], "count": 0}
        with anyio.fail_after(5):
            # Asking again is the only way to see it appear, as with the real service.
            while (await retrieve(http, server, task_id)).status == 404:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert time.monotonic() - created >= 0.3
        later = await retrieve(http, server, task_id)
        assert later.json["id"] == task_id
        batch = await call(http, server, "/flux/tasks",
                           {"action": "retrieve_batch", "ids": [task_id]})
        assert batch.json["count"] == 1


async def test_submit_answer_delay(http: aiohttp.ClientSession) -> None:
    settings = ServerSettings(generation_time=SLOW, submit_answer_delay=0.3)
    async with LocalFluxServer(settings) as server:
        started = time.monotonic()
        task_id = (await submit(http, server)).json["task_id"]
        assert time.monotonic() - started >= 0.3
        assert server.stats.unanswered == []
        # A client that gives up during the delay: the task exists all the same.
        with pytest.raises(asyncio.TimeoutError):  # not the builtin one on 3.10
            await call(http, server, "/flux/images",
                       {"action": "generate", "prompt": "lost", "async": True}, timeout=0.05)
        assert server.stats.tasks_per_prompt["lost"] == 1
        await eventually(lambda: len(server.stats.unanswered) == 1)
        lost = server.stats.unanswered[0]
        assert lost != task_id
        assert (await retrieve(http, server, lost)).json["request"]["prompt"] == "lost"


@pytest.mark.parametrize("fault", ["reset_after", "truncated"])
async def test_late_faults_count_the_answer_as_lost(
    http: aiohttp.ClientSession, fault: str
) -> None:
    settings = ServerSettings(generation_time=SLOW, faults={"images": Faults(**{fault: 1.0})})
    async with LocalFluxServer(settings) as server:
        try:
            reply = await submit(http, server)
        except aiohttp.ClientError:
            pass
        else:
            with pytest.raises(json.JSONDecodeError):
                reply.json  # noqa: B018 - half a body is not JSON
        assert len(server.stats.unanswered) == 1
        assert server.stats.snapshot()["unanswered"] == server.stats.unanswered


# -- refusals and limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code", "words"),
    [("forbidden", 403, "forbidden", "refused"), ("upstream_timeout", 504, "timeout", "timed out")],
)
@pytest.mark.parametrize("endpoint", ["images", "tasks"])
async def test_refusal_faults_create_nothing(
    http: aiohttp.ClientSession, fault: str, status: int, code: str, words: str, endpoint: str
) -> None:
    settings = ServerSettings(generation_time=SLOW, faults={endpoint: Faults(**{fault: 1.0})})
    async with LocalFluxServer(settings) as server:
        if endpoint == "images":
            reply = await submit(http, server)
        else:
            reply = await retrieve(http, server, "any")
        assert words in error_of(reply, status, code)
        assert server.stats.tasks_created == 0
        assert server.stats.faults_injected == {f"{endpoint}:{fault}": 1}


def test_fault_kinds_order() -> None:
    assert Faults(forbidden=0.25, upstream_timeout=0.25).draw(0.2) == "forbidden"
    assert Faults(forbidden=0.25, upstream_timeout=0.25).draw(0.3) == "upstream_timeout"
    assert Faults(server_error=0.5, forbidden=0.5).draw(0.6) == "forbidden"
    with pytest.raises(ValueError, match="forbidden"):
        Faults(forbidden=2.0)


async def test_429_codes_by_cause_and_no_retry_after(http: aiohttp.ClientSession) -> None:
    settings = ServerSettings(generation_time=SLOW, max_in_flight=1, submit_rate=2.0)
    assert settings.retry_after_share == 0.0
    async with LocalFluxServer(settings) as server:
        assert (await submit(http, server)).status == 200
        codes = []
        for _ in range(4):
            reply = await submit(http, server)
            assert "Retry-After" not in reply.headers
            codes.append(reply.json["error"]["code"])
    # Capacity 2: the second submission meets the in-flight limit, then the rate.
    assert codes[0] == "rate_limited"
    assert "too_many_requests" in codes[1:]
    assert set(codes) == {"rate_limited", "too_many_requests"}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("always", [True] * 4), ("never", [False] * 4), ("mixed", [False, True, False, True])],
)
async def test_error_success_field(
    http: aiohttp.ClientSession, mode: Any, expected: list[bool]
) -> None:
    async with LocalFluxServer(ServerSettings(error_success_field=mode)) as server:
        replies = [await retrieve(http, server, "missing") for _ in range(4)]
    assert ["success" in r.json for r in replies] == expected
    for reply in replies:
        error_of(reply, 404, "not_found")


# -- task objects ----------------------------------------------------------------------


async def test_pending_nulls_and_state_words(http: aiohttp.ClientSession) -> None:
    settings = ServerSettings(generation_time=SLOW, status_words=True)
    async with LocalFluxServer(settings) as server:
        ids = [(await submit(http, server)).json["task_id"] for _ in range(8)]
        pending = [(await retrieve(http, server, i)).json for i in ids]
        await server.finish_all()
        done = [(await retrieve(http, server, i)).json for i in ids]
    nulls = [("finished_at" in o, o.get("finished_at"), o.get("elapsed")) for o in pending]
    assert nulls == [(False, None, None)] * 4 + [(True, None, None)] * 4
    assert all("elapsed" in o for o in pending[4:])
    assert [sorted({"status", "state"} & set(o)) for o in pending[:3]] == [
        ["status"], ["state"], ["state", "status"],
    ]
    for obj in pending:
        assert obj.get("status", "processing") == "processing"
        assert obj.get("state", "") == ""
    for obj in done:
        assert obj.get("status", "succeeded") == obj.get("state", "succeeded") == "succeeded"
        assert isinstance(obj["finished_at"], float)


# -- the vendor's validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "size", "ok"),
    [
        (None, "1024x1024", True),
        (None, "1440x256", True),
        (None, "16:9", False),
        ("flux-dev", "1472x1024", False),
        ("flux-dev", "224x1024", False),
        ("flux-pro", "1000x1000", False),
        ("flux-pro-1.1", "1024x768", True),
        ("flux-2-pro", "64x2048", True),
        ("flux-2-klein", "32x1024", False),
        ("flux-2-flex", "100x1024", False),
        ("flux-2-max", "4:3", False),
        ("flux-pro-1.1-ultra", "21:9", True),
        ("flux-pro-1.1-ultra", "1024x1024", False),
        ("flux-kontext-max", "9:21", True),
        ("flux-kontext-pro", "7:5", False),
        ("flux-9", None, False),
        ("", None, False),
    ],
)
async def test_models_and_sizes(
    http: aiohttp.ClientSession, model: str | None, size: str | None, ok: bool
) -> None:
    fields = {k: v for k, v in (("model", model), ("size", size)) if v is not None}
    async with LocalFluxServer(ServerSettings(generation_time=SLOW)) as server:
        reply = await submit(http, server, **fields)
        if ok:
            assert reply.status == 200
        else:
            message = error_of(reply, 400, "bad_request")
            field = "size" if model in MODELS or model is None else "model"
            assert message.startswith(field)
            if field == "model":
                assert message == "model is invalid."
            assert server.stats.tasks_created == 0


def test_the_model_table() -> None:
    assert len(MODELS) == 10
    assert {m for m, rule in MODELS.items() if rule.ratio} == {
        "flux-pro-1.1-ultra", "flux-kontext-pro", "flux-kontext-max",
    }
    assert len(ASPECT_RATIOS) == 11


async def test_edit_is_the_action_word(http: aiohttp.ClientSession) -> None:
    async with LocalFluxServer(ServerSettings(generation_time=SLOW)) as server:
        for action in ("edit", "edits"):
            reply = await call(http, server, "/flux/images", {
                "action": action, "prompt": "make it blue", "async": True,
                "image_url": "https://cdn.example/cat.png", "model": "flux-kontext-pro",
                "size": "1:1",
            })
            assert reply.status == 200, reply.raw

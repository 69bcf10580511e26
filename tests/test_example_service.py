"""examples/web_service.py under aiohttp's test client, against the local server, callbacks on."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from flux_async.testing import LocalFluxServer, ServerSettings
from flux_async.web import CALLBACK_RECEIVER, FLUX_CLIENT

from .conftest import eventually
from .serving import load_example

pytestmark = pytest.mark.anyio

@asynccontextmanager
async def example_app(
    server: LocalFluxServer, **settings: Any
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], web.Application]]:
    # The callback URL must be known before the app starts: bind its socket first.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = load_example("web_service").create_app(
        f"http://127.0.0.1:{port}", api_key=server.token, base_url=server.url,
        poll_interval=0.05, submit_rate=None, query_rate=None, **settings,
    )
    test_server = TestServer(app, port=port, socket_factory=lambda *_: sock)
    async with TestClient(test_server) as client:
        yield client, app


async def test_submit_then_status_through_callbacks() -> None:
    async with LocalFluxServer(ServerSettings(generation_time=(0.2, 0.4), seed=21)) as server:
        async with example_app(server, callback_poll_interval=60.0) as (http, app):
            answers = []
            for prompt in ("a cat", "a dog", "a fox"):
                response = await http.post("/images", json={"prompt": prompt, "count": 2})
                assert response.status == 202
                answers.append((await response.json())["task_id"])
            first = await (await http.get(f"/images/{answers[0]}")).json()
            assert first == {"task_id": answers[0], "status": "pending", "images": [],
                             "error": None}
            receiver = app[CALLBACK_RECEIVER]
            await eventually(lambda: receiver.counts["resolved"] == 3)
            for task_id in answers:
                response = await http.get(f"/images/{task_id}")
                body = await response.json()
                assert body["status"] == "succeeded"
                assert body["images"] == [server.image_url(f"{task_id}-{i}.png") for i in (0, 1)]
            client = app[FLUX_CLIENT]
        assert client.closed  # the app's cleanup closed it
    assert server.stats.requests["retrieve"] + server.stats.requests["retrieve_batch"] == 0


async def test_failures_bad_input_and_unknown_ids() -> None:
    settings = ServerSettings(generation_time=0.1, failure_rate=1.0, seed=22)
    async with LocalFluxServer(settings) as server:
        async with example_app(server) as (http, app):
            bad = await http.post("/images", json={"prompt": ""})
            assert bad.status == 400
            assert (await bad.json())["field"] == "prompt"
            assert (await http.post("/images", data=b"nope")).status == 400
            response = await http.post("/images", json={"prompt": "doomed"})
            task_id = (await response.json())["task_id"]
            # A failure callback is confirmed with the service (one query) first.
            await eventually(lambda: app[CALLBACK_RECEIVER].counts["confirming"] == 1)
            with anyio.fail_after(10):
                while True:  # only observable over HTTP: ask until it is no longer pending
                    body = await (await http.get(f"/images/{task_id}")).json()
                    if body["status"] != "pending":
                        break
                    await anyio.sleep(0.02)
            assert body["status"] == "failed"
            assert body["error"]
            assert (await http.get("/images/no-such-task")).status == 404

"""The client through a link that delivers answers in pieces, as real networks do.

On the loopback an answer arrives whole in one read; through a real link it
arrives in TCP segments. A client that reads "what is there now" sees cut
bodies: every batch poll fails as "not valid JSON" and submission answers turn
into SubmissionUncertainError, losing paid task ids.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from flux_async import (
    ConnectError,
    FluxClient,
    GenerateRequest,
    ProtocolError,
    TaskStatus,
)
from flux_async._edge.link import MAX_ANSWER_BYTES, Transport
from flux_async.testing import LocalFluxServer, ServerSettings

pytestmark = pytest.mark.anyio

# A full Ethernet segment's payload, 2 ms apart: a few ms per KB of answer.
LINK: dict[str, Any] = {"link_chunk_bytes": 1448, "link_chunk_gap": 0.002}


async def run_job(n: int, **client_settings: Any) -> tuple[int, list[str], LocalFluxServer]:
    """``n`` generations through the link; (images, error kinds, server)."""
    settings = ServerSettings(generation_time=(0.05, 0.3), seed=9, **LINK)
    async with LocalFluxServer(settings) as server:
        async with FluxClient(server.token, base_url=server.url, **client_settings) as client:
            requests = (GenerateRequest(f"a cat #{i}") for i in range(n))
            images, errors = 0, []
            async for outcome in client.map(requests):
                if outcome.result is not None:
                    images += len(outcome.result.images)
                else:
                    errors.append(type(outcome.error).__name__)
        return images, errors, server


async def test_a_job_through_a_real_link_gets_every_image() -> None:
    # Defaults (1 s polls, batches of 50, 30 queries/s) but no submission rate,
    # to keep it a few seconds.
    images, errors, server = await run_job(200, max_concurrency=50, submit_rate=None)
    assert errors == []
    assert images == 200
    assert server.stats.tasks_created == 200
    assert server.stats.duplicate_prompts == {}
    assert server.stats.requests["retrieve_batch"] > 0


@pytest.mark.slow
async def test_a_job_with_every_default_rate_through_a_real_link() -> None:
    images, errors, server = await run_job(200, max_concurrency=50)
    assert errors == []
    assert images == 200
    assert server.stats.tasks_created == 200


async def test_a_large_answer_is_read_whole_and_capped() -> None:
    # 100 pending tasks: a batch answer of ~60 KB, some 40 pieces.
    settings = ServerSettings(generation_time=60.0, **LINK)
    async with LocalFluxServer(settings) as server:
        async with FluxClient(server.token, base_url=server.url, submit_rate=None,
                              max_concurrency=100) as client:
            tasks = [await client.submit(GenerateRequest(f"p{i}")) for i in range(100)]
            seen = await client.get_tasks(t.id for t in tasks)
            assert {t.id for t in seen} == {t.id for t in tasks}
            assert {t.status for t in seen} == {TaskStatus.PENDING}


async def test_an_answer_over_the_cap_is_refused_while_reading() -> None:
    from aiohttp import web

    from .conftest import serve

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()  # no Content-Length to refuse it early
        await response.prepare(request)
        piece = b" " * (1024 * 1024)
        for _ in range(MAX_ANSWER_BYTES // len(piece) + 2):
            await response.write(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/flux/tasks", huge)
    async with serve(app) as url, FluxClient("k", base_url=url, max_retries=1) as client:
        with pytest.raises(ProtocolError, match="too large"):
            await client.get_tasks(["a"])


@pytest.mark.parametrize(
    "base_url",
    ["ftp://example.com", "http://", "mailto:someone@example.com", "http://[::1",
     "http://user:pw@exa mple.com"],
)
async def test_a_url_that_cannot_be_used_is_a_connect_error(base_url: str) -> None:
    # FluxClient refuses such a base_url up front; the edge must hold on its own
    # too (an upload URL, a session a caller wires by hand), and say nothing left.
    async with aiohttp.ClientSession() as session:
        headers = {"authorization": "Bearer sk-secret-key"}
        transport = Transport(session, base_url, headers, timeout=aiohttp.ClientTimeout(5))
        with pytest.raises(ConnectError) as caught:
            await transport.post("/flux/images", {"prompt": "a cat"})
        with pytest.raises(ConnectError):
            await transport.post_form(base_url + "/files/upload", b"x", "text/plain",
                                      timeout=aiohttp.ClientTimeout(5))
    text = str(caught.value)
    assert "nothing was sent" in text
    assert "sk-secret-key" not in text
    assert "pw" not in text
    assert base_url.split(":")[0] in text

"""Every bad input is a typed FluxError naming what is wrong, raised before any request.

One table: each row is a call, the error class it must raise and the field the
error must name. Every row runs against a real local server, which must have
counted no request at all afterwards: a refusal that happened after a request
went out would be too late (a submission costs money).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest

from flux_async import (
    ClientSettings,
    ConfigurationError,
    EditRequest,
    FluxClient,
    FluxError,
    GenerateRequest,
    Outcome,
    ValidationError,
)
from flux_async._core.models import MAX_PROMPT_CHARS
from flux_async.testing import LocalFluxServer
from flux_async.testing._png import render_png

from .conftest import client_for

pytestmark = pytest.mark.anyio

Call = Callable[[LocalFluxServer], Awaitable[object]]
NAN, INF = math.nan, math.inf
KEY = "sk-very-secret-key-0042"
PNG = render_png("validation.png")


def built(**settings: Any) -> Call:
    """A row that builds a client with ``settings`` (the server's key and URL unless given)."""

    async def call(server: LocalFluxServer) -> object:
        settings.setdefault("base_url", server.url)
        return FluxClient(settings.pop("api_key", server.token), **settings)

    return call


def called(method: Callable[[FluxClient], Awaitable[object]]) -> Call:
    """A row that calls ``method`` on an open client of the server."""

    async def call(server: LocalFluxServer) -> object:
        async with client_for(server) as client:
            return await method(client)

    return call


async def drain(outcomes: AsyncIterator[Outcome]) -> list[Outcome]:
    return [outcome async for outcome in outcomes]


def ok_request() -> GenerateRequest:
    return GenerateRequest("a cat")


# (id, call, error class, field named)
ROWS: list[tuple[str, Call, type[FluxError], str]] = [
    # --- the API key: never echoed ----------------------------------------------------
    ("key-int", built(api_key=123), ConfigurationError, "api_key"),
    ("key-empty", built(api_key=""), ConfigurationError, "api_key"),
    ("key-space", built(api_key="sk-very secret"), ConfigurationError, "api_key"),
    ("key-newline", built(api_key=KEY + "\n"), ConfigurationError, "api_key"),
    ("key-control", built(api_key=KEY + "\x00"), ConfigurationError, "api_key"),
    ("key-bytes", built(api_key=KEY.encode()), ConfigurationError, "api_key"),
    # --- every setting: wrong type, NaN, inf, zero or negative, out of range -----------
    ("base-url-ftp", built(base_url="ftp://example.com"), ConfigurationError, "base_url"),
    ("base-url-relative", built(base_url="localhost:8000"), ConfigurationError, "base_url"),
    ("base-url-no-host", built(base_url="http://"), ConfigurationError, "base_url"),
    ("base-url-empty", built(base_url=""), ConfigurationError, "base_url"),
    ("base-url-int", built(base_url=8000), ConfigurationError, "base_url"),
    ("base-url-query", built(base_url="https://h/?x=1"), ConfigurationError, "base_url"),
    ("concurrency-0", built(max_concurrency=0), ConfigurationError, "max_concurrency"),
    ("concurrency-bool", built(max_concurrency=True), ConfigurationError, "max_concurrency"),
    ("concurrency-float", built(max_concurrency=2.5), ConfigurationError, "max_concurrency"),
    ("concurrency-str", built(max_concurrency="10"), ConfigurationError, "max_concurrency"),
    ("submit-rate-0", built(submit_rate=0), ConfigurationError, "submit_rate"),
    ("submit-rate-neg", built(submit_rate=-5.0), ConfigurationError, "submit_rate"),
    ("submit-rate-nan", built(submit_rate=NAN), ConfigurationError, "submit_rate"),
    ("submit-rate-inf", built(submit_rate=INF), ConfigurationError, "submit_rate"),
    ("submit-rate-str", built(submit_rate="5"), ConfigurationError, "submit_rate"),
    ("submit-burst-0", built(submit_burst=0), ConfigurationError, "submit_burst"),
    ("submit-burst-float", built(submit_burst=1.5), ConfigurationError, "submit_burst"),
    ("query-rate-0", built(query_rate=0.0), ConfigurationError, "query_rate"),
    ("query-rate-bool", built(query_rate=True), ConfigurationError, "query_rate"),
    ("poll-0", built(poll_interval=0), ConfigurationError, "poll_interval"),
    ("poll-neg", built(poll_interval=-1), ConfigurationError, "poll_interval"),
    ("poll-nan", built(poll_interval=NAN), ConfigurationError, "poll_interval"),
    ("poll-inf", built(poll_interval=INF), ConfigurationError, "poll_interval"),
    ("poll-str", built(poll_interval="1"), ConfigurationError, "poll_interval"),
    ("poll-none", built(poll_interval=None), ConfigurationError, "poll_interval"),
    ("busy-poll-0", built(busy_poll_interval=0), ConfigurationError, "busy_poll_interval"),
    ("batch-0", built(batch_size=0), ConfigurationError, "batch_size"),
    ("batch-51", built(batch_size=51), ConfigurationError, "batch_size"),
    ("batch-100", built(batch_size=100), ConfigurationError, "batch_size"),
    ("batch-float", built(batch_size=10.0), ConfigurationError, "batch_size"),
    ("timeout-0", built(timeout=0), ConfigurationError, "timeout"),
    ("timeout-neg", built(timeout=-1), ConfigurationError, "timeout"),
    ("timeout-nan", built(timeout=NAN), ConfigurationError, "timeout"),
    ("timeout-str", built(timeout="600"), ConfigurationError, "timeout"),
    ("request-timeout-0", built(request_timeout=0), ConfigurationError, "request_timeout"),
    ("request-timeout-neg", built(request_timeout=-3), ConfigurationError, "request_timeout"),
    ("request-timeout-nan", built(request_timeout=NAN), ConfigurationError, "request_timeout"),
    ("request-timeout-inf", built(request_timeout=INF), ConfigurationError, "request_timeout"),
    ("request-timeout-none", built(request_timeout=None), ConfigurationError,
     "request_timeout"),
    ("retries-0", built(max_retries=0), ConfigurationError, "max_retries"),
    ("retries-bool", built(max_retries=True), ConfigurationError, "max_retries"),
    ("backoff-0", built(retry_backoff=0), ConfigurationError, "retry_backoff"),
    ("backoff-nan", built(retry_backoff=NAN), ConfigurationError, "retry_backoff"),
    ("resend-str", built(resend_uncertain="yes"), ConfigurationError, "resend_uncertain"),
    ("resend-int", built(resend_uncertain=1), ConfigurationError, "resend_uncertain"),
    ("callback-ftp", built(callback_url="ftp://me/cb"), ConfigurationError, "callback_url"),
    ("callback-words", built(callback_url="not a url"), ConfigurationError, "callback_url"),
    ("callback-int", built(callback_url=5), ConfigurationError, "callback_url"),
    ("upload-ftp", built(upload_url="ftp://me/up"), ConfigurationError, "upload_url"),
    ("upload-int", built(upload_url=5), ConfigurationError, "upload_url"),
    ("callback-poll-0", built(callback_poll_interval=0), ConfigurationError,
     "callback_poll_interval"),
    ("grace-negative", built(not_found_grace=-1), ConfigurationError, "not_found_grace"),
    ("grace-nan", built(not_found_grace=float("nan")), ConfigurationError, "not_found_grace"),
    ("retention-0", built(key_retention=0), ConfigurationError, "key_retention"),
    ("retention-inf", built(key_retention=INF), ConfigurationError, "key_retention"),
    ("journal-int", built(journal=3), ConfigurationError, "journal"),
    ("journal-empty", built(journal=""), ConfigurationError, "journal"),
    ("secret-short", built(callback_secret="short"), ConfigurationError, "callback_secret"),
    ("secret-int", built(callback_secret=1234567890123456789), ConfigurationError,
     "callback_secret"),
    ("session-str", built(session="session"), ConfigurationError, "session"),
    ("guard-str", built(download_guard="on"), ConfigurationError, "download_guard"),
    ("guard-none", built(download_guard=None), ConfigurationError, "download_guard"),
    ("allow-host", built(download_allow=["localhost:8000"]), ConfigurationError,
     "download_allow"),
    ("allow-int", built(download_allow=8000), ConfigurationError, "download_allow"),
    ("allow-port-network", built(download_allow=["10.0.0.0/8:80"]), ConfigurationError,
     "download_allow"),
    # --- submit / wait / get_task / get_tasks --------------------------------------------
    ("submit-str", called(lambda c: c.submit("a cat")), ValidationError, "request"),  # type: ignore[arg-type]
    ("submit-dict", called(lambda c: c.submit({"prompt": "x"})), ValidationError, "request"),  # type: ignore[arg-type]
    ("submit-callback", called(lambda c: c.submit(ok_request(), callback_url="ftp://x/cb")),
     ValidationError, "callback_url"),
    ("wait-empty", called(lambda c: c.wait("")), ValidationError, "task"),
    ("wait-none", called(lambda c: c.wait(None)), ValidationError, "task"),  # type: ignore[arg-type]
    ("wait-int", called(lambda c: c.wait(123)), ValidationError, "task"),  # type: ignore[arg-type]
    ("wait-timeout", called(lambda c: c.wait("t-1", timeout=-1)), ValidationError, "timeout"),
    ("get-task-empty", called(lambda c: c.get_task("")), ValidationError, "task_id"),
    ("get-task-int", called(lambda c: c.get_task(7)), ValidationError, "task_id"),  # type: ignore[arg-type]
    ("get-tasks-str", called(lambda c: c.get_tasks("abc")), ValidationError, "task_ids"),
    ("get-tasks-junk", called(lambda c: c.get_tasks([1, None])), ValidationError, "task_ids"),  # type: ignore[list-item]
    ("get-tasks-mixed", called(lambda c: c.get_tasks(["t-1", ""])), ValidationError,
     "task_ids"),
    ("get-tasks-unhashable", called(lambda c: c.get_tasks([["t-1"]])), ValidationError,  # type: ignore[list-item]
     "task_ids"),
    ("get-tasks-int", called(lambda c: c.get_tasks(5)), ValidationError, "task_ids"),  # type: ignore[arg-type]
    # --- generate / edit ----------------------------------------------------------------
    ("generate-int", called(lambda c: c.generate(123)), ValidationError, "prompt"),  # type: ignore[arg-type]
    ("generate-empty", called(lambda c: c.generate("")), ValidationError, "prompt"),
    ("count-bool", called(lambda c: c.generate("x", count=True)), ValidationError, "count"),
    ("count-0", called(lambda c: c.generate("x", count=0)), ValidationError, "count"),
    ("size-shape", called(lambda c: c.generate("x", size="big")), ValidationError, "size"),
    ("size-default-model", called(lambda c: c.generate("x", size="2048x2048")),
     ValidationError, "size"),
    ("size-ratio-flux-dev", called(lambda c: c.generate("x", model="flux-dev", size="16:9")),
     ValidationError, "size"),
    ("size-pixels-kontext", called(
        lambda c: c.generate("x", model="flux-kontext-pro", size="1024x1024")),
     ValidationError, "size"),
    ("size-flux-2", called(lambda c: c.generate("x", model="flux-2-pro", size="100x100")),
     ValidationError, "size"),
    ("model-empty", called(lambda c: c.generate("x", model="")), ValidationError, "model"),
    ("model-path", called(lambda c: c.generate("x", model="../../x")), ValidationError,
     "model"),
    ("model-space", called(lambda c: c.generate("x", model="flux dev")), ValidationError,
     "model"),
    ("model-control", called(lambda c: c.generate("x", model="flux-dev\x00")),
     ValidationError, "model"),
    ("model-newline", called(lambda c: c.generate("x", model="flux-dev\n")), ValidationError,
     "model"),
    ("edit-model-slash", called(
        lambda c: c.edit("x", image_url="https://example.com/a.png", model="kontext/../max")),
     ValidationError, "model"),
    # --- prompts over MAX_PROMPT_CHARS: nothing goes on the wire --------------------------
    ("prompt-10mb", called(lambda c: c.generate("x" * 10_000_000)), ValidationError,
     "prompt"),
    ("prompt-one-over", called(lambda c: c.generate("é" * (MAX_PROMPT_CHARS + 1))),
     ValidationError, "prompt"),
    ("edit-prompt-10mb", called(
        lambda c: c.edit("x" * 10_000_000, image_url="https://example.com/a.png")),
     ValidationError, "prompt"),
    ("edit-prompt-upload", called(lambda c: c.edit("x" * 10_000_000, image=PNG)),
     ValidationError, "prompt"),  # refused before the upload, too
    ("generate-timeout-neg", called(lambda c: c.generate("x", timeout=-1)), ValidationError,
     "timeout"),
    ("generate-timeout-nan", called(lambda c: c.generate("x", timeout=NAN)), ValidationError,
     "timeout"),
    ("generate-timeout-str", called(lambda c: c.generate("x", timeout="10")),  # type: ignore[arg-type]
     ValidationError, "timeout"),
    ("edit-ftp", called(lambda c: c.edit("x", image_url="ftp://example.com/a.png")),
     ValidationError, "image_url"),
    ("edit-size", called(lambda c: c.edit(
        "x", image_url="https://example.com/a.png", model="flux-kontext-max", size="512x512")),
     ValidationError, "size"),
    ("edit-timeout", called(
        lambda c: c.edit("x", image_url="https://example.com/a.png", timeout=-0.5)),
     ValidationError, "timeout"),
    # --- map --------------------------------------------------------------------------------
    ("map-int", called(lambda c: drain(c.map(123))), ValidationError, "requests"),  # type: ignore[arg-type]
    ("map-str", called(lambda c: drain(c.map("a cat"))), ValidationError, "requests"),  # type: ignore[arg-type]
    ("map-one-request", called(lambda c: drain(c.map(ok_request()))),  # type: ignore[arg-type]
     ValidationError, "requests"),
    ("map-timeout", called(lambda c: drain(c.map([ok_request()], timeout=-1))),
     ValidationError, "timeout"),
    ("map-on-event", called(lambda c: drain(c.map([ok_request()], on_event="print"))),  # type: ignore[arg-type]
     ValidationError, "on_event"),
    # --- idempotency keys -----------------------------------------------------------------
    ("key-empty-idem", called(lambda c: c.generate("a cat", idempotency_key="")),
     ValidationError, "idempotency_key"),
    ("key-long", called(lambda c: c.generate("a cat", idempotency_key="k" * 256)),
     ValidationError, "idempotency_key"),
    ("key-control-idem", called(lambda c: c.generate("a cat", idempotency_key="a\nb")),
     ValidationError, "idempotency_key"),
    ("key-int-idem", called(lambda c: c.submit(ok_request(), idempotency_key=7)),  # type: ignore[arg-type]
     ValidationError, "idempotency_key"),
    ("release-empty", called(lambda c: c.release_key("")), ValidationError, "key"),
]


@pytest.mark.parametrize(("call", "error", "field"), [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
async def test_bad_input_is_refused_before_any_request(
    flux_server: LocalFluxServer, call: Call, error: type[FluxError], field: str
) -> None:
    with pytest.raises(error) as info:
        await call(flux_server)
    err = info.value
    assert isinstance(err, FluxError)
    # Both stay ValueErrors, as they were: code catching ValueError keeps working.
    assert isinstance(err, ValueError)
    assert getattr(err, "field", None) == field
    assert str(err).startswith(f"{field}: ")
    assert KEY not in str(err)  # a key is never echoed, not even a bad one
    assert sum(flux_server.stats.requests.values()) == 0
    assert flux_server.stats.tasks_created == 0


def test_the_table_tries_every_setting() -> None:
    """Each ClientSettings field, the key and the session have a row of their own."""
    fields = {a.name for a in attrs.fields(ClientSettings)} | {"api_key", "session", "journal"}
    settings_rows = {row[3] for row in ROWS if row[2] is ConfigurationError}
    assert fields <= settings_rows


def test_good_edge_values_still_pass() -> None:
    """The refusals above are not a blanket: the edges that can work are taken."""
    client = FluxClient(KEY, base_url="http://127.0.0.1:9", timeout=None, submit_rate=None,
                        query_rate=None, batch_size=50, max_concurrency=1, poll_interval=0.001,
                        request_timeout=0.5, callback_url="https://me.example/cb?x=1")
    assert client.settings.batch_size == 50
    assert client.timeout is None
    assert EditRequest("x", image_url="https://example.com/a.png", size="16:9").size == "16:9"


async def test_the_longest_prompt_goes_through(flux_server: LocalFluxServer) -> None:
    """At the limit, a prompt reaches the server whole (which enforces the same limit)."""
    prompt = "猫" * MAX_PROMPT_CHARS  # characters, not bytes: 96,000 bytes of UTF-8
    async with client_for(flux_server) as client:
        result = await client.generate(prompt)
    assert result.images[0].prompt == prompt
    assert flux_server.stats.tasks_created == 1

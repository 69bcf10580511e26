"""OpenTelemetry (``flux_async.otel``): spans and metrics against the local server.

Every test reads what the SDK got through its in-memory exporter and reader, from
a client that talks to a ``LocalFluxServer`` over real sockets. The providers are
the test's own, never the global ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flux_async import (
    ConfigurationError,
    FluxClient,
    GenerateRequest,
    InsufficientBalanceError,
    TaskFailedError,
)
from flux_async._engine.telemetry import NO_TELEMETRY
from flux_async.otel import OpenTelemetry
from flux_async.testing import LocalFluxServer, ServerSettings
from flux_async.web import CALLBACK_RECEIVER, add_callback_route

from .conftest import client_for, eventually, serve

pytestmark = pytest.mark.anyio

# Private words no id, trace id or port could contain (not hex, not digits).
SECRET = "a private prompt: the zeppelin's plans"


class Otel:
    """An ``OpenTelemetry`` on the test's own SDK providers, and what they got."""

    def __init__(self, **options: Any) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.telemetry = OpenTelemetry(
            tracer_provider=provider,
            meter_provider=MeterProvider(metric_readers=[self.reader]), **options)
        self.tracer = provider.get_tracer("tests.test_otel")
        self.data: Any = None

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name in (None, s.name)]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value) of each point of metric ``name`` (a histogram's: its count).

        Collected once, when first asked (after the job): older SDKs collect nothing
        the second time when nothing was measured in between.
        """
        if self.data is None:
            self.data = self.reader.get_metrics_data()
        data = self.data
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            value = getattr(point, "value", None)
                            found.append((dict(point.attributes or {}),
                                          point.count if value is None else value))
        return found

    def total(self, name: str, **where: Any) -> Any:
        return sum(value for attributes, value in self.points(name)
                   if all(attributes.get(k) == v for k, v in where.items()))


@pytest.fixture
def otel() -> Otel:
    return Otel()


def _strings(span: ReadableSpan) -> Iterator[str]:
    """Every text a span carries: its name, attributes, events, links, status."""
    yield span.name
    yield span.status.description or ""
    for attributes in [span.attributes, *(e.attributes for e in span.events),
                       *(link.attributes for link in span.links)]:
        for key, value in (attributes or {}).items():
            yield f"{key}={value}"
    for event in span.events:
        yield event.name


def _by_task(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    found = {}
    for span in spans:
        assert span.attributes is not None
        found[str(span.attributes["flux.task_id"])] = span
    assert len(found) == len(spans), "two spans name one task"
    return found


async def test_a_50_task_map_gives_each_task_and_submission_a_span_under_the_callers(
    otel: Otel,
) -> None:
    settings = ServerSettings(generation_time=(0.05, 0.3), seed=7)
    async with LocalFluxServer(settings) as server:
        client = client_for(server, telemetry=otel.telemetry, max_concurrency=10)
        async with client:
            outcomes = []
            with otel.tracer.start_as_current_span("job") as job:
                async for outcome in client.map(
                        GenerateRequest(f"{SECRET} #{i}", model="flux-dev") for i in range(50)):
                    # The consumer's own span while it handles an outcome: requests
                    # started meanwhile still hang under "job", where map was called.
                    with otel.tracer.start_as_current_span("consume"):
                        outcomes.append(outcome)
                        await anyio.lowlevel.checkpoint()
        assert server.stats.tasks_created == 50
    assert all(o.ok for o in outcomes)
    prompts = {o.task_id: o.request.prompt for o in outcomes}
    task_ids = set(prompts)
    assert len(task_ids) == 50

    tasks, submits = _by_task(otel.spans("flux.task")), _by_task(otel.spans("flux.submit"))
    assert set(tasks) == set(submits) == task_ids
    job_context = job.get_span_context()
    for task_id in task_ids:
        task, submit = tasks[task_id], submits[task_id]
        for span in (task, submit):
            assert span.parent is not None
            assert span.parent.span_id == job_context.span_id
            assert span.context is not None
            assert span.context.trace_id == job_context.trace_id
        assert submit.kind is trace.SpanKind.CLIENT
        assert submit.attributes["flux.outcome"] == "created"
        assert submit.attributes["flux.attempts"] == 1
        assert submit.attributes["flux.model"] == "flux-dev"
        assert submit.attributes["flux.action"] == "generate"
        assert submit.attributes["flux.prompt.length"] == len(prompts[task_id])
        assert submit.attributes["server.address"] == "127.0.0.1"
        assert submit.attributes["flux.vendor.trace_id"]
        assert task.attributes["flux.outcome"] == "succeeded"
        assert task.attributes["flux.vendor.trace_id"]
        assert task.attributes["flux.images"] == 1
        assert task.attributes["flux.notice_latency"] >= 0
        # The task follows its submission: a link says which, the clock agrees.
        assert [link.context.span_id for link in task.links] == [submit.context.span_id]
        assert task.start_time >= submit.end_time
    # Polls serve every caller at once: root spans of their own.
    rounds = otel.spans("flux.poll")
    assert rounds
    assert all(r.parent is None for r in rounds)
    assert sum(r.attributes["flux.poll.finished"] for r in rounds) == 50
    assert all(r.attributes["flux.poll.answered"] <= r.attributes["flux.poll.asked"]
               for r in rounds)
    # Never the prompt, never the key.
    for span in otel.spans():
        for text in _strings(span):
            assert "zeppelin" not in text, (span.name, text)
            assert server.token not in text, (span.name, text)

    assert otel.total("flux.client.submissions", **{"flux.outcome": "created"}) == 50
    assert otel.total("flux.client.active_tasks") == 0
    assert otel.total("flux.client.notice_latency", **{"flux.outcome": "succeeded"}) == 50
    assert otel.total("flux.client.rate_limits") == 0


async def test_each_callers_spans_hang_under_its_own_span(otel: Otel) -> None:
    settings = ServerSettings(generation_time=(0.05, 0.15), seed=3)
    async with LocalFluxServer(settings) as server:
        other = client_for(server)  # no telemetry: submits a task this client only waits on
        async with client_for(server, telemetry=otel.telemetry) as client, other:
            results: dict[str, str] = {}

            async def generate(name: str) -> None:
                with otel.tracer.start_as_current_span(name):
                    results[name] = (await client.generate(f"{SECRET} {name}")).task_id

            async with anyio.create_task_group() as group:
                for name in ("a", "b", "c"):
                    group.start_soon(generate, name)
            with otel.tracer.start_as_current_span("submitter") as submitter:
                submitted = await client.submit(GenerateRequest("kept"))
            with otel.tracer.start_as_current_span("waiter"):
                await client.wait(submitted)
            foreign = await other.submit(GenerateRequest("elsewhere"))
            with otel.tracer.start_as_current_span("foreign-waiter") as foreign_waiter:
                await client.wait(foreign.id)

    callers = {s.name: s for s in otel.spans() if not s.name.startswith("flux.")}
    tasks, submits = _by_task(otel.spans("flux.task")), _by_task(otel.spans("flux.submit"))
    for name, task_id in results.items():
        span_id = callers[name].context.span_id
        assert tasks[task_id].parent.span_id == span_id
        assert submits[task_id].parent.span_id == span_id
    # submit() then wait(): the task hangs where it was submitted, once.
    assert tasks[submitted.id].parent.span_id == submitter.get_span_context().span_id
    # wait(id) on a task submitted elsewhere: under the waiter, no submission here.
    waited = tasks[foreign.id]
    assert waited.parent.span_id == foreign_waiter.get_span_context().span_id
    assert foreign.id not in submits
    assert list(waited.links) == []
    assert "flux.action" not in waited.attributes
    assert waited.attributes["flux.outcome"] == "succeeded"
    assert len(tasks) == 5


@pytest.mark.parametrize(
    ("limits", "code", "request_kind"),
    [
        pytest.param({"max_in_flight": 1}, "rate_limited", "submission", id="rate_limited"),
        pytest.param({"submit_rate": 3.0}, "too_many_requests", "submission",
                     id="too_many_requests"),
        pytest.param({"query_rate": 3.0}, "too_many_requests", "task_query", id="queries"),
    ],
)
async def test_429s_without_retry_after_are_counted_by_their_code(
    otel: Otel, limits: dict[str, Any], code: str, request_kind: str,
) -> None:
    settings = ServerSettings(generation_time=0.3, retry_after_share=0.0, seed=5, **limits)
    async with LocalFluxServer(settings) as server:
        client = client_for(server, telemetry=otel.telemetry, max_concurrency=4,
                            retry_backoff=0.05)
        async with client:
            async for outcome in client.map(GenerateRequest(f"p{i}") for i in range(4)):
                assert outcome.ok, outcome.error
        refused = server.stats.rate_limited
    assert refused > 0  # the server did refuse some: the test means something

    # Every 429 the server sent is counted, under its code and request.
    assert otel.total("flux.client.rate_limits") == refused
    assert otel.total("flux.client.rate_limits",
                      **{"flux.request": request_kind, "flux.error.code": code}) == refused
    retries = otel.total("flux.client.retries",
                         **{"flux.request": request_kind, "error.type": "RateLimitError",
                            "flux.error.code": code})
    assert retries > 0
    if request_kind == "submission":
        submits = otel.spans("flux.submit")
        # Every refused POST was sent again, on the span of its own submission.
        assert sum(s.attributes["flux.attempts"] - 1 for s in submits) == refused == retries
        failed = [e for s in submits for e in s.events if e.name == "flux.attempt_failed"]
        assert len(failed) == refused
        assert {e.attributes["flux.error.code"] for e in failed} == {code}
        assert all(s.attributes["flux.outcome"] == "created" for s in submits)
    else:
        rounds = otel.spans("flux.poll")
        assert sum(r.attributes["flux.poll.failed"] for r in rounds) == refused == retries
        assert {e.attributes["flux.error.code"] for r in rounds for e in r.events} == {code}


async def test_a_task_that_fails_shows_its_failure_on_its_span(otel: Otel) -> None:
    settings = ServerSettings(generation_time=0.05, failure_rate=1.0, seed=9)
    async with LocalFluxServer(settings) as server:
        async with client_for(server, telemetry=otel.telemetry) as client:
            with pytest.raises(TaskFailedError) as failed:
                await client.generate("doomed")
    (task,) = otel.spans("flux.task")
    (submit,) = otel.spans("flux.submit")
    assert submit.status.status_code is trace.StatusCode.UNSET  # the submission worked
    assert submit.attributes["flux.outcome"] == "created"
    assert task.status.status_code is trace.StatusCode.ERROR
    assert task.status.description == failed.value.message
    assert task.attributes["flux.outcome"] == "failed"
    assert task.attributes["error.type"] == "TaskFailedError"
    assert task.attributes["flux.error.code"] == failed.value.code
    assert task.attributes["flux.task_id"] == failed.value.task_id
    assert task.attributes["flux.vendor.trace_id"] == failed.value.trace_id
    assert otel.total("flux.client.submissions", **{"flux.outcome": "created"}) == 1


async def test_a_refused_submission_shows_on_its_span_and_in_the_counter(otel: Otel) -> None:
    async with LocalFluxServer(ServerSettings(generation_time=0.05)) as server:
        server.set_token_state(server.token, "used_up")
        async with client_for(server, telemetry=otel.telemetry) as client:
            with pytest.raises(InsufficientBalanceError) as refused:
                await client.generate("unpaid", model="flux-pro")
    (submit,) = otel.spans("flux.submit")
    assert otel.spans("flux.task") == []  # no task was created
    assert submit.status.status_code is trace.StatusCode.ERROR
    assert submit.attributes["flux.outcome"] == "failed"
    assert submit.attributes["error.type"] == "InsufficientBalanceError"
    assert submit.attributes["flux.error.code"] == "used_up"
    assert submit.attributes["flux.vendor.trace_id"] == refused.value.trace_id
    assert submit.attributes["flux.attempts"] == 1
    assert otel.total("flux.client.submissions", **{
        "flux.outcome": "failed", "error.type": "InsufficientBalanceError",
        "flux.model": "flux-pro", "flux.action": "generate"}) == 1


async def test_a_caller_that_left_during_the_post_still_gets_its_spans(otel: Otel) -> None:
    # The answer comes after the caller gave up: the POST goes on in the client's task,
    # and the task it created is adopted, still under the caller's span.
    settings = ServerSettings(generation_time=0.2, submit_answer_delay=0.4, seed=2)
    async with LocalFluxServer(settings) as server:
        async with client_for(server, telemetry=otel.telemetry) as client:
            with otel.tracer.start_as_current_span("impatient") as impatient:
                with anyio.move_on_after(0.15):
                    await client.generate("slow to answer")
            assert otel.spans("flux.submit") == []  # its answer has not come yet
            await eventually(lambda: bool(otel.spans("flux.task")))
    (submit,) = otel.spans("flux.submit")
    (task,) = otel.spans("flux.task")
    span_id = impatient.get_span_context().span_id
    assert submit.parent.span_id == task.parent.span_id == span_id
    assert submit.attributes["flux.caller_left"] is True
    assert submit.attributes["flux.outcome"] == "created"
    assert submit.attributes["flux.task_id"] == task.attributes["flux.task_id"]
    assert task.attributes["flux.adopted"] is True
    assert task.attributes["flux.outcome"] == "succeeded"


async def test_poll_spans_may_be_left_out(otel: Otel) -> None:
    quiet = Otel(poll_spans=False)
    async with LocalFluxServer(ServerSettings(generation_time=0.1)) as server:
        async with client_for(server, telemetry=quiet.telemetry) as client:
            await client.generate("no rounds")
    assert quiet.spans("flux.poll") == []
    assert len(quiet.spans("flux.task")) == len(quiet.spans("flux.submit")) == 1


async def test_the_global_providers_are_used_by_default_and_cost_no_error() -> None:
    # No SDK is installed globally in this process: the API's no-op providers take
    # everything, and the client works as without telemetry.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    async with LocalFluxServer(ServerSettings(generation_time=0.05)) as server:
        async with client_for(server, telemetry=OpenTelemetry()) as client:
            result = await client.generate("nobody listens")
    assert result.urls


async def test_without_telemetry_every_part_holds_the_one_no_op() -> None:
    client = FluxClient("k", base_url="http://127.0.0.1:9")
    parts = client._parts
    assert parts.launcher._telemetry is NO_TELEMETRY
    assert parts.tracker._telemetry is NO_TELEMETRY
    assert parts.poller._telemetry is NO_TELEMETRY
    assert parts.queries._post == client._link.post  # not wrapped
    # Its probes are itself: nothing is built per request or per round.
    assert NO_TELEMETRY.submitting(None) is NO_TELEMETRY  # type: ignore[arg-type]
    assert NO_TELEMETRY.polling([]) is NO_TELEMETRY
    with NO_TELEMETRY.submitting(None) as probe:  # type: ignore[arg-type]
        assert probe is NO_TELEMETRY
    with pytest.raises(ConfigurationError, match="telemetry"):
        FluxClient("k", telemetry=object())  # type: ignore[arg-type]
    assert "OpenTelemetry" in repr(OpenTelemetry())


def test_the_blocking_client_carries_the_callers_span_to_its_loop(otel: Otel) -> None:
    # Each blocking call is a task started on the loop thread by a callback that
    # asyncio runs in a copy of the calling thread's context (call_soon_threadsafe):
    # the caller's span is current there, and in the tasks the call starts.
    from flux_async.sync import FluxClient as BlockingClient

    from .test_sync import served

    with served() as s:
        with BlockingClient(s.server.token, base_url=s.server.url, poll_interval=0.05,
                            submit_rate=None, query_rate=None,
                            telemetry=otel.telemetry) as client:
            with otel.tracer.start_as_current_span("blocking") as caller:
                result = client.generate("from a thread")
                outcomes = list(client.map([GenerateRequest("one"), GenerateRequest("two")]))
    span_id = caller.get_span_context().span_id
    ids = {result.task_id, *(o.task_id for o in outcomes)}
    for name in ("flux.task", "flux.submit"):
        spans = _by_task(otel.spans(name))
        assert set(spans) == ids
        assert {s.parent.span_id for s in spans.values()} == {span_id}


async def test_a_task_a_callback_resolves_keeps_the_callers_span(otel: Otel) -> None:
    # The callback is handled in the web server's task, under its own request span
    # (as a server instrumentation would make): the task span stays the caller's.
    @web.middleware
    async def traced(request: web.Request, handler: Any) -> web.StreamResponse:
        with otel.tracer.start_as_current_span("callback request"):
            return await handler(request)

    app = web.Application(middlewares=[traced])
    add_callback_route(app, "/flux/callback")
    async with LocalFluxServer(ServerSettings(generation_time=0.1, seed=8)) as server:
        async with serve(app) as base:
            client = client_for(server, telemetry=otel.telemetry,
                                callback_url=base + "/flux/callback",
                                callback_secret="a-secret-for-callbacks",
                                callback_poll_interval=60.0)
            app[CALLBACK_RECEIVER].client = client
            async with client:
                with otel.tracer.start_as_current_span("job") as job:
                    results = await asyncio.gather(
                        *(client.generate(f"by callback {i}") for i in range(5)))
        assert server.stats.callbacks_sent == 5
    assert app[CALLBACK_RECEIVER].counts["resolved"] == 5
    tasks = _by_task(otel.spans("flux.task"))
    assert set(tasks) == {r.task_id for r in results}
    for task in tasks.values():
        assert task.parent.span_id == job.get_span_context().span_id
        assert task.attributes["flux.outcome"] == "succeeded"
        assert "flux.notice_latency" not in task.attributes  # a callback carries no time
    assert len(otel.spans("callback request")) == 5

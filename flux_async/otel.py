"""OpenTelemetry for flux_async: spans and metrics of paid submissions, tasks and poll rounds.

    from flux_async import FluxClient
    from flux_async.otel import OpenTelemetry

    async with FluxClient(telemetry=OpenTelemetry()) as client:
        await client.generate("a lighthouse at dawn")

Needs the ``otel`` extra (``pip install "flux-async[otel]"``: ``opentelemetry-api``
only). The tracer and meter come from the global providers unless others are
given: they do nothing until the application installs an SDK, as OpenTelemetry
asks of libraries. Without ``telemetry=``, a client imports none of this.

What is emitted (names, attributes and why each is where it is: see
``docs/guides/observability.md``):

- ``flux.submit`` (CLIENT): one paid submission, its retries included;
- ``flux.task``: one followed task, from its submission's answer (or ``wait``'s
  start) to its end; recorded when it ends, with its start time;
- ``flux.poll``: one poll round (a root span: rounds serve every caller at once);
- metrics ``flux.client.active_tasks``, ``.submissions``, ``.rate_limits``,
  ``.retries`` and ``.notice_latency``.

Trace context: the submission and task spans of a request are children of the
span current where the request was made (``generate``, ``submit``, ``wait``, or
the start of the ``map`` loop), although the POST runs in a task the client
owns: the engine enters the submission probe in the caller's task, before the
POST's task starts from it. The prompt, the key, image and callback URLs are
never recorded; the prompt's length is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without it
    raise ImportError(
        "flux_async.otel needs OpenTelemetry's API: pip install 'flux-async[otel]'"
    ) from exc

from ._core import retry
from ._core.errors import FluxError, RateLimitError
from ._core.models import ImageRequest, Task
from ._core.protocol import IMAGES_PATH, TASKS_PATH, Submission
from ._engine.followed import Followed
from ._engine.telemetry import Post

__all__ = ["OpenTelemetry"]

log = logging.getLogger("flux_async")

SCOPE = "flux_async"
# Seconds: a notice comes within a poll interval (1 s by default) or a callback.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

# Where a request's probe or a round's sits in the OpenTelemetry context.
_SUBMISSION = otel_context.create_key("flux_async.submission")
_ROUND = otel_context.create_key("flux_async.poll_round")
_REQUEST_KIND = {IMAGES_PATH: "submission", TASKS_PATH: "task_query"}


def _error_attributes(error: BaseException) -> dict[str, Any]:
    """``error.type`` (the class, as the semantic conventions ask) and the vendor's code."""
    found: dict[str, Any] = {"error.type": type(error).__name__}
    code = getattr(error, "code", None)
    if isinstance(code, str) and code:
        found["flux.error.code"] = code
    trace_id = getattr(error, "trace_id", None)
    if isinstance(trace_id, str) and trace_id:
        found["flux.vendor.trace_id"] = trace_id
    return found


def _request_attributes(request: ImageRequest | None) -> dict[str, Any]:
    """What a span may say of a request: never its prompt (private) nor its image URL."""
    if request is None:
        return {}
    found: dict[str, Any] = {"flux.action": request.action,
                             "flux.prompt.length": len(request.prompt)}
    if request.model is not None:
        found["flux.model"] = request.model
    if request.size is not None:
        found["flux.size"] = request.size
    count = getattr(request, "count", None)
    if count is not None:
        found["flux.count"] = count
    return found


def _metric_attributes(request: ImageRequest | None) -> dict[str, Any]:
    if request is None:
        return {}
    if request.model is None:
        return {"flux.action": request.action}
    return {"flux.action": request.action, "flux.model": request.model}


class _Submitting:
    """One paid submission: its span, current in the caller's task while it is entered."""

    __slots__ = ("_entered", "_exited", "_otel", "_token", "attempts", "done", "last_error",
                 "parent", "request", "span", "trace_id")

    def __init__(self, otel: OpenTelemetry, request: ImageRequest | None) -> None:
        self._otel = otel
        self.request = request
        # The caller's context: the task span, recorded later elsewhere, hangs here too.
        self.parent = otel_context.get_current()
        self.span = otel._tracer.start_span(
            "flux.submit", context=self.parent, kind=trace.SpanKind.CLIENT,
            attributes=_request_attributes(request))
        self.attempts = 0  # POSTs sent
        self.last_error: BaseException | None = None  # the last POST's failure
        self.trace_id: str | None = None  # the vendor's, from the answer
        self.done = False
        self._token: Token[otel_context.Context] | None = None
        self._entered = False
        self._exited: BaseException | None = None

    def __enter__(self) -> _Submitting:
        # The POST's task starts from the caller's context, so it sees this span
        # (and this probe) as current: its POSTs are counted here, and an HTTP
        # client's own instrumentation nests under this span.
        ctx = otel_context.set_value(_SUBMISSION, self,
                                     trace.set_span_in_context(self.span, self.parent))
        self._token = otel_context.attach(ctx)
        self._entered = True
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        self._entered = False
        self._exited = exc

    def posting(self, server: Mapping[str, Any]) -> None:
        """A POST of this submission goes out (a re-send, if one failed before)."""
        self.attempts += 1
        if self.attempts == 1:
            self.span.set_attributes(server)
        elif self.last_error is not None:
            self._otel._retries.add(1, {"flux.request": "submission",
                                        **_error_attributes(self.last_error)})

    def failed(self, error: BaseException) -> None:
        self.last_error = error
        self.span.add_event("flux.attempt_failed", {"flux.attempt": self.attempts,
                                                    **_error_attributes(error)})

    def ended(self, outcome: Submission | BaseException | None) -> None:
        """How the submission ended (first call only); the span ends here."""
        if self.done:
            return
        self.done = True
        try:
            self._end(outcome)
        except Exception:  # a bug here must not stop the engine's settle path
            log.exception("recording a submission's span failed")

    def _end(self, outcome: Submission | BaseException | None) -> None:
        span = self.span
        # Ended by the handover: the caller had left while its POST was out.
        left = self._entered or (self._exited is not None and outcome is not self._exited)
        if outcome is None:  # handed over and refused: the last POST's failure says why
            outcome = self.last_error
        attributes: dict[str, Any] = {"flux.attempts": self.attempts}
        if left:
            attributes["flux.caller_left"] = True
        error_type = None
        if isinstance(outcome, Submission):
            self.trace_id = outcome.trace_id
            attributes["flux.task_id"] = outcome.task_id
            if outcome.trace_id:
                attributes["flux.vendor.trace_id"] = outcome.trace_id
            result = "created" if outcome.result is None else "finished"
        elif isinstance(outcome, Exception):
            result = "failed"
            found = _error_attributes(outcome)
            error_type = found["error.type"]
            attributes.update(found)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(outcome)[:500]))
        else:  # cancelled (nothing sent, or the caller was cancelled between tries)
            result = "cancelled"
        attributes["flux.outcome"] = result
        span.set_attributes(attributes)
        span.end()
        counted = {"flux.outcome": result, **_metric_attributes(self.request)}
        if error_type is not None:
            counted["error.type"] = error_type
        self._otel._submissions.add(1, counted)


class _Following:
    """A followed task, noted when it starts; its span is recorded when it ends."""

    __slots__ = ("link", "parent", "request", "start", "trace_id")

    def __init__(self, followed: Followed) -> None:
        self.start = time.time_ns()
        self.request = followed.request
        probe = followed.observed
        if isinstance(probe, _Submitting):  # submitted here: beside its submission span
            self.parent = probe.parent
            self.link: trace.SpanContext | None = probe.span.get_span_context()
            self.trace_id = probe.trace_id
        else:  # wait(id), or adopted: where the following began
            self.parent = otel_context.get_current()
            self.link = None
            self.trace_id = None


class _Round:
    """One poll round: a root span, current in the poller's task during the round."""

    __slots__ = ("_otel", "_token", "answered", "asked", "failed", "finished", "requests",
                 "span")

    def __init__(self, otel: OpenTelemetry, asked: int) -> None:
        self._otel = otel
        self.asked = asked
        self.requests = self.answered = self.finished = self.failed = 0
        self.span: trace.Span | None = None
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> _Round:
        # A root: a round asks about every caller's tasks at once, and the poller's
        # task started from whichever caller's context came first: the round forgets it.
        ctx = otel_context.Context()
        if self._otel.poll_spans:
            self.span = self._otel._tracer.start_span(
                "flux.poll", context=ctx, attributes={"flux.poll.asked": self.asked})
            ctx = trace.set_span_in_context(self.span, ctx)
        self._token = otel_context.attach(otel_context.set_value(_ROUND, self, ctx))
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        span = self.span
        if span is None:
            return
        span.set_attributes({"flux.poll.requests": self.requests,
                             "flux.poll.answered": self.answered,
                             "flux.poll.finished": self.finished,
                             "flux.poll.failed": self.failed})
        if isinstance(exc, Exception):
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        span.end()

    def answer(self, data: object) -> None:
        self.requests += 1
        if isinstance(data, Mapping):
            items = data.get("items")
            self.answered += len(items) if isinstance(items, list) else 1

    def failure(self, error: BaseException) -> None:
        self.requests += 1
        self.failed += 1
        if self.span is not None:
            self.span.add_event("flux.query_failed", _error_attributes(error))


class OpenTelemetry:
    """Reports a client's work to OpenTelemetry: ``FluxClient(telemetry=OpenTelemetry())``.

    ``tracer_provider`` and ``meter_provider``: where spans and metrics go; the
    global ones by default (no-ops until the application installs an SDK, and
    followed if it installs one later). ``poll_spans=False`` records no
    ``flux.poll`` span (a round a second while tasks are followed; the metrics
    and the task spans stay). One instance may serve several clients.
    """

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None,
                 poll_spans: bool = True) -> None:
        from . import __version__

        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self.poll_spans = poll_spans
        self._active = meter.create_up_down_counter(
            "flux.client.active_tasks", unit="{task}",
            description="Tasks the client follows that have not ended")
        self._submissions = meter.create_counter(
            "flux.client.submissions", unit="{submission}",
            description="Paid submissions, by outcome")
        self._rate_limits = meter.create_counter(
            "flux.client.rate_limits", unit="{response}",
            description="429 answers of the service, by the vendor's code")
        self._retries = meter.create_counter(
            "flux.client.retries", unit="{retry}",
            description="Requests sent again after a failure, by request and failure")
        name, unit = "flux.client.notice_latency", "s"
        about = "From a task's end (the service's finished_at) to the client learning it"
        try:  # seconds need buckets of their own; the API takes them since 1.30
            self._latency = meter.create_histogram(
                name, unit, about, explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        except TypeError:
            self._latency = meter.create_histogram(name, unit, about)

    def __repr__(self) -> str:
        return f"<flux_async.otel.OpenTelemetry poll_spans={self.poll_spans}>"

    # --- the engine's hooks (flux_async._engine.telemetry) ---------------------------

    def observe(self, post: Post, base_url: str) -> Post:
        """Watch every API POST: attempts, 429s and retries, and poll rounds' answers."""
        parts = urlsplit(base_url)
        server: dict[str, Any] = {"server.address": parts.hostname or ""}
        port = parts.port or (443 if parts.scheme == "https" else 80)
        server["server.port"] = port

        async def observed(path: str, body: Mapping[str, Any]) -> Any:
            kind = _REQUEST_KIND.get(path, "other")
            probe = otel_context.get_value(_SUBMISSION) if kind == "submission" else None
            round_ = otel_context.get_value(_ROUND) if kind == "task_query" else None
            if isinstance(probe, _Submitting):
                probe.posting(server)
            try:
                answer = await post(path, body)
            except Exception as exc:
                self._failed(kind, exc, probe, round_)
                raise
            if isinstance(round_, _Round):
                round_.answer(answer)
            return answer

        return observed

    def _failed(self, kind: str, error: Exception, probe: object, round_: object) -> None:
        if isinstance(error, RateLimitError):
            self._rate_limits.add(1, {"flux.request": kind,
                                      "flux.error.code": error.code or "unknown"})
        if isinstance(probe, _Submitting):
            probe.failed(error)  # a re-send, if one comes, is counted as it goes out
        elif kind == "task_query" and retry.QUERY.verdict(error) is retry.Resend.SAFE:
            # Free queries: the next round (or get_task's loop) asks again.
            self._retries.add(1, {"flux.request": kind, **_error_attributes(error)})
        if isinstance(round_, _Round):
            round_.failure(error)

    def submitting(self, followed: Followed) -> _Submitting:
        probe = _Submitting(self, followed.request)
        followed.observed = probe
        return probe

    def followed(self, followed: Followed) -> None:
        try:
            followed.observed = _Following(followed)
            self._active.add(1)
        except Exception:
            log.exception("recording a followed task failed")

    def unfollowed(self, followed: Followed) -> None:
        note, followed.observed = followed.observed, None
        if not isinstance(note, _Following):
            return
        try:
            self._active.add(-1)
            self._record_task(followed, note)
        except Exception:  # never in the way of the tracker's settle path
            log.exception("recording the span of task %s failed", followed.task_id)

    def polling(self, due: Sequence[str]) -> _Round:
        return _Round(self, len(due))

    # --- the task span ---------------------------------------------------------------

    def _record_task(self, followed: Followed, note: _Following) -> None:
        outcome = followed.outcome
        attributes: dict[str, Any] = {"flux.task_id": followed.task_id,
                                      **_request_attributes(note.request)}
        if followed.adopted:
            attributes["flux.adopted"] = True
        status = None
        if isinstance(outcome, Task):
            trace_id = outcome.trace_id or note.trace_id
            if outcome.result is not None:
                result = "succeeded"
                attributes["flux.images"] = len(outcome.result.images)
            else:
                result = "failed"
                attributes["error.type"] = "TaskFailedError"
                reason = outcome.error
                if reason is not None and reason.code:
                    attributes["flux.error.code"] = reason.code
                status = trace.Status(trace.StatusCode.ERROR,
                                      reason.message[:500] if reason else "the task failed")
            if outcome.finished_at is not None:
                # Clocks differ between hosts: a notice is never earlier than its end.
                latency = max(0.0, time.time() - outcome.finished_at)
                attributes["flux.notice_latency"] = latency
                self._latency.record(latency, {"flux.outcome": result})
            round_ = otel_context.get_value(_ROUND)
            if isinstance(round_, _Round):
                round_.finished += 1
        elif isinstance(outcome, FluxError):  # the wait ended here: not found, closed...
            result = "error"
            found = _error_attributes(outcome)
            trace_id = found.pop("flux.vendor.trace_id", None) or note.trace_id
            attributes.update(found)
            status = trace.Status(trace.StatusCode.ERROR, str(outcome)[:500])
        else:  # nobody waits any more (a deadline, a cancellation): it may still run
            result = "unwatched"
            trace_id = note.trace_id
        attributes["flux.outcome"] = result
        if trace_id:
            attributes["flux.vendor.trace_id"] = trace_id
        # Adopted from elsewhere (a process that died): nobody's request here.
        parent = (otel_context.Context() if followed.adopted and note.request is None
                  else note.parent)
        links = None if note.link is None else [trace.Link(note.link)]
        span = self._tracer.start_span("flux.task", context=parent, attributes=attributes,
                                       links=links, start_time=note.start)
        if status is not None:
            span.set_status(status)
        span.end()

"""Building requests and reading answers, without sockets."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import pytest
from aiohttp import web

from flux_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    EditRequest,
    FluxClient,
    ForbiddenError,
    GenerateRequest,
    InsufficientBalanceError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
    TaskStatus,
    UpstreamTimeoutError,
)
from flux_async._core.protocol import (
    decode_answer,
    error_from_answer,
    parse_retry_after,
    read_batch,
    read_result_body,
    read_submission,
    read_task,
    request_headers,
    retrieve_batch_body,
    submit_body,
)
from flux_async._engine.submission import Resend, verdict

from .conftest import serve


def _error_body(code: str, message: str = "msg", trace_id: str = "tr-1") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}, "trace_id": trace_id}).encode()


def test_submit_body_omits_unset_fields_and_asks_for_async() -> None:
    body = submit_body(GenerateRequest("a cat", size="1024x1024"))
    assert body == {"action": "generate", "prompt": "a cat", "size": "1024x1024", "async": True}


def test_edit_body_carries_image_url_and_callback() -> None:
    body = submit_body(
        EditRequest("make it blue", image_url="https://x/y.png", model="flux-kontext-pro"),
        callback_url="https://me/cb",
    )
    assert body == {
        "action": "edit",
        "prompt": "make it blue",
        "image_url": "https://x/y.png",
        "model": "flux-kontext-pro",
        "async": True,
        "callback_url": "https://me/cb",
    }


def test_headers() -> None:
    headers = request_headers("k")
    assert headers["authorization"] == "Bearer k"
    assert headers["accept"] == headers["content-type"] == "application/json"
    assert retrieve_batch_body(("a", "b")) == {"action": "retrieve_batch", "ids": ["a", "b"]}


# Every row of the error table in flux-api.md.
ERROR_ROWS = [
    (400, "bad_request", BadRequestError),
    (400, "no_token", AuthenticationError),
    (400, "token_mismatched", AuthenticationError),
    (400, "api_not_implemented", BadRequestError),
    (400, "disabled", BadRequestError),
    (401, "invalid_token", AuthenticationError),
    (401, "token_expired", AuthenticationError),
    (401, "token_mismatched", AuthenticationError),
    (403, "used_up", InsufficientBalanceError),
    (403, "forbidden", ForbiddenError),
    (404, "no_api", NotFoundError),
    (404, "not_found", NotFoundError),
    (429, "too_many_requests", RateLimitError),
    (429, "rate_limited", RateLimitError),
    (500, "api_error", ServerError),
    (504, "timeout", UpstreamTimeoutError),
]


@pytest.mark.parametrize(("status", "code", "cls"), ERROR_ROWS)
def test_error_rows_map_to_typed_errors(status: int, code: str, cls: type[APIError]) -> None:
    with pytest.raises(cls) as info:
        decode_answer(status, {}, _error_body(code, "it broke", "trace-9"), now=0.0)
    assert type(info.value) is cls  # not merely a subclass: ForbiddenError is no balance error
    err = info.value
    assert (err.status, err.code, err.message) == (status, code, "it broke")
    assert err.trace_id == "trace-9"
    assert "trace-9" in str(err)
    assert code in str(err)


def test_gateway_html_page_is_a_server_error() -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    err = error_from_answer(502, {}, page, now=0.0)
    assert type(err) is ServerError
    assert err.status == 502
    assert err.code is None
    assert "502 Bad Gateway" in err.message


def test_retry_after_seconds_and_http_date() -> None:
    err = error_from_answer(429, {"Retry-After": "3"}, _error_body("rate_limited"), now=0.0)
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 3.0
    when = email.utils.formatdate(1_000_010.0, usegmt=True)
    assert parse_retry_after(when, now=1_000_000.0) == pytest.approx(10.0)
    assert parse_retry_after("soon", now=0.0) is None
    assert parse_retry_after(None, now=0.0) is None


def test_garbled_2xx_body_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_answer(200, {}, b'{"task_id": "ab', now=0.0)


def test_both_async_answer_shapes_are_read() -> None:
    assert read_submission({"task_id": "t1"}).task_id == "t1"
    full = read_submission({"success": True, "task_id": "t2", "trace_id": "tr"})
    assert (full.task_id, full.trace_id, full.result) == ("t2", "tr", None)
    with pytest.raises(ProtocolError):
        read_submission({"success": True})
    with pytest.raises(BadRequestError):
        read_submission({"success": False, "error": {"code": "bad_request", "message": "no"}})


def test_a_held_open_answer_is_already_a_result() -> None:
    sub = read_submission({
        "success": True, "task_id": "t", "trace_id": "tr",
        "data": [{"prompt": "p", "image_url": "https://c/1.png", "timings": 1752743801}],
    })
    assert sub.result is not None
    assert sub.result.urls == ["https://c/1.png"]


def test_read_task_success_keeps_unknown_fields() -> None:
    task = read_task({
        "id": "t", "created_at": 1.5, "finished_at": 9.5, "trace_id": "tr", "type": "images",
        "response": {"success": True, "task_id": "t", "data": [
            {"prompt": "p", "image_url": "https://c/1.png", "seed": "281520112",
             "timings": {"inference": 3.1}, "nsfw": False},
        ]},
    })
    assert task.status is TaskStatus.SUCCEEDED
    assert (task.created_at, task.finished_at, task.trace_id) == (1.5, 9.5, "tr")
    assert task.result is not None
    image = task.result.images[0]
    assert (image.url, image.seed) == ("https://c/1.png", "281520112")
    assert image.timings == {"inference": 3.1}
    assert image.raw["nsfw"] is False
    assert task.raw["type"] == "images"


def test_read_task_failure_carries_code_and_message() -> None:
    task = read_task({"id": "t", "response": {"success": False,
                      "error": {"code": "nsfw", "message": "refused"}}})
    assert task.status is TaskStatus.FAILED
    assert task.error is not None
    assert (task.error.code, task.error.message) == ("nsfw", "refused")


def test_unreadable_images_name_the_field() -> None:
    with pytest.raises(ProtocolError, match="image_url"):
        read_task({"id": "t", "response": {"success": True, "data": [{"prompt": "p"}]}})


def test_read_batch_accepts_any_order_and_skips_junk() -> None:
    items = read_batch({"items": [{"id": "b"}, "junk", {"id": "a"}], "count": 3})
    assert [i["id"] for i in items] == ["b", "a"]
    with pytest.raises(ProtocolError):
        read_batch({"count": 0})


def test_callback_bodies() -> None:
    ok = read_result_body({"success": True, "task_id": "t", "trace_id": "tr",
                           "data": [{"prompt": "p", "image_url": "https://c/1.png"}]})
    assert ok.status is TaskStatus.SUCCEEDED
    bad = read_result_body({"success": False, "task_id": "t",
                            "error": {"code": "x", "message": "y"}})
    assert bad.status is TaskStatus.FAILED


def test_a_403_is_a_balance_problem_only_when_the_service_says_used_up() -> None:
    assert type(error_from_answer(403, {}, _error_body("whatever"), now=0.0)) is ForbiddenError
    page = b"<html><body><h1>403 Forbidden</h1></body></html>"
    assert type(error_from_answer(403, {}, page, now=0.0)) is ForbiddenError
    assert not issubclass(ForbiddenError, InsufficientBalanceError)


def test_only_the_vendors_504_timeout_is_an_upstream_timeout() -> None:
    page = b"<html><head><title>504 Gateway Time-out</title></head></html>"
    assert type(error_from_answer(504, {}, page, now=0.0)) is ServerError
    # The code without the status (or the status without the code) is not the statement.
    assert type(error_from_answer(500, {}, _error_body("timeout"), now=0.0)) is ServerError
    assert type(error_from_answer(504, {}, _error_body("api_error"), now=0.0)) is ServerError
    assert isinstance(error_from_answer(504, {}, _error_body("timeout"), now=0.0), ServerError)


def test_a_resend_follows_the_billing_rules() -> None:
    assert verdict(UpstreamTimeoutError("timed out", status=504, code="timeout")) is Resend.SAFE
    assert verdict(ServerError("gateway page", status=504)) is Resend.UNCERTAIN
    assert verdict(ForbiddenError("refused", status=403, code="forbidden")) is Resend.NEVER


def test_error_bodies_read_with_and_without_success_false() -> None:
    bare = {"error": {"code": "bad_request", "message": "size"}, "trace_id": "t1"}
    flagged = {"success": False, **bare}
    for body in (bare, flagged):
        err = error_from_answer(400, {}, json.dumps(body).encode(), now=0.0)
        assert (type(err), err.code, err.message, err.trace_id) == (
            BadRequestError, "bad_request", "size", "t1")


@pytest.mark.parametrize(
    ("code", "limit"),
    [("rate_limited", "concurrency"), ("too_many_requests", "rate"), ("other", None)],
)
def test_a_429_says_which_limit(code: str, limit: str | None) -> None:
    err = error_from_answer(429, {}, _error_body(code), now=0.0)
    assert isinstance(err, RateLimitError)
    assert err.limit == limit
    assert err.retry_after is None  # none documented, none came


def test_a_callback_body_has_no_made_up_timestamp() -> None:
    task = read_result_body({"success": True, "task_id": "t",
                             "data": [{"prompt": "p", "image_url": "https://c/1.png"}]})
    assert task.status is TaskStatus.SUCCEEDED
    assert task.finished_at is None
    assert "finished_at" not in task.raw
    # Ended, even with nothing but a bare success: false.
    assert read_result_body({"success": False, "task_id": "t"}).status is TaskStatus.FAILED


def test_a_pending_task_with_null_timestamps_and_an_empty_state() -> None:
    task = read_task({"id": "t", "type": "images", "created_at": 1.0, "finished_at": None,
                      "elapsed": None, "state": "", "request": {}, "trace_id": "tr"})
    assert task.status is TaskStatus.PENDING
    assert task.finished_at is None


# --- over real sockets: what each answer does to a submission -----------------------------


def _answering(*answers: tuple[int, Any]) -> tuple[web.Application, list[int]]:
    """An app answering /flux/images with ``answers`` in turn (then the last one again)."""
    seen: list[int] = []

    async def images(request: web.Request) -> web.Response:
        await request.read()
        status, body = answers[min(len(seen), len(answers) - 1)]
        seen.append(status)
        if isinstance(body, bytes):
            return web.Response(status=status, body=body, content_type="text/html")
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/flux/images", images)
    return app, seen


_DONE = {"success": True, "task_id": "t-1", "trace_id": "tr",
         "data": [{"prompt": "p", "image_url": "https://cdn.example/1.png"}]}
_UPSTREAM_TIMEOUT = {"success": False, "trace_id": "tr-504",
                     "error": {"code": "timeout", "message": "upstream model timed out"}}


@pytest.mark.anyio
async def test_a_504_timeout_submission_is_sent_again() -> None:
    app, seen = _answering((504, _UPSTREAM_TIMEOUT), (200, _DONE))
    async with serve(app) as url:
        async with FluxClient("k", base_url=url, submit_rate=None, retry_backoff=0.01) as client:
            result = await client.generate("p")
    assert result.task_id == "t-1"
    assert seen == [504, 200]


@pytest.mark.anyio
async def test_a_504_timeout_every_time_ends_in_the_typed_error_within_max_retries() -> None:
    app, seen = _answering((504, _UPSTREAM_TIMEOUT))
    async with serve(app) as url:
        client = FluxClient("k", base_url=url, submit_rate=None, retry_backoff=0.01, max_retries=3)
        async with client:
            with pytest.raises(UpstreamTimeoutError) as info:
                await client.generate("p")
    assert info.value.trace_id == "tr-504"
    assert seen == [504, 504, 504]


@pytest.mark.anyio
async def test_a_gateway_504_page_is_uncertain_and_not_sent_again() -> None:
    page = b"<html><head><title>504 Gateway Time-out</title></head></html>"
    app, seen = _answering((504, page), (200, _DONE))
    async with serve(app) as url:
        async with FluxClient("k", base_url=url, submit_rate=None, retry_backoff=0.01) as client:
            with pytest.raises(SubmissionUncertainError):
                await client.generate("p")
    assert seen == [504]


@pytest.mark.anyio
async def test_a_403_forbidden_is_raised_as_such_and_not_sent_again() -> None:
    body = {"success": False, "error": {"code": "forbidden", "message": "content refused"}}
    app, seen = _answering((403, body), (200, _DONE))
    async with serve(app) as url:
        async with FluxClient("k", base_url=url, submit_rate=None) as client:
            with pytest.raises(ForbiddenError, match="content refused"):
                await client.generate("p")
    assert seen == [403]

"""The re-send rule for paid submissions, as a plain function."""

from __future__ import annotations

import pytest

from flux_async import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    InsufficientBalanceError,
    NetworkError,
    ProtocolError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    ValidationError,
)
from flux_async._engine.submission import Resend, verdict


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectError("refused"), Resend.SAFE),
        (RateLimitError("slow down", code="too_many_requests"), Resend.SAFE),
        (NetworkError("reset after sending"), Resend.UNCERTAIN),
        (RequestTimeoutError("no answer"), Resend.UNCERTAIN),
        (ProtocolError("truncated JSON"), Resend.UNCERTAIN),
        (ServerError("gateway", status=502), Resend.UNCERTAIN),
        (ServerError("api_error", status=500, code="api_error"), Resend.UNCERTAIN),
        (BadRequestError("bad", status=400), Resend.NEVER),
        (AuthenticationError("who", status=401), Resend.NEVER),
        (InsufficientBalanceError("poor", status=403), Resend.NEVER),
        (ValidationError("prompt", "empty"), Resend.NEVER),
        (RuntimeError("a bug"), Resend.NEVER),
    ],
)
def test_only_provably_unsent_submissions_are_safe_to_resend(
    error: BaseException, expected: Resend
) -> None:
    assert verdict(error) is expected

"""The public surface is exactly what __all__ says, and the key never shows."""

from __future__ import annotations

import types

import pytest

import flux_async

EXPECTED = {
    "APIError", "AuthenticationError", "BadRequestError", "ClientClosedError",
    "ConfigurationError", "ConnectError", "EditRequest", "FluxClient", "FluxError",
    "GenerateRequest", "Image", "ImageRequest", "ImageResult", "InsufficientBalanceError",
    "MapEvent", "MapProgress", "NetworkError", "NotFoundError", "Outcome", "ProtocolError",
    "RateLimitError", "RequestTimeoutError", "ServerError", "SubmissionUncertainError", "Task",
    "TaskError", "TaskErrorInfo", "TaskFailedError", "TaskStatus", "TaskTimeoutError",
    "TransportError", "ValidationError", "__version__", "LocalImage",
    # web servers: callbacks and downloads
    "CallbackVerdict", "DownloadError", "DownloadTimeoutError", "ImageTooLargeError",
    "NotAnImageError",
    # downloads refused: the download guard's address, a redirect out of http(s)
    "BlockedAddressError", "DownloadRedirectError",
    # the longest prompt a request takes (a web form can check with the same number)
    "MAX_PROMPT_CHARS",
    # errors that end the wait for one task, naming it
    "TaskAuthenticationError", "TaskClosedError", "TaskForbiddenError",
    "TaskInsufficientBalanceError",
    "TaskNotFoundError", "TaskProtocolError",
    # the vendor's 403 forbidden and 504 timeout
    "ForbiddenError", "UpstreamTimeoutError",
    # settings: the validated value, and the typed "use the client's default"
    "ClientSettings", "USE_CLIENT_DEFAULT", "UseClientDefault",
    # shared limits across processes: the coordinator's error, adopted tasks' outcomes
    "CoordinationError", "Recovered",
    # idempotency keys and the task journal
    "IdempotencyConflictError", "JournalError",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert set(flux_async.__all__) == EXPECTED
    # Submodules (flux_async.testing, .web, .cli) become attributes once imported, and
    # pytest's assertion rewriting adds "@..." names: neither is re-exported surface.
    public = {
        name
        for name, value in vars(flux_async).items()
        if not name.startswith(("_", "@")) and not isinstance(value, types.ModuleType)
    }
    assert public == EXPECTED - {"__version__"}


def test_every_error_is_a_flux_error() -> None:
    for name in flux_async.__all__:
        obj = getattr(flux_async, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, flux_async.FluxError), name


def test_missing_key_fails_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACEDATACLOUD_API_TOKEN", raising=False)
    with pytest.raises(flux_async.ConfigurationError, match="ACEDATACLOUD_API_TOKEN"):
        flux_async.FluxClient()


def test_key_and_base_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACEDATACLOUD_API_TOKEN", "sk-env-secret-4242")
    monkeypatch.setenv("FLUX_ASYNC_BASE_URL", "http://127.0.0.1:9/")
    client = flux_async.FluxClient()
    assert client.base_url == "http://127.0.0.1:9"
    assert "sk-env-secret-4242" not in repr(client) + str(client)
    assert "sk-env-secret-4242" not in repr(vars(client))  # not even in the attributes' reprs


def test_the_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUX_ASYNC_BASE_URL", raising=False)
    assert flux_async.FluxClient("k").base_url == "https://api.acedata.cloud"


def test_settings_are_one_frozen_value_and_hide_the_callback_secret() -> None:
    import attrs

    client = flux_async.FluxClient(
        "k", base_url="http://127.0.0.1:9/", poll_interval=2, batch_size=20,
        callback_secret="s3cret-s3cret-s3cret",
    )
    settings = client.settings
    assert isinstance(settings, flux_async.ClientSettings)
    assert (settings.base_url, settings.poll_interval, settings.batch_size) == (
        "http://127.0.0.1:9", 2, 20)
    assert (client.base_url, client.max_concurrency, client.timeout) == (
        "http://127.0.0.1:9", 10, 600.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.poll_interval = 0  # type: ignore[misc]
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in repr(vars(client))
    assert flux_async.ClientSettings().batch_size == 50  # the vendor's recommended most


def test_the_default_marker_is_typed_and_reads_well() -> None:
    assert isinstance(flux_async.USE_CLIENT_DEFAULT, flux_async.UseClientDefault)
    assert repr(flux_async.USE_CLIENT_DEFAULT) == "USE_CLIENT_DEFAULT"
    assert flux_async.ClientSettings(timeout=float("inf")).timeout is None  # inf: no deadline


def test_an_empty_base_url_argument_is_refused_not_replaced_by_the_paid_service() -> None:
    with pytest.raises(flux_async.ConfigurationError) as info:
        flux_async.FluxClient("k", base_url="")
    assert info.value.field == "base_url"


def test_a_key_from_the_environment_with_a_newline_is_refused_unquoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACEDATACLOUD_API_TOKEN", "sk-env-secret-4242\n")
    with pytest.raises(flux_async.ConfigurationError) as info:
        flux_async.FluxClient()
    assert info.value.field == "api_key"
    assert "$ACEDATACLOUD_API_TOKEN" in str(info.value)
    assert "sk-env-secret" not in str(info.value)

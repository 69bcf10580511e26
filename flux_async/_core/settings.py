"""Every ``FluxClient`` setting in one frozen, validated value: ``ClientSettings``.

A setting that cannot work is refused when the client is built, with a
``ConfigurationError`` naming it, instead of misbehaving later: a zero
``poll_interval`` would send thousands of queries a second, a zero
``request_timeout`` would silently disable timeouts, a NaN deadline would make
every call fail with an untyped error. Numbers are real numbers (``True`` is
not a count), finite where infinity means nothing, and positive where zero
means nothing.

Also here: the API key's own check (never quoting the key), the per-call
``timeout`` check, and ``USE_CLIENT_DEFAULT``, the typed "use the client's
setting" marker for arguments where ``None`` already means "no limit".
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from .addresses import DownloadGuard, allowed
from .errors import ConfigurationError, ValidationError
from .models import http_url_problem
from .protocol import DEFAULT_BASE_URL

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "MAX_BATCH_SIZE",
    "USE_CLIENT_DEFAULT",
    "ClientSettings",
    "Credential",
    "UseClientDefault",
    "check_api_key",
    "check_task_id",
    "check_task_ids",
    "check_timeout",
    "resolve_timeout",
]

#: Where the API key comes from when none is given (the vendor's SDKs read it too).
API_KEY_ENV: Final = "ACEDATACLOUD_API_TOKEN"
#: Where the base URL comes from when none is given (a local server, a proxy).
BASE_URL_ENV: Final = "FLUX_ASYNC_BASE_URL"
#: Most ids per ``retrieve_batch``: what the vendor's own tools recommend.
MAX_BATCH_SIZE: Final = 50


class UseClientDefault(enum.Enum):
    """The type of ``USE_CLIENT_DEFAULT``: "the client's setting", where ``None`` means none.

    An enum of one member, so ``timeout: float | UseClientDefault | None`` type-checks
    and ``timeout is USE_CLIENT_DEFAULT`` narrows it.
    """

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT: Final = UseClientDefault.DEFAULT


# --- checks -------------------------------------------------------------------------


def check_task_id(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, f"a task id is a non-empty string, got {value!r:.80}")


def check_task_ids(task_ids: object, field: str = "task_ids") -> list[str]:
    """The ids of an iterable of task ids (not a string), each checked."""
    if isinstance(task_ids, (str, bytes)) or not isinstance(task_ids, Iterable):
        raise ValidationError(field, f"must be an iterable of task ids, got {task_ids!r:.80}")
    ids = list(task_ids)
    for task_id in ids:
        check_task_id(field, task_id)
    return ids


def _is_number(value: object) -> bool:
    # bool is an int subclass, but True is not a number of seconds or a rate.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(
    *, optional: bool = False, allow_zero: bool = False, allow_inf: bool = False
) -> Any:
    """An attrs validator for a number of seconds (or a rate), per the flags."""
    floor = ">= 0" if allow_zero else "> 0"
    wanted = f"a number {floor}" + (", or None" if optional else "")

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not _is_number(value):
            raise ConfigurationError(
                f"must be {wanted}, got {type(value).__name__}", field=attribute.name
            )
        number = float(value)  # type: ignore[arg-type]
        if math.isnan(number) or (math.isinf(number) and not allow_inf):
            raise ConfigurationError(f"must be a finite number, got {value!r}",
                                     field=attribute.name)
        if number < 0 or (number == 0 and not allow_zero):
            raise ConfigurationError(f"must be {wanted}, got {value!r}", field=attribute.name)

    return check


def _integer(low: int, high: int | None = None, *, optional: bool = False) -> Any:
    """An attrs validator for an int in ``[low, high]`` (bools refused)."""
    wanted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    wanted += ", or None" if optional else ""

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(
                f"must be {wanted}, got {type(value).__name__}", field=attribute.name
            )
        if value < low or (high is not None and value > high):
            raise ConfigurationError(f"must be {wanted}, got {value!r}", field=attribute.name)

    return check


def _flag(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"must be True or False, got {type(value).__name__}", field=attribute.name
        )


def _base_url(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    problem = http_url_problem(value)
    if problem is None:
        assert isinstance(value, str)
        parts = urlsplit(value)
        if parts.query or parts.fragment:
            problem = f"must not carry a query or a fragment, got {value!r}"
    if problem is not None:
        # Nothing could be sent to it: a ConfigurationError now, not a submission
        # "of unknown fate" later.
        raise ConfigurationError(problem, field=attribute.name)


def _callback_url(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    problem = None if value is None else http_url_problem(value)
    if problem is not None:
        raise ConfigurationError(problem, field=attribute.name)


def _secret(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # The value is never quoted: it is a secret.
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigurationError(
            f"must be a string, got {type(value).__name__}", field=attribute.name
        )
    if len(value) < 16:
        raise ConfigurationError("must be at least 16 characters", field=attribute.name)


def _entries(value: object) -> object:
    # One address alone is a list of one; a list (any iterable) is kept as a tuple.
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, dict)):
        return tuple(value)
    return value


def _allow_list(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple):
        raise ConfigurationError(
            f"must be a list of addresses, got {type(value).__name__}", field=attribute.name
        )
    for entry in value:
        parsed = allowed(entry)
        if isinstance(parsed, str):
            raise ConfigurationError(parsed, field=attribute.name)


def _strip_slash(value: object) -> object:
    return value.rstrip("/") if isinstance(value, str) else value


def _inf_means_none(value: object) -> object:
    return None if _is_number(value) and value == math.inf else value


def check_api_key(value: object, *, source: str = "api_key") -> str:
    """The key, if it can be sent as a bearer token; else ``ConfigurationError``.

    ``source`` says where it came from (the argument or an environment
    variable), for the message. The key itself is never quoted.
    """
    if value is None or value == "":
        raise ConfigurationError(
            "no API key: pass FluxClient(api_key=...) or set $ACEDATACLOUD_API_TOKEN",
            field="api_key",
        )
    if not isinstance(value, str):
        raise ConfigurationError(
            f"must be a string, got {type(value).__name__}", field="api_key"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        # A pasted key with its newline, a .env file with \r: header injection at
        # worst, an authentication error at best. Not repaired silently either.
        raise ConfigurationError(
            f"the key ({source}) contains whitespace or a control character", field="api_key"
        )
    return value


class Credential:
    """The API key, out of every repr: it hands out keyed digests, never the key.

    A coordinator names its shared state after the key without learning it
    (``digest``): two keys never share limits, and nothing stored can give the
    key back.
    """

    __slots__ = ("_key",)

    def __init__(self, api_key: str) -> None:
        self._key = api_key.encode()

    def __repr__(self) -> str:
        return "<Credential>"

    def digest(self, label: bytes) -> str:
        """HMAC-SHA256 of ``label`` under the key, in hex."""
        return hmac.new(self._key, label, hashlib.sha256).hexdigest()


def check_timeout(value: object, field: str = "timeout") -> float | None:
    """A per-call deadline in seconds: a number >= 0, or None (also inf) for none."""
    if value is None:
        return None
    if not _is_number(value):
        raise ValidationError(
            field, f"must be a number of seconds >= 0 or None, got {type(value).__name__}"
        )
    seconds = float(value)  # type: ignore[arg-type]
    if math.isnan(seconds) or seconds < 0:
        raise ValidationError(field, f"must be a number of seconds >= 0 or None, got {value!r}")
    return None if math.isinf(seconds) else seconds


def resolve_timeout(value: float | UseClientDefault | None, default: float | None) -> float | None:
    """A per-call ``timeout`` argument, checked, with ``USE_CLIENT_DEFAULT`` resolved."""
    return check_timeout(default if value is USE_CLIENT_DEFAULT else value)


# --- the settings ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ClientSettings:
    """Every setting of a ``FluxClient``, validated; ``client.settings`` holds its own.

    Building one with a value that cannot work raises ``ConfigurationError``
    with ``field`` naming it. ``callback_secret`` stays out of ``repr``. The
    defaults are the vendor's documented limits:

    - ``max_concurrency`` (10): generations in flight at once.
    - ``submit_rate`` (5/s) and ``query_rate`` (30/s): requests per second to
      ``/flux/images`` and ``/flux/tasks``; ``None`` for no limit. Queries may
      come in bursts of up to a second's worth (a poll round at once);
      submissions in bursts of ``submit_burst`` (default 60% of a second's worth,
      3 at 5/s), so slots that free together are refilled together. A 429 pauses
      and slows every request of that kind, then the rate recovers.
    - ``poll_interval`` (1 s): time between poll rounds; ``busy_poll_interval``
      (0.2 s) only while a sooner notice buys something: a caller waits for a
      slot and could submit at once if one freed (no slot holder is still queued
      for its submission turn), or a deadline is near.
    - ``batch_size`` (50): ids per ``retrieve_batch`` request, at most 50 (the
      vendor's recommendation).
    - ``timeout`` (600 s): default deadline of ``generate``/``edit``/``wait``;
      ``None`` for none. ``request_timeout`` (60 s): one HTTP request.
    - ``max_retries`` (5): attempts at a submission that provably reached nobody
      (connect errors), and at a ``get_task`` query; ``retry_backoff`` (1 s) is
      the first delay between them, doubling up to 16 s, with jitter. A 429 is
      re-sent while the deadline allows (at most 30 times), after the pause the
      service asked for (``Retry-After``) or the same backoff.
    - ``resend_uncertain`` (False): also re-send submissions whose fate is unknown
      (a reset or timeout after sending, a 5xx). Risk: the service may have
      created the first task too, and charges for both.
    - ``callback_url``: put on every submission; the poller then checks those
      tasks only every ``callback_poll_interval`` (30 s), as a fallback for lost
      callbacks. Mount ``flux_async.web``'s receiver at that URL: a callback then
      resolves its wait at once. Every callback URL handed out carries a token
      (``flux_token=``) derived from ``callback_secret`` (random per client unless
      given; give a stable one so callbacks arriving after a restart still
      authenticate).
    - ``upload_url``: where ``upload()`` (and ``edit`` with a local image) POSTs
      files; default ``{base_url}/files/upload``, which for the default base URL
      is the vendor's documented ``https://api.acedata.cloud/files/upload``.
    - ``download_guard`` (True): downloads (``download``, ``fetch_image``) refuse
      to connect to addresses that are not on the public internet (loopback,
      private, link-local, cloud metadata, unspecified, multicast, reserved),
      checked after DNS on every redirect's hop too (``BlockedAddressError``).
      On for every URL, the service's answers included: a result may arrive by
      callback, whose only proof is a token, and the vendor's CDN is public, so
      the guard costs its images nothing. ``False`` turns it off (a trusted
      network only). ``download_allow`` (none): addresses let through all the
      same, each an address, a network (``10.0.0.0/8``) or one address and port
      (``127.0.0.1:8080``, or a URL's: ``download_allow=[server.url]`` for a
      local server). Host names are not accepted: the guard checks addresses.
    - ``not_found_grace`` (300 s): a task id the service gave (or one passed to
      ``wait``) is not declared lost before this long after it became known,
      since new tasks may take a while to appear on ``/flux/tasks``; meanwhile it
      costs only its place in the batch queries. Then a 404 ends its wait with
      ``TaskNotFoundError``.
    - ``key_retention`` (86,400 s, a day): how long an idempotency key stays tied
      to its request and task after it was first used (the journal forgets ended
      entries after this long too); a submission of unknown fate keeps its key
      until ``release_key``.
    """

    base_url: str = attrs.field(
        default=DEFAULT_BASE_URL, converter=_strip_slash, validator=_base_url
    )
    max_concurrency: int = attrs.field(default=10, validator=_integer(1))
    submit_rate: float | None = attrs.field(default=5.0, validator=_number(optional=True))
    submit_burst: int | None = attrs.field(default=None, validator=_integer(1, optional=True))
    query_rate: float | None = attrs.field(default=30.0, validator=_number(optional=True))
    poll_interval: float = attrs.field(default=1.0, validator=_number())
    busy_poll_interval: float = attrs.field(default=0.2, validator=_number())
    batch_size: int = attrs.field(default=MAX_BATCH_SIZE, validator=_integer(1, MAX_BATCH_SIZE))
    # None (or inf): no deadline. Zero would time out every call at once.
    timeout: float | None = attrs.field(
        default=600.0, converter=_inf_means_none, validator=_number(optional=True)
    )
    request_timeout: float = attrs.field(default=60.0, validator=_number())
    max_retries: int = attrs.field(default=5, validator=_integer(1))
    retry_backoff: float = attrs.field(default=1.0, validator=_number())
    resend_uncertain: bool = attrs.field(default=False, validator=_flag)
    callback_url: str | None = attrs.field(default=None, validator=_callback_url)
    callback_poll_interval: float = attrs.field(default=30.0, validator=_number())
    callback_secret: str | None = attrs.field(default=None, validator=_secret, repr=False)
    # None: ``{base_url}/files/upload`` (the vendor's storage page; a local server's own).
    upload_url: str | None = attrs.field(default=None, validator=_callback_url)
    # Seconds a known task id may stay unknown to /flux/tasks before it is declared
    # lost (``poller.DEFAULT_NOT_FOUND_GRACE``); 0: at once, as a test may want.
    not_found_grace: float = attrs.field(default=300.0, validator=_number(allow_zero=True))
    key_retention: float = attrs.field(default=86400.0, validator=_number())
    download_guard: bool = attrs.field(default=True, validator=_flag)
    download_allow: tuple[str, ...] = attrs.field(
        default=(), converter=_entries, validator=_allow_list
    )

    @property
    def guard(self) -> DownloadGuard:
        """What downloads may reach, from ``download_guard`` and ``download_allow``."""
        return DownloadGuard.from_settings(self.download_guard, self.download_allow)

    @property
    def effective_submit_burst(self) -> int:
        """``submit_burst``, or its default: 60% of a second's worth of submissions.

        Slots that free together can then be refilled at once, while 40% of the
        service's per-second allowance stays spare to absorb network jitter
        (arrivals bunched closer than they were sent).
        """
        if self.submit_burst is not None:
            return self.submit_burst
        return max(1, round(0.6 * self.submit_rate)) if self.submit_rate is not None else 1

    @property
    def query_burst(self) -> int:
        """Queries are free: a poll round's chunks may go out together, a second's worth."""
        return max(1, int(self.query_rate)) if self.query_rate is not None else 1


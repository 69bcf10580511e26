"""Knobs of the local Flux server: how long tasks take, what fails, which limits apply.

Both classes are mutable attrs classes with validation on assignment, so a test can
flip ``server.settings.failure_rate = 1.0`` between phases and a typo such as a
negative rate fails loudly at the assignment instead of silently later.

The loopback is kinder than any real network, so some knobs make it less kind:

* ``link_chunk_bytes`` / ``link_chunk_gap``: every API answer goes out in pieces of
  at most that many bytes, ``link_chunk_gap`` seconds apart (write, drain, wait),
  like TCP segments over a real link. ``link_framing`` picks ``Content-Length``,
  chunked transfer, or alternates (``mixed``), as real gateways do both. Their
  defaults come from the environment variable ``FLUX_LOCAL_LINK`` (``"BYTES:GAP"``,
  e.g. ``"1448:0.002"``); unset means the instant loopback.
* ``visibility_delay``: for that many seconds after creation a task is unknown to
  ``/flux/tasks`` (404 ``not_found``; left out of ``retrieve_batch``), as the real
  service's task store lags its submission endpoint.
* ``callback_attempts`` / ``callback_retry_delay``: a callback whose POST fails
  (nobody listening, a 5xx) is sent again, up to that many times in all; the
  vendor documents no retry, so the default (1) sends it once.
* ``submit_answer_delay``: seconds between creating a task and answering its async
  or callback submission; a client that gives up meanwhile leaves a task that runs
  (and would be billed). ``ServerStats.unanswered`` lists such tasks.
* ``retry_after_share`` is 0 by default: the vendor documents no rate-limit headers.
* ``error_success_field``: error bodies with ``"success": false`` (``always``),
  without (``never``), or alternating (``mixed``): the vendor documents both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Literal, get_args

import attrs
from attrs import define, field

__all__ = [
    "DEFAULT_TOKEN",
    "ENDPOINTS",
    "FAULT_KINDS",
    "LINK_ENV",
    "AsyncAnswer",
    "ErrorSuccessField",
    "Faults",
    "LinkFraming",
    "PendingShape",
    "ServerSettings",
    "TokenState",
    "link_from_env",
    "settings_update",
]

#: The token a :class:`LocalFluxServer` accepts when none are given.
DEFAULT_TOKEN = "flux-local-token"

AsyncAnswer = Literal["full", "minimal", "mixed"]
PendingShape = Literal["all", "missing", "null", "empty", "no_data"]
TokenState = Literal["ok", "expired", "invalid", "used_up", "disabled", "mismatched"]
LinkFraming = Literal["length", "chunked", "mixed"]
ErrorSuccessField = Literal["always", "never", "mixed"]

#: Endpoint names that may carry :class:`Faults`.
ENDPOINTS = ("images", "tasks", "files")
#: Fault kinds, in the order they are drawn for each request (see ``Faults.draw``).
FAULT_KINDS = (
    "server_error",
    "gateway_page",
    "forbidden",
    "upstream_timeout",
    "reset_before",
    "reset_after",
    "truncated",
    "slow",
)
#: The environment variable that sets the defaults of the link settings.
LINK_ENV = "FLUX_LOCAL_LINK"


def link_from_env(environ: Mapping[str, str] = os.environ) -> tuple[int | None, float]:
    """``(link_chunk_bytes, link_chunk_gap)`` from ``FLUX_LOCAL_LINK``.

    The value is ``"BYTES:GAP"`` (``"1448:0.002"``) or ``"BYTES"`` (no gap); unset,
    empty or ``off`` means the instant loopback ``(None, 0.0)``. Anything else
    raises ``ValueError`` naming the variable.
    """
    text = environ.get(LINK_ENV, "").strip()
    if not text or text.lower() == "off":
        return None, 0.0
    size, sep, gap = text.partition(":")
    try:
        chunk, pause = int(size), float(gap) if sep else 0.0
    except ValueError:
        chunk, pause = 0, -1.0
    if chunk < 1 or not math.isfinite(pause) or pause < 0:
        raise ValueError(
            f"{LINK_ENV} must look like 'BYTES:GAP' (e.g. '1448:0.002'), got {text!r}"
        )
    return chunk, pause


def _share(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validate a probability: a real number in [0, 1] (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be a number in [0, 1], got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:  # type: ignore[arg-type, operator]
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _optional_positive(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type, operator]
        raise ValueError(f"{attribute.name} must be None or a number > 0, got {value!r}")


def _optional_count(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be None or an integer >= 1, got {value!r}")


def _generation_time(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    bounds = value if isinstance(value, tuple) else (value, value)
    if len(bounds) != 2:
        raise ValueError(f"{attribute.name} must be a number or a (lo, hi) pair, got {value!r}")
    for bound in bounds:
        _non_negative(_inst, attribute, bound)
    if bounds[0] > bounds[1]:
        raise ValueError(f"{attribute.name}: lo must be <= hi, got {value!r}")


def _one_of(*choices: str) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {choices}, got {value!r}")

    return check


def _faults_map(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{attribute.name} must be a dict of endpoint name -> Faults")
    for key, faults in value.items():
        if key not in ENDPOINTS:
            raise ValueError(f"{attribute.name}: unknown endpoint {key!r}, use one of {ENDPOINTS}")
        if not isinstance(faults, Faults):
            raise ValueError(f"{attribute.name}[{key!r}] must be a Faults instance")


@define
class Faults:
    """Failure injection for one endpoint, each field a probability per request.

    For each request the kinds are drawn in declaration order and the first hit wins,
    so a request suffers at most one fault. ``server_error`` (500 ``api_error``),
    ``gateway_page`` (502, an HTML page), ``forbidden`` (403 ``forbidden``: content
    refused or no access), ``upstream_timeout`` (504 ``timeout``: the upstream model
    timed out) and ``reset_before`` strike before anything happens (no task is
    created, nothing billed); ``reset_after``, ``truncated`` and ``slow`` strike after
    the answer was computed (on ``/flux/images`` the task exists), and only on
    successful answers.
    """

    server_error: float = field(default=0.0, validator=_share)
    gateway_page: float = field(default=0.0, validator=_share)
    forbidden: float = field(default=0.0, validator=_share)
    upstream_timeout: float = field(default=0.0, validator=_share)
    reset_before: float = field(default=0.0, validator=_share)
    reset_after: float = field(default=0.0, validator=_share)
    truncated: float = field(default=0.0, validator=_share)
    slow: float = field(default=0.0, validator=_share)
    slow_delay: float = field(default=5.0, validator=_non_negative)

    def draw(self, roll: float) -> str | None:
        """Map one uniform draw in [0, 1) to at most one fault kind.

        The probabilities are laid side by side on [0, 1) in the order of
        ``FAULT_KINDS`` (``server_error``, ``gateway_page``, ``forbidden``,
        ``upstream_timeout``, ``reset_before``, ``reset_after``, ``truncated``,
        ``slow``), so each kind keeps its own probability as long as
        they sum to at most 1, and one random number per request suffices.
        """
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += getattr(self, kind)
            if roll < edge:
                return kind
        return None


@define
class ServerSettings:
    """Behaviour of a :class:`LocalFluxServer`; mutable while the server runs.

    Rates and limits are per token, like the vendor's. ``None`` disables a limit.
    The link settings' defaults are read from ``FLUX_LOCAL_LINK`` when the settings
    are built (see the module docstring); naming them overrides the environment.
    """

    generation_time: float | tuple[float, float] = field(
        default=(1.0, 3.0), validator=_generation_time
    )
    failure_rate: float = field(default=0.0, validator=_share)
    max_in_flight: int | None = field(default=None, validator=_optional_count)
    submit_rate: float | None = field(default=None, validator=_optional_positive)
    query_rate: float | None = field(default=None, validator=_optional_positive)
    retry_after_share: float = field(default=0.0, validator=_share)
    batch_enabled: bool = field(default=True, validator=attrs.validators.instance_of(bool))
    async_answer: AsyncAnswer = field(default="full", validator=_one_of(*get_args(AsyncAnswer)))
    pending_shapes: PendingShape = field(default="all", validator=_one_of(*get_args(PendingShape)))
    status_words: bool = field(default=False, validator=attrs.validators.instance_of(bool))
    callback_drop_rate: float = field(default=0.0, validator=_share)
    # A callback POST that fails (refused, 5xx, no answer) is tried this many times
    # in all, ``callback_retry_delay`` s apart, as webhook senders commonly do.
    callback_attempts: int = field(
        default=1, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )
    callback_retry_delay: float = field(default=1.0, validator=_non_negative)
    faults: dict[str, Faults] = field(factory=dict, validator=_faults_map)
    seed: int | None = field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(int))
    )
    link_chunk_bytes: int | None = field(
        factory=lambda: link_from_env()[0], validator=_optional_count
    )
    link_chunk_gap: float = field(factory=lambda: link_from_env()[1], validator=_non_negative)
    link_framing: LinkFraming = field(
        default="mixed", validator=_one_of(*get_args(LinkFraming))
    )
    visibility_delay: float = field(default=0.0, validator=_non_negative)
    submit_answer_delay: float = field(default=0.0, validator=_non_negative)
    error_success_field: ErrorSuccessField = field(
        default="mixed", validator=_one_of(*get_args(ErrorSuccessField))
    )

    def duration_bounds(self) -> tuple[float, float]:
        """``generation_time`` as a ``(lo, hi)`` pair."""
        gt = self.generation_time
        return (float(gt[0]), float(gt[1])) if isinstance(gt, tuple) else (float(gt), float(gt))

    def faults_for(self, endpoint: str) -> Faults | None:
        """The faults configured for an endpoint, or None."""
        return self.faults.get(endpoint)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able view (what ``POST /_local/settings`` answers)."""
        out = attrs.asdict(self, recurse=True)
        if isinstance(self.generation_time, tuple):
            out["generation_time"] = list(self.generation_time)
        return out


def settings_update(current: ServerSettings, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a JSON object of changes into validated ``ServerSettings`` field values.

    ``generation_time`` may be a number or a 2-list; ``faults`` is an object of endpoint
    name -> object of Faults fields and replaces the whole faults mapping. Raises
    ``ValueError`` naming the offending field; nothing is applied here, so the caller
    can apply all changes or none.
    """
    names = {a.name for a in attrs.fields(ServerSettings)}
    values: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in names:
            raise ValueError(f"unknown setting {name!r}")
        if name == "generation_time" and isinstance(value, list):
            value = tuple(value)
        elif name == "faults":
            if not isinstance(value, dict):
                raise ValueError("faults must be an object of endpoint -> fault shares")
            built: dict[str, Faults] = {}
            for endpoint, spec in value.items():
                if not isinstance(spec, dict):
                    raise ValueError(f"faults[{endpoint!r}] must be an object")
                try:
                    built[endpoint] = Faults(**spec)
                except TypeError as exc:
                    raise ValueError(f"faults[{endpoint!r}]: {exc}") from None
            value = built
        values[name] = value
    try:
        attrs.evolve(current, **values)  # runs every validator
    except TypeError as exc:  # instance_of validators raise TypeError
        raise ValueError(str(exc.args[0]) if exc.args else str(exc)) from None
    return values

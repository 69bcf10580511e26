"""Knobs of the local Flux server: how long tasks take, what fails, which limits apply.

Both classes are mutable attrs classes with validation on assignment, so a test can
flip ``server.settings.failure_rate = 1.0`` between phases and a typo such as a
negative rate fails loudly at the assignment instead of silently later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

import attrs
from attrs import define, field

__all__ = [
    "DEFAULT_TOKEN",
    "ENDPOINTS",
    "FAULT_KINDS",
    "AsyncAnswer",
    "Faults",
    "PendingShape",
    "ServerSettings",
    "TokenState",
    "settings_update",
]

#: The token a :class:`LocalFluxServer` accepts when none are given.
DEFAULT_TOKEN = "flux-local-token"

AsyncAnswer = Literal["full", "minimal", "mixed"]
PendingShape = Literal["all", "missing", "null", "empty", "no_data"]
TokenState = Literal["ok", "expired", "invalid", "used_up", "disabled", "mismatched"]

#: Endpoint names that may carry :class:`Faults`.
ENDPOINTS = ("images", "tasks", "files")
#: Fault kinds, in the order they are drawn for each request.
FAULT_KINDS = ("server_error", "gateway_page", "reset_before", "reset_after", "truncated", "slow")


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
    so a request suffers at most one fault. ``reset_before``, ``server_error`` and
    ``gateway_page`` strike before anything happens (no task is created);
    ``reset_after``, ``truncated`` and ``slow`` strike after the answer was computed (on
    ``/flux/images`` the task exists), and only on successful answers.
    """

    server_error: float = field(default=0.0, validator=_share)
    gateway_page: float = field(default=0.0, validator=_share)
    reset_before: float = field(default=0.0, validator=_share)
    reset_after: float = field(default=0.0, validator=_share)
    truncated: float = field(default=0.0, validator=_share)
    slow: float = field(default=0.0, validator=_share)
    slow_delay: float = field(default=5.0, validator=_non_negative)

    def draw(self, roll: float) -> str | None:
        """Map one uniform draw in [0, 1) to at most one fault kind.

        The probabilities are laid side by side on [0, 1) in the documented order
        (``server_error``, ``gateway_page``, ``reset_before``, ``reset_after``,
        ``truncated``, ``slow``), so each kind keeps its own probability as long as
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
    """

    generation_time: float | tuple[float, float] = field(
        default=(1.0, 3.0), validator=_generation_time
    )
    failure_rate: float = field(default=0.0, validator=_share)
    max_in_flight: int | None = field(default=None, validator=_optional_count)
    submit_rate: float | None = field(default=None, validator=_optional_positive)
    query_rate: float | None = field(default=None, validator=_optional_positive)
    retry_after_share: float = field(default=1.0, validator=_share)
    batch_enabled: bool = field(default=True, validator=attrs.validators.instance_of(bool))
    async_answer: AsyncAnswer = field(default="full", validator=_one_of(*get_args(AsyncAnswer)))
    pending_shapes: PendingShape = field(default="all", validator=_one_of(*get_args(PendingShape)))
    status_words: bool = field(default=False, validator=attrs.validators.instance_of(bool))
    callback_drop_rate: float = field(default=0.0, validator=_share)
    faults: dict[str, Faults] = field(factory=dict, validator=_faults_map)
    seed: int | None = field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(int))
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

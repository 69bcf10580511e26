"""The scenarios and contenders of the benchmark, full and quick sizes.

Everything a run does is decided here, so the table can say exactly what ran.
A scenario is plain data: it travels to the client subprocesses as JSON.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CONTENDERS",
    "CONTENDER_LABELS",
    "DEFAULT_CONTENDERS",
    "LIMITS",
    "SCENARIO_KEYS",
    "SIZE",
    "Scenario",
    "bound_seconds",
    "ideal_seconds",
    "scenarios",
]

#: Image size asked for in every request (the vendor SDK requires one).
SIZE = "1024x1024"

#: Contender keys, in table order, with the label printed for each.
CONTENDER_LABELS: dict[str, str] = {
    "flux_async": "flux_async",
    "flux_async_callback": "flux_async (callback)",
    "flux_async_generate": "flux_async: generate",
    "vendor": "acedatacloud SDK",
    "floor_retrieve": "floor: retrieve",
    "floor_batch": "floor: retrieve_batch",
}
CONTENDERS = tuple(CONTENDER_LABELS)
#: Server limits a scenario sets, which ``--limit`` may change.
LIMITS = ("max_in_flight", "submit_rate", "query_rate")
#: Scenario keys, for command-line choices.
SCENARIO_KEYS = ("1", "2", "3", "4", "5")
#: The contenders a scenario runs unless it says otherwise (``flux_async_generate``
#: is scenario 5's own: ``generate`` calls gathered at once instead of ``map``).
DEFAULT_CONTENDERS = tuple(c for c in CONTENDERS if c != "flux_async_generate")


@dataclasses.dataclass
class Scenario:
    """One piece of work, run by each contender against a fresh server process."""

    key: str
    title: str
    n: int  # tasks
    generation: tuple[float, float]  # server generation time range, seconds
    concurrency: int  # flux_async max_concurrency; the semaphore of the others
    # "complete": every task runs to its result; "pending": the run stops once all
    # tasks are pending together (plus a hold of a few poll rounds), and measures that.
    mode: str = "complete"
    # Limits the server enforces per token (None: none), answering 429 beyond.
    max_in_flight: int | None = None
    submit_rate: float | None = None
    query_rate: float | None = None
    # flux_async settings changed from their defaults (shown in the table).
    flux_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The floors poll at flux_async's effective interval and batch size, and pace
    # submissions like it where the server limits them.
    floor_interval: float = 1.0
    floor_batch: int = 50
    floor_submit_rate: float | None = None
    # "pending" mode: how long all tasks may take to be submitted, and how long the
    # pending state is then held (long enough for the vendor's 3 s poll to come by).
    pending_deadline: float = 180.0
    hold: float = 6.5
    contenders: tuple[str, ...] = DEFAULT_CONTENDERS
    # Run the contenders at the same time, each against its own server process
    # (the scenario is bound by the limits, not by CPU).
    parallel: bool = False
    child_timeout: float = 600.0
    # Runs of each contender, in rotating order; the table shows per-metric medians
    # (CPU time on a shared 2-core machine varies by tens of percent run to run).
    repeat: int = 1
    # Contenders run once whatever ``repeat`` says (the vendor SDK takes minutes at
    # 1,000 concurrent jobs: see README).
    once: tuple[str, ...] = ("vendor",)
    seed: int = 20261121

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["generation"] = list(self.generation)
        out["contenders"] = list(self.contenders)
        out["once"] = list(self.once)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scenario:
        data = dict(data)
        data["generation"] = tuple(data["generation"])
        data["contenders"] = tuple(data["contenders"])
        data["once"] = tuple(data["once"])
        return cls(**data)

    @property
    def mean_generation(self) -> float:
        return sum(self.generation) / 2

    def overridden(self, settings: Mapping[str, Any], limits: Mapping[str, Any]) -> Scenario:
        """This scenario with flux_async settings and server limits changed (``--set``,
        ``--limit``); the notes under the table then show them."""
        return dataclasses.replace(self, flux_settings={**self.flux_settings, **settings},
                                   **limits)

    def server_args(self) -> list[str]:
        """Command-line options of ``python -m flux_async.testing`` for this scenario."""
        args = ["--generation-time", str(self.generation[0]), str(self.generation[1])]
        args += ["--seed", str(self.seed)]
        if self.max_in_flight is not None:
            args += ["--max-in-flight", str(self.max_in_flight)]
        if self.submit_rate is not None:
            args += ["--submit-rate", str(self.submit_rate)]
        if self.query_rate is not None:
            args += ["--query-rate", str(self.query_rate)]
        return args


def bound_seconds(s: Scenario, durations: Mapping[str, float] | None = None) -> float | None:
    """The least wall time the server's limits allow for the whole job, if limited.

    ``max(N / submit_rate, N * mean_generation / max_in_flight)``: no client can
    submit faster than the submission rate, nor keep more than ``max_in_flight``
    generations running. Given the generation times the server actually drew for
    every task of a run (``durations``), their sum replaces ``N * mean_generation``:
    the bound of that very run rather than of the average one.
    """
    parts = []
    if s.submit_rate is not None:
        parts.append(s.n / s.submit_rate)
    if s.max_in_flight is not None:
        if durations and len(durations) == s.n:
            parts.append(sum(durations.values()) / s.max_in_flight)
        else:
            parts.append(s.n * s.mean_generation / s.max_in_flight)
    return max(parts) if parts else None


def ideal_seconds(s: Scenario, durations: Sequence[float]) -> float | None:
    """Wall time of a perfect client under the server's limits, for these generation times.

    ``durations`` in submission order. The perfect client submits the next task the
    instant both a submission token (the server's bucket: ``submit_rate`` per second,
    bursts of ``max(1, submit_rate)``) and an in-flight slot are free, hears of every
    finish at once, and pays no network time (no in-flight limit: the submission
    rate alone). The formula of ``bound_seconds`` is
    lower still, and cannot be reached when both limits bind together: a slot freed
    between two tokens waits for the next one.
    """
    if s.submit_rate is None or len(durations) < s.n:
        return None
    slots = s.max_in_flight if s.max_in_flight is not None else s.n
    rate = s.submit_rate
    capacity = max(1.0, rate)
    level, stamp = capacity, 0.0
    finishing: list[float] = []
    now = end = 0.0
    for duration in durations:
        if len(finishing) >= slots:
            now = max(now, heapq.heappop(finishing))
        level = min(capacity, level + (now - stamp) * rate)
        stamp = now
        if level < 1.0:
            now += (1.0 - level) / rate
            level, stamp = 1.0, now
        level -= 1.0
        heapq.heappush(finishing, now + duration)
        end = max(end, now + duration)
    return end


def scenarios(quick: bool = False) -> list[Scenario]:
    """The five scenarios, at full size or scaled down for ``--quick``."""
    return [_job(quick), _scale(quick), _vendor_limits(quick), _tighter_limits(quick),
            _new_user(quick)]


def _job(quick: bool) -> Scenario:
    return Scenario(
        key="1",
        title="1,000-task job" if not quick else "job (quick: 100 tasks)",
        n=100 if quick else 1000,
        generation=(0.5, 1.5) if quick else (2.0, 6.0),
        concurrency=100 if quick else 1000,
        flux_settings={"max_concurrency": 100 if quick else 1000, "submit_rate": None},
        child_timeout=120 if quick else 300,
        repeat=1 if quick else 3,
    )


def _scale(quick: bool) -> Scenario:
    return Scenario(
        key="2",
        title="scale: 10,000 pending" if not quick else "scale (quick: 500 pending)",
        n=500 if quick else 10_000,
        # Long enough that nothing finishes before the run stops.
        generation=(900.0, 1200.0),
        concurrency=500 if quick else 10_000,
        mode="pending",
        # Submissions paced (every contender that can be): RSS then measures tasks
        # pending, not thousands of HTTP requests queued at the connector at once.
        flux_settings={"max_concurrency": 500 if quick else 10_000, "submit_rate": 2000.0},
        floor_submit_rate=2000.0,
        pending_deadline=5.0 if quick else 60.0,
        hold=2.0 if quick else 6.5,
        contenders=("flux_async", "vendor", "floor_retrieve", "floor_batch"),
        child_timeout=120 if quick else 420,
    )


def _vendor_limits(quick: bool) -> Scenario:
    return Scenario(
        key="3",
        title="at the vendor's limits" if not quick else "limits (quick: 30 tasks)",
        n=30 if quick else 500,
        generation=(0.5, 1.5) if quick else (1.0, 3.0),
        concurrency=10,
        max_in_flight=10,
        submit_rate=5.0,
        query_rate=60.0,
        flux_settings={},
        # flux_async polls every busy_poll_interval (0.2 s) while every slot is
        # taken, as here all along; the floors poll at about the same interval.
        floor_interval=0.25,
        floor_submit_rate=5.0,
        parallel=True,
        child_timeout=120 if quick else 900,
    )


def _tighter_limits(quick: bool) -> Scenario:
    # Limits below every default of the client (10 in flight, 5 submissions/s, 30
    # queries/s), which it is not told about: it learns them from 429s, which carry
    # no Retry-After (the local server's default, as the vendor documents none).
    # The submission rate binds: N / 2 s against N x 2 s / 6 for the generations.
    return Scenario(
        key="4",
        title="tighter limits, no Retry-After" if not quick else "tighter (quick: 30 tasks)",
        n=30 if quick else 200,
        generation=(0.5, 1.5) if quick else (1.0, 3.0),
        concurrency=10,
        max_in_flight=6,
        submit_rate=2.0,
        query_rate=20.0,
        flux_settings={},
        # The floor is as unaware as flux_async: the client's defaults, a fixed 1 s
        # pause after a 429 without Retry-After.
        floor_interval=0.25,
        floor_submit_rate=5.0,
        contenders=("flux_async", "floor_batch"),
        parallel=True,
        child_timeout=120 if quick else 600,
    )


def _new_user(quick: bool) -> Scenario:
    # What a new user writes: generate() for every prompt, gathered at once, with a
    # bigger max_concurrency and every other setting left alone; the service at the
    # vendor's documented rates. The client's default submit_rate (5/s) binds, so
    # most callers hold a slot while they queue for a submission turn.
    return Scenario(
        key="5",
        title="a new user's 200 generate calls" if not quick else
        "new user (quick: 100 generate calls)",
        n=100 if quick else 200,
        generation=(1.0, 3.0),
        concurrency=50,
        max_in_flight=None,
        submit_rate=5.0,
        query_rate=60.0,
        flux_settings={"max_concurrency": 50},
        floor_interval=1.0,
        floor_submit_rate=5.0,
        contenders=("flux_async_generate", "flux_async", "floor_batch"),
        parallel=True,
        child_timeout=180 if quick else 300,
    )

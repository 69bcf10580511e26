"""Bulk generation at the vendor's limits, against the local server: a `client.map` job.

    python benchmarks/bulk_limits.py            # 500 / 500 / 1,000 jobs (about 10 minutes)
    python benchmarks/bulk_limits.py --quick    # the same shapes, scaled down (about 1 minute)
    python benchmarks/bulk_limits.py --only vendor   # one of: vendor, tighter, faults

Three runs, each printing one row:

1. ``vendor limits``: the server enforces the documented per-token limits (10 in
   flight, 5 submissions/s, 60 task queries/s, 429 beyond); the client runs with
   its default settings. Expected: every image, no 429, wall time near the bound.
2. ``tighter server``: the server allows only 2 submissions/s and sends
   ``Retry-After`` on half of its 429s; the client still has its defaults (5/s).
   Expected: every image; only the number of 429s differs.
3. ``faults``: the server injects every fault kind at a few percent on both
   endpoints. Expected: every job ends (an image or a typed error), no task is
   created twice, and the only errors are ``SubmissionUncertainError``.

"bound" is the least wall time the limits allow for the generation times the
server actually drew: max(N / submission rate, sum of generation times / max in
flight). "wall/bound" is the ratio measured in the same run, not an absolute time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from dataclasses import dataclass

from flux_async import FluxClient, GenerateRequest, Outcome, SubmissionUncertainError
from flux_async.testing import Faults, LocalFluxServer, ServerSettings


@dataclass
class Row:
    name: str
    jobs: int
    images: int
    errors: collections.Counter[str]
    rate_limited: int
    duplicates: int
    wall: float
    bound: float | None

    def cells(self) -> list[str]:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "-"
        ratio = f"{self.wall / self.bound:.3f}" if self.bound else "-"
        bound = f"{self.bound:.1f}" if self.bound else "-"
        return [self.name, str(self.jobs), str(self.images), errors, str(self.rate_limited),
                str(self.duplicates), f"{self.wall:.1f}", bound, ratio]


def _generation_seconds(outcome: Outcome) -> float:
    # The local server reports each image's generation time as timings.inference.
    assert outcome.result is not None
    timings = outcome.result.images[0].timings
    return float(timings["inference"]) if isinstance(timings, dict) else 0.0


async def run(name: str, settings: ServerSettings, jobs: int, **client_settings: object) -> Row:
    """One ``client.map`` job; the bound comes from the server's own limits."""
    async with LocalFluxServer(settings) as server:
        client = FluxClient(server.token, base_url=server.url, **client_settings)  # type: ignore[arg-type]
        requests = (GenerateRequest(f"{name} prompt {i}") for i in range(jobs))
        outcomes: list[Outcome] = []
        start = time.perf_counter()
        async with client:
            async for outcome in client.map(requests):
                outcomes.append(outcome)
        wall = time.perf_counter() - start
        stats = server.stats
        images = sum(len(o.result.images) for o in outcomes if o.result is not None)
        errors = collections.Counter(type(o.error).__name__ for o in outcomes if o.error)
        bound = None
        if settings.submit_rate is not None and settings.max_in_flight is not None:
            busy = sum(_generation_seconds(o) for o in outcomes if o.ok)
            bound = max(jobs / settings.submit_rate, busy / settings.max_in_flight)
        assert len(outcomes) == jobs, "every job ends"
        return Row(name, jobs, images, errors, stats.rate_limited, len(stats.duplicate_prompts),
                   wall, bound)


async def main(quick: bool, only: str | None) -> int:
    scale = 0.12 if quick else 1.0
    n_limits, n_faults = max(20, int(500 * scale)), max(60, int(1000 * scale))
    vendor = ServerSettings(generation_time=(2.0, 6.0), max_in_flight=10, submit_rate=5,
                            query_rate=60, seed=1)
    tighter = ServerSettings(generation_time=(2.0, 6.0), max_in_flight=10, submit_rate=2,
                             query_rate=60, retry_after_share=0.5, seed=2)
    few = 0.02
    faults = ServerSettings(
        generation_time=(0.5, 1.5), seed=3,
        faults={
            "images": Faults(server_error=few, gateway_page=few, reset_before=few,
                             reset_after=few, truncated=few, slow=few, slow_delay=5.0),
            "tasks": Faults(server_error=few, gateway_page=few, reset_before=few,
                            reset_after=few, truncated=few, slow=few, slow_delay=5.0),
        },
    )
    plans = {
        "vendor": lambda: run("vendor limits", vendor, n_limits),
        "tighter": lambda: run("tighter server", tighter, n_limits),
        # No server limits here: the point is faults, so the client may go faster
        # (settings changed: max_concurrency=50, submit_rate=None, request_timeout=2).
        "faults": lambda: run("faults", faults, n_faults, max_concurrency=50,
                              submit_rate=None, request_timeout=2.0),
    }
    rows = [await plan() for name, plan in plans.items() if only in (None, name)]
    header = ["run", "jobs", "images", "errors", "429s", "dup tasks", "wall s", "bound s",
              "wall/bound"]
    table = [header, *(row.cells() for row in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    print()
    for row in rows:
        if row.bound:
            print(f"{row.name}: 429s={row.rate_limited}, wall/bound={row.wall / row.bound:.3f}")
        else:
            uncertain_only = set(row.errors) <= {SubmissionUncertainError.__name__}
            print(f"{row.name}: duplicate tasks={row.duplicates}, every error a "
                  f"SubmissionUncertainError: {uncertain_only}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down run, about a minute")
    parser.add_argument("--only", choices=["vendor", "tighter", "faults"], help="one run")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.quick, args.only)))

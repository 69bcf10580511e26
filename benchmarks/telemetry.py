"""What the OpenTelemetry instrumentation costs: CPU per task beside none, in one run.

    python -m benchmarks.telemetry                 # 2,000 tasks, 7 rounds of every mode
    python -m benchmarks.telemetry --tasks 300 --rounds 1    # quick
    python -m benchmarks.telemetry --before ../flux-before   # also a checkout of an older
                                                              # flux_async, as "before"

Every mode runs the same job: ``client.map`` over N requests against a local
server in a process of its own with no rate limits and short generations
(0.05-0.1 s), ``max_concurrency`` 200, so the client, not the service, is what
is measured. Each run is a client process of its own (``--child``), so its CPU
time (``time.process_time``: every thread, the SDK's exporting thread included)
is that mode's alone. Modes:

* ``none``: no ``telemetry=``, in a process where ``opentelemetry`` cannot be
  imported at all (a finder first on the meta path refuses it, and the run
  fails if anything asked for it): the client as most users run it;
* ``api``: ``FluxClient(telemetry=OpenTelemetry())`` on the global providers with
  no SDK installed: what turning it on costs before the application sets one up;
* ``sdk``: the same on the SDK's providers: every span through a
  ``BatchSpanProcessor`` (to an exporter that drops them), every metric into a
  reader: the cost of recording everything;
* ``before`` (with ``--before DIR``): ``none`` run on the flux_async found in
  ``DIR`` (an older commit, without the hooks: ``git archive COMMIT flux_async |
  tar -x -C DIR``), to show what the engine's hooks cost a client that uses none.

Rounds run the modes in turn (each round starting one mode later), so a noisy
neighbour slows every mode alike; each mode's ratio to ``none`` is taken within
its round, and the table gives the median over the rounds. Below the table, the
hooks alone: the calls one task makes into the telemetry (the default no-op, and
``OpenTelemetry()`` without an SDK), timed in this process, beside a task's CPU
in ``none``. Nothing here is an absolute
target: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.abc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import ROOT, ServerProcess

MODES = ("none", "api", "sdk")


class _Refuse(importlib.abc.MetaPathFinder):
    """Makes ``opentelemetry`` unimportable, and remembers who asked."""

    asked: list[str] = []  # noqa: RUF012 - one list for the process

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: object = None) -> None:
        if name.split(".")[0] == "opentelemetry":
            self.asked.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _telemetry(mode: str) -> Any:
    if mode == "none" or mode == "before":
        return None
    from flux_async.otel import OpenTelemetry

    if mode == "api":
        return OpenTelemetry()
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    return OpenTelemetry(tracer_provider=tracer_provider,
                         meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))


async def _job(url: str, token: str, mode: str, tasks: int) -> dict[str, Any]:
    from flux_async import FluxClient, GenerateRequest

    settings: dict[str, Any] = {}
    telemetry = _telemetry(mode)
    if telemetry is not None:
        settings["telemetry"] = telemetry
    client = FluxClient(token, base_url=url, max_concurrency=200, submit_rate=None,
                        query_rate=None, poll_interval=0.05, busy_poll_interval=0.02,
                        **settings)
    requests = [GenerateRequest(f"prompt {i}") for i in range(tasks)]
    async with client:
        cpu, wall = time.process_time(), time.perf_counter()
        failures = 0
        async for outcome in client.map(requests):
            failures += not outcome.ok
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"mode": mode, "cpu_ms_per_task": 1000 * cpu / tasks, "wall": wall,
            "failures": failures}


def _child(spec: str) -> None:
    args = json.loads(spec)
    if args["mode"] in ("none", "before"):
        sys.meta_path.insert(0, _Refuse())
    if args.get("flux_path"):  # "before": that checkout's flux_async, this benchmark
        sys.path.insert(0, args["flux_path"])
        import flux_async

        assert flux_async.__file__ is not None
        assert flux_async.__file__.startswith(args["flux_path"]), flux_async.__file__
        sys.path.remove(args["flux_path"])
    result = asyncio.run(_job(args["url"], args["token"], args["mode"], args["tasks"]))
    loaded = [name for name in sys.modules if name.split(".")[0] == "opentelemetry"]
    if args["mode"] in ("none", "before") and (_Refuse.asked or loaded):
        raise SystemExit(f"opentelemetry was asked for without telemetry: {_Refuse.asked}")
    print(json.dumps(result))


def _hooks_ns(telemetry: Any, repeat: int) -> float:
    """Nanoseconds per task of the hooks one task calls, in order, on ``telemetry``."""
    from flux_async._core.models import GenerateRequest, ImageResult, Task, TaskStatus
    from flux_async._core.protocol import Submission
    from flux_async._engine.followed import Followed, Stage

    request = GenerateRequest("a prompt")
    answer = Submission("task", "trace")
    ended = Task("task", TaskStatus.SUCCEEDED, finished_at=time.time(),
                 result=ImageResult("task", "trace", ()))

    def one_task() -> None:  # what launch, then the tracker, call for one task
        followed = Followed("task", Stage.SENDING, request)
        probe = telemetry.submitting(followed)
        with probe:
            pass
        probe.ended(answer)
        telemetry.followed(followed)
        followed.outcome = ended
        telemetry.unfollowed(followed)

    def empty() -> None:
        Followed("task", Stage.SENDING, request)

    def best(fn: Any) -> float:
        fastest = float("inf")
        for _ in range(5):
            start = time.perf_counter_ns()
            for _ in range(repeat):
                fn()
            fastest = min(fastest, (time.perf_counter_ns() - start) / repeat)
        return fastest

    return best(one_task) - best(empty)


def _run(server: ServerProcess, mode: str, tasks: int, before: str | None) -> dict[str, Any]:
    spec = json.dumps({"url": server.url, "token": server.token, "mode": mode, "tasks": tasks,
                       "flux_path": str(Path(before).resolve())
                       if mode == "before" and before else None})
    done = subprocess.run([sys.executable, "-m", "benchmarks.telemetry", "--child", spec],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode}: the client failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.telemetry")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--before", metavar="DIR",
                        help="a checkout of an older flux_async, run as mode 'before'")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    modes = (*MODES, "before") if args.before else MODES
    rows: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    with ServerProcess(["--generation-time", "0.05", "0.1", "--link", "off"]) as server:
        for turn in range(args.rounds):
            for mode in modes[turn % len(modes):] + modes[:turn % len(modes)]:
                rows[mode].append(_run(server, mode, args.tasks, args.before))
        stats = server.stats()
    print(f"{args.tasks} tasks a run, {args.rounds} round(s), medians; "
          f"server: {stats['tasks_created']} tasks created")
    print(f"{'mode':<8} {'CPU ms/task':>12} {'x none':>7} {'rounds range':>13} {'wall s':>7} "
          f"{'failed':>6}")
    none = rows["none"]
    for mode in modes:
        runs = rows[mode]
        ratios = [r["cpu_ms_per_task"] / b["cpu_ms_per_task"]
                  for r, b in zip(runs, none, strict=True)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{mode:<8} {statistics.median(r['cpu_ms_per_task'] for r in runs):>12.3f} "
              f"{statistics.median(ratios):>6.2f}x {spread:>13} "
              f"{statistics.median(r['wall'] for r in runs):>7.2f} "
              f"{sum(r['failures'] for r in runs):>6}")
    from flux_async._engine.telemetry import NO_TELEMETRY

    task = statistics.median(r["cpu_ms_per_task"] for r in none) * 1e6
    hooks = _hooks_ns(NO_TELEMETRY, 200_000)
    print(f"the hooks alone, per task: off {hooks:.0f} ns ({hooks / task:.3%} of a task's "
          "CPU in 'none')", end="")
    try:
        from flux_async.otel import OpenTelemetry
    except ImportError:
        print()
    else:
        api = _hooks_ns(OpenTelemetry(), 20_000)
        print(f"; on, API without an SDK {api / 1000:.1f} us ({api / task:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

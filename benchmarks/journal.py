"""What the task journal costs: CPU per task and submissions per second, beside no journal.

    python -m benchmarks.journal                 # 1,000 tasks, 9 rounds of every mode
    python -m benchmarks.journal --tasks 300 --rounds 1    # quick
    python -m benchmarks.journal --before ../flux-before   # also a checkout of an older
                                                            # flux_async, as "before"

Every mode runs the same job: ``client.map`` over N requests against a local
server in a process of its own with no rate limits and short generations
(0.05-0.1 s), ``max_concurrency`` 200, so the client, not the service, is what
is measured. Each run is a client process of its own (``--child``), so its CPU
time (``time.process_time``: every thread, the journal's writer included) is
that mode's alone. Modes:

* ``none``: no journal, no keys: the client as it was;
* ``keys``: no journal, a key per request (kept in memory);
* ``sqlite``: ``FluxClient(journal=path)``: each submission's intent, task id and
  outcome written to an SQLite file (WAL, synchronous=FULL, group commit);
* ``sqlite+keys``: the same with a key per request (one more write each);
* ``before`` (with ``--before DIR``): ``none`` run on the flux_async found in
  ``DIR`` (a checkout of an older commit: ``git worktree add DIR COMMIT``), to
  show what the journal's hooks cost a client that uses none.

With two or more cores, the server runs on the first and every client on the
second (``os.sched_setaffinity``), so neither steals the other's core. Rounds run
the modes in turn, so a noisy neighbour slows every mode alike; each
mode's ratio to ``none`` is taken within its round, and the table gives the
median over the rounds (of the figures and of the ratios) and the middle half of
the ratios (one run of this job moves by 20% on a shared machine). Nothing here is an
absolute target: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import ROOT, ServerProcess

MODES = ("none", "keys", "sqlite", "sqlite+keys")


async def _job(url: str, token: str, mode: str, tasks: int, journal: str) -> dict[str, Any]:
    from flux_async import FluxClient, GenerateRequest

    keyed = mode.endswith("keys")
    settings: dict[str, Any] = {"journal": journal} if mode.startswith("sqlite") else {}
    client = FluxClient(token, base_url=url, max_concurrency=200, submit_rate=None,
                        query_rate=None, poll_interval=0.05, busy_poll_interval=0.02,
                        **settings)
    requests = [GenerateRequest(f"prompt {i}", idempotency_key=f"key-{i}") if keyed
                else GenerateRequest(f"prompt {i}") for i in range(tasks)]
    submitted: list[float] = []
    async with client:
        cpu, wall = time.process_time(), time.perf_counter()
        failures = 0
        async for outcome in client.map(
                requests, on_event=lambda e: submitted.append(time.perf_counter())
                if e.kind == "submitted" else None):
            failures += not outcome.ok
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    window = max(submitted) - min(submitted) if len(submitted) > 1 else float("nan")
    return {"mode": mode, "cpu_ms_per_task": 1000 * cpu / tasks, "wall": wall,
            "submissions_per_s": (len(submitted) - 1) / window if window else float("nan"),
            "failures": failures}


def _child(spec: str) -> None:
    args = json.loads(spec)
    if args.get("cpu") is not None:
        os.sched_setaffinity(0, {args["cpu"]})
    if args.get("flux_path"):  # "before": that checkout's flux_async, this benchmark
        sys.path.insert(0, args["flux_path"])
        import flux_async

        assert flux_async.__file__ is not None
        assert flux_async.__file__.startswith(args["flux_path"]), flux_async.__file__
        sys.path.remove(args["flux_path"])
    result = asyncio.run(_job(args["url"], args["token"], args["mode"], args["tasks"],
                              args["journal"]))
    print(json.dumps(result))


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _run(server: ServerProcess, mode: str, tasks: int, before: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flux-journal-bench-") as folder:
        spec = json.dumps({"url": server.url, "token": server.token,
                           "mode": "none" if mode == "before" else mode,
                           "flux_path": str(Path(before).resolve()) if mode == "before"
                           and before else None,
                           "tasks": tasks, "journal": str(Path(folder) / "journal.db"),
                           "cpu": _cores()[1] if len(_cores()) > 1 else None})
        done = subprocess.run([sys.executable, "-m", "benchmarks.journal", "--child", spec],
                              cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{mode}: the client failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.journal")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
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
        if len(_cores()) > 1:
            os.sched_setaffinity(server.proc.pid, {_cores()[0]})
        for _ in range(args.rounds):
            for mode in modes:
                rows[mode].append(_run(server, mode, args.tasks, args.before))
        stats = server.stats()
    print(f"{args.tasks} tasks a run, {args.rounds} round(s), medians; "
          f"server: {stats['tasks_created']} tasks created")
    print(f"{'mode':<12} {'CPU ms/task':>12} {'x none':>7} {'(spread)':>13} {'submits/s':>10} "
          f"{'x none':>7} {'wall s':>7} {'failed':>6}")
    none = rows["none"]
    for mode in modes:
        runs = rows[mode]
        ratios = sorted(r["cpu_ms_per_task"] / b["cpu_ms_per_task"]
                        for r, b in zip(runs, none, strict=True))
        cpu_ratio = statistics.median(ratios)
        # The middle half of the paired ratios: how much one run's noise moves them.
        quarter = len(ratios) // 4
        spread = f"{ratios[quarter]:.2f}-{ratios[-1 - quarter]:.2f}"
        rate_ratio = statistics.median(r["submissions_per_s"] / b["submissions_per_s"]
                                       for r, b in zip(runs, none, strict=True))
        print(f"{mode:<12} {statistics.median(r['cpu_ms_per_task'] for r in runs):>12.3f} "
              f"{cpu_ratio:>6.2f}x {spread:>13} "
              f"{statistics.median(r['submissions_per_s'] for r in runs):>10.0f} "
              f"{rate_ratio:>6.2f}x {statistics.median(r['wall'] for r in runs):>7.2f} "
              f"{sum(r['failures'] for r in runs):>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

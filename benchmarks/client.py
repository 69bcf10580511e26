"""One contender on one scenario, in a process of its own: ``python -m benchmarks.client``.

Started by ``benchmarks.run`` with a JSON spec (contender, scenario, server URL and
token, output path); writes one JSON object of measurements to the output path.
A process per run makes CPU time (``time.process_time``) and peak RSS
(``VmHWM``) this contender's alone; the server runs in another process.

Measured here, around the job only (imports and setup excluded): wall time, CPU,
RSS before the job, RSS once every task is pending ("pending" mode), peak RSS,
the moment each result reached the caller, failures. The server's counters are
read by the parent, except in "pending" mode where this process samples them at
both ends of the hold window.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import resource
import sys
import threading
import time
import urllib.request
from typing import Any

from benchmarks.contenders import JOBS, MODULES, Probe
from benchmarks.scenarios import Scenario

__all__ = ["current_rss_kb", "main"]

#: How long a pending-mode job may take to cancel before the process just exits.
CLEANUP_SECONDS = 30.0
#: Seconds past the pending deadline and the hold before the watchdog gives up,
#: plus a third of the deadline.
WATCHDOG_MARGIN = 10.0

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def current_rss_kb() -> int:
    """Resident set size now, in KB (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except OSError:
        return peak_rss_kb()


def peak_rss_kb() -> int:
    """Peak resident set size of this process, in KB.

    Linux: ``VmHWM``, the high-water mark of this process's own memory. Not
    ``ru_maxrss``, which survives ``execve``: a child started by a parent of 40 MB
    would report at least 40 MB however small it stayed.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


def server_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_local/stats", timeout=60) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


def _queries(stats: dict[str, Any]) -> int:
    requests = stats["requests"]
    return int(requests.get("retrieve", 0)) + int(requests.get("retrieve_batch", 0))


def _watchdog(contender: str, s: Scenario, path: str, probe: Probe, rss0: int, cpu0: float,
              t0: float) -> threading.Timer:
    """Leave partial measurements if the job starves its own event loop past the deadline.

    The timer runs in a thread, which gets the GIL even while the loop is stuck in
    one long step; it writes what is known (tasks submitted so far, RSS, CPU) and
    ends the process.
    """

    def fire() -> None:
        _write(path, {
            "contender": contender, "scenario": s.key, "partial": True,
            "wall": time.monotonic() - t0, "pending": probe.submissions,
            "rss_pending_kb": current_rss_kb(), "rss_before_kb": rss0,
            "cpu": time.process_time() - cpu0, "peak_rss_kb": peak_rss_kb(),
            "submissions_seen": probe.submissions, "arrivals": {}, "durations": {},
            "failures": {}, "hold": {},
        })
        print(f"{contender}: the event loop did not get through the scenario in time; "
              "partial measurements written", file=sys.stderr, flush=True)
        os._exit(0)

    delay = s.pending_deadline * 4 / 3 + s.hold + WATCHDOG_MARGIN
    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()
    return timer


def _write(path: str, result: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(result, f)


async def measure(contender: str, s: Scenario, url: str, token: str, path: str) -> None:
    """Run the job, measure it, write the measurements to ``path``."""
    probe = Probe(s.n)
    job = JOBS[contender]
    out: dict[str, Any] = {"contender": contender, "scenario": s.key}
    for module in MODULES[contender]:
        importlib.import_module(module)
    rss0 = current_rss_kb()
    times0 = os.times()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    task = asyncio.create_task(job(s, url, token, probe))
    watchdog = None
    if s.mode == "pending":
        watchdog = _watchdog(contender, s, path, probe, rss0, cpu0, t0)
    if s.mode == "complete":
        await task
        out["wall"] = time.monotonic() - t0
        out["cpu"] = time.process_time() - cpu0
        times1 = os.times()
    else:
        # Wait for every task to be pending at once, then hold that state.
        waiter = asyncio.create_task(probe.all_submitted.wait())
        await asyncio.wait({waiter, task}, timeout=s.pending_deadline,
                           return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()  # the job ended early: raise what it raised
        out["wall"] = time.monotonic() - t0
        out["pending"] = probe.submissions
        out["rss_pending_kb"] = current_rss_kb()
        if probe.rounds is not None and probe.submissions >= s.n:
            # Start counting at a round that began with every task pending: then
            # every query in the window carries a full batch, and queries per round
            # (N x queries / ids queried) is exact wherever the window's ends fall.
            first = probe.rounds()
            limit = time.monotonic() + 30.0
            # The round counter is a plain attribute: sampled, there is nothing to wait on.
            while probe.rounds() == first and time.monotonic() < limit:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        before = await asyncio.to_thread(server_stats, url)
        rounds0 = probe.rounds() if probe.rounds else None
        h0 = time.monotonic()
        await asyncio.sleep(s.hold)
        after = await asyncio.to_thread(server_stats, url)
        out["hold"] = {
            "seconds": time.monotonic() - h0,
            "queries": _queries(after) - _queries(before),
            "ids_queried": after["ids_queried"] - before["ids_queried"],
            "rounds": None if rounds0 is None or probe.rounds is None
            else probe.rounds() - rounds0,
        }
        out["cpu"] = time.process_time() - cpu0
        times1 = os.times()
    out["cpu_user"] = times1.user - times0.user
    out["cpu_system"] = times1.system - times0.system
    out["rss_before_kb"] = rss0
    out["peak_rss_kb"] = peak_rss_kb()
    out["submissions_seen"] = probe.submissions
    out["arrivals"] = probe.arrivals
    out["durations"] = probe.durations
    out["failures"] = dict(probe.failures)
    # Written before the pending job is cancelled: a client that cannot let go of
    # thousands of tasks in time still leaves its measurements.
    _write(path, out)
    if watchdog is not None:
        watchdog.cancel()
    if not task.done():
        # Ending the run cancels every wait; flux_async warns once per task for that.
        logging.getLogger("flux_async").setLevel(logging.ERROR)
        task.cancel()
        try:
            await asyncio.wait_for(task, timeout=CLEANUP_SECONDS)
        except asyncio.CancelledError:
            pass
        except asyncio.TimeoutError:
            print(f"{contender}: still cancelling after {CLEANUP_SECONDS:g} s; leaving",
                  file=sys.stderr, flush=True)
            os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client")
    parser.add_argument("spec", help="JSON: contender, scenario, url, token, out")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    s = Scenario.from_json(spec["scenario"])
    asyncio.run(measure(spec["contender"], s, spec["url"], spec["token"], spec["out"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

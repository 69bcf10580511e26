"""Many workers, one token: 4 processes sharing the vendor's limits, with and without Redis.

    python -m benchmarks.fleet                 # 4 workers x 50 jobs, 1-3 s each (about 2 min)
    python -m benchmarks.fleet --quick         # 4 x 10 jobs, 0.5-1.5 s
    python -m benchmarks.fleet --workers 4 --jobs 50 --generation 1 3
    python -m benchmarks.fleet --poll          # no callbacks: every wait polls

One local server (a process of its own, a fresh one per mode) enforces the vendor's
per-token limits: 10 generations in flight, 5 submissions a second, 60 task queries
a second, 429 beyond, no ``Retry-After``. One ``redis-server`` (started here, on a
free port, in a temporary directory) serves the coordinated mode. Each worker is an
OS process of its own (``benchmarks/fleet_worker.py``) with its own FluxClient
at its defaults and a callback receiver; all start their jobs at once:

* **coordinated**: every client has a ``RedisCoordinator`` on the same Redis. Each
  worker's callback URL is the *next* worker's receiver, so every callback lands on
  a process that does not wait for it and must be routed through Redis.
* **independent**: the same clients without a coordinator (what a deployment gets
  today), each with its own receiver as its callback URL (their best case: with a
  callback on another worker, the wait would fall back to the 30 s poll).
* **single**: the baseline for what polling costs: ONE worker process running all
  workers x jobs jobs, with the same client defaults and the same server limits, no
  coordinator, its own receiver as its callback URL (as the independent mode).

With ``--poll`` no submission carries a callback URL, in any mode: every wait is
resolved by the poller, which is where a fleet's task queries add up (with
callbacks, a task is polled only every ``callback_poll_interval``, 30 s, and
these generations end sooner). Prints one table, the task queries of each mode
against the single poller's, and the ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.fleet_worker import WorkerProcess
from benchmarks.scenarios import Scenario, bound_seconds, ideal_seconds
from benchmarks.servers import ServerProcess

__all__ = ["RedisProcess", "main", "run_mode"]

MAX_IN_FLIGHT, SUBMIT_RATE, QUERY_RATE = 10, 5.0, 60.0
SECRET = "fleet-benchmark-callback-secret"
MODES = ("coordinated", "independent", "single")


class RedisProcess:
    """``redis-server`` on a free port, no persistence, in a temporary directory."""

    def __init__(self, binary: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fleet-redis-")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._pong():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._dir.cleanup()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def run_mode(
    mode: str, redis_url: str | None, workers: int, jobs: int, generation: tuple[float, float],
    seed: int, callbacks: bool = True,
) -> dict[str, Any]:
    """One fleet of ``workers`` processes x ``jobs`` jobs against a fresh server.

    ``callbacks``: each submission names a receiver (the next worker's with a
    coordinator, its own without); if false, none does and every wait polls.
    """
    args = ["--generation-time", str(generation[0]), str(generation[1]), "--seed", str(seed),
            "--max-in-flight", str(MAX_IN_FLIGHT), "--submit-rate", str(SUBMIT_RATE),
            "--query-rate", str(QUERY_RATE)]
    total = workers * jobs
    with ServerProcess(args) as server:
        fleet = [
            WorkerProcess({"server": server.url, "token": server.token, "redis": redis_url,
                           "listen": True, "secret": SECRET}, name=f"{mode}-{i}")
            for i in range(workers)
        ]
        try:
            urls = [w.ready()["callback_url"] for w in fleet]
            start = time.time()
            for i, worker in enumerate(fleet):
                target = urls[(i + 1) % workers] if redis_url else urls[i]
                if not callbacks:
                    target = None
                worker.send(cmd="jobs", prefix=f"w{i}-", n=jobs, callback_url=target)
            for worker in fleet:
                worker.wait_for(
                    lambda ev: sum(e["ev"] in ("result", "error") for e in ev) >= jobs,
                    timeout=60 + total * 2,
                )
            events = [e for w in fleet for e in w.events]
            codes = [w.close() for w in fleet]
            closed = [e for w in fleet for e in w.of("closed")]
        finally:
            for worker in fleet:
                worker.stop()
        stats = server.stats(finish_times=True)
    results = [e for e in events if e["ev"] == "result"]
    submitted = sorted((e for e in events if e["ev"] == "submitted"), key=lambda e: e["t"])
    durations = {e["id"]: e["inference"] for e in results if e.get("inference") is not None}
    finish = stats["finish_times"]
    lags = [(e["t"] - finish[e["id"]]) * 1000 for e in results if e["id"] in finish]
    scenario = Scenario(key="fleet", title=mode, n=total, generation=generation,
                        concurrency=MAX_IN_FLIGHT, max_in_flight=MAX_IN_FLIGHT,
                        submit_rate=SUBMIT_RATE, query_rate=QUERY_RATE)
    wall = max(e["t"] for e in results) - start if results else float("nan")
    bound = bound_seconds(scenario, durations)
    ideal = ideal_seconds(scenario, [durations[e["id"]] for e in submitted
                                     if e["id"] in durations])
    requests = stats["requests"]
    routed = sum(c.get("counts", {}).get("routed", 0) for c in closed)
    queries = requests.get("retrieve", 0) + requests.get("retrieve_batch", 0)
    rounds = [c.get("rounds") for c in closed]
    return {
        "mode": mode, "wall": wall, "bound": bound, "ideal": ideal,
        "vs_bound": wall / bound if bound else None, "vs_ideal": wall / ideal if ideal else None,
        "succeeded": len(results), "total": total,
        "failed": total - len(results), "errors": sorted({e["kind"] for e in events
                                                         if e["ev"] == "error"}),
        "r429": stats["statuses"].get("429", 0), "peak": stats["peak_in_flight"],
        "subm": requests.get("images", 0) / total,
        "qry": queries / total, "queries": queries, "ids_queried": stats["ids_queried"],
        "processes": workers,
        "rounds": sum(rounds) if len(rounds) == workers and None not in rounds else None,
        "p50": statistics.median(lags) if lags else None,
        "p99": percentile(lags, 0.99) if lags else None,
        "dup": sum(n - 1 for n in stats["duplicate_prompts"].values()),
        "exit_codes": codes, "routed": routed,
        "receivers": [c.get("counts", {}) for c in closed],
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "-"


def report_queries(rows: list[dict[str, Any]]) -> None:
    """What polling cost each mode: its task queries against the single poller's."""
    by = {r["mode"]: r for r in rows}
    single = by.get("single")
    print()
    print("Task queries (what polling costs; baseline: the single poller, same run):")
    head = (f"  {'mode':<14}{'procs':>6}{'queries':>9}{'x single':>10}{'qry/s':>8}"
            f"{'ids/qry':>9}{'rounds':>8}{'qry/round':>11}")
    print(head)
    for r in rows:
        base = single["queries"] if single is not None else 0
        rounds = r["rounds"]
        print(f"  {r['mode']:<14}{r['processes']:>6}{r['queries']:>9}"
              f"{_ratio(r['queries'], base):>10}{r['queries'] / r['wall']:>8.1f}"
              f"{_fmt(r['ids_queried'] / r['queries'] if r['queries'] else None, '.1f'):>9}"
              f"{_fmt(rounds, 'd'):>8}"
              f"{_fmt(r['queries'] / rounds if rounds else None, '.2f'):>11}")
    print("  x single: task queries / the single poller's; qry/s: task queries per second")
    print(f"  over the wall time (the token's limit: {QUERY_RATE:g}/s); ids/qry: task ids per")
    print("  query (a batch holds up to 50); rounds: poll rounds that asked something,")
    print("  summed over the processes (coordinated: rounds are shared, the first process")
    print("  whose round comes asks about the fleet's due tasks); qry/round: queries /")
    print("  rounds (a callback's confirming query, a lost id's own query count too).")
    if all(r["queries"] == 0 for r in rows):
        print("  No mode polled a task: every wait was resolved by its callback (a task with")
        print("  a callback is polled only every 30 s). `--poll` measures polling itself.")
    elif single is not None:
        parts = [f"{m} / single {_ratio(by[m]['queries'], single['queries'])} "
                 f"({by[m]['queries']} vs {single['queries']})"
                 for m in ("coordinated", "independent") if m in by]
        if parts:
            print("  " + "; ".join(parts))


def report(rows: list[dict[str, Any]], workers: int, jobs: int,
           generation: tuple[float, float], callbacks: bool = True) -> None:
    print(f"fleet: {workers} worker processes x {jobs} jobs, one token; generation "
          f"{generation[0]}-{generation[1]} s; server limits {MAX_IN_FLIGHT} in flight, "
          f"{SUBMIT_RATE:g} submissions/s, {QUERY_RATE:g} queries/s, 429 beyond, no Retry-After")
    print("callbacks: " + ("each submission names a receiver" if callbacks
                           else "none (--poll): every wait is resolved by polling"))
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    print()
    head = (f"{'mode':<14}{'ok':>9}{'wall s':>8}{'x bound':>9}{'x ideal':>9}{'429s':>6}"
            f"{'peak':>6}{'subm/task':>11}{'qry/task':>10}{'p50 ms':>9}{'p99 ms':>9}{'dup':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['mode']:<14}{r['succeeded']:>5}/{r['total']:<3}{r['wall']:>8.1f}"
              f"{_fmt(r['vs_bound'], '.3f'):>9}{_fmt(r['vs_ideal'], '.3f'):>9}{r['r429']:>6}"
              f"{r['peak']:>6}{r['subm']:>11.3f}{r['qry']:>10.3f}{_fmt(r['p50'], '.1f'):>9}"
              f"{_fmt(r['p99'], '.1f'):>9}{r['dup']:>5}")
    print()
    print("x bound: wall / max(N / submit rate, sum of generation times / max in flight),")
    print("  with the generation times the server drew; x ideal: wall / a perfect client's")
    print("  (benchmarks/scenarios.py: ideal_seconds). peak: most generations at once on")
    print("  the server, which refuses the 11th with a 429 (so never above 10); p50/p99:")
    print("  from the server's finish of a task to its waiter holding the result.")
    print("  single: one process running all the jobs (the baseline for task queries).")
    for r in rows:
        extra = f"; errors: {', '.join(r['errors'])}" if r["errors"] else ""
        print(f"  {r['mode']}: receivers {r['receivers']}, exit codes {r['exit_codes']}{extra}")
    by = {r["mode"]: r for r in rows}
    co, ind = by.get("coordinated"), by.get("independent")
    if co is not None:
        print()
        print("Figures (coordinated; targets from issue 11):")
        checks = [
            ("all jobs succeeded", f"{co['succeeded']}/{co['total']}",
             f"{co['total']}/{co['total']}", co["succeeded"] == co["total"]),
            ("answers with 429", str(co["r429"]), "<= 2", co["r429"] <= 2),
            ("peak generations in flight", str(co["peak"]), f"<= {MAX_IN_FLIGHT}",
             co["peak"] <= MAX_IN_FLIGHT),
            ("wall time / bound", f"{_fmt(co['vs_bound'], '.3f')}x "
             f"({co['wall']:.1f} / {_fmt(co['bound'], '.1f')} s)", "<= 1.1x",
             co["vs_bound"] is not None and co["vs_bound"] <= 1.1),
            ("tasks created twice", str(co["dup"]), "0", co["dup"] == 0),
        ]
        if callbacks:  # with --poll no callback is routed: the p50 is the poller's
            checks.insert(4, ("routed callback notice p50", f"{_fmt(co['p50'], '.1f')} ms",
                              "< 50 ms", co["p50"] is not None and co["p50"] < 50))
        for name, got, target, met in checks:
            print(f"  {name:<30}{got:<26}{target:<12}{'met' if met else 'NOT MET'}")
    if co is not None and ind is not None:
        print()
        print("independent relative to coordinated (same run):")
        print(f"  wall {ind['wall'] / co['wall']:.2f}x, 429s {ind['r429']} vs {co['r429']}, "
              f"submissions/task {ind['subm']:.3f} vs {co['subm']:.3f}, "
              f"peak in flight {ind['peak']} vs {co['peak']}")
    report_queries(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=50, help="jobs per worker")
    parser.add_argument("--generation", type=float, nargs=2, metavar=("LO", "HI"),
                        default=(1.0, 3.0), help="server generation time range, seconds")
    parser.add_argument("--quick", action="store_true", help="4 x 10 jobs of 0.5-1.5 s")
    parser.add_argument("--mode", choices=MODES, action="append")
    parser.add_argument("--poll", action="store_true",
                        help="no callback URLs: every wait is resolved by polling")
    parser.add_argument("--seed", type=int, default=20261121)
    args = parser.parse_args(argv)
    jobs, generation = args.jobs, (args.generation[0], args.generation[1])
    if args.quick:
        jobs, generation = 10, (0.5, 1.5)
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed (Debian: apt-get install redis-server)",
              file=sys.stderr)
        return 2
    redis = RedisProcess(binary)
    rows = []
    try:
        for mode in args.mode or MODES:
            url = redis.url if mode == "coordinated" else None
            # single: the same jobs in one process, the baseline of what polling costs
            processes, each = (1, args.workers * jobs) if mode == "single" else (args.workers, jobs)
            rows.append(run_mode(mode, url, processes, each, generation, args.seed,
                                 callbacks=not args.poll))
    finally:
        redis.stop()
    report(rows, args.workers, jobs, generation, callbacks=not args.poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())


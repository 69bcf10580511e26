"""Run the benchmark: ``python -m benchmarks`` or ``python benchmarks/run.py``.

    python -m benchmarks                      # every scenario, every contender
    python -m benchmarks --quick              # scaled down, under a minute
    python -m benchmarks --scenario 1 --contender flux_async --contender floor_batch
    python -m benchmarks --json results.json  # also keep the raw rows
    python -m benchmarks --scenario 3 --set busy_poll_interval=0.5 --limit query_rate=none

Each (contender, scenario) runs in a client process of its own against a fresh
server process (``python -m flux_async.testing``), so CPU and RSS are that
client's alone. The parent only starts processes, joins what the client measured
with what the server counted, and prints one table. Nothing here asserts an
absolute time: the figures are ratios against contenders of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.contenders import callback_available
from benchmarks.report import combine, format_notes, format_table, make_row
from benchmarks.scenarios import CONTENDERS, LIMITS, SCENARIO_KEYS, Scenario, scenarios
from benchmarks.servers import ROOT, ServerProcess
from benchmarks.targets import format_relative, format_targets

__all__ = ["main", "run_scenario"]


class _Run:
    """One contender on one scenario: its server process and its client process."""

    def __init__(self, contender: str, s: Scenario) -> None:
        self.contender = contender
        self.s = s
        self.server = ServerProcess(s.server_args())
        fd, self.out = tempfile.mkstemp(prefix="flux-bench-", suffix=".json")
        os.close(fd)
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finish()
        spec = {"contender": contender, "scenario": s.to_json(), "url": self.server.url,
                "token": self.server.token, "out": self.out}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.client", json.dumps(spec)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.stderr,
        )

    def finish(self) -> dict[str, Any]:
        """Wait for the client, read both sides, stop the server; one table row."""
        try:
            remaining = self.s.child_timeout - (time.monotonic() - self.started)
            try:
                code = self.proc.wait(timeout=max(1.0, remaining))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                code = None
            client: dict[str, Any] = {"contender": self.contender}
            error = None
            if code == 0:
                with open(self.out) as f:
                    client = json.load(f)
            else:
                self.stderr.seek(0)
                tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-3:]
                error = ("timed out" if code is None else f"exit {code}") + (
                    ": " + " | ".join(tail) if tail else ""
                )
            server = self.server.stats(finish_times=True)
            client.setdefault("cpu", None)
            row = make_row(self.s, client, server)
            if error:
                row["error"] = error
            return row
        finally:
            self.server.stop()
            self.stderr.close()
            os.unlink(self.out)


def run_scenario(s: Scenario, contenders: list[str], *, serial: bool = False,
                 progress: bool = True) -> list[dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for rep in range(s.repeat):
        # Rotate the order, so no contender always runs first (or right after another).
        order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
        if rep:
            order = [c for c in order if c not in s.once]
        label = f" (run {rep + 1} of {s.repeat})" if s.repeat > 1 else ""
        if s.parallel and not serial:
            if progress:
                print(f"[{s.key}] {s.title}{label}: {', '.join(order)} at once ...",
                      file=sys.stderr, flush=True)
            started = [_Run(c, s) for c in order]
            for r in started:
                runs[r.contender].append(r.finish())
        else:
            for contender in order:
                if progress:
                    print(f"[{s.key}] {s.title}{label}: {contender} ...",
                          file=sys.stderr, flush=True)
                runs[contender].append(_Run(contender, s).finish())
    rows = [combine(runs[c]) for c in contenders]
    if progress:
        for row in rows:
            wall = row.get("wall")
            print(f"    {row['label']}: wall {wall if wall is None else round(wall, 2)} s,"
                  f" failures {row['failures']}" + (f" ({row['error']})" if row.get("error")
                                                    else ""), file=sys.stderr, flush=True)
    return rows


def _revision() -> str:
    """The commit measured, and whether the library's files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "flux_async"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "flux_async (not a git checkout)"
    return f"flux_async at {head}" + (" with local changes" if dirty else "")


def _assignment(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` from the command line: VALUE an int, a float, or ``none``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if value.lower() == "none":
        return name, None
    try:
        return name, int(value)
    except ValueError:
        pass
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: not a number: {value!r}") from None


def _limit(text: str) -> tuple[str, Any]:
    name, value = _assignment(text)
    if name not in LIMITS:
        raise argparse.ArgumentTypeError(f"not a server limit: {name!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down run, under a minute")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIO_KEYS),
                        help="run only this scenario (repeatable)")
    parser.add_argument("--contender", action="append", choices=list(CONTENDERS),
                        help="run only this contender (repeatable)")
    parser.add_argument("--serial", action="store_true",
                        help="run the contenders of scenarios 3-5 one after another")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        type=_assignment, help="change a flux_async setting in the chosen "
                        "scenarios, e.g. busy_poll_interval=0.5 (repeatable)")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                        type=_limit, help="change a server limit in the chosen "
                        f"scenarios ({', '.join(LIMITS)}; none for no limit; repeatable)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw rows as JSON")
    args = parser.parse_args(argv)

    chosen = [s.overridden(dict(args.set), dict(args.limit)) for s in scenarios(args.quick)
              if not args.scenario or s.key in args.scenario]
    have_callback = callback_available()
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    skipped = []
    for s in chosen:
        contenders = [c for c in s.contenders if not args.contender or c in args.contender]
        if "flux_async_callback" in contenders and not have_callback:
            contenders.remove("flux_async_callback")
            skipped.append(s.key)
        rows += run_scenario(s, contenders, serial=args.serial)
    elapsed = time.monotonic() - started

    print()
    print(f"flux_async benchmarks, {time.strftime('%Y-%m-%d %H:%M')}"
          f"{' (quick)' if args.quick else ''}: {_revision()}, Python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at the end; run took {elapsed:.0f} s")
    print()
    print(format_table(rows, chosen))
    print()
    print(format_notes(chosen, rows))
    if skipped:
        print(f"    flux_async (callback) skipped in [{', '.join(skipped)}]: "
              "flux_async.web is not in this checkout.")
    print()
    if args.set or args.limit:
        print("Settings or limits changed on the command line (--set, --limit): the "
              "targets below are not measured at the scenarios' own settings.")
    print(format_targets(rows, chosen))
    relative = format_relative(rows, chosen)
    if relative:
        print()
        print(relative)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "rows": rows,
                       "scenarios": [s.to_json() for s in chosen]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

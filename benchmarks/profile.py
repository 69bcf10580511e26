"""Profile a contender's client process with a sampling profiler: ``python -m benchmarks.profile``.

    python -m benchmarks.profile                       # flux_async on scenario 1
    python -m benchmarks.profile --contender floor_batch --scenario 1 --quick
    python -m benchmarks.profile --tool pyinstrument   # the default without py-spy

With py-spy (the default) the client process runs exactly as in the benchmark,
sampled from outside (``py-spy record --format raw``); the collapsed stacks are
then summed here into:

* self time per function (where the CPU actually goes), top ``--top``;
* inclusive time of flux_async's hot paths: per request (``Transport.post``,
  ``decode_answer``), per poll round (``Poller.round``'s queries,
  ``_poll_chunk``), per answer (``Poller._read``, ``classify``), per task
  (``_Run._one``/``Launcher.launch``, ``Submitter._carry``, the tracker's settle
  path, ``Tracker.wait``, ``map``), and by package (flux_async, aiohttp, anyio,
  asyncio, attrs/cattrs, json, ...).

Only samples where the process was on CPU are counted (py-spy skips idle ones).
Nothing is written to the repository; ``--raw PATH`` keeps the stacks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.scenarios import CONTENDERS, SCENARIO_KEYS, scenarios
from benchmarks.servers import ROOT, ServerProcess

__all__ = ["main", "summarise"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")

# Inclusive buckets for flux_async's hot paths: a sample counts in a bucket when
# any frame of its stack is one of these functions.
HOT_PATHS: dict[str, tuple[str, ...]] = {
    "per request: Transport.post (aiohttp send/receive)": ("post (flux_async/_edge/link.py",),
    "per request: decode_answer (status, JSON)": ("decode_answer (flux_async/_core/protocol.py",),
    # A round's queries run in tasks of their own: their stacks hold _poll_chunk and
    # _poll_one, never Poller.round (which only starts them).
    "per poll round: Poller.round/_poll_chunk/_poll_one": (
        "Poller.round (flux_async/_engine/poller.py", "_poll_chunk (flux_async/_engine/poller.py",
        "_poll_one (flux_async/_engine/poller.py"),
    "per poll round: TaskQueries.fetch_batch (the query)": (
        "fetch_batch (flux_async/_engine/queries.py", "read_batch (flux_async/_core/protocol.py"),
    "per answer: Poller._read (classify + read_task)": ("_read (flux_async/_engine/poller.py",),
    "per answer: classify (_state)": ("classify (flux_async/_core/state.py",),
    "per task: _Run._one/Launcher.launch (slot, rate gate, submit)": (
        "_one (flux_async/_engine/map.py", "launch (flux_async/_engine/launch.py"),
    "per task: Submitter._carry (the paid POST in the client's task)": (
        "_carry (flux_async/_engine/submission.py",),
    "per task: Tracker settle path (resolve, watches)": (
        "resolve (flux_async/_engine/tracker.py", "fail (flux_async/_engine/tracker.py"),
    "per task: Tracker.wait (generate/wait's coroutine)": ("wait (flux_async/_engine/tracker.py",),
    "per task: read_task (model building)": ("read_task (flux_async/_core/protocol.py",),
    "per task: structure_images (cattrs)": ("structure_images (flux_async/_core/wire.py",),
    "per task: submit_body/unstructure_request": ("submit_body (flux_async/_core/protocol.py",),
    "per task: map machinery (_map.py)": ("(flux_async/_engine/map.py",),
}

PACKAGES = ("flux_async", "aiohttp", "anyio", "asyncio", "attr", "cattrs", "json", "yarl",
            "multidict", "httpx", "httpcore", "acedatacloud", "benchmarks")


def _package(frame: str) -> str:
    match = _FRAME.match(frame)
    path = match.group("file") if match else frame
    for package in PACKAGES:
        if f"/{package}/" in path or path.startswith(f"{package}/") or f"{package}." in path:
            return package
    return "other"


def _stacks(raw: str) -> list[tuple[list[str], int]]:
    """The job's samples: imports (before the job starts) and waits in select are dropped."""
    stacks = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any("importlib" in f for f in frames):
            continue
        if "select (selectors.py" in frames[-1]:
            continue  # py-spy may count epoll_wait as active: it is the loop idling
        stacks.append((frames, int(count)))
    return stacks


def summarise(raw: str, top: int = 25) -> str:
    """A text summary of py-spy ``--format raw`` output (collapsed stacks)."""
    stacks = _stacks(raw)
    total = sum(c for _, c in stacks)
    if not total:
        return "no samples"
    self_time: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    hot: Counter[str] = Counter()
    for frames, count in stacks:
        leaf = frames[-1]
        match = _FRAME.match(leaf)
        key = f"{match.group('func')} ({match.group('file')})" if match else leaf
        self_time[key] += count
        # The innermost frame of a known package owns the sample.
        by_package[_package(leaf)] += count
        for name, needles in HOT_PATHS.items():
            if any(n in frame for frame in frames for n in needles):
                hot[name] += count
    lines = [f"{total} samples on CPU", "", "Inclusive share of flux_async's hot paths:"]
    for name in HOT_PATHS:
        lines.append(f"  {100 * hot[name] / total:5.1f}%  {name}")
    lines += ["", "Self time by package (innermost frame):"]
    for package, count in by_package.most_common():
        lines.append(f"  {100 * count / total:5.1f}%  {package}")
    lines += ["", f"Self time, top {top} functions:"]
    for key, count in self_time.most_common(top):
        lines.append(f"  {100 * count / total:5.1f}%  {key}")
    return "\n".join(lines)


def _flux_inclusive(raw: str, top: int) -> str:
    """Inclusive share of each flux_async function (any frame in the stack)."""
    counts: Counter[str] = Counter()
    total = 0
    for frames, count in _stacks(raw):
        total += count
        seen = set()
        for frame in frames:
            match = _FRAME.match(frame)
            if match and "flux_async/" in match.group("file") and "testing" not in frame:
                seen.add(f"{match.group('func')} ({match.group('file').split('flux_async/')[-1]})")
        for key in seen:
            counts[key] += count
    lines = [f"Inclusive time of flux_async functions, top {top}:"]
    for key, count in counts.most_common(top):
        lines.append(f"  {100 * count / max(1, total):5.1f}%  {key}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("--contender", default="flux_async", choices=list(CONTENDERS))
    parser.add_argument("--scenario", default="1", choices=list(SCENARIO_KEYS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tool", choices=["py-spy", "pyinstrument"],
                        help="default: py-spy when installed, else pyinstrument")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", metavar="PATH", help="keep py-spy's collapsed stacks here")
    args = parser.parse_args(argv)

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if args.tool is None:
        args.tool = "py-spy" if Path(py_spy).exists() else "pyinstrument"
    s = next(x for x in scenarios(args.quick) if x.key == args.scenario)
    with ServerProcess(s.server_args()) as server:
        fd, out = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        spec = {"contender": args.contender, "scenario": s.to_json(), "url": server.url,
                "token": server.token, "out": out}
        client = [sys.executable, "-m", "benchmarks.client", json.dumps(spec)]
        try:
            if args.tool == "py-spy":
                raw_path = args.raw or out + ".raw"
                subprocess.run(
                    [py_spy, "record", "--format", "raw", "--rate", str(args.rate),
                     "--output", raw_path, "--", *client],
                    cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                )
                raw = Path(raw_path).read_text()
                if not args.raw:
                    os.unlink(raw_path)
                print(summarise(raw, args.top))
                print()
                print(_flux_inclusive(raw, args.top))
            else:
                code = (
                    "import sys, runpy; from pyinstrument import Profiler\n"
                    "p = Profiler(async_mode='disabled'); p.start()\n"
                    "sys.argv = ['benchmarks.client', sys.argv[1]]\n"
                    "from benchmarks.client import main\n"
                    "main()\n"
                    "p.stop(); print(p.output_text(unicode=False, color=False, show_all=False))\n"
                )
                subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=ROOT,
                               check=True)
            with open(out) as f:
                result = json.load(f)
            print()
            print(f"client: wall {result['wall']:.2f} s, CPU {result['cpu']:.2f} s "
                  f"({1000 * result['cpu'] / s.n:.3f} ms per task), "
                  f"peak RSS {result['peak_rss_kb'] / 1024:.1f} MB")
        finally:
            os.unlink(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

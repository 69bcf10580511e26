"""A process of a user's job with a journal, run by the journal tests.

``python -m tests.journal_worker MODE ...``:

``keyed``: one keyed ``generate``; prints ``{"task_id": ...}`` or ``{"error": ...}``
(with ``--journal PATH``, or ``--redis URL``: a fleet's coordinator keeps the keys).

``job``: N keyed generations through ``map``, with a callback receiver on a fixed
port, as a job that is killed and restarted would run. Its own ledger (``--out``,
one JSON line per delivered key, flushed and synced) is what "delivered to the
caller" means: keys already in it are not asked again. A key whose submission is
of unknown fate (``SubmissionUncertainError``) is asked again every half second
(its callback, if a task exists, settles it meanwhile); once this process has
lived ``--decide-after`` seconds and the key is still unknown, the job decides
that no task exists (the test's local server would have called back by then),
releases the key and pays for it. Every report of unknown fate goes to
``--reports``. Prints ``ready`` once its client runs, ``done`` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from flux_async import FluxClient, GenerateRequest, Recovered, SubmissionUncertainError
from flux_async.web import add_callback_route

SECRET = "journal-tests-callback-secret"
ROOT = Path(__file__).resolve().parents[1]


async def spawn(*args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """Start ``python -m tests.journal_worker ARGS`` (stdout and stderr piped)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.journal_worker", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, **kwargs)


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
        out.flush()
        os.fsync(out.fileno())


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The whole lines of a ledger (a line torn by a kill is not one)."""
    if not path.exists():
        return []
    records = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(raw))
        except ValueError:
            continue
    return records


async def keyed(args: argparse.Namespace) -> None:
    where: dict[str, Any] = {"journal": args.journal}
    if args.redis:  # the fleet's Redis holds the keys: no journal file
        from flux_async.redis import RedisCoordinator

        where = {"coordinator": RedisCoordinator.from_url(args.redis, lease=2.0)}
    try:
        async with FluxClient(args.token, base_url=args.url, poll_interval=0.05,
                              submit_rate=None, query_rate=None, **where) as client:
            result = await client.generate(args.prompt, idempotency_key=args.key)
    except Exception as exc:  # reported to the test, whatever it is
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        return
    print(json.dumps({"task_id": result.task_id}), flush=True)


async def job(args: argparse.Namespace) -> None:
    out, reports = Path(args.out), Path(args.reports)
    delivered = {line["key"] for line in read_lines(out)}

    def on_recovered(recovered: Recovered) -> None:
        if recovered.task_id is None:  # a submission of unknown fate, reported
            _append(reports, {"key": recovered.idempotency_key, "at": time.time()})

    client = FluxClient(args.token, base_url=args.url, journal=args.journal,
                        callback_url=f"http://127.0.0.1:{args.port}/callback",
                        callback_secret=SECRET, on_recovered=on_recovered,
                        max_concurrency=args.concurrency, poll_interval=0.1,
                        busy_poll_interval=0.05, callback_poll_interval=0.5,
                        submit_rate=None, query_rate=None, not_found_grace=30.0)
    app = web.Application()
    add_callback_route(app, "/callback", client)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_address=True)
    await site.start()
    started = time.monotonic()

    def deliver(key: str, task_id: str) -> None:
        if key not in delivered:
            delivered.add(key)
            _append(out, {"key": key, "task_id": task_id})

    try:
        async with client:
            print("ready", flush=True)
            todo = [f"job-{i}" for i in range(args.count) if f"job-{i}" not in delivered]
            unknown: list[str] = []
            requests = [GenerateRequest(f"prompt of {key}", idempotency_key=key) for key in todo]
            async for outcome in client.map(requests):
                key = outcome.request.idempotency_key
                assert key is not None
                if outcome.result is not None:
                    deliver(key, outcome.result.task_id)
                elif isinstance(outcome.error, SubmissionUncertainError):
                    unknown.append(key)
                else:
                    raise RuntimeError(f"{key}: {outcome.error!r}")
            while unknown:
                await asyncio.sleep(0.5)
                still = []
                for key in unknown:
                    try:
                        result = await client.generate(f"prompt of {key}", idempotency_key=key)
                    except SubmissionUncertainError:
                        if time.monotonic() - started < args.decide_after:
                            still.append(key)
                            continue
                        await client.release_key(key)  # the caller's decision: no task exists
                        result = await client.generate(f"prompt of {key}", idempotency_key=key)
                    deliver(key, result.task_id)
                unknown = still
        print("done", flush=True)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["keyed", "job"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--journal", default=None)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--key", default="k")
    parser.add_argument("--prompt", default="a cat")
    parser.add_argument("--out", default="")
    parser.add_argument("--reports", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--decide-after", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(keyed(args) if args.mode == "keyed" else job(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
